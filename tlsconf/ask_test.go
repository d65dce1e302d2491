package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// askHook is an approval hook for the tests: it allows the names in allow
// and records every request.
type askHook struct {
	srv      *httptest.Server
	allow    map[string]int // name → status; others get 403
	requests atomic.Int64
	block    chan struct{} // when set, requests wait for it to close

	mu   sync.Mutex
	reqs []*http.Request
}

func newAskHook(t *testing.T, allow map[string]int) *askHook {
	t.Helper()
	return newAskHookWith(t, allow, nil)
}

// newAskHookWith is newAskHook with setup run on the hook before its
// server starts (to set block, or the server's ConnState).
func newAskHookWith(t *testing.T, allow map[string]int, setup func(*askHook)) *askHook {
	t.Helper()
	h := &askHook{allow: allow}
	h.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.requests.Add(1)
		h.mu.Lock()
		h.reqs = append(h.reqs, r.Clone(context.Background()))
		block := h.block
		h.mu.Unlock()
		if block != nil {
			<-block
		}
		switch name := r.URL.Query().Get("domain"); {
		case name == "redirect.test":
			http.Redirect(w, r, "/allow?domain=pop.ok.test", http.StatusFound)
		case name == "big.test":
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(make([]byte, 1<<20))
		case h.allow[name] != 0:
			w.WriteHeader(h.allow[name])
		default:
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	if setup != nil {
		setup(h)
	}
	h.srv.Start()
	t.Cleanup(h.srv.Close)
	return h
}

func (h *askHook) last() *http.Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reqs[len(h.reqs)-1]
}

func newTestApprover(t *testing.T, url string, timeout time.Duration, logs *syncBuffer) (*approver, *fakeClock) {
	t.Helper()
	p, err := newApprover(url, timeout, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	p.now = clock.now
	return p, clock
}

// TestApprover: Caddy's "ask" semantics (GET ?domain=NAME, 2xx allows,
// anything else refuses, redirects not followed), the query of the URL
// kept and never logged, nothing secret sent, answers cached for a while.
func TestApprover(t *testing.T) {
	var logs syncBuffer
	hook := newAskHook(t, map[string]int{"pop.ok.test": http.StatusNoContent, "pop.500.test": http.StatusInternalServerError})
	p, clock := newTestApprover(t, hook.srv.URL+"/may-order?token=s3cret", time.Second, &logs)
	ctx := context.Background()

	if err := p.allowed(ctx, "pop.ok.test"); err != nil {
		t.Errorf("allowed name: %v", err)
	}
	r := hook.last()
	if r.Method != http.MethodGet || r.URL.Path != "/may-order" || r.URL.Query().Get("token") != "s3cret" ||
		r.URL.Query().Get("domain") != "pop.ok.test" || r.Header.Get("User-Agent") != "popgate" ||
		r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") != "" {
		t.Errorf("request to the hook: %s %s %v", r.Method, r.URL, r.Header)
	}
	var denied *askDeniedError
	if err := p.allowed(ctx, "pop.other.test"); !errors.As(err, &denied) || denied.status != http.StatusForbidden {
		t.Errorf("refused name: %v, want a 403 refusal", err)
	}
	if err := p.allowed(ctx, "redirect.test"); !errors.As(err, &denied) || denied.status != http.StatusFound {
		t.Errorf("redirect: %v, want a refusal (not followed)", err)
	}
	if err := p.allowed(ctx, "big.test"); err != nil {
		t.Errorf("a 2xx with a large body: %v", err)
	}
	var failed *askFailedError
	if err := p.allowed(ctx, "pop.500.test"); !errors.As(err, &failed) {
		t.Errorf("HTTP 500: %v, want the hook failed (refused)", err)
	}

	// Cached: no new request within the TTLs.
	n := hook.requests.Load()
	for _, name := range []string{"pop.ok.test", "pop.other.test", "pop.500.test"} {
		_ = p.allowed(ctx, name)
	}
	if got := hook.requests.Load(); got != n {
		t.Errorf("%d requests for cached answers", got-n)
	}
	clock.add(askErrorTTL)
	_ = p.allowed(ctx, "pop.500.test")
	_ = p.allowed(ctx, "pop.ok.test")
	if got := hook.requests.Load(); got != n+1 {
		t.Errorf("after %v: %d new requests, want 1 (the failure expired, the answers not)", askErrorTTL, got-n)
	}
	clock.add(askAllowTTL)
	_ = p.allowed(ctx, "pop.ok.test")
	if got := hook.requests.Load(); got != n+2 {
		t.Errorf("after %v: the allowed answer was not asked again", askAllowTTL)
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Errorf("the hook's query was logged:\n%s", logs.String())
	}
}

// TestApproverFailsClosed: a hook that does not answer in time, or is not
// there, refuses; its failure is logged once until it answers again, and
// the error shows neither the URL's query nor waits beyond the caller.
func TestApproverFailsClosed(t *testing.T) {
	var logs syncBuffer
	hook := newAskHook(t, map[string]int{"pop.ok.test": http.StatusOK})
	block := make(chan struct{})
	hook.mu.Lock()
	hook.block = block
	hook.mu.Unlock()
	p, _ := newTestApprover(t, hook.srv.URL+"/?token=s3cret", 50*time.Millisecond, &logs)

	var failed *askFailedError
	for _, name := range []string{"pop.a.test", "pop.b.test"} {
		err := p.allowed(context.Background(), name)
		if !errors.As(err, &failed) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s with a silent hook: %v, want a failure without the URL", name, err)
		}
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d WARN lines for two failures in a row, want 1:\n%s", n, logs.String())
	}
	close(block)
	if err := p.allowed(context.Background(), "pop.ok.test"); err != nil {
		t.Errorf("after the hook came back: %v", err)
	}
	if !strings.Contains(logs.String(), "acme approval hook answers again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}

	// A caller whose handshake ends stops waiting.
	block = make(chan struct{})
	hook.mu.Lock()
	hook.block = block
	hook.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.allowed(ctx, "pop.c.test"); !errors.As(err, &failed) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v", err)
	}
	close(block)

	hook.srv.Close()
	if err := p.allowed(context.Background(), "pop.d.test"); !errors.As(err, &failed) {
		t.Errorf("hook gone: %v, want a failure", err)
	}
}

// TestApproverSharesRequests: concurrent handshakes for a name make one
// request.
func TestApproverSharesRequests(t *testing.T) {
	var logs syncBuffer
	hook := newAskHook(t, map[string]int{"pop.ok.test": http.StatusOK})
	block := make(chan struct{})
	hook.mu.Lock()
	hook.block = block
	hook.mu.Unlock()
	p, _ := newTestApprover(t, hook.srv.URL, 10*time.Second, &logs)
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() { errs <- p.allowed(context.Background(), "pop.ok.test") }()
	}
	waitFor(t, "the request", func() bool { return hook.requests.Load() == 1 })
	close(block)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := hook.requests.Load(); got != 1 {
		t.Errorf("%d concurrent callers made %d requests, want 1", n, got)
	}
}

func TestCheckAskURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8080/ask", "https://hooks.internal/may-order?key=x"} {
		if _, err := checkAskURL(u); err != nil {
			t.Errorf("checkAskURL(%q) = %v", u, err)
		}
	}
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://h/", "http:///ask", "http://user:pw@h/ask", "http://h/ask#x"} {
		if _, err := checkAskURL(u); err == nil {
			t.Errorf("checkAskURL(%q) = nil, want an error", u)
		}
	}
}

// TestOnDemandAsk: with an approval hook, only names it allows are
// ordered; configured domains and certificates that exist are never
// asked about.
func TestOnDemandAsk(t *testing.T) {
	hook := newAskHook(t, map[string]int{"pop.ok.test": http.StatusOK})
	routes := &routedDomains{m: map[string]bool{"ok.test": true, "no.test": true}}
	allow, err := RouteNames([]string{"pop.{domain}"}, routes.has)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{ACME: &ACMEConfig{
		Domains:      []string{"pop.provider.example"},
		CacheDir:     filepath.Join(t.TempDir(), "acme"),
		DirectoryURL: "http://127.0.0.1:1/directory",
		AllowHost:    allow,
		AskURL:       hook.srv.URL + "/ask",
	}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeACME{t: t, certs: map[seenKey]*tls.Certificate{}, a: srv.acme}
	srv.acme.get, srv.acme.stored = f.get, f.stored
	obs := &recordingObserver{}
	srv.ObserveOrders(obs)

	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.provider.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.no.test"}); err == nil || !strings.Contains(err.Error(), "approval hook refused") {
		t.Errorf("refused name: %v", err)
	}
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.ok.test"}); err != nil {
		t.Errorf("allowed name: %v", err)
	}
	if n := hook.requests.Load(); n != 2 {
		t.Errorf("hook asked %d times, want 2 (the two on-demand names)", n)
	}
	if got := f.ordered; len(got) != 2 || got[0].name != "pop.provider.example" || got[1].name != "pop.ok.test" {
		t.Errorf("orders %v", got)
	}
	// The name has its certificate: later handshakes ask nobody.
	hook.srv.Close()
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.ok.test"}); err != nil {
		t.Errorf("allowed name once its certificate exists, hook down: %v", err)
	}
	if _, w := obs.counts(); w[WithheldDenied] != 1 {
		t.Errorf("withheld: %v, want one denied", w)
	}
}
