package tlsconf

import (
	"context"
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
	held     map[string]string // name → holder ("other" for another replica)
	err      error             // the store is unreachable
	released int
}

func (l *fakeFleetLock) TryLock(name string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, false, l.err
	}
	if l.held[name] != "" {
		return nil, false, nil
	}
	l.held[name] = "me"
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.held, name)
		l.released++
	}, true, nil
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
// cannot be taken ("cluster"), and when the shared cache holds a
// certificate renewed by another replica ("renewed"), releasing the lock
// at once.
func TestFleetRenewalRules(t *testing.T) {
	var logs syncBuffer
	rt, ca := newScriptedTransport("http-01")
	rt.a.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lock := &fakeFleetLock{held: map[string]string{}}
	cache := &mapCache{m: map[string][]byte{}}
	rt.a.fleet, rt.a.dir = lock, cache
	_ = send(t, rt, context.Background(), "GET", caDir)
	const name, name2 = "pop.x.test", "pop.y.test"
	rt.a.allowed[name2] = true

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
		return strings.Count(logs.String(), `msg="acme renewal held back" name=pop.`) == 3
	})
}
