package admin

// Tests from the attack review of the operator's console: the
// TestAttack6* tests that name a defect failed while it was present; the
// others pin down what held.

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

// TestAttack6TokenGuessingUnlimited: nothing bounded how fast one address
// could guess the admin token, through the console's login form or as a
// bearer token: every wrong guess got a 401 at once, as fast as the
// connection caps let it in (thousands a second on loopback). The token
// file takes any 16 printable characters, so an operator's memorable
// token fell to a dictionary. Now an address that has given
// maxTokenFailures wrong tokens within tokenFailureWindow gets 429 for
// whatever it sends next, the right token included (else the budget would
// not stop guessing), until the window passes; another address is not
// affected.
func TestAttack6TokenGuessingUnlimited(t *testing.T) {
	e := newConsoleEnv(t)
	c := e.browser()
	codes := map[int]int{}
	for i := range maxTokenFailures + 5 {
		resp, _ := e.do(c, "POST", "/console/login", url.Values{"token": {"guess-" + strings.Repeat("x", i)}}, nil)
		codes[resp.StatusCode]++
	}
	if codes[http.StatusUnauthorized] != maxTokenFailures || codes[http.StatusTooManyRequests] != 5 {
		t.Fatalf("wrong console logins answered %v, want %d × 401 then 5 × 429", codes, maxTokenFailures)
	}
	resp, _ := e.do(c, "POST", "/console/login", url.Values{"token": {consoleToken}}, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("right token from an address over its budget = %d (Retry-After %q), want 429 with Retry-After",
			resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	resp, body := e.do(c, "GET", "/sessions", nil, map[string]string{"Authorization": "Bearer " + consoleToken})
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("bearer request from an address over its budget = %d, want 429", resp.StatusCode)
	}
	// The refusal says when to try again (as Retry-After does) and with what.
	if want := "try again in " + resp.Header.Get("Retry-After") + " s"; !strings.Contains(body, want) || !strings.Contains(body, "metrics.token_file") {
		t.Errorf("429 body %q does not say %q and where the token is", body, want)
	}
}

// TestAttack6BearerGuessingUnlimited: the same through the bearer token of
// /sessions, and through the console's pages, which take a bearer token
// too.
func TestAttack6BearerGuessingUnlimited(t *testing.T) {
	for _, path := range []string{"/sessions", "/console/sessions"} {
		t.Run(path, func(t *testing.T) {
			e := newConsoleEnv(t)
			c := e.browser()
			var last int
			for i := range maxTokenFailures + 1 {
				resp, _ := e.do(c, "GET", path, nil, map[string]string{"Authorization": "Bearer wrong-" + strings.Repeat("y", i)})
				last = resp.StatusCode
			}
			if last != http.StatusTooManyRequests {
				t.Errorf("guess %d = %d, want 429", maxTokenFailures+1, last)
			}
		})
	}
}

// TestAttack6FailureBudgetBounded: the failure table holds at most
// maxFailureAddrs addresses; beyond it new addresses share one budget, and
// addresses whose window has passed are forgotten first.
func TestAttack6FailureBudgetBounded(t *testing.T) {
	var b failBudget
	now := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	for i := range maxFailureAddrs + 100 {
		b.attempt("10."+strconv.Itoa(i>>16&255)+"."+strconv.Itoa(i>>8&255)+"."+strconv.Itoa(i&255)+":1", now, true)
	}
	if n := len(b.by); n > maxFailureAddrs+1 {
		t.Errorf("failure table holds %d addresses, want at most %d", n, maxFailureAddrs+1)
	}
	if ok, _ := b.attempt("192.0.2.1:1", now.Add(tokenFailureWindow+1), true); !ok {
		t.Error("a new address is blocked after every window passed")
	}
	if n := len(b.by); n != 1 {
		t.Errorf("after the window, table holds %d addresses, want 1 (expired ones dropped)", n)
	}
	// IPv6 addresses count by /64.
	var v6 failBudget
	for i := range maxTokenFailures {
		v6.attempt("[2001:db8::"+strconv.Itoa(i+1)+"]:1", now, true)
	}
	if ok, _ := v6.attempt("[2001:db8::ffff]:1", now, false); ok {
		t.Error("another address of the same IPv6 /64 is not blocked")
	}
}

// TestAttack6DotDotIntoConsolePrefix (held): a path that starts with
// /console/ skips the guard's token check, as the console checks itself;
// one that climbs out of it (/console/../sessions, encoded or not) must
// not reach /sessions without the token.
func TestAttack6DotDotIntoConsolePrefix(t *testing.T) {
	e := newConsoleEnv(t)
	e.liveSession()
	c := e.browser()
	for _, p := range []string{"/console/../sessions", "/console/%2e%2e/sessions", "/console/..%2fsessions", "/console//../sessions"} {
		resp, body := e.do(c, "GET", p, nil, nil)
		if resp.StatusCode == http.StatusOK && strings.Contains(body, "alice") {
			t.Errorf("GET %s without a token = 200 with the sessions", p)
		}
		resp, _ = e.do(c, "DELETE", strings.Replace(p, "sessions", "sessions?user=alice", 1), nil, nil)
		if resp.StatusCode == http.StatusOK {
			t.Errorf("DELETE %s without a token = 200", p)
		}
	}
	if n := len(e.srv.SessionList()); n != 1 {
		t.Errorf("%d sessions live, want the one", n)
	}
}

// TestAttack6CookieAfterLogout (held): a cookie copied before logging out
// opens nothing afterwards, and a cookie the client makes up, or one set
// before login (fixation), is not taken over by the login.
func TestAttack6CookieAfterLogout(t *testing.T) {
	e := newConsoleEnv(t)
	c := e.browser()
	u := mustURL(t, e.web.URL+"/console/")
	c.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: "chosen-by-the-attacker", Path: consolePrefix}})
	csrf := e.login(c)
	var id string
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == cookieName {
			id = ck.Value
		}
	}
	if id == "" || id == "chosen-by-the-attacker" {
		t.Fatalf("cookie after login %q, want a fresh one", id)
	}
	resp, _ := e.do(c, "POST", "/console/logout", url.Values{"csrf": {csrf}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout = %d", resp.StatusCode)
	}
	old := e.browser()
	old.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: id, Path: consolePrefix}})
	if resp, _ := e.do(old, "GET", "/console/sessions", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the cookie after logout opens /console/sessions: %d", resp.StatusCode)
	}
}

// TestAttack6CrossSitePost (held): a POST to end sessions is refused
// without the CSRF token, and with it when the browser says it comes from
// another site, including a same-site page on another port (cookies do
// not tell ports apart, so SameSite=Strict lets that one's cookie
// through). "Origin: null", which Chromium sends from the console's own
// no-referrer pages, passes with the right token only.
func TestAttack6CrossSitePost(t *testing.T) {
	e := newConsoleEnv(t)
	e.liveSession()
	c := e.browser()
	csrf := e.login(c)
	end := url.Values{"user": {"alice"}, "confirm": {"yes"}}
	withCSRF := url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}
	host := strings.TrimPrefix(e.web.URL, "http://")
	_, port, _ := strings.Cut(host, ":")
	other := "http://localhost:1" + port
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no token", end, nil},
		{"wrong token", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf + "x"}}, nil},
		{"Origin null without token", end, map[string]string{"Origin": "null"}},
		{"same-site", withCSRF, map[string]string{"Sec-Fetch-Site": "same-site"}},
		{"cross-site", withCSRF, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"Origin of another port", withCSRF, map[string]string{"Origin": other}},
		{"Origin null, Referer of another port", withCSRF, map[string]string{"Origin": "null", "Referer": other + "/"}},
	} {
		if resp, _ := e.do(c, "POST", "/console/end", tc.form, tc.hdr); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: POST /console/end = %d, want 403", tc.name, resp.StatusCode)
		}
	}
	if n := len(e.srv.SessionList()); n != 1 {
		t.Fatalf("%d sessions live after the refused POSTs, want 1", n)
	}
	// A wildcard is a user name like any other.
	if resp, body := e.do(c, "POST", "/console/end", url.Values{"user": {"*"}, "confirm": {"yes"}, "csrf": {csrf}}, nil); resp.StatusCode != 200 || len(e.srv.SessionList()) != 1 {
		t.Errorf("end user=* = %d %q, sessions left %d, want 200 and 1", resp.StatusCode, body, len(e.srv.SessionList()))
	}
	if resp, _ := e.do(c, "POST", "/console/end", withCSRF, map[string]string{"Origin": "null", "Sec-Fetch-Site": "same-origin"}); resp.StatusCode != 200 {
		t.Errorf("Origin null from the console's own page with the token = %d, want 200", resp.StatusCode)
	}
	if n := len(e.srv.SessionList()); n != 0 {
		t.Errorf("%d sessions live after the console's own POST, want 0", n)
	}
}

// TestAttack6HostileFieldsEscaped (held): every field the console shows
// that someone outside can choose — user names and SNI names typed by
// clients, an IPv6 zone in a PROXY header's address, a hostile
// certificate's names and issuer, an ACME CA's error text, a backend's
// check error, a routing directory's answer and error, backend and
// listener names — shows as text on every page: no tag of theirs
// reaches the page, in text or in an attribute.
func TestAttack6HostileFieldsEscaped(t *testing.T) {
	const x = `"'><img src=x onerror=alert(1)>`
	m := NewMetrics("v", "c")
	client := netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone(x), 110)
	sessions := &fakeSessions{list: []proxy.SessionInfo{{ID: x, User: x, Client: client, Listener: x, Backend: x,
		State: "relaying", Started: time.Now(), TLSVersion: x, SNI: x}}}
	m.SetSources(Sources{
		Sessions:  sessions,
		Listeners: func() []ListenerInfo { return []ListenerInfo{{Name: x, Address: x, TLS: x}} },
		Backends:  func() []BackendInfo { return []BackendInfo{{Name: x, Addresses: []string{x}, TLS: x}} },
		BackendHealth: func() []proxy.BackendHealth {
			return []proxy.BackendHealth{{Backend: x, Address: x, LastErr: x, LastCheck: time.Now()}}
		},
		CertificateDetails: func() []CertificateInfo {
			return []CertificateInfo{{Names: []string{x}, Issuer: x, NotAfter: time.Now(), Source: x, LastRenewal: time.Now(), RenewalErr: x}}
		},
		Route: func(context.Context, string) (RouteAnswer, error) {
			return RouteAnswer{Backend: x, Address: x, TLS: x, Why: x}, errors.New(x)
		},
	})
	m.LegacyClient(x, netip.MustParseAddr("192.0.2.1"), x, tls.VersionTLS10, x)
	m.Reloaded(errors.New(x))
	web := httptest.NewServer(Handler(m, sessions, nil, func() Access { return Access{Token: consoleToken} }, nil))
	defer web.Close()
	for _, p := range []string{"/console/", "/console/sessions", "/console/sessions?user=" + url.QueryEscape(x),
		"/console/end?user=" + url.QueryEscape(x), "/console/end?id=" + url.QueryEscape(x), "/console/certificates",
		"/console/backends", "/console/routing?user=" + url.QueryEscape(x), "/console/legacy", "/console/no-such" + url.PathEscape(x)} {
		req, _ := http.NewRequest("GET", web.URL+p, nil)
		req.Header.Set("Authorization", "Bearer "+consoleToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "<img") || strings.Contains(string(b), `"'>`) {
			t.Errorf("GET %s: the hostile text reaches the page unescaped", p)
		}
		if !strings.Contains(string(b), "&lt;img") && p != "/console/no-such"+url.PathEscape(x) {
			t.Errorf("GET %s (%d): the hostile text is not shown at all, so this test checks nothing there", p, resp.StatusCode)
		}
	}
}

// TestAttack6CookieAfterTokenChange (held): a reload that changes the
// admin token ends every console login made with the old one, and the
// old token no longer logs in.
func TestAttack6CookieAfterTokenChange(t *testing.T) {
	var mu sync.Mutex
	tok := consoleToken
	access := func() Access { mu.Lock(); defer mu.Unlock(); return Access{Token: tok} }
	web := httptest.NewServer(Handler(NewMetrics("v", "c"), &fakeSessions{}, nil, access, nil))
	defer web.Close()
	e := &consoleEnv{t: t, web: web}
	c := e.browser()
	e.login(c)
	mu.Lock()
	tok = "another-console-token-0123456789"
	mu.Unlock()
	if resp, _ := e.do(c, "GET", "/console/", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the old login after a token change: %d, want 401", resp.StatusCode)
	}
	if resp, _ := e.do(c, "POST", "/console/login", url.Values{"token": {consoleToken}}, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("login with the old token: %d, want 401", resp.StatusCode)
	}
}

// TestAttack6CookieShadowed: cookies do not tell ports apart, and a
// sibling host name can set one for the parent domain, so another web
// service on the console's host name (or a subdomain's) can set a
// popgate_console cookie with a longer Path, say /console/end. The
// browser then sends it first, and the console looked at the first
// cookie of that name only: the operator's own login stopped working on
// that page (the end button answered 401) while the attacker chose the
// path. Now any cookie of the name that is a live login is taken.
func TestAttack6CookieShadowed(t *testing.T) {
	e := newConsoleEnv(t)
	e.liveSession()
	c := e.browser()
	csrf := e.login(c)
	var id string
	for _, ck := range c.Jar.Cookies(mustURL(t, e.web.URL+"/console/")) {
		if ck.Name == cookieName {
			id = ck.Value
		}
	}
	plain := &http.Client{CheckRedirect: c.CheckRedirect}
	hdr := map[string]string{"Cookie": cookieName + "=tossed-by-a-sibling; " + cookieName + "=" + id}
	if resp, _ := e.do(plain, "GET", "/console/sessions", nil, hdr); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /console/sessions with a shadowing cookie first = %d, want 200", resp.StatusCode)
	}
	if resp, _ := e.do(plain, "POST", "/console/end", url.Values{"user": {"alice"}, "confirm": {"yes"}, "csrf": {csrf}}, hdr); resp.StatusCode != http.StatusOK {
		t.Errorf("POST /console/end with a shadowing cookie first = %d, want 200", resp.StatusCode)
	}
	if n := len(e.srv.SessionList()); n != 0 {
		t.Errorf("%d sessions live, want 0", n)
	}
	// Logging out ends the login whichever cookie came first.
	if resp, _ := e.do(plain, "POST", "/console/logout", url.Values{"csrf": {csrf}}, hdr); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout = %d", resp.StatusCode)
	}
	if resp, _ := e.do(plain, "GET", "/console/", nil, map[string]string{"Cookie": cookieName + "=" + id}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the login after logout = %d, want 401", resp.StatusCode)
	}
}

// TestTokenBudgetConcurrent: wrong tokens sent at once must not all pass
// the budget's check before any is counted: of many concurrent wrong
// bearer tokens from one address, at most maxTokenFailures are answered
// 401, the others 429. (The window between a separate check and count is
// short, so this rarely caught the old code; TestFailBudgetAttemptAtomic
// pins the mechanism.)
func TestTokenBudgetConcurrent(t *testing.T) {
	e := newConsoleEnv(t)
	const n = 3 * maxTokenFailures
	codes := make(chan int, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequest("GET", e.web.URL+"/sessions", nil)
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Authorization", "Bearer wrong-"+strconv.Itoa(i))
			<-start
			resp, err := e.browser().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	close(start)
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusUnauthorized] > maxTokenFailures || got[http.StatusUnauthorized]+got[http.StatusTooManyRequests] != n {
		t.Errorf("%d concurrent wrong tokens answered %v, want at most %d × 401, the rest 429", n, got, maxTokenFailures)
	}
}

// TestFailBudgetAttemptAtomic: attempt checks and counts under one lock,
// so that of concurrent wrong tokens exactly maxTokenFailures pass.
func TestFailBudgetAttemptAtomic(t *testing.T) {
	var b failBudget
	now := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	var passed sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 100 {
		passed.Add(1)
		go func() {
			defer passed.Done()
			if pass, _ := b.attempt("192.0.2.7:1", now, true); pass {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	passed.Wait()
	if ok != maxTokenFailures {
		t.Errorf("%d of 100 concurrent wrong tokens passed the budget, want %d", ok, maxTokenFailures)
	}
	// A right token does not use the budget.
	var r failBudget
	for range 2 * maxTokenFailures {
		if pass, _ := r.attempt("192.0.2.8:1", now, false); !pass {
			t.Fatal("a right token was refused by an unused budget")
		}
	}
}
