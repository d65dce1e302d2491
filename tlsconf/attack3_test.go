package tlsconf

// Regression tests from the third attack review (certificates: the
// challenge answerers, orders and renewals, the approval hook, the cache
// and the files popgate reads): each TestAttack3* test failed while the
// defect it names was present.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// holdBusy opens a connection to the HTTP-01 answerer from src and sends a
// complete request header announcing a body it never sends. The answerer
// once marked such a connection busy (no newcomer displaced it) and
// net/http then waited, up to ReadTimeout, to discard the body after the
// handler's 404; now it closes the connection at once, the body unread.
func holdBusy(t *testing.T, addr, src string) net.Conn {
	t.Helper()
	c, err := dialer(src).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	if _, err := c.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAttack3ChallengeBusyHold: a handful of connections that each send a
// request header with an announced but unsent body were "busy" for the
// gate, so never displaced; once they filled max_challenge_connections
// (spread over max/per_ip client networks), the CA's validation
// connection was refused, on both answerers (one gate), by connections
// re-opened every ReadTimeout with no token and no knowledge of the CA's
// timing. Now only what a CA sends makes a connection busy, a request with
// a body is closed at once, and a connection busy for longer than
// busyGrace may be displaced again: the CA gets in.
func TestAttack3ChallengeBusyHold(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{MaxConns: 8, MaxConnsPerIP: 2}, 5*time.Second, nil)
	const token, keyAuth = "busy-token", "busy-token.thumbprint"
	ch.writeToken(t, token, keyAuth)
	addr := ch.HTTPAddr()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, src := range loopbacks(2, 4) {
		for range 2 {
			conns = append(conns, holdBusy(t, addr, src))
		}
	}
	// Wait until the gate holds them all (it closed them at once, so
	// this waits the whole 5 s).
	deadline := time.Now().Add(5 * time.Second)
	for {
		total, _ := ch.gate.held(netip.Prefix{})
		if total == 8 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the headers are read
	start := time.Now()
	code, body, err := get(addr, "127.0.0.1", challengeName, http.MethodGet, challengePath+token)
	if err != nil || code != http.StatusOK || body != keyAuth {
		t.Errorf("CA's HTTP-01 GET from 127.0.0.1 with 8 busy-looking connections held by 4 other addresses = %d %q, %v after %v; want 200 %q",
			code, body, err, time.Since(start).Round(time.Millisecond), keyAuth)
	}
	if _, err := validate(ch.TLSALPNAddr(), "127.0.0.1"); err != nil {
		t.Errorf("CA's TLS-ALPN-01 validation from 127.0.0.1 with the same 8 connections held: %v", err)
	}
	// How long one such connection stays busy.
	_ = conns[0].SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := conns[0].Read(buf); err != nil {
			break
		}
	}
	t.Logf("one busy-looking connection was held %v by the answerer", time.Since(start).Round(100*time.Millisecond))
}

// renewal runs one of autocert's renewal attempts for key (a cache key,
// "name" or "name+rsa") through the transport: it reads the cache, as
// autocert's domainRenewal.do does, and posts a new order. It reports
// whether the order reached the CA.
func renewal(t *testing.T, rt *caTransport, key string) bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt.a.cacheRead(ctx, key)
	return send(t, rt, ctx, "POST", caNewOrder) == nil
}

// attack3Transport is newScriptedTransport with a policy: configured is a
// tls.acme.domains name, routed the on-demand names AllowHost allows now.
func attack3Transport(t *testing.T, size, reserve int, configured string, routed map[string]bool) (*caTransport, *scriptedCA) {
	rt, ca := newScriptedTransport("http-01")
	rt.a.budget = newOrderBudget(size, time.Hour, reserve, newFakeClock().now)
	rt.a.allowed = map[string]bool{configured: true}
	rt.a.domains = []string{configured}
	rt.a.allowHost = func(n string) bool { return routed[n] }
	rt.a.limiter = newOrderLimiter(0)
	_ = send(t, rt, context.Background(), "GET", caDir)
	return rt, ca
}

// TestAttack3RenewalOutsidePolicy: a certificate of a routed domain that
// has since been removed from the routes (a customer who left) stays in
// autocert's memory, and autocert keeps renewing it: every 30 to 60
// minutes after a failure, for ever (until a restart). popgate paid each
// such order from the budget, reserve included, although the name is no
// longer in the policy ("Names it refuses never cause an order") and its
// HTTP-01 validation cannot succeed (the answerer's host policy refuses
// the name). An order for a name outside the policy is refused before it
// reaches the CA.
func TestAttack3RenewalOutsidePolicy(t *testing.T) {
	rt, ca := attack3Transport(t, 10, 2, "pop.example.org", map[string]bool{})
	if rt.a.inPolicy("pop.gone.test") {
		t.Fatal("setup: pop.gone.test is in the policy")
	}
	if renewal(t, rt, "pop.gone.test") {
		t.Errorf("a renewal of pop.gone.test, no longer routed, placed an order (CA saw %d); want it refused", ca.count("POST "+caNewOrder))
	}
}

// TestAttack3StaleRenewalsTakeReserve: renewals of on-demand names were
// "renewals" for the budget, so they could take the reserve that a flood
// of on-demand names must leave to the configured domains. Failing
// renewals of on-demand names (a customer's DNS moved away, or a hostile
// customer who had ECDSA and RSA certificates made for pop. and mail. of
// many domains, then pointed them elsewhere) retry every 30 to 60 minutes:
// a few dozen such certificates would use the whole refill (100 per 3 h
// by default), and the renewal of a configured domain would find no order
// left. On-demand names, renewals included, never take the last
// order_budget_reserve orders (and a failed renewal now sets the
// back-off, as a failed order does).
func TestAttack3StaleRenewalsTakeReserve(t *testing.T) {
	routed := map[string]bool{}
	for i := range 12 {
		routed[fmt.Sprintf("pop.stale%d.test", i)] = true
	}
	rt, _ := attack3Transport(t, 10, 4, "pop.example.org", routed)
	placed := 0
	for i := range 12 {
		if renewal(t, rt, fmt.Sprintf("pop.stale%d.test", i)) {
			placed++
		}
	}
	left := rt.a.budget.left()
	ok := renewal(t, rt, "pop.example.org")
	t.Logf("renewals of on-demand names placed: %d of 12; budget then %v (reserve 4)", placed, left)
	if !ok {
		t.Errorf("the configured domain's renewal found no order: on-demand renewals took the reserve (placed %d, left %v)", placed, left)
	}
}

// TestAttack3CacheCheckDisagreesWithAutocert: popgate decides "a
// certificate exists, serve it, never order" with its own copy of
// autocert's cache checks (validCached), then asks autocert, which orders
// on what it takes for a cache miss. The copies differed: popgate ignored
// white space after the last PEM block, autocert treats any leftover as a
// corrupt entry, a miss. An entry with one extra trailing newline (a
// restored backup, a hand-edited file) thus made every handshake go to
// the CA outside the order path: no flight, no back-off, no approval hook,
// paid as a renewal (the reserve); autocert's own one-minute retry was the
// only bound. Now popgate takes such an entry for a miss, as autocert
// does, so the order goes through popgate's order path: the CA is asked
// at the first handshake, the failure sets the back-off, and the next
// handshakes place no order. (TestValidCachedAgreesWithAutocert compares
// the two checks on more entries.)
func TestAttack3CacheCheckDisagreesWithAutocert(t *testing.T) {
	var hits atomic.Int64
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.NotFound(w, r)
	}))
	defer ca.Close()
	cache := filepath.Join(t.TempDir(), "acme")
	cfg := acmeConfig(cache)
	cfg.DirectoryURL = ca.URL + "/directory"
	srv, err := NewServer(ServerConfig{ACME: cfg})
	if err != nil {
		t.Fatal(err)
	}
	entry := append(cacheEntry(t, "mail.example.com"), '\n')
	writeFile(t, filepath.Join(cache, "mail.example.com"), entry)
	k := seenKey{"mail.example.com", false}
	if srv.acme.cacheHolds(context.Background(), k) {
		t.Fatal("popgate takes an entry with a trailing newline for a certificate; autocert takes it for a miss and orders")
	}
	hello := &tls.ClientHelloInfo{
		ServerName:       "mail.example.com",
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
	var per []int64
	for range 3 {
		before := hits.Load()
		_, err := srv.TLSConfig().GetCertificate(hello)
		per = append(per, hits.Load()-before)
		t.Logf("handshake: %v", err)
	}
	if _, blocked := srv.acme.limiter.blocked(k); !blocked || per[0] == 0 || per[1] != 0 || per[2] != 0 {
		t.Errorf("requests to the CA per handshake %v, back-off set %v; want the first handshake's order through popgate's order path (which sets the back-off), then none", per, blocked)
	}
}

// TestAttack3AskOutlivesHandshakes: the approval hook's request for a name
// is the hook's own, not the handshake's: it goes on, a connection to the
// hook, until ask_timeout (up to 30 s) after the client that caused it
// has gone. Without a bound on requests in flight, a client that opens and
// drops handshakes for many routed names while the hook is slow (say,
// overloaded by this very flood) would make popgate hold one descriptor
// and goroutine per name, outside every connection cap and outside the
// file descriptor budget's fixed reserve of 128. At most maxAskInFlight
// requests are under way; beyond that a name is refused at once (fail
// closed).
func TestAttack3AskOutlivesHandshakes(t *testing.T) {
	var logs syncBuffer
	var open, peak atomic.Int64
	hook := newAskHookWith(t, nil, func(h *askHook) {
		h.block = make(chan struct{})
		h.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				if n := open.Add(1); n > peak.Load() {
					peak.Store(n)
				}
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		}
	})
	defer close(hook.block)
	p, _ := newTestApprover(t, hook.srv.URL, 20*time.Second, &logs)
	const names = 300
	refused := 0
	for i := range names {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		var failed *askFailedError
		if err := p.allowed(ctx, fmt.Sprintf("pop.d%d.test", i)); errors.As(err, &failed) && errors.Is(err, errAskBusy) {
			refused++
		}
		cancel()
	}
	// Every request started is blocked at the hook, so none has ended:
	// the flights are all there will be.
	p.mu.Lock()
	started := int64(len(p.flights))
	p.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for hook.requests.Load() < started && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d handshakes, each gone after 1 ms: %d requests at the hook, %d connections to it open at once, %d names refused at once",
		names, hook.requests.Load(), peak.Load(), refused)
	if peak.Load() > 64 || started > maxAskInFlight {
		t.Errorf("popgate holds %d connections (%d requests) to a slow approval hook for handshakes that are gone", peak.Load(), started)
	}
	if refused != names-maxAskInFlight {
		t.Errorf("%d names refused at once, want %d (all beyond the first %d)", refused, names-maxAskInFlight, maxAskInFlight)
	}
	if n := strings.Count(logs.String(), "acme approval hook has too many requests under way"); n != 1 {
		t.Errorf("%d WARN lines about the cap, want 1:\n%s", n, logs.String())
	}
}
