package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/internal/certgen"
)

// fakeFleetLock is an OrderLock whose names other replicas may hold.
type fakeFleetLock struct {
	mu       sync.Mutex
	held     map[string]string    // name → holder ("other" for another replica)
	until    map[string]time.Time // name → end of a failed order's back-off
	err      error                // the store is unreachable
	released int
	backoffs []time.Duration // of every release
	// onTry, if set, runs as TryLock begins (while Redis would answer).
	onTry func()
}

func (l *fakeFleetLock) TryLock(name string) (func(time.Duration), bool, time.Time, error) {
	if l.onTry != nil {
		l.onTry()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, false, time.Time{}, l.err
	}
	if u := l.until[name]; time.Now().Before(u) {
		return nil, false, u, nil
	}
	if l.held[name] != "" {
		return nil, false, time.Time{}, nil
	}
	l.held[name] = "me"
	return func(backoff time.Duration) {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.held, name)
		l.released++
		l.backoffs = append(l.backoffs, backoff)
		if backoff > 0 {
			l.until[name] = time.Now().Add(backoff)
		}
	}, true, time.Time{}, nil
}

func (l *fakeFleetLock) holder(name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[name]
}

// mapCache is an autocert.Cache in memory.
type mapCache struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (c *mapCache) Get(_ context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.m[key]; ok {
		return v, nil
	}
	return nil, autocert.ErrCacheMiss
}

func (c *mapCache) Put(_ context.Context, key string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = data
	return nil
}

func (c *mapCache) Delete(_ context.Context, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
	return nil
}

// TestFleetRenewalRules: in a fleet, a renewal places its order only
// under the name's fleet lock, held until the attempt ends; it is held
// back while another replica holds the lock ("busy"), while the lock
// cannot be taken ("cluster"), during another replica's back-off
// ("backoff"), and when the shared cache holds a certificate renewed by
// another replica ("renewed"), releasing the lock at once. A failed
// renewal leaves its back-off in the lock.
func TestFleetRenewalRules(t *testing.T) {
	var logs syncBuffer
	rt, ca := newScriptedTransport("http-01")
	rt.a.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lock := &fakeFleetLock{held: map[string]string{}, until: map[string]time.Time{}}
	cache := &mapCache{m: map[string][]byte{}}
	rt.a.fleet, rt.a.dir = lock, cache
	_ = send(t, rt, context.Background(), "GET", caDir)
	const name, name2, name3 = "pop.x.test", "pop.y.test", "pop.z.test"
	rt.a.allowed[name2], rt.a.allowed[name3] = true, true

	renewName := func(name string) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		rt.a.cacheRead(ctx, name)
		return cancel, send(t, rt, ctx, "POST", caNewOrder)
	}
	renew := func() (context.CancelFunc, error) { return renewName(name) }
	var held *renewalHeldError

	// Another replica holds the lock.
	lock.held[name] = "other"
	cancel, err := renew()
	cancel()
	if !errors.As(err, &held) || held.Reason != "busy" {
		t.Errorf("renewal while another replica orders: %v, want it held back (busy)", err)
	}
	delete(lock.held, name)

	// The lock cannot be taken.
	lock.err = errors.New("Redis is unreachable")
	cancel, err = renew()
	cancel()
	if !errors.As(err, &held) || held.Reason != "cluster" {
		t.Errorf("renewal with Redis down: %v, want it held back (cluster)", err)
	}
	lock.err = nil
	if n := ca.count("POST " + caNewOrder); n != 0 {
		t.Fatalf("the CA got %d orders from held renewals", n)
	}

	// The lock is taken and kept until the attempt ends.
	cancel, err = renew()
	if err != nil {
		t.Fatalf("renewal under the lock: %v", err)
	}
	if h := lock.holder(name); h != "me" {
		t.Errorf("during the renewal the lock is held by %q, want this replica", h)
	}
	cancel()
	waitFor(t, "the lock released when the attempt ends", func() bool { return lock.holder(name) == "" })
	// The scripted CA never finishes the order: a failed renewal, whose
	// back-off the lock keeps for the fleet.
	lock.mu.Lock()
	if b := lock.backoffs[len(lock.backoffs)-1]; b != domainOrderRetry {
		t.Errorf("a failed renewal released the lock with back-off %v, want %v", b, domainOrderRetry)
	}
	lock.mu.Unlock()

	// Another replica's failed order holds the name back.
	lock.mu.Lock()
	lock.until[name3] = time.Now().Add(time.Minute)
	lock.mu.Unlock()
	cancel, err = renewName(name3)
	cancel()
	if !errors.As(err, &held) || held.Reason != "backoff" {
		t.Errorf("renewal during another replica's back-off: %v, want it held back (backoff)", err)
	}

	// Another replica renewed a certificate (of another name, as the
	// scripted CA fails the renewal above, which backs the name off): the
	// cache holds one that expires after the one served here.
	k2 := seenKey{name2, false}
	ca2, err := certgen.NewCA("test CA", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca2.Issue(name2, certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	_ = cache.Put(context.Background(), name2, append(keyPEM, certPEM...))
	rt.a.seen.Store(k2, seenCert{notAfter: time.Now().Add(time.Hour)})
	released := lock.released
	cancel, err = renewName(name2)
	cancel()
	if !errors.As(err, &held) || held.Reason != "renewed" {
		t.Errorf("renewal of a certificate another replica renewed: %v, want it held back (renewed)", err)
	}
	if lock.holder(name2) != "" || lock.released != released+1 {
		t.Errorf("after a renewal held back as renewed: the lock is held by %q, released %d times, want once more than %d",
			lock.holder(name2), lock.released, released)
	}
	// The cache holds the certificate served here: renew it.
	rt.a.seen.Store(k2, seenCert{notAfter: time.Now().Add(48 * time.Hour)})
	cancel, err = renewName(name2)
	cancel()
	if err != nil {
		t.Errorf("renewal of the certificate served here: %v", err)
	}
	if n := ca.count("POST " + caNewOrder); n != 2 {
		t.Errorf("the CA got %d orders, want 2", n)
	}
	waitFor(t, "the held renewals' DEBUG lines", func() bool {
		return strings.Count(logs.String(), `msg="acme renewal held back" name=pop.`) == 4
	})
}

// TestFleetOrders: in a fleet, popgate's order for a name is placed only
// under the name's fleet lock. While another replica holds it, a
// handshake waits and serves the certificate that replica stores, placing
// no order; the back-off of another replica's failed order, and a lock
// that cannot be taken, withhold the order; a failed order leaves its
// back-off in the lock for the fleet.
func TestFleetOrders(t *testing.T) {
	srv, f := newACMEServer(t, ServerConfig{}, "mail.example.com", "pop.example.com", "imap.example.com", "smtp.example.com")
	a := srv.acme
	a.fleetPoll = 10 * time.Millisecond
	obs := &recordingObserver{}
	a.obs.Store(observerBox{obs})
	lock := &fakeFleetLock{held: map[string]string{}, until: map[string]time.Time{}}
	a.fleet = lock
	ctx := context.Background()

	// The lock is free: this replica orders, and releases it.
	k := seenKey{"mail.example.com", false}
	if _, err := a.obtain(ctx, k, false); err != nil || f.orders(k) != 1 {
		t.Fatalf("order under a free lock: %v, %d orders", err, f.orders(k))
	}
	if lock.holder(k.name) != "" || lock.released != 1 || lock.backoffs[0] != 0 {
		t.Errorf("after the order: holder %q, %d releases %v; want it released without a back-off", lock.holder(k.name), lock.released, lock.backoffs)
	}

	// Another replica holds the lock: wait for its certificate.
	k = seenKey{"pop.example.com", false}
	lock.mu.Lock()
	lock.held[k.name] = "other"
	lock.mu.Unlock()
	type result struct {
		c   *tls.Certificate
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := a.obtain(ctx, k, false)
		got <- result{c, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("did not wait for the other replica's order: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	theirs := newCert(t, k.name)
	f.mu.Lock()
	f.certs[k] = &theirs
	f.mu.Unlock()
	r := <-got
	if r.err != nil || r.c == nil || !bytes.Equal(r.c.Certificate[0], theirs.Certificate[0]) {
		t.Errorf("after the other replica stored its certificate: %v; want that certificate", r.err)
	}
	if n := f.orders(k); n != 0 {
		t.Errorf("%d orders placed while another replica ordered, want 0", n)
	}
	// A waiting handshake that ends gives up.
	k = seenKey{"imap.example.com", false}
	lock.mu.Lock()
	lock.held[k.name] = "other"
	lock.mu.Unlock()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := a.obtain(short, k, false); !errors.Is(err, context.DeadlineExceeded) || f.orders(k) != 0 {
		t.Errorf("a handshake that ended while another replica orders: %v, %d orders", err, f.orders(k))
	}

	// Another replica's order failed: its back-off holds the fleet.
	k = seenKey{"smtp.example.com", false}
	lock.mu.Lock()
	lock.until[k.name] = time.Now().Add(time.Minute)
	lock.mu.Unlock()
	var back *heldBackError
	if _, err := a.obtain(ctx, k, false); !errors.As(err, &back) || f.orders(k) != 0 {
		t.Errorf("during another replica's back-off: %v, %d orders; want it held back", err, f.orders(k))
	}
	lock.mu.Lock()
	delete(lock.until, k.name)
	lock.mu.Unlock()

	// The lock cannot be taken: no order.
	lock.mu.Lock()
	lock.err = errors.New("Redis is unreachable")
	lock.mu.Unlock()
	var fe *fleetError
	if _, err := a.obtain(ctx, k, false); !errors.As(err, &fe) || f.orders(k) != 0 {
		t.Errorf("with the lock unreachable: %v, %d orders; want it withheld", err, f.orders(k))
	}
	lock.mu.Lock()
	lock.err = nil
	lock.mu.Unlock()
	if _, w := obs.counts(); w[WithheldCluster] != 1 || w[WithheldBackoff] != 1 || w[WithheldBusy] != 1 {
		t.Errorf("withheld %v, want cluster 1, backoff 1, busy 1", w)
	}

	// A failed order leaves its back-off in the lock.
	f.mu.Lock()
	f.fail = errors.New("the CA said no")
	f.mu.Unlock()
	if _, err := a.obtain(ctx, k, false); err == nil || f.orders(k) != 1 {
		t.Fatalf("failing order: %v, %d orders", err, f.orders(k))
	}
	lock.mu.Lock()
	last := lock.backoffs[len(lock.backoffs)-1]
	until := lock.until[k.name]
	lock.mu.Unlock()
	if last != domainOrderRetry || time.Until(until) <= 0 {
		t.Errorf("a failed order released the lock with back-off %v (until %v), want %v", last, until, domainOrderRetry)
	}
}

// TestFleetRenewalEndsWhileLocking: a renewal's attempt that ends while
// the fleet's lock is being taken (autocert's deadline passes during the
// round trip to Redis) has had its end handled already: the lock taken
// was kept, extended for ever, and with it every renewal of the name on
// every replica held back until the certificate expired; and the name
// counted as renewing here, refusing popgate's own orders for it. Neither
// is kept: the lock is released at once.
func TestFleetRenewalEndsWhileLocking(t *testing.T) {
	rt, _ := newScriptedTransport("http-01")
	lock := &fakeFleetLock{held: map[string]string{}, until: map[string]time.Time{}}
	rt.a.fleet, rt.a.dir = lock, &mapCache{m: map[string][]byte{}}
	_ = send(t, rt, context.Background(), "GET", caDir)
	const name = "pop.x.test"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lock.onTry = func() {
		cancel()
		waitFor(t, "the attempt's end handled", func() bool {
			rt.a.attMu.Lock()
			defer rt.a.attMu.Unlock()
			return rt.a.attempts[ctx] == nil
		})
	}
	rt.a.cacheRead(ctx, name)
	if err := send(t, rt, ctx, "POST", caNewOrder); !errors.Is(err, context.Canceled) {
		t.Errorf("renewal whose attempt ended while locking: %v, want %v", err, context.Canceled)
	}
	if h := lock.holder(name); h != "" {
		t.Errorf("after the attempt ended, the fleet lock is held by %q, want it released", h)
	}
	rt.a.attMu.Lock()
	n := rt.a.renewing[name]
	rt.a.attMu.Unlock()
	if n != 0 {
		t.Errorf("after the attempt ended, the name counts %d renewals under way, want 0", n)
	}
}
