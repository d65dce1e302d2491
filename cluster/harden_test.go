package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// TestAttack7PoolBusyIsNotDown: when every connection of the pool is busy
// (a login flood), the throttle refuses the attempt for now with the
// full budget's retry hint; it does not take Redis for down, which would
// make this replica count every login locally for ThrottleRetry.
func TestAttack7PoolBusyIsNotDown(t *testing.T) {
	r := startRedis(t)
	rs := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 5, MaxPerUser: 5, Window: time.Minute})
	rep := rs[0]
	if ok, _ := attempt(rep.th, tip1, "alice", auth.AttemptFailed); !ok {
		t.Fatal("first attempt refused")
	}
	// Hold the 4 connections of the pool with blocking reads.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.c.client.BLPop(context.Background(), 2*time.Second, rep.c.key("nothing"))
		}()
	}
	time.Sleep(200 * time.Millisecond)
	tk, ok, wait := rep.th.Begin(noWait, tip1, "alice")
	rep.th.End(tk, auth.AttemptFailed)
	if ok || wait != auth.InFlightRetry {
		t.Errorf("Begin with a busy pool = %v, %v; want refused with %v", ok, wait, auth.InFlightRetry)
	}
	rep.store.mu.Lock()
	down := rep.store.down
	rep.store.mu.Unlock()
	if down || !rep.c.Up() {
		t.Errorf("a busy pool made the throttle take Redis for down (down %v, up %v)", down, rep.c.Up())
	}
	wg.Wait()
	if ok, _ := attempt(rep.th, tip1, "alice", auth.AttemptFailed); !ok {
		t.Error("attempt refused once the pool is free again")
	}
}
