package admin

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/pop3test"
)

const (
	consoleToken = "console-test-token-0123456789"
	xssUser      = "<img src=x onerror=alert(1)>"
)

// consoleEnv is a real proxy over loopback in front of an in-memory POP3
// server, with the admin handler (and so the console) in front of it.
type consoleEnv struct {
	t       *testing.T
	srv     *proxy.Server
	backend *pop3test.Server
	pop3    string // the proxy's plaintext listener
	web     *httptest.Server
}

func newConsoleEnv(t *testing.T) *consoleEnv {
	t.Helper()
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		"alice": {Password: "alice-pw", Messages: [][]byte{[]byte("Subject: x\r\n\r\nhello\r\n")}},
	}}
	baddr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	m := NewMetrics("v-test", "abc123")
	router := auth.NewStatic(map[string]string{"alice": "b1"}, nil, "")
	srv, err := proxy.New(proxy.Config{
		Router:             router,
		Backends:           map[string]*proxy.Backend{"b1": {Name: "b1", Address: baddr.String()}},
		Observer:           m,
		AssumedFailureTime: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(context.Background(), ln, proxy.Listener{Name: "plain", TLS: proxy.TLSNone}) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	chain := &auth.Chain{Sources: []auth.Source{router}}
	m.SetSources(Sources{
		Sessions: srv,
		Listeners: func() []ListenerInfo {
			return []ListenerInfo{{Name: "plain", Address: ln.Addr().String(), TLS: "none"}}
		},
		Backends: func() []BackendInfo {
			return []BackendInfo{{Name: "b1", Addresses: []string{baddr.String()}, TLS: "none"}}
		},
		Route: func(ctx context.Context, user string) (RouteAnswer, error) {
			b, why, err := chain.Explain(ctx, user)
			if b != "" {
				return RouteAnswer{Backend: b, Address: baddr.String(), TLS: "none", Why: why}, err
			}
			return RouteAnswer{Why: why}, err
		},
	})
	h := Handler(m, srv, nil, func() Access { return Access{Token: consoleToken, CheckHost: true} }, nil)
	web := httptest.NewServer(h)
	t.Cleanup(web.Close)
	return &consoleEnv{t: t, srv: srv, backend: backend, pop3: ln.Addr().String(), web: web}
}

// forgetFailures forgets the wrong tokens counted so far.
func (e *consoleEnv) forgetFailures() {
	f := e.web.Config.Handler.(*guard).fails
	f.mu.Lock()
	f.by = nil
	f.mu.Unlock()
}

// popConn is a POP3 client of the proxy.
type popConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (e *consoleEnv) dial() *popConn {
	e.t.Helper()
	c, err := net.Dial("tcp", e.pop3)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	p := &popConn{t: e.t, c: c, r: bufio.NewReader(c)}
	p.expect("+OK")
	return p
}

func (p *popConn) expect(prefix string) {
	p.t.Helper()
	p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := p.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		p.t.Fatalf("POP3 read %q, %v; want %s", line, err, prefix)
	}
}

func (p *popConn) cmd(line, prefix string) {
	p.t.Helper()
	if _, err := io.WriteString(p.c, line+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
	p.expect(prefix)
}

// closed reports whether the proxy closed the connection (read gives EOF
// or a reset within the timeout).
func (p *popConn) closed(within time.Duration) bool {
	p.c.SetReadDeadline(time.Now().Add(within))
	_, err := p.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// liveSession logs alice in through the proxy.
func (e *consoleEnv) liveSession() *popConn {
	p := e.dial()
	p.cmd("USER alice", "+OK")
	p.cmd("PASS alice-pw", "+OK")
	waitUntil(e.t, "the session is relaying", func() bool {
		for _, s := range e.srv.SessionList() {
			if s.User == "alice" && s.State == "relaying" {
				return true
			}
		}
		return false
	})
	return p
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects.
func (e *consoleEnv) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *consoleEnv) do(c *http.Client, method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, e.web.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// login logs c in with the token and returns the session's CSRF token.
func (e *consoleEnv) login(c *http.Client) string {
	e.t.Helper()
	resp, _ := e.do(c, "POST", "/console/login", url.Values{"token": {consoleToken}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("login: status %d, want 303", resp.StatusCode)
	}
	resp, body := e.do(c, "GET", "/console/", nil, nil)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("overview after login: status %d", resp.StatusCode)
	}
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		e.t.Fatal("no CSRF token on the overview page")
	}
	return m[1]
}

func checkHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, v := range consoleHeaders {
		if h.Get(k) != v {
			t.Errorf("%s: header %s = %q, want %q", what, k, h.Get(k), v)
		}
	}
	if csp := h.Get("Content-Security-Policy"); strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("%s: CSP %q", what, csp)
	}
}

// protected are the console's requests that need a login.
var protected = []struct{ method, path string }{
	{"GET", "/console/"},
	{"GET", "/console/sessions"},
	{"GET", "/console/sessions?user=alice"},
	{"GET", "/console/end?user=alice"},
	{"POST", "/console/end"},
	{"GET", "/console/certificates"},
	{"GET", "/console/backends"},
	{"GET", "/console/routing?user=alice"},
	{"GET", "/console/legacy"},
	{"POST", "/console/logout"},
	{"GET", "/console/no-such-page"},
	{"GET", "/console"},
}

func TestConsoleUnauthorized(t *testing.T) {
	e := newConsoleEnv(t)
	pop := e.liveSession()
	// A login elsewhere gives a valid CSRF token and cookie, which must
	// not help a client without the cookie.
	csrf := e.login(e.browser())
	end := url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}
	for _, auth := range []struct {
		name string
		hdr  map[string]string
	}{
		{"nothing", nil},
		{"a made-up cookie", map[string]string{"Cookie": cookieName + "=" + randomToken()}},
		{"a wrong bearer token", map[string]string{"Authorization": "Bearer not-the-token-0123456789"}},
	} {
		for _, p := range protected {
			var form url.Values
			if p.method == "POST" {
				form = end
			}
			// Each wrong token here is the first: the budget of wrong
			// tokens (TestAttack6TokenGuessingUnlimited) is not tested.
			e.forgetFailures()
			resp, _ := e.do(http.DefaultClient, p.method, p.path, form, auth.hdr)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with %s: status %d, WWW-Authenticate %q; want 401 and a challenge", p.method, p.path, auth.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if strings.HasPrefix(p.path, "/console/") {
				checkHeaders(t, p.method+" "+p.path, resp.Header)
			}
		}
	}
	if n := len(e.srv.SessionList()); n != 1 {
		t.Fatalf("%d sessions after the refused requests, want 1", n)
	}
	pop.cmd("STAT", "+OK")
	// The open paths stay open, the login form among them.
	if resp, _ := e.do(http.DefaultClient, "GET", "/console/static/", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /console/static/: status %d, want 404 (no listing)", resp.StatusCode)
	}
	for _, p := range []string{"/healthz", "/console/login", "/console/static/style.css"} {
		if resp, _ := e.do(http.DefaultClient, "GET", p, nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", p, resp.StatusCode)
		}
	}
	// The bearer token still opens /sessions.
	e.forgetFailures()
	resp, body := e.do(http.DefaultClient, "GET", "/sessions", nil, map[string]string{"Authorization": "Bearer " + consoleToken})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"alice"`) {
		t.Errorf("GET /sessions with the bearer token: %d %s", resp.StatusCode, body)
	}
}

func TestConsoleLogin(t *testing.T) {
	e := newConsoleEnv(t)
	c := e.browser()
	resp, body := e.do(c, "POST", "/console/login", url.Values{"token": {"wrong-token-0123456789abcdef"}}, nil)
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 || !strings.Contains(body, "wrong token") {
		t.Errorf("login with a wrong token: status %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	checkHeaders(t, "refused login", resp.Header)
	if strings.Contains(body, "wrong-token") {
		t.Error("the refused login page shows the token given")
	}
	resp, _ = e.do(c, "POST", "/console/login", url.Values{"token": {consoleToken}}, map[string]string{"Origin": "http://evil.example"})
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("cross-site login: status %d, cookies %v; want 403 and none", resp.StatusCode, resp.Cookies())
	}
	resp, _ = e.do(c, "POST", "/console/login", url.Values{"token": {consoleToken}}, nil)
	cks := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cks) != 1 {
		t.Fatalf("login: status %d, cookies %v", resp.StatusCode, cks)
	}
	ck := cks[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/console/" || len(ck.Value) < 40 {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, Path /console/, a long id", ck)
	}
	if resp, _ := e.do(c, "GET", "/console/sessions", nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("sessions page after login: status %d", resp.StatusCode)
	}
	// Logging out ends the cookie's session.
	csrf := e.login(c)
	old := c.Jar.Cookies(mustURL(t, e.web.URL+"/console/"))
	if resp, _ := e.do(c, "POST", "/console/logout", url.Values{"csrf": {csrf}}, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: status %d", resp.StatusCode)
	}
	resp, _ = e.do(http.DefaultClient, "GET", "/console/", nil, map[string]string{"Cookie": cookieName + "=" + old[0].Value})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the logged-out cookie: status %d, want 401", resp.StatusCode)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestConsoleSecureCookieOverTLS(t *testing.T) {
	h := Handler(NewMetrics("v", "c"), &fakeSessions{}, nil, func() Access { return Access{Token: consoleToken} }, nil)
	web := httptest.NewTLSServer(h)
	defer web.Close()
	c := web.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.PostForm(web.URL+"/console/login", url.Values{"token": {consoleToken}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cks := resp.Cookies(); len(cks) != 1 || !cks[0].Secure {
		t.Errorf("cookies over TLS %v, want one Secure", cks)
	}
}

func TestConsoleEndSessionsNeedsCSRFAndConfirmation(t *testing.T) {
	e := newConsoleEnv(t)
	pop := e.liveSession()
	c := e.browser()
	csrf := e.login(c)
	refused := []struct {
		name string
		form url.Values
		hdr  map[string]string
		code int
	}{
		{"no CSRF token", url.Values{"user": {"alice"}, "confirm": {"yes"}}, nil, http.StatusForbidden},
		{"a wrong CSRF token", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {randomToken()}}, nil, http.StatusForbidden},
		{"a cross-site Origin", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}, map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"a cross-site Referer", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}, map[string]string{"Referer": "http://evil.example/x"}, http.StatusForbidden},
		{"Sec-Fetch-Site cross-site", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "null"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-site", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"Origin null without the token", url.Values{"user": {"alice"}, "confirm": {"yes"}}, map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"no confirmation", url.Values{"user": {"alice"}, "csrf": {csrf}}, nil, http.StatusOK},
	}
	for _, r := range refused {
		resp, body := e.do(c, "POST", "/console/end", r.form, r.hdr)
		if resp.StatusCode != r.code {
			t.Errorf("end with %s: status %d, want %d", r.name, resp.StatusCode, r.code)
		}
		if r.code == http.StatusOK && !strings.Contains(body, `name="confirm" value="yes"`) {
			t.Errorf("end with %s: no confirmation form", r.name)
		}
	}
	// The confirmation page (GET) ends nothing either.
	resp, body := e.do(c, "GET", "/console/end?user=alice", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "alice") {
		t.Errorf("confirmation page: %d", resp.StatusCode)
	}
	if n := len(e.srv.SessionList()); n != 1 {
		t.Fatalf("%d sessions after the refused requests, want 1", n)
	}
	pop.cmd("STAT", "+OK")

	origin := map[string]string{"Origin": "null", "Sec-Fetch-Site": "same-origin"} // as Chromium sends it
	resp, body = e.do(c, "POST", "/console/end", url.Values{"user": {"ALICE"}, "confirm": {"yes"}, "csrf": {csrf}}, origin)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Ended 1 session") {
		t.Fatalf("end confirmed: status %d, body %s", resp.StatusCode, body)
	}
	if !pop.closed(5 * time.Second) {
		t.Error("the client's connection is still open after the sessions were ended")
	}
	waitUntil(t, "the backend connection ends", func() bool { return len(e.srv.SessionList()) == 0 })
	if q := e.backend.Quits(); q != 0 {
		t.Errorf("the backend saw %d QUIT, want none", q)
	}

	// One session by its id.
	pop = e.liveSession()
	id := e.srv.SessionList()[0].ID
	_, body = e.do(c, "GET", "/console/sessions", nil, nil)
	if !strings.Contains(body, "/console/end?id="+id) {
		t.Errorf("sessions page has no end link for %s", id)
	}
	resp, _ = e.do(c, "POST", "/console/end", url.Values{"id": {id}, "confirm": {"yes"}, "csrf": {csrf}}, nil)
	if resp.StatusCode != http.StatusOK || !pop.closed(5*time.Second) {
		t.Errorf("end by id: status %d, or the client is still connected", resp.StatusCode)
	}
}

func TestConsoleEscapesUserNames(t *testing.T) {
	e := newConsoleEnv(t)
	pop := e.dial()
	pop.cmd("USER "+xssUser, "+OK")
	pop.cmd("PASS nothing-right", "-ERR")
	waitUntil(t, "the session shows the user", func() bool {
		l := e.srv.SessionList()
		return len(l) == 1 && l[0].User == xssUser
	})
	c := e.browser()
	e.login(c)
	for _, p := range []string{"/console/sessions", "/console/sessions?user=" + url.QueryEscape(xssUser), "/console/end?user=" + url.QueryEscape(xssUser), "/console/routing?user=" + url.QueryEscape(xssUser)} {
		resp, body := e.do(c, "GET", p, nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d", p, resp.StatusCode)
		}
		if strings.Contains(body, "<img") || !strings.Contains(body, "&lt;img src=x onerror=alert(1)&gt;") {
			t.Errorf("GET %s: the user name is not escaped:\n%s", p, body)
		}
	}
}

func TestConsoleRouting(t *testing.T) {
	e := newConsoleEnv(t)
	c := e.browser()
	e.login(c)
	_, body := e.do(c, "GET", "/console/routing?user=alice", nil, nil)
	if !strings.Contains(body, "alice → b1") || !strings.Contains(body, "why: backend &#34;b1&#34;") {
		t.Errorf("routing for alice:\n%s", body)
	}
	_, body = e.do(c, "GET", "/console/routing?user=bob", nil, nil)
	if !strings.Contains(body, "bob: no route") {
		t.Errorf("routing for bob:\n%s", body)
	}
}

func TestConsolePages(t *testing.T) {
	e := newConsoleEnv(t)
	e.liveSession()
	c := e.browser()
	e.login(c)
	for _, tc := range []struct{ path, want string }{
		{"/console/", "v-test"},
		{"/console/sessions", "alice"},
		{"/console/certificates", "No TLS listener"},
		{"/console/backends", "not checked"},
		{"/console/legacy", "none seen"},
	} {
		resp, body := e.do(c, "GET", tc.path, nil, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: status %d, want 200 and %q in:\n%s", tc.path, resp.StatusCode, tc.want, body)
		}
		checkHeaders(t, tc.path, resp.Header)
		if strings.Contains(body, "<script>") || strings.Contains(body, " style=") {
			t.Errorf("GET %s: inline script or style", tc.path)
		}
		if strings.Contains(body, "alice-pw") {
			t.Errorf("GET %s shows the password", tc.path)
		}
	}
}

func TestConsoleOffWithoutToken(t *testing.T) {
	h := Handler(NewMetrics("v", "c"), &fakeSessions{}, nil, func() Access { return Access{} }, nil)
	for _, p := range []string{"/console/", "/console/login"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "metrics.token_file") {
			t.Errorf("GET %s without a token: %d %s", p, rec.Code, rec.Body)
		}
	}
}

func TestLegacyClientsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLegacyClients(3)
	a := netip.MustParseAddr("192.0.2.1")
	for i, u := range []string{"u1", "u2", "u1", "u3", "u4"} {
		l.add(now.Add(time.Duration(i)*time.Minute), "pop3s", a, u, tls.VersionTLS10, "")
	}
	got := l.list(time.Time{})
	var users []string
	for _, c := range got {
		users = append(users, c.User)
	}
	if strings.Join(users, ",") != "u4,u3,u1" {
		t.Errorf("legacy clients %v, want u4,u3,u1 (u2 forgotten)", users)
	}
	if got[2].Attempts != 2 || got[2].TLSVersion != "TLS 1.0" || !got[2].NoSNI {
		t.Errorf("u1 = %+v", got[2])
	}
	if n := len(l.list(now.Add(3 * time.Minute))); n != 2 {
		t.Errorf("%d seen since minute 3, want 2", n)
	}
}

// TestConsoleLoginsBounded: logins expire, at most maxConsoleSessions are
// held (the least recently used goes), and a new admin token ends them.
func TestConsoleLoginsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	token := consoleToken
	c := newConsole(NewMetrics("v", "c"), &fakeSessions{}, func() Access { return Access{Token: token} }, slog.New(slog.DiscardHandler))
	c.now = func() time.Time { return now }
	login := func() string {
		t.Helper()
		req := httptest.NewRequest("POST", "/console/login", strings.NewReader("token="+url.QueryEscape(token)))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, req)
		cks := rec.Result().Cookies()
		if rec.Code != http.StatusSeeOther || len(cks) != 1 {
			t.Fatalf("login: %d, cookies %v", rec.Code, cks)
		}
		return cks[0].Value
	}
	get := func(id string) int {
		req := httptest.NewRequest("GET", "/console/", nil)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: id})
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, req)
		return rec.Code
	}
	first, second := login(), login()
	for range maxConsoleSessions - 1 {
		now = now.Add(time.Second)
		if get(second) != http.StatusOK {
			t.Fatal("a fresh login refused")
		}
		login()
	}
	if get(first) != http.StatusUnauthorized || get(second) != http.StatusOK {
		t.Errorf("after %d more logins: the least recently used %d (want 401), the one in use %d (want 200)",
			maxConsoleSessions, get(first), get(second))
	}
	if len(c.logins) > maxConsoleSessions {
		t.Errorf("%d logins held, want at most %d", len(c.logins), maxConsoleSessions)
	}
	now = now.Add(consoleSessionTTL + time.Second)
	if get(second) != http.StatusUnauthorized {
		t.Error("an expired login still works")
	}
	third := login()
	token = "another-token-0123456789abcdef"
	if get(third) != http.StatusUnauthorized {
		t.Error("a login made with the old token works after the token changed")
	}
}

func TestPerMinute(t *testing.T) {
	var p perMinute
	t0 := time.Date(2026, 1, 1, 10, 0, 30, 0, time.UTC)
	p.add(t0, "ok")
	p.add(t0.Add(10*time.Second), "ok")
	p.add(t0.Add(20*time.Second), "auth_failed")
	if got := p.last(t0.Add(20 * time.Second)); len(got) != 0 {
		t.Errorf("during the first minute: %v, want nothing yet", got)
	}
	p.add(t0.Add(40*time.Second), "ok") // 10:01:10
	if got := p.last(t0.Add(50 * time.Second)); got["ok"] != 2 || got["auth_failed"] != 1 {
		t.Errorf("the minute after: %v, want ok 2, auth_failed 1", got)
	}
	if got := p.last(t0.Add(95 * time.Second)); got["ok"] != 1 || got["auth_failed"] != 0 {
		t.Errorf("two minutes on: %v, want ok 1", got)
	}
	if got := p.last(t0.Add(10 * time.Minute)); len(got) != 0 {
		t.Errorf("ten minutes on: %v, want nothing", got)
	}
}

// TestConsoleBackendHealth: the backends page shows what the proxy's
// health checks found, per address: the live backend up, a closed port
// down.
func TestConsoleBackendHealth(t *testing.T) {
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{"alice": {Password: "alice-pw"}}}
	baddr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.Addr().String()
	closed.Close()
	m := NewMetrics("v-test", "abc123")
	srv, err := proxy.New(proxy.Config{
		Router: auth.NewStatic(map[string]string{"alice": "b1"}, nil, ""),
		Backends: map[string]*proxy.Backend{"b1": {Name: "b1", Address: baddr.String(), Fallbacks: []string{dead},
			HealthInterval: 20 * time.Millisecond, HealthFailures: 1}},
		Observer:           m,
		AssumedFailureTime: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(context.Background(), ln, proxy.Listener{Name: "plain", TLS: proxy.TLSNone}) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	m.SetSources(Sources{
		Sessions:      srv,
		BackendHealth: srv.BackendHealth,
		Backends: func() []BackendInfo {
			return []BackendInfo{{Name: "b1", Addresses: []string{baddr.String(), dead}, TLS: "none"}}
		},
	})
	web := httptest.NewServer(Handler(m, srv, nil, func() Access { return Access{Token: consoleToken, CheckHost: true} }, nil))
	t.Cleanup(web.Close)
	e := &consoleEnv{t: t, srv: srv, backend: backend, pop3: ln.Addr().String(), web: web}
	c := e.browser()
	e.login(c)
	up := regexp.MustCompile(regexp.QuoteMeta(baddr.String()) + `: <span class="ok">up</span>`)
	down := regexp.MustCompile(regexp.QuoteMeta(dead) + `: <span class="bad">down</span>`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, body := e.do(c, "GET", "/console/backends", nil, nil)
		if resp.StatusCode == http.StatusOK && up.MatchString(body) && down.MatchString(body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends page after 10 s: status %d, want %s up and %s down in:\n%s", resp.StatusCode, baddr, dead, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
