package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

func testSessions() []proxy.SessionInfo {
	return []proxy.SessionInfo{
		{ID: "c1", User: "alice@example.com", Client: netip.MustParseAddrPort("192.0.2.1:40000"), Listener: "pop3s", Backend: "mx1", State: "relaying", Started: t0, BytesIn: 10, BytesOut: 2000, TLSVersion: "TLS 1.3"},
		{ID: "c2", User: "Alice@Example.com", Client: netip.MustParseAddrPort("[2001:db8::1]:40001"), Listener: "pop3", Backend: "mx1", State: "relaying", Started: t0.Add(time.Second)},
		{ID: "c3", User: "", Client: netip.MustParseAddrPort("192.0.2.9:40002"), Listener: "pop3s", State: "authorization", Started: t0.Add(2 * time.Second), TLSVersion: "TLS 1.2"},
	}
}

func TestHandler(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		target   string
		ready    error
		sessions []proxy.SessionInfo

		wantCode   int
		wantBody   string // exact, unless empty
		wantIn     string // substring of the body
		wantNotIn  string // not a substring of the body, when set
		wantHeader map[string]string
		wantLeft   []string // IDs of the sessions left
		wantLog    string   // substring of the log
	}{
		{name: "index", method: "GET", target: "/", wantCode: 200, wantIn: "DELETE /sessions?user=U"},
		{name: "healthz", method: "GET", target: "/healthz", wantCode: 200, wantBody: "ok\n",
			wantHeader: map[string]string{"Content-Type": "text/plain; charset=utf-8"}},
		{name: "healthz while draining", method: "GET", target: "/healthz", ready: errors.New("draining"), wantCode: 200, wantBody: "ok\n"},
		{name: "healthz HEAD", method: "HEAD", target: "/healthz", wantCode: 200},
		{name: "healthz POST", method: "POST", target: "/healthz", wantCode: 405,
			wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "ready", method: "GET", target: "/readyz", wantCode: 200, wantBody: "ready\n"},
		{name: "not ready", method: "GET", target: "/readyz", ready: errors.New("listener pop3s not bound"), wantCode: 503, wantBody: "listener pop3s not bound\n"},
		{name: "unknown path", method: "GET", target: "/debug/pprof/", wantCode: 404},
		{name: "unknown path under index", method: "GET", target: "/healthz/x", wantCode: 404},
		{name: "metrics", method: "GET", target: "/metrics", wantCode: 200, wantIn: "popgate_logins_total{result=\"ok\"} 0"},
		{name: "metrics DELETE", method: "DELETE", target: "/metrics", wantCode: 405, wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "sessions empty", method: "GET", target: "/sessions", wantCode: 200, wantBody: "[]\n",
			wantHeader: map[string]string{"Content-Type": "application/json"}},
		{name: "sessions", method: "GET", target: "/sessions", sessions: testSessions(), wantCode: 200,
			wantIn:     `{"id":"c2","user":"Alice@Example.com","client":"[2001:db8::1]:40001","listener":"pop3","backend":"mx1","state":"relaying","started":"2026-03-01T12:00:01Z","bytes_in":0,"bytes_out":0,"tls_version":""}`,
			wantHeader: map[string]string{"Content-Type": "application/json"}},
		{name: "sessions of a user", method: "GET", target: "/sessions?user=ALICE%40example.COM", sessions: testSessions(), wantCode: 200,
			wantIn: `"id":"c2"`, wantNotIn: `"id":"c3"`},
		{name: "sessions of nobody", method: "GET", target: "/sessions?user=bob", sessions: testSessions(), wantCode: 200, wantBody: "[]\n"},
		{name: "sessions PUT", method: "PUT", target: "/sessions", wantCode: 405,
			wantHeader: map[string]string{"Allow": "DELETE, GET, HEAD"}},
		{name: "end by user", method: "DELETE", target: "/sessions?user=ALICE%40example.com", sessions: testSessions(),
			wantCode: 200, wantBody: "{\"ended\":2}\n", wantLeft: []string{"c3"},
			wantHeader: map[string]string{"Content-Type": "application/json"},
			wantLog:    `"msg":"admin: sessions ended","user":"ALICE@example.com","ended":2`},
		{name: "end by user none", method: "DELETE", target: "/sessions?user=bob", sessions: testSessions(),
			wantCode: 200, wantBody: "{\"ended\":0}\n", wantLeft: []string{"c1", "c2", "c3"},
			wantLog: `"user":"bob","ended":0`},
		{name: "end by id", method: "DELETE", target: "/sessions?id=c3", sessions: testSessions(),
			wantCode: 200, wantBody: "{\"ended\":1}\n", wantLeft: []string{"c1", "c2"},
			wantLog: `"conn":"c3","ended":1`},
		{name: "end by unknown id", method: "DELETE", target: "/sessions?id=c9", sessions: testSessions(),
			wantCode: 200, wantBody: "{\"ended\":0}\n", wantLeft: []string{"c1", "c2", "c3"}},
		{name: "end nothing", method: "DELETE", target: "/sessions", sessions: testSessions(),
			wantCode: 400, wantBody: "{\"error\":\"give user or id\"}\n", wantLeft: []string{"c1", "c2", "c3"},
			wantHeader: map[string]string{"Content-Type": "application/json"}},
		{name: "end both", method: "DELETE", target: "/sessions?user=alice%40example.com&id=c3", sessions: testSessions(),
			wantCode: 400, wantBody: "{\"error\":\"give user or id, not both\"}\n", wantLeft: []string{"c1", "c2", "c3"}},
		{name: "end empty user", method: "DELETE", target: "/sessions?user=", sessions: testSessions(),
			wantCode: 400, wantIn: `"error":"parameter user is empty"`, wantLeft: []string{"c1", "c2", "c3"}},
		{name: "end user twice", method: "DELETE", target: "/sessions?user=a&user=b", sessions: testSessions(),
			wantCode: 400, wantIn: `"error":"parameter user given 2 times"`, wantLeft: []string{"c1", "c2", "c3"}},
		{name: "end unknown parameter", method: "DELETE", target: "/sessions?name=alice", sessions: testSessions(),
			wantCode: 400, wantIn: `"error":"unknown parameter \"name\": want user or id"`, wantLeft: []string{"c1", "c2", "c3"}},
		{name: "end bad query", method: "DELETE", target: "/sessions?user=%zz", sessions: testSessions(),
			wantCode: 400, wantIn: `"error":"bad query: `, wantLeft: []string{"c1", "c2", "c3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&logBuf, nil))
			sessions := &fakeSessions{list: tc.sessions}
			ready := func() error { return tc.ready }
			h := Handler(NewMetrics("dev", ""), sessions, ready, nil, log)

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.target, nil))
			body := rec.Body.String()
			if rec.Code != tc.wantCode {
				t.Errorf("%s %s = %d %q, want %d", tc.method, tc.target, rec.Code, body, tc.wantCode)
			}
			if tc.wantBody != "" && body != tc.wantBody {
				t.Errorf("%s %s body = %q, want %q", tc.method, tc.target, body, tc.wantBody)
			}
			if !strings.Contains(body, tc.wantIn) {
				t.Errorf("%s %s body = %q, want it to contain %q", tc.method, tc.target, body, tc.wantIn)
			}
			if tc.wantNotIn != "" && strings.Contains(body, tc.wantNotIn) {
				t.Errorf("%s %s body = %q, want it without %q", tc.method, tc.target, body, tc.wantNotIn)
			}
			for k, want := range tc.wantHeader {
				if got := rec.Header().Get(k); got != want {
					t.Errorf("%s %s header %s = %q, want %q", tc.method, tc.target, k, got, want)
				}
			}
			if tc.wantLeft != nil {
				var left []string
				for _, s := range sessions.SessionList() {
					left = append(left, s.ID)
				}
				if !reflect.DeepEqual(left, tc.wantLeft) {
					t.Errorf("sessions left = %q, want %q", left, tc.wantLeft)
				}
			}
			if !strings.Contains(logBuf.String(), tc.wantLog) {
				t.Errorf("log = %q, want it to contain %q", logBuf.String(), tc.wantLog)
			}
			if tc.method == "DELETE" && tc.wantCode == 200 && !strings.Contains(logBuf.String(), `"level":"INFO"`) {
				t.Errorf("DELETE not logged at INFO: %q", logBuf.String())
			}
		})
	}
}

// TestHandlerSessionsJSON decodes GET /sessions back into SessionInfo.
func TestHandlerSessionsJSON(t *testing.T) {
	want := testSessions()
	h := Handler(nil, &fakeSessions{list: want}, nil, nil, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/sessions", nil))
	var got []proxy.SessionInfo
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("GET /sessions: %v in %q", err, rec.Body)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GET /sessions = %+v, want %+v", got, want)
	}
}

// TestHandlerNil checks what nil arguments leave out.
func TestHandlerNil(t *testing.T) {
	h := Handler(nil, nil, nil, nil, nil)
	for target, want := range map[string]int{
		"/metrics":  404,
		"/sessions": 404,
		"/healthz":  200,
		"/readyz":   200,
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		if rec.Code != want {
			t.Errorf("GET %s = %d, want %d", target, rec.Code, want)
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// waitErr waits for Serve's result; the bound only keeps a broken Serve
// from hanging the test run.
func waitErr(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func TestServe(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, ln, Handler(NewMetrics("dev", ""), &fakeSessions{}, nil, nil, nil), nil) }()

	url := "http://" + ln.Addr().String()
	for _, path := range []string{"/healthz", "/metrics", "/sessions"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
	http.DefaultClient.CloseIdleConnections()

	cancel()
	if err := waitErr(t, errc); err != nil {
		t.Errorf("Serve after cancel = %v, want nil", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("admin address still accepts after Serve returned")
	}
}

// TestServeGraceful checks that a request running when ctx is cancelled
// is answered.
func TestServeGraceful(t *testing.T) {
	ln := &notifyListener{Listener: listen(t), closed: make(chan struct{})}
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, ln, h, nil) }()

	type result struct {
		body string
		err  error
	}
	resc := make(chan result, 1)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	go func() {
		resp, err := client.Get("http://" + ln.Addr().String() + "/slow")
		if err != nil {
			resc <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		resc <- result{string(b), err}
	}()
	<-entered
	cancel()
	<-ln.closed // Shutdown has begun
	close(release)
	if r := <-resc; r.err != nil || r.body != "done" {
		t.Errorf("request during shutdown = %q, %v, want \"done\"", r.body, r.err)
	}
	if err := waitErr(t, errc); err != nil {
		t.Errorf("Serve after cancel = %v, want nil", err)
	}
}

// notifyListener closes closed when it is closed.
type notifyListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *notifyListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func TestServeListenerError(t *testing.T) {
	ln := listen(t)
	ln.Close()
	err := Serve(context.Background(), ln, http.NotFoundHandler(), nil)
	if err == nil {
		t.Fatal("Serve on a closed listener = nil, want an error")
	}
}
