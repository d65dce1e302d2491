package cluster

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/pool"
)

// TestAttack10OutageRefusesUnheldUser: a replica that cannot reach Redis
// does not know where the fleet holds a user (another replica's session
// after a drain, a move): it assigns a pool login only when it holds a
// live session of the user itself, and refuses the others (a temporary
// error, the client retries), unless the pool says outage = "hash".
func TestAttack10OutageRefusesUnheldUser(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	addr, px := startBlockingProxy(t, r.Addr())
	ca, err := Open(Config{Redis: strings.Replace(r.URL(), r.Addr(), addr, 1), KeyFile: key, NodeName: "nodeA"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	pools := []pool.Pool{
		{Name: "p", Members: threeBackends, AffinityTTL: time.Hour},
		{Name: "h", Members: threeBackends, AffinityTTL: time.Hour, Outage: pool.OutageHash},
	}
	a := pool.New(pool.Config{Pools: pools, Backends: allBackends, Store: ca.NewPoolStore(time.Hour), Admin: ca.PoolAdmin()})
	cb, _ := openNode(t, r, "nodeB", key)
	b := pool.New(pool.Config{Pools: pools, Backends: allBackends, Store: cb.NewPoolStore(time.Hour), Admin: cb.PoolAdmin()})
	ctx := context.Background()

	// carol has a session on A, opened while Redis answered.
	onA, releaseA, _, err := a.Assign(ctx, "p", "carol")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseA(true)
	// bob is on B; then his backend is drained: A's hash sends him
	// elsewhere, B's session holds him where he is.
	onB, releaseB, _, err := b.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseB(true)
	if err := b.Change(ctx, "p", pool.Op{Action: "drain", Backend: onB}); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	px.set(true)
	if got, rel, _, err := a.Assign(ctx, "p", "bob"); err == nil {
		rel(true)
		t.Errorf("with Redis unreachable A sent bob to %s (B holds him on %s): a mailbox may open on two backends", got, onB)
	}
	got, rel, _, err := a.Assign(ctx, "p", "carol")
	if err != nil || got != onA {
		t.Errorf("with Redis unreachable A refused carol, whose live session it holds on %s: %q, %v", onA, got, err)
	} else {
		rel(true)
	}
	if _, rel, _, err := a.Assign(ctx, "h", "dave"); err != nil {
		t.Errorf("outage = \"hash\" refused a login with Redis unreachable: %v", err)
	} else {
		rel(true)
	}
	if ca.Fallbacks()["pools"] == 0 {
		t.Error("the refusals are not counted as fallbacks")
	}
	if st := a.Stats(); st.Refused == 0 {
		t.Error("the refusals are not counted in the pool's stats")
	}
}

// TestAttack10StalledRenewEndsConflict: a replica whose holds stop
// reaching Redis (a stalled heartbeat, a partition) loses its session's
// hold; another replica then assigns the user elsewhere. When the
// stalled one's renewals get through again, it must not add its hold to
// the other backend's affinity as if it were its own, nor take it back:
// it ends its own sessions of the user (as a move does) and counts it.
func TestAttack10StalledRenewEndsConflict(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	addr, px := startBlockingProxy(t, r.Addr())
	ca, err := Open(Config{Redis: strings.Replace(r.URL(), r.Addr(), addr, 1), KeyFile: key, NodeName: "nodeA"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	pools := []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: time.Hour}}
	sa := ca.NewPoolStore(100 * time.Millisecond)
	a := pool.New(pool.Config{Pools: pools, Backends: allBackends, Store: sa, Admin: ca.PoolAdmin()})
	sa.OnConflict(a.Conflict)
	type end struct{ pool, user, backend string }
	ended := make(chan end, 4)
	a.SetEnd(func(p, u, b string) int { ended <- end{p, u, b}; return 1 })
	cb, _ := openNode(t, r, "nodeB", key)
	sb := cb.NewPoolStore(100 * time.Millisecond)
	b := pool.New(pool.Config{Pools: pools, Backends: allBackends, Store: sb, Admin: cb.PoolAdmin()})
	ctx := context.Background()

	onA, releaseA, _, err := a.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseA(true)
	if err := b.Change(ctx, "p", pool.Op{Action: "drain", Backend: onA}); err != nil {
		t.Fatal(err)
	}
	px.set(true)
	k := sb.name("p", "bob")
	deadline := time.Now().Add(5 * time.Second)
	for cb.client.Exists(ctx, k).Val() == 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	onB, releaseB, _, err := b.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseB(true)
	if onB == onA {
		t.Fatalf("B sent bob to drained %s: the hold did not run out", onA)
	}
	px.set(false)
	select {
	case e := <-ended:
		if e != (end{"p", "bob", onA}) {
			t.Errorf("A ended %+v, want bob's sessions on %s", e, onA)
		}
	case <-time.After(PoolRetry + 5*time.Second):
		t.Fatalf("A, its renewals through again, still relays bob on %s while the fleet holds him on %s: one mailbox on two backends", onA, onB)
	}
	if n := a.Stats().Moves[pool.MoveConflict]; n != 1 {
		t.Errorf("moves{reason=conflict} = %d, want 1", n)
	}
	// A's renewals go on: the affinity stays B's, and A holds it not.
	time.Sleep(300 * time.Millisecond)
	got, rel, _, err := b.Assign(ctx, "p", "bob")
	if err != nil || got != onB {
		t.Errorf("after A's renewals bob is on %q (%v), want %s", got, err, onB)
	} else {
		rel(true)
	}
	if n := a.Stats().Counts["p"][onA].Sessions; n != 0 {
		t.Errorf("A still counts %d sessions of bob on %s", n, onA)
	}
	if hold, _ := r.Do("HGET", k, "n:"+sa.holder); strings.TrimSpace(hold) != "" {
		t.Errorf("A's hold %q is on the affinity B wrote for another backend", hold)
	}
}
