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
// A replica that has handed over leaves the entry to the new process.
func TestAttack8UpgradeKeepsTheEntry(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	old := startMember(t, r, "node0", key)
	old.local.add("0ld001", "alice")
	heir := startMember(t, r, "node0", key, func(s *Sessions) { s.refresh = 250 * time.Millisecond })
	heir.local.add("4e7001", "bob")
	other := startMember(t, r, "node1", key)
	old.s.HandedOver()
	time.Sleep(600 * time.Millisecond) // the new process has written its list since
	missing := 0
	for i := range 60 {
		if i == 20 {
			old.stop() // the drain is over
		}
		list, _ := other.s.List(context.Background())
		found := false
		for _, s := range list {
			if s.ID == "node0:4e7001" {
				found = true
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
}
