package auth

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testSecret = "s3cret pass%word\x7f\u00e9"

func testRequest() *Request {
	return &Request{
		Credentials: Credentials{User: "alice smith@example.com", Password: testSecret, Method: "PLAIN"},
		Client:      netip.MustParseAddrPort("[::ffff:192.0.2.42]:51234"),
		Local:       netip.MustParseAddrPort("192.0.2.1:995"),
		Listener:    "pop3s",
		TLS:         true,
		Attempt:     2,
		TLSVersion:  "TLSv1.3",
		TLSCipher:   tls.CipherSuiteName(tls.TLS_AES_128_GCM_SHA256),
	}
}

// authServer answers with answer after checking the request headers; the
// headers of the last request are kept for the test to inspect.
func authServer(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Pointer[http.Header]) {
	t.Helper()
	var last atomic.Pointer[http.Header]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		last.Store(&h)
		answer(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &last
}

func ok(server, port string, extra ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Auth-Status", "OK")
		if server != "" {
			w.Header().Set("Auth-Server", server)
		}
		if port != "" {
			w.Header().Set("Auth-Port", port)
		}
		for i := 0; i+1 < len(extra); i += 2 {
			w.Header().Add(extra[i], extra[i+1])
		}
	}
}

func noSecret(t *testing.T, err error) {
	t.Helper()
	if err != nil && (strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "s3cret")) {
		t.Errorf("error holds the password")
	}
}

func TestHTTPRequestHeaders(t *testing.T) {
	srv, last := authServer(t, ok("192.0.2.10", "110"))
	h := &HTTP{URL: srv.URL + "/auth?x=1", Header: http.Header{"X-Auth-Key": {"shared"}}}
	defer h.Close()
	req := testRequest()
	if _, err := h.Route(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	got := *last.Load()
	u, _ := url.Parse(srv.URL)
	want := map[string]string{
		"Host":               u.Host,
		"Auth-Method":        "plain",
		"Auth-User":          "alice%20smith@example.com",
		"Auth-Protocol":      "pop3",
		"Auth-Login-Attempt": "2",
		"Client-Ip":          "192.0.2.42",
		"Client-Host":        "192.0.2.42",
		"Auth-Ssl":           "on",
		"Auth-Ssl-Protocol":  "TLSv1.3",
		"Auth-Ssl-Cipher":    "TLS_AES_128_GCM_SHA256",
		"X-Auth-Key":         "shared",
	}
	for k, v := range want {
		if g := got.Get(k); g != v {
			t.Errorf("header %s = %q, want %q", k, g, v)
		}
	}
	// The password, escaped as nginx escapes it, decodes to the original.
	// (Compared, never printed.)
	if p := got.Get("Auth-Pass"); p != "s3cret%20pass%25word%7F\u00e9" {
		t.Errorf("Auth-Pass escaped wrongly")
	} else if dec, err := url.PathUnescape(p); err != nil || dec != testSecret {
		t.Errorf("Auth-Pass does not url-decode to the password")
	}

	// Plaintext, first attempt, IPv6 client.
	req = testRequest()
	req.TLS, req.Attempt, req.Client = false, 0, netip.MustParseAddrPort("[2001:db8::1%eth0]:1")
	req.User, req.Password = "bob", "pw"
	if _, err := h.Route(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	got = *last.Load()
	for k, v := range map[string]string{"Auth-User": "bob", "Auth-Pass": "pw", "Auth-Login-Attempt": "1", "Client-Ip": "2001:db8::1", "Client-Host": "2001:db8::1"} {
		if g := got.Get(k); g != v {
			t.Errorf("header %s = %q, want %q", k, g, v)
		}
	}
	for _, k := range []string{"Auth-Ssl", "Auth-Ssl-Protocol", "Auth-Ssl-Cipher"} {
		if _, ok := got[k]; ok {
			t.Errorf("header %s sent on a plaintext connection", k)
		}
	}
	if _, ok := got["Auth-Authzid"]; ok {
		t.Errorf("Auth-Authzid sent for a login without an authorization identity")
	}

	// A SASL authorization identity is told to the service, escaped.
	req = testRequest()
	req.AuthzID = "carol smith@example.com"
	if _, err := h.Route(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if g := (*last.Load()).Get("Auth-Authzid"); g != "carol%20smith@example.com" {
		t.Errorf("header Auth-Authzid = %q, want %q", g, "carol%20smith@example.com")
	}
}

// TestHTTPAuthzidAnswer: only an Auth-Authzid answer names an
// authorization identity in the Decision; the client's is never copied.
func TestHTTPAuthzidAnswer(t *testing.T) {
	cases := []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request)
		want   string
		errMsg string
	}{
		{"no answer header", ok("192.0.2.10", "110", "Auth-User", "alice*master", "Auth-Pass", "m"), "", ""},
		{"named", ok("192.0.2.10", "110", "Auth-User", "master", "Auth-Pass", "m", "Auth-Authzid", "carol@example.com"), "carol@example.com", ""},
		{"two", ok("192.0.2.10", "110", "Auth-Authzid", "a", "Auth-Authzid", "b"), "", "more than one Auth-Authzid"},
		{"nul", ok("192.0.2.10", "110", "Auth-Authzid", "a\x00b"), "", "auth: auth_http"}, // the HTTP client refuses it already
		{"too long", ok("192.0.2.10", "110", "Auth-Authzid", strings.Repeat("a", MaxCredentialLen+1)), "", "unusable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := authServer(t, tc.answer)
			h := &HTTP{URL: srv.URL}
			defer h.Close()
			req := testRequest()
			req.AuthzID = "carol@example.com"
			d, err := h.Route(context.Background(), req)
			if tc.errMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errMsg) {
					t.Fatalf("Route = %v, want an error with %q", err, tc.errMsg)
				}
				return
			}
			if err != nil || d.AuthzID != tc.want {
				t.Fatalf("Route: AuthzID %q, %v; want %q", d.AuthzID, err, tc.want)
			}
		})
	}
}

func TestHTTPAnswers(t *testing.T) {
	known := func(n string) bool { return n == "legacy" || n == "new" }
	type want struct {
		backend, address, user, pass string
		denied                       bool
		wait                         time.Duration
		reason                       string // substring of the error
		tempErr                      bool
	}
	cases := []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request)
		want   want
	}{
		{"server and port", ok("192.0.2.10", "110"),
			want{backend: "legacy", address: "192.0.2.10:110", user: "alice smith@example.com", pass: testSecret}},
		{"ipv6 server", ok("2001:db8::10", "995"),
			want{backend: "legacy", address: "[2001:db8::10]:995", user: "alice smith@example.com", pass: testSecret}},
		{"bracketed ipv6 server", ok("[2001:db8::10]", "995"),
			want{backend: "legacy", address: "[2001:db8::10]:995", user: "alice smith@example.com", pass: testSecret}},
		{"auth-backend", ok("", "", "Auth-Backend", "new"),
			want{backend: "new", user: "alice smith@example.com", pass: testSecret}},
		{"auth-backend wins over server", ok("192.0.2.10", "110", "Auth-Backend", "new"),
			want{backend: "new", user: "alice smith@example.com", pass: testSecret}},
		{"rewrites", ok("192.0.2.10", "110", "Auth-User", "alice*master", "Auth-Pass", "master%20pw"),
			want{backend: "legacy", address: "192.0.2.10:110", user: "alice*master", pass: "master%20pw"}},
		{"204", func(w http.ResponseWriter, r *http.Request) {
			ok("192.0.2.10", "110")(w, r)
			w.WriteHeader(http.StatusNoContent)
		}, want{backend: "legacy", address: "192.0.2.10:110", user: "alice smith@example.com", pass: testSecret}},
		{"refused with wait", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Auth-Status", "Invalid login or password")
			w.Header().Set("Auth-Wait", "3")
			w.Header().Set("Auth-Error-Code", "535 5.7.8")
		}, want{denied: true, wait: 3 * time.Second, reason: "Invalid login or password (Auth-Error-Code 535 5.7.8)"}},
		{"refused without wait", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Auth-Status", "no")
			w.Header().Set("Auth-Wait", "soon") // ignored, as nginx does
		}, want{denied: true, reason: "auth_http: no"}},
		{"refusal echoing the password", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Auth-Status", "bad password "+r.Header.Get("Auth-Pass"))
		}, want{denied: true, reason: "bad password"}},
		{"unknown auth-backend", ok("", "", "Auth-Backend", "nope"), want{tempErr: true, reason: "unknown backend"}},
		{"500", func(w http.ResponseWriter, r *http.Request) {
			ok("192.0.2.10", "110")(w, r)
			w.WriteHeader(500)
		}, want{tempErr: true, reason: "HTTP 500"}},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
		}, want{tempErr: true, reason: "HTTP 302"}},
		{"no status", func(w http.ResponseWriter, r *http.Request) {}, want{tempErr: true, reason: "without one Auth-Status"}},
		{"two statuses", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Auth-Status", "OK")
			w.Header().Add("Auth-Status", "OK")
		}, want{tempErr: true, reason: "without one Auth-Status"}},
		{"ok without server", ok("", "110"), want{tempErr: true, reason: "without Auth-Server"}},
		{"ok without port", ok("192.0.2.10", ""), want{tempErr: true, reason: "without Auth-Server"}},
		{"host name server", ok("mail.example.com", "110"), want{tempErr: true, reason: "not an IP address"}},
		{"bad port", ok("192.0.2.10", "70000"), want{tempErr: true, reason: "bad Auth-Port"}},
		{"zero port", ok("192.0.2.10", "0"), want{tempErr: true, reason: "bad Auth-Port"}},
		{"pass with nul", ok("192.0.2.10", "110", "Auth-Pass", "a\x00b"), want{tempErr: true}},
		{"body too big", func(w http.ResponseWriter, r *http.Request) {
			ok("192.0.2.10", "110")(w, r)
			w.Write([]byte(strings.Repeat("x", maxAuthBody+1)))
		}, want{tempErr: true, reason: "body longer"}},
		{"headers too big", func(w http.ResponseWriter, r *http.Request) {
			ok("192.0.2.10", "110")(w, r)
			w.Header().Set("X-Junk", strings.Repeat("x", maxAuthHeaderBytes+1))
		}, want{tempErr: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := authServer(t, tc.answer)
			h := &HTTP{URL: srv.URL, Backend: "legacy", KnownBackend: known}
			defer h.Close()
			d, err := h.Route(context.Background(), testRequest())
			noSecret(t, err)
			var de *DeniedError
			isDenied := errors.As(err, &de)
			switch {
			case tc.want.denied:
				if !isDenied || de.Wait != tc.want.wait || !strings.Contains(de.Reason, tc.want.reason) {
					t.Errorf("Route = %v (wait %v), want refusal %q wait %v", err, waitOf(de), tc.want.reason, tc.want.wait)
				}
			case tc.want.tempErr:
				if err == nil || isDenied || errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), tc.want.reason) || !strings.HasPrefix(err.Error(), "auth: ") {
					t.Errorf("Route = %v, want a temporary error containing %q", err, tc.want.reason)
				}
			default:
				if err != nil || d.Backend != tc.want.backend || d.Address != tc.want.address || d.User != tc.want.user || string(d.Password) != tc.want.pass {
					t.Errorf("Route = {%q %q %q}, %v; want {%q %q %q}", d.Backend, d.Address, d.User, err, tc.want.backend, tc.want.address, tc.want.user)
				}
			}
		})
	}
}

func waitOf(de *DeniedError) time.Duration {
	if de == nil {
		return 0
	}
	return de.Wait
}

func TestHTTPWait(t *testing.T) {
	var n atomic.Int32
	srv, _ := authServer(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.Header().Set("Auth-Status", "WAIT")
			w.Header().Set("Auth-Wait", "0")
			return
		}
		ok("192.0.2.10", "110")(w, r)
	})
	h := &HTTP{URL: srv.URL}
	defer h.Close()
	d, err := h.Route(context.Background(), testRequest())
	if err != nil || d.Address != "192.0.2.10:110" || n.Load() != 3 {
		t.Fatalf("Route = %+v, %v after %d requests", d.Address, err, n.Load())
	}

	// A service that keeps saying WAIT is asked a bounded number of times.
	n.Store(-100)
	_, err = h.Route(context.Background(), testRequest())
	if err == nil || isDeniedErr(err) || n.Load() != -100+maxAuthWaitRetries+1 {
		t.Fatalf("Route = %v after %d requests", err, n.Load()+100)
	}
}

func isDeniedErr(err error) bool {
	var de *DeniedError
	return errors.As(err, &de)
}

func TestHTTPNeverAnswers(t *testing.T) {
	release := make(chan struct{})
	srv, _ := authServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release) // before srv.Close (cleanups run after defers)

	// Our own Timeout.
	h := &HTTP{URL: srv.URL, Timeout: 50 * time.Millisecond}
	defer h.Close()
	_, err := h.Route(context.Background(), testRequest())
	if err == nil || isDeniedErr(err) || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
		t.Errorf("Route = %v, want a timeout", err)
	}

	// The caller's deadline (login_timeout) is shorter than Timeout.
	h2 := &HTTP{URL: srv.URL, Timeout: time.Minute}
	defer h2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = h2.Route(ctx, testRequest())
	if err == nil || isDeniedErr(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Route = %v, want context.DeadlineExceeded", err)
	}
	noSecret(t, err)
}

func TestHTTPGarbage(t *testing.T) {
	for _, tc := range []struct{ name, reply string }{
		{"not http", "+OK POP3 server ready\r\n"},
		{"binary", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"},
		{"header without colon", "HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n"},
		{"closed mid-headers", "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Ser"},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				br := bufio.NewReader(c)
				for { // read the request headers
					l, err := br.ReadString('\n')
					if err != nil || l == "\r\n" {
						break
					}
				}
				c.Write([]byte(tc.reply))
			}()
			h := &HTTP{URL: "http://" + ln.Addr().String() + "/auth", Timeout: time.Second}
			defer h.Close()
			_, err = h.Route(context.Background(), testRequest())
			if err == nil || isDeniedErr(err) || !strings.HasPrefix(err.Error(), "auth: ") {
				t.Errorf("Route = %v, want a temporary error", err)
			}
			noSecret(t, err)
		})
	}
}

func TestHTTPRefusesBadCredentials(t *testing.T) {
	var n atomic.Int32
	srv, _ := authServer(t, func(w http.ResponseWriter, r *http.Request) { n.Add(1) })
	h := &HTTP{URL: srv.URL}
	defer h.Close()
	req := testRequest()
	req.User = "alice\r\nAuth-Status: OK"
	if _, err := h.Route(context.Background(), req); !errors.Is(err, ErrBadCredentialBytes) || n.Load() != 0 {
		t.Errorf("Route = %v after %d requests, want ErrBadCredentialBytes and no request", err, n.Load())
	}
}

func TestEscapeMailAuth(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "",
		"alice@example.com": "alice@example.com",
		"a b%c":             "a%20b%25c",
		"\x00\x1f\x7f":      "%00%1F%7F",
		"ü+/?&=#":           "ü+/?&=#",
	} {
		if got := escapeMailAuth(in); got != want {
			t.Errorf("escapeMailAuth(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHTTPClose: Close drops the idle connection, and lookups after it
// (or under way when it came) still work but leave no connection open.
func TestHTTPClose(t *testing.T) {
	var open atomic.Int32 // connections the service holds
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var block atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if block.Load() {
			entered <- struct{}{}
			<-release
		}
		ok("", "", "Auth-Backend", "b1")(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h := &HTTP{URL: srv.URL}
	route := func(what string) { // also from another goroutine: no Fatal
		t.Helper()
		if d, err := h.Route(context.Background(), testRequest()); err != nil || d.Backend != "b1" {
			t.Errorf("%s: Route = %+v, %v", what, d, err)
		}
	}
	closedAll := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); open.Load() != 0; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d connections still open", what, open.Load())
			}
		}
	}

	route("before Close")
	if open.Load() != 1 {
		t.Fatalf("%d connections open after a lookup, want 1 (kept alive)", open.Load())
	}
	// A lookup under way when Close comes.
	block.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		route("under way")
	}()
	<-entered
	h.Close()
	close(release)
	<-done
	closedAll("lookup under way at Close")
	block.Store(false)
	route("after Close")
	closedAll("lookup after Close")
}
