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
