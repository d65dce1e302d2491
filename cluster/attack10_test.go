package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/pool"
)

// TestAttack10UpgradeKeepsOldProcessHold: during an upgrade two processes
// run as one node (one node name). The new process's session of a user
// ending must not end the hold of the old process's session that still
// relays: with the hold gone, the user's next login goes wherever the
// hash says now, and the mailbox is open on two backends.
func TestAttack10UpgradeKeepsOldProcessHold(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	mk := func(node string) *pool.Director {
		c, _ := openNode(t, r, node, key)
		return pool.New(pool.Config{
			Pools:    []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: 0}},
			Backends: allBackends,
			Store:    c.NewPoolStore(time.Minute),
			Admin:    c.PoolAdmin(),
		})
	}
	old, upgraded, other := mk("node0"), mk("node0"), mk("node1")
	ctx := context.Background()
	b, releaseOld, _, err := old.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseOld(true)
	if err := old.Change(ctx, "p", pool.Op{Action: "drain", Backend: b}); err != nil {
		t.Fatal(err)
	}
	b2, release, _, err := upgraded.Assign(ctx, "p", "bob")
	if err != nil || b2 != b {
		t.Fatalf("the new process sent bob to %q (%v) while the old one has a session on %s", b2, err, b)
	}
	release(true)
	if err := other.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b3, release3, _, err := other.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer release3(true)
	if b3 != b {
		t.Errorf("bob went to %s while the old process still relays a session on %s: one mailbox on two backends", b3, b)
	}
}
