package tlsconf

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedCA answers the caTransport's requests from a table by method and
// URL; it records what reached it.
type scriptedCA struct {
	mu      sync.Mutex
	answers map[string]func() (int, string) // "POST https://ca.test/x"
	got     []string
}

func (s *scriptedCA) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := req.Method + " " + req.URL.String()
	s.got = append(s.got, k)
	f := s.answers[k]
	if f == nil {
		return nil, errors.New("no answer for " + k)
	}
	code, body := f()
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), Request: req}, nil
}

func (s *scriptedCA) count(k string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, g := range s.got {
		if g == k {
			n++
		}
	}
	return n
}

const (
	caDir        = "https://ca.test/dir"
	caNewOrder   = "https://ca.test/new-order"
	authzPending = `{"status":"pending","identifier":{"type":"dns","value":"pop.x.test"},"challenges":[
		{"type":"tls-alpn-01","url":"https://ca.test/chal/alpn","status":"pending"},
		{"type":"http-01","url":"https://ca.test/chal/http","status":"pending"}]}`
)

func authzInvalid(typ, detail string) string {
	return `{"status":"invalid","identifier":{"type":"dns","value":"pop.x.test"},"challenges":[
		{"type":"` + typ + `","url":"https://ca.test/chal/x","status":"invalid",
		 "error":{"type":"urn:ietf:params:acme:error:connection","detail":"` + detail + `","status":400}}]}`
}

func newScriptedTransport(answered ...string) (*caTransport, *scriptedCA) {
	ca := &scriptedCA{answers: map[string]func() (int, string){
		"GET " + caDir:                   func() (int, string) { return 200, `{"newOrder":"` + caNewOrder + `"}` },
		"POST " + caNewOrder:             func() (int, string) { return 201, `{"status":"pending","authorizations":["https://ca.test/authz/1"]}` },
		"POST https://ca.test/chal/alpn": func() (int, string) { return 200, `{"type":"tls-alpn-01","status":"processing"}` },
		"POST https://ca.test/chal/http": func() (int, string) { return 200, `{"type":"http-01","status":"processing"}` },
	}}
	a := &acmeState{attempts: map[context.Context]*attempt{}, tickets: map[seenKey]*ticket{},
		ordering: map[string]chan struct{}{}, renewing: map[string]int{},
		budget: newOrderBudget(100, time.Hour, 0, time.Now), log: slog.New(slog.DiscardHandler),
		allowed: map[string]bool{"pop.x.test": true}, limiter: newOrderLimiter(0)}
	return &caTransport{a: a, next: ca, dirURL: caDir, answered: answered}, ca
}

func send(t *testing.T, rt http.RoundTripper, ctx context.Context, method, url string) error {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// TestOneOrderPerFailedValidation (issue item 7): with HTTP-01 the only
// challenge popgate answers, a failed validation ends the attempt: the
// second order autocert asks for is refused before it reaches the CA,
// with the CA's reason, and other attempts are not affected.
func TestOneOrderPerFailedValidation(t *testing.T) {
	rt, ca := newScriptedTransport("http-01")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt.a.cacheRead(ctx, "pop.x.test")

	invalid := false
	ca.answers["POST https://ca.test/authz/1"] = func() (int, string) {
		if invalid {
			return 200, authzInvalid("http-01", "127.0.0.2: Connection refused")
		}
		return 200, authzPending
	}
	for _, step := range []struct{ method, url string }{
		{"GET", caDir}, {"POST", caNewOrder}, {"POST", "https://ca.test/authz/1"}, {"POST", "https://ca.test/chal/http"},
	} {
		if err := send(t, rt, ctx, step.method, step.url); err != nil {
			t.Fatalf("%s %s: %v", step.method, step.url, err)
		}
	}
	invalid = true
	if err := send(t, rt, ctx, "POST", "https://ca.test/authz/1"); err != nil {
		t.Fatal(err)
	}
	err := send(t, rt, ctx, "POST", caNewOrder)
	var refused *orderRefusedError
	if !errors.As(err, &refused) || refused.Name != "pop.x.test" ||
		refused.Error() != "validation failed: http-01: connection: 127.0.0.2: Connection refused" {
		t.Fatalf("second order: %v, want it refused with the validation failure", err)
	}
	if n := ca.count("POST " + caNewOrder); n != 1 {
		t.Errorf("the CA got %d orders, want 1", n)
	}

	// Another attempt (another context) orders as usual.
	other, cancelOther := context.WithCancel(context.Background())
	defer cancelOther()
	rt.a.cacheRead(other, "pop.x.test+rsa")
	if err := send(t, rt, other, "POST", caNewOrder); err != nil {
		t.Errorf("another attempt's order: %v", err)
	}
	cancel()
	cancelOther()
	// Ended attempts are forgotten (context.AfterFunc runs in its own
	// goroutine).
	waitFor(t, "attempts forgotten", func() bool {
		rt.a.attMu.Lock()
		defer rt.a.attMu.Unlock()
		return len(rt.a.attempts) == 0
	})
}

// TestSecondChallengeTypeAllowed: with both challenge types answered, a
// failed TLS-ALPN-01 validation may be followed by an order for HTTP-01
// (autocert's fallback); after that fails too, no third order, and the
// reason names both.
func TestSecondChallengeTypeAllowed(t *testing.T) {
	rt, ca := newScriptedTransport("tls-alpn-01", "http-01")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt.a.cacheRead(ctx, "pop.x.test")
	authz := authzPending
	ca.answers["POST https://ca.test/authz/1"] = func() (int, string) { return 200, authz }
	mustSend := func(method, url string) {
		t.Helper()
		if err := send(t, rt, ctx, method, url); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	mustSend("GET", caDir)
	for _, typ := range []string{"tls-alpn-01", "http-01"} {
		authz = authzPending
		mustSend("POST", caNewOrder)
		mustSend("POST", "https://ca.test/authz/1")
		mustSend("POST", map[string]string{"tls-alpn-01": "https://ca.test/chal/alpn", "http-01": "https://ca.test/chal/http"}[typ])
		authz = authzInvalid(typ, typ+" unreachable")
		mustSend("POST", "https://ca.test/authz/1")
	}
	err := send(t, rt, ctx, "POST", caNewOrder)
	if err == nil || !strings.Contains(err.Error(), "tls-alpn-01: connection: tls-alpn-01 unreachable; http-01: connection: http-01 unreachable") {
		t.Fatalf("third order: %v, want it refused naming both failures", err)
	}
	if n := ca.count("POST " + caNewOrder); n != 2 {
		t.Errorf("the CA got %d orders, want 2", n)
	}
}

// TestCAErrorRecorded: an error response (a rate limit on the order) is
// kept as the attempt's reason, clipped and on one line.
func TestCAErrorRecorded(t *testing.T) {
	rt, ca := newScriptedTransport("http-01")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt.a.cacheRead(ctx, "pop.x.test")
	ca.answers["POST "+caNewOrder] = func() (int, string) {
		return 429, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many\nnew orders ` + strings.Repeat("x", 400) + `"}`
	}
	_ = send(t, rt, ctx, "GET", caDir)
	_ = send(t, rt, ctx, "POST", caNewOrder)
	att := rt.a.attemptFor(ctx, false)
	if att == nil || !strings.HasPrefix(att.last, "Too Many Requests: rateLimited: too many new orders xxx") ||
		len(att.last) > maxCauseLen+len("…") || att.orders != 0 {
		t.Errorf("attempt after a 429: %+v", att)
	}
}

// TestRetryBackoff: a rate limit fails the request at once; a CA error or
// a bad nonce is retried a few times.
func TestRetryBackoff(t *testing.T) {
	for _, tc := range []struct {
		code, n int
		retry   bool
	}{
		{http.StatusTooManyRequests, 1, false},
		{http.StatusInternalServerError, 1, true},
		{http.StatusBadRequest, 3, true}, // badNonce comes as 400
		{http.StatusServiceUnavailable, 4, false},
	} {
		if got := retryBackoff(tc.n, nil, &http.Response{StatusCode: tc.code}) > 0; got != tc.retry {
			t.Errorf("retryBackoff(%d, status %d) retries: %v, want %v", tc.n, tc.code, got, tc.retry)
		}
	}
}

// TestRenewalRules: a renewal (an attempt popgate did not start) that
// placed an order and obtained nothing sets the back-off of its name and
// key type; the next renewal of that certificate is then held back before
// it reaches the CA, as is one of a name no longer in the policy: a DEBUG
// line, no failed-order metric, no further back-off. An order of no known
// attempt is refused.
func TestRenewalRules(t *testing.T) {
	var logs syncBuffer
	rt, ca := newScriptedTransport("http-01")
	clock := newFakeClock()
	rt.a.limiter.now = clock.now
	rt.a.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	routed := map[string]bool{"pop.r.test": true}
	var mu sync.Mutex
	rt.a.allowHost = func(n string) bool { mu.Lock(); defer mu.Unlock(); return routed[n] }
	obs := &recordingObserver{}
	rt.a.obs.Store(observerBox{obs})
	_ = send(t, rt, context.Background(), "GET", caDir)

	renew := func(key string) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rt.a.cacheRead(ctx, key)
		return send(t, rt, ctx, "POST", caNewOrder)
	}
	if err := renew("pop.r.test"); err != nil {
		t.Fatalf("first renewal: %v", err)
	}
	waitFor(t, "the failed renewal's back-off", func() bool { _, held := rt.a.limiter.blocked(seenKey{"pop.r.test", false}); return held })
	var held *renewalHeldError
	if err := renew("pop.r.test"); !errors.As(err, &held) || held.Reason != "backoff" {
		t.Errorf("renewal during the back-off: %v, want it held back", err)
	}
	if err := renew("pop.r.test+rsa"); err != nil {
		t.Errorf("renewal of the other key type during the back-off: %v", err)
	}
	clock.add(DefaultOrderRetry)
	if err := renew("pop.r.test"); err != nil {
		t.Errorf("renewal after the back-off: %v", err)
	}

	mu.Lock()
	delete(routed, "pop.r.test")
	mu.Unlock()
	clock.add(DefaultOrderRetry)
	if err := renew("pop.r.test"); !errors.As(err, &held) || held.Reason != "policy" {
		t.Errorf("renewal of a name no longer routed: %v, want it held back", err)
	}
	if err := send(t, rt, context.Background(), "POST", caNewOrder); !errors.Is(err, errUnknownAttempt) {
		t.Errorf("order of no attempt: %v, want it refused", err)
	}
	if n := ca.count("POST " + caNewOrder); n != 3 {
		t.Errorf("the CA got %d orders, want 3", n)
	}
	waitFor(t, "the held renewals' DEBUG lines", func() bool {
		return strings.Count(logs.String(), `msg="acme renewal held back" name=pop.r.test`) == 2
	})
	waitFor(t, "three failed renewals reported", func() bool { o, _ := obs.counts(); return o["ecdsa failed"]+o["rsa failed"] == 3 })
	if o, _ := obs.counts(); o["ecdsa failed"]+o["rsa failed"] != 3 {
		t.Errorf("order metrics %v, want 3 failed (the held renewals not counted)", o)
	}
}
