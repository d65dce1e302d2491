package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable now().
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recordingObserver records what an OrderObserver is told.
type recordingObserver struct {
	mu       sync.Mutex
	orders   []string // "ecdsa issued"
	withheld []string
}

func (o *recordingObserver) ACMEOrder(keyType, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.orders = append(o.orders, keyType+" "+result)
}

func (o *recordingObserver) ACMEOrderWithheld(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.withheld = append(o.withheld, reason)
}

func (o *recordingObserver) counts() (orders, withheld map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	orders, withheld = map[string]int{}, map[string]int{}
	for _, x := range o.orders {
		orders[x]++
	}
	for _, x := range o.withheld {
		withheld[x]++
	}
	return orders, withheld
}

// TestOrderBudget: the token bucket with its reserve, on a fake clock.
func TestOrderBudget(t *testing.T) {
	clock := newFakeClock()
	b := newOrderBudget(10, 10*time.Hour, 2, clock.now) // one order an hour
	for i := range 8 {
		if ok, _, _ := b.take(classOnDemand); !ok {
			t.Fatalf("on-demand order %d refused with %v left", i+1, b.left())
		}
	}
	ok, next, first := b.take(classOnDemand)
	if ok || !first || !next.Equal(clock.now().Add(time.Hour)) {
		t.Errorf("9th on-demand order: %v, next %v, first %v; want refused until an hour later, first refusal", ok, next, first)
	}
	if _, _, first := b.take(classOnDemand); first {
		t.Error("second refusal reported as the first")
	}
	for i := range 2 {
		if ok, _, _ := b.take([]orderClass{classDomain, classRenewal}[i]); !ok {
			t.Errorf("order %d of the reserve refused", i+1)
		}
	}
	if ok, _, _ := b.take(classRenewal); ok || b.left() != 0 {
		t.Errorf("renewal with an empty budget: %v, left %v", ok, b.left())
	}
	clock.add(59 * time.Minute)
	if ok, _, _ := b.take(classRenewal); ok {
		t.Error("renewal before a whole order refilled")
	}
	clock.add(time.Minute)
	if ok, _, _ := b.take(classRenewal); !ok {
		t.Error("renewal after an hour refused")
	}
	b.give()
	clock.add(100 * time.Hour)
	b.give()
	if got := b.left(); got != 10 {
		t.Errorf("left after a long pause = %v, want the size, 10", got)
	}

	for _, tc := range []struct {
		size, reserve int
		wantSize      float64
		wantReserve   float64
	}{
		{0, 0, DefaultOrderBudget, 20},
		{7, 0, 7, 2},
		{7, -1, 7, 0},
		{7, 3, 7, 3},
	} {
		b := newOrderBudget(tc.size, 0, tc.reserve, clock.now)
		if b.size != tc.wantSize || b.reserve != tc.wantReserve || b.perSec != tc.wantSize/DefaultOrderBudgetPeriod.Seconds() {
			t.Errorf("newOrderBudget(%d, 0, %d) = size %v reserve %v rate %v", tc.size, tc.reserve, b.size, b.reserve, b.perSec)
		}
	}
}

// TestOrderBudgetFlood (issue item 3): handshakes for many routed names
// place no more orders than the budget leaves to on-demand names; the
// rest fail without an order, the exhaustion is logged once, and a
// configured domain still gets its order from the reserve.
func TestOrderBudgetFlood(t *testing.T) {
	var logs syncBuffer
	clock := newFakeClock()
	routes := &routedDomains{m: map[string]bool{}}
	for i := range 20 {
		routes.add(fmt.Sprintf("d%d.test", i))
	}
	allow, err := RouteNames([]string{"pop.{domain}"}, routes.has)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ACME: &ACMEConfig{
			Domains:      []string{"pop.provider.example", "mail.provider.example"},
			CacheDir:     filepath.Join(t.TempDir(), "acme"),
			DirectoryURL: "http://127.0.0.1:1/directory",
			AllowHost:    allow,
			OrderBudget:  6, OrderBudgetPeriod: 6 * time.Hour, OrderBudgetReserve: 2,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.acme.budget = newOrderBudget(6, 6*time.Hour, 2, clock.now)
	f := &fakeACME{t: t, certs: map[seenKey]*tls.Certificate{}, a: srv.acme}
	srv.acme.get, srv.acme.stored = f.get, f.stored
	obs := &recordingObserver{}
	srv.ObserveOrders(obs)

	// The default name, as prefetch at start would.
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.provider.example"}); err != nil {
		t.Fatal(err)
	}
	var refused int
	for i := range 20 {
		_, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: fmt.Sprintf("pop.d%d.test", i)})
		var be *budgetError
		switch {
		case err == nil:
		case errors.As(err, &be):
			refused++
		default:
			t.Errorf("pop.d%d.test: %v", i, err)
		}
	}
	if n := len(f.ordered); n != 4 || refused != 17 {
		t.Errorf("%d orders (1 domain, %d on-demand), %d handshakes refused; want 4 and 17", n, n-1, refused)
	}
	if n := strings.Count(logs.String(), "acme order budget used up"); n != 1 {
		t.Errorf("budget exhaustion logged %d times, want once", n)
	}
	// The reserve serves the configured domains.
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "mail.provider.example"}); err != nil {
		t.Errorf("configured domain with only the reserve left: %v", err)
	}
	if left, _ := srv.OrderBudgetLeft(); left != 1 {
		t.Errorf("budget left %v, want 1", left)
	}
	orders, withheld := obs.counts()
	if orders["ecdsa issued"] != 5 || withheld[WithheldBudget] != 17 {
		t.Errorf("observed orders %v, withheld %v", orders, withheld)
	}
	// An hour later one more order fits, but on-demand names wait for
	// the reserve to fill too.
	clock.add(time.Hour)
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.d19.test"}); err == nil {
		t.Error("on-demand order placed from the reserve")
	}
	clock.add(2 * time.Hour)
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.d19.test"}); err != nil {
		t.Errorf("on-demand order once the budget refilled: %v", err)
	}
	if slices.Contains(f.names(), "pop.unrouted.test") {
		t.Error("unrouted name reached ACME")
	}
}

// TestRenewalBudget: orders popgate did not start (autocert's renewals)
// of configured domains are paid from the budget when they reach the CA,
// ahead of on-demand names; refused, they end in one ERROR and a
// failed-order metric. An attempt popgate started pays its first order
// with its ticket.
func TestRenewalBudget(t *testing.T) {
	var logs syncBuffer
	rt, ca := newScriptedTransport("http-01")
	clock := newFakeClock()
	rt.a.budget = newOrderBudget(3, time.Hour, 2, clock.now)
	rt.a.allowed = map[string]bool{"pop.r1.test": true, "pop.r2.test": true, "pop.r3.test": true, "pop.r.test": true}
	rt.a.allowHost = func(n string) bool { return n == "pop.x.test" }
	rt.a.log = slog.New(slog.NewTextHandler(&logs, nil))
	obs := &recordingObserver{}
	rt.a.obs.Store(observerBox{obs})

	// A handshake's order, paid in advance by its ticket.
	if ok, _, _ := rt.a.budget.take(classOnDemand); !ok {
		t.Fatal("on-demand order refused from a full budget")
	}
	tk := &ticket{class: classOnDemand}
	rt.a.tickets[seenKey{"pop.x.test", false}] = tk
	ctx1, cancel1 := context.WithCancel(context.Background())
	rt.a.cacheRead(ctx1, "pop.x.test")
	_ = send(t, rt, ctx1, "GET", caDir)
	if err := send(t, rt, ctx1, "POST", caNewOrder); err != nil || !tk.used || !tk.contacted || rt.a.budget.left() != 2 {
		t.Errorf("ticketed order: %v, ticket %+v, budget left %v; want it paid by the ticket", err, tk, rt.a.budget.left())
	}
	cancel1()

	// Two renewals: the reserve is theirs; the third finds nothing.
	for i, want := range []bool{true, true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		rt.a.cacheRead(ctx, fmt.Sprintf("pop.r%d.test+rsa", i+1))
		err := send(t, rt, ctx, "POST", caNewOrder)
		if (err == nil) != want {
			t.Errorf("renewal %d: %v, want placed %v", i+1, err, want)
		}
		cancel()
	}
	waitFor(t, "the refused renewal's ERROR", func() bool {
		return strings.Contains(logs.String(), `msg="acme renewal failed" name=pop.r3.test key_type=rsa err="the ACME order budget is used up`)
	})
	// The CA refusing an order (a rate limit) gives the unit back.
	ca.answers["POST "+caNewOrder] = func() (int, string) { return 429, `{"type":"urn:ietf:params:acme:error:rateLimited"}` }
	clock.add(20 * time.Minute) // one unit back
	ctx, cancel := context.WithCancel(context.Background())
	rt.a.cacheRead(ctx, "pop.r.test")
	_ = send(t, rt, ctx, "POST", caNewOrder)
	cancel()
	if left := rt.a.budget.left(); left != 1 {
		t.Errorf("budget after an order the CA refused: %v, want 1 (given back)", left)
	}
	waitFor(t, "four renewals reported", func() bool { o, _ := obs.counts(); return o["rsa failed"]+o["ecdsa failed"]+o["rsa issued"] == 4 })
}

// waitFor polls cond (for work done on other goroutines, such as
// context.AfterFunc), failing t after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s", what)
		}
	}
}
