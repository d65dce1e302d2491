package tlsconf

// Regression tests from the attack review of upgrades (the session ticket
// keys a new process inherits, the orders of a process that drains).

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"
)

// TestAttack8InheritedKeyFromTheFuture: a key the process being replaced
// says it made after now (a garbage or hostile key stream, a clock set
// back) became the newest key: it sealed every ticket, and since a key is
// rotated out only once it is a rotation period old, it sealed them until
// that date came, and was accepted a lifetime after; the rotation and the
// lifetime meant nothing. A key from the future is not taken.
func TestAttack8InheritedKeyFromTheFuture(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	past := TicketKey{Key: [32]byte{1}, Made: now.Add(-10 * time.Minute)}
	future := TicketKey{Key: [32]byte{2}, Made: now.Add(365 * 24 * time.Hour)}
	heir, err := NewTickets(TicketsConfig{Rotation: time.Hour, Lifetime: 2 * time.Hour, Now: clock,
		Inherited: []TicketKey{past, future}})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(3 * time.Hour) // past every lifetime
	keys, _, err := heir.src.TicketKeys(now)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k == future.Key {
			t.Fatal("a key made a year from now still seals or opens tickets after the key lifetime")
		}
	}
	if got := heir.LocalKeys(); len(got) != 1 || got[0].Key == past.Key || got[0].Key == future.Key {
		t.Errorf("keys after the lifetime: %d; want one new key", len(got))
	}
}

// TestAttack8TicketsSealedDuringUpgrade: the old process hands its keys
// to the new one when it starts it, and serves on until the new one
// serves, which may take minutes (certificates, a large map file). When
// its rotation came in between, it sealed tickets with a key made after
// the hand-over, which the new process never got: they did not resume
// there. A hold keeps the old process sealing with keys the new one has.
func TestAttack8TicketsSealedDuringUpgrade(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { return now }
	old, err := NewTickets(TicketsConfig{Rotation: time.Minute, Lifetime: 10 * time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	now = t0.Add(50 * time.Second)
	release := old.HoldRotation()
	handed := old.LocalKeys()
	has := func(k [32]byte) bool {
		for _, h := range handed {
			if h.Key == k {
				return true
			}
		}
		return false
	}
	now = t0.Add(2 * time.Minute) // the new process loads; a rotation is due
	keys, refresh, err := old.src.TicketKeys(now)
	if err != nil {
		t.Fatal(err)
	}
	if !has(keys[0]) {
		t.Fatal("during the upgrade the old process seals tickets with a key the new process does not have")
	}
	if !refresh.After(now) || refresh.After(now.Add(time.Minute)) {
		t.Errorf("refresh during the hold: %v; want soon after %v", refresh, now)
	}
	// A failed upgrade: the old process rotates again.
	release()
	if keys, _, _ = old.src.TicketKeys(now); has(keys[0]) {
		t.Error("no rotation after the hold was released")
	}
}

// TestAttack8NoOrdersAfterHandover: the old process of an upgrade drains
// for up to limits.shutdown_timeout with its autocert manager alive: a
// renewal due in that window ran in both processes, two orders against
// the CA's rate limits. After StopOrders neither a renewal nor an order
// of popgate's reaches the CA; before it, both do.
func TestAttack8NoOrdersAfterHandover(t *testing.T) {
	rt, ca := newScriptedTransport("tls-alpn-01")
	ordered := 0
	rt.a.get = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { ordered++; return nil, errors.New("no CA here") }
	_ = send(t, rt, context.Background(), "GET", caDir)
	renewal, endRenewal := context.WithCancel(context.Background())
	rt.a.cacheRead(renewal, "pop.x.test")
	if err := send(t, rt, renewal, "POST", caNewOrder); err != nil {
		t.Fatalf("renewal before the handover: %v", err)
	}
	endRenewal()
	waitFor(t, "the renewal's end", func() bool {
		rt.a.attMu.Lock()
		defer rt.a.attMu.Unlock()
		return len(rt.a.renewing) == 0
	})

	srv := &Server{acme: rt.a, log: rt.a.log}
	srv.StopOrders()
	again, endAgain := context.WithCancel(context.Background())
	defer endAgain()
	rt.a.cacheRead(again, "pop.x.test+rsa")
	var held *renewalHeldError
	if err := send(t, rt, again, "POST", caNewOrder); !errors.As(err, &held) || held.Reason != "stopped" {
		t.Errorf("renewal after StopOrders: %v; want it held back, reason stopped", err)
	}
	if n := ca.count("POST " + caNewOrder); n != 1 {
		t.Errorf("the CA got %d orders, want 1 (the renewal before the handover)", n)
	}
	if _, err := rt.a.order(context.Background(), seenKey{"pop.x.test", false}, false); !errors.Is(err, errOrdersStopped) || ordered != 0 {
		t.Errorf("order after StopOrders: %v (%d orders); want it held back", err, ordered)
	}
	srv.StopOrders() // twice: no harm
}

// TestAttack8StopOrdersServer: through a Server with ACME, as popgate
// builds it: a certificate not held yet is not ordered after StopOrders.
func TestAttack8StopOrdersServer(t *testing.T) {
	srv, f := newACMEServer(t, ServerConfig{}, "mail.example.com")
	srv.StopOrders()
	k := seenKey{"mail.example.com", false}
	if _, err := srv.acme.obtain(context.Background(), k, false); err == nil || f.orders(k) != 0 {
		t.Errorf("order after StopOrders: %v, %d orders; want none", err, f.orders(k))
	}
	(&Server{}).StopOrders() // without ACME: nothing to stop
}
