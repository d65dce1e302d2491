package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
)

// TestAttack7SameNodeHandover: during an upgrade the old process drains
// its sessions while the new one serves, both with the node's node_name.
// Each must keep its own sessions listed (neither overwrites the other's
// entry), a kick by user asked on the new one must end the old one's
// sessions too, a kick by id must reach the process that holds the
// session, and the old one's exit must not take the new one's sessions
// out of the fleet's list.
func TestAttack7SameNodeHandover(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	old := startMember(t, r, "node0", key)
	old.local.add("aa0001", "mallory")
	old.local.add("aa0002", "carol")
	cur := startMember(t, r, "node0", key)
	cur.local.add("bb0001", "bob")
	waitSubscribed(t, cur, 2)

	// Alone in the fleet but for its predecessor: the kick must reach it.
	e := cur.s.End(context.Background(), "mallory", "")
	if u := old.local.users(); slices.Contains(u, "mallory") {
		t.Errorf("a kick of mallory asked on the new process left the old one's session: %v (End %+v)", u, e)
	}
	if e.Total() != 1 {
		t.Errorf("End(mallory) = %+v, want 1 ended", e)
	}

	other := startMember(t, r, "node1", key)
	waitSubscribed(t, other, 3)
	time.Sleep(3 * other.s.refresh)
	for range 5 {
		list, partial := other.s.List(context.Background())
		var ids []string
		for _, s := range list {
			ids = append(ids, s.ID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"node0:aa0002", "node0:bb0001"}) {
			t.Fatalf("node1 lists %v (partial %q), want the sessions of both processes of node0", ids, partial)
		}
		time.Sleep(old.s.refresh)
	}
	// The new process lists its predecessor's sessions too.
	if list, _ := cur.s.List(context.Background()); len(list) != 2 {
		t.Errorf("the new process lists %+v, want its own and the old one's", list)
	}

	// A kick by id of the old process's session, asked on the new one.
	e = cur.s.End(context.Background(), "", "node0:aa0002")
	if len(old.local.users()) != 0 || e.Total() != 1 {
		t.Errorf("End(node0:aa0002) on the new process = %+v; the old one keeps %v", e, old.local.users())
	}

	old.stop()
	list, partial := other.s.List(context.Background())
	if len(list) != 1 || list[0].ID != "node0:bb0001" {
		t.Errorf("after the old process left, node1 lists %+v (partial %q), want the new one's session", list, partial)
	}
	e = other.s.End(context.Background(), "", "node0:bb0001")
	if e.Total() != 1 || len(cur.local.users()) != 0 {
		t.Errorf("after the old process left, End(node0:bb0001) = %+v", e)
	}
}
