package cluster

// Regression tests from the attack review of upgrades: the old and the new
// process of an upgrade are one replica (one node_name) for a while.

import (
	"context"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
)

// TestAttack8UpgradeKeepsTheEntry: during an upgrade the process that
// drains and the one that serves share the node's entry. The draining one
// wrote its list over the new one's at every refresh, so that the fleet
// listed the sessions of one or the other by turns, and when its drain
// ended it deleted the entry and took the node out of the index: the new
// process's sessions were missing from every list until its next refresh.
// Each process keeps an entry of its own: the new process's sessions are
// listed throughout, and the old one's until its drain ends.
func TestAttack8UpgradeKeepsTheEntry(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	old := startMember(t, r, "node0", key)
	old.local.add("0ld001", "alice")
	heir := startMember(t, r, "node0", key, func(s *Sessions) { s.refresh = 250 * time.Millisecond })
	heir.local.add("4e7001", "bob")
	other := startMember(t, r, "node1", key)
	time.Sleep(600 * time.Millisecond) // the new process has written its list since
	missing, draining := 0, 0
	for i := range 60 {
		if i == 20 {
			old.stop() // the drain is over
		}
		list, _ := other.s.List(context.Background())
		found := false
		for _, s := range list {
			switch s.ID {
			case "node0:4e7001":
				found = true
			case "node0:0ld001":
				if i < 20 {
					draining++
				}
			}
		}
		if !found {
			missing++
		}
		time.Sleep(10 * time.Millisecond)
	}
	if missing > 0 {
		t.Errorf("the new process's session was missing from the fleet's list in %d of 60 looks, during and after the old process's drain", missing)
	}
	if draining != 20 {
		t.Errorf("the draining process's session was listed in %d of the 20 looks before its drain ended", draining)
	}
}
