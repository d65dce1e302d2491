package auth

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fullStore answers every Place that the budget is full of attempts in
// flight, counting the Places.
type fullStore struct{ places atomic.Int64 }

func (s *fullStore) Place(_ context.Context, _ time.Time, _ time.Duration, keys []StoreKey) (string, []StoreVerdict, error) {
	s.places.Add(1)
	vs := make([]StoreVerdict, len(keys))
	vs[0].Full = true
	return "", vs, nil
}

func (s *fullStore) End(context.Context, time.Time, time.Duration, []StoreKey, string, AttemptResult) error {
	return nil
}

// TestAttack7OnePollerPerBudget: a flood of attempts for one user whose
// shared budget is full of attempts in flight: one attempt of the
// process polls the store, the others wait for it instead of each
// polling (which loads Redis the more, the more attempts wait, and could
// push it past its timeouts). 20 waiters for 700 ms: each polling would
// be some 20 × 6 Places; one poller, about 20 + 6.
func TestAttack7OnePollerPerBudget(t *testing.T) {
	st := &fullStore{}
	th := NewThrottle(ThrottleConfig{MaxPerUser: 3, Window: time.Minute, Store: st})
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	const waiters = 20
	var wg sync.WaitGroup
	for range waiters {
		wg.Go(func() {
			tk, ok, wait := th.Begin(ctx, netip.Addr{}, "alice")
			th.End(tk, AttemptAborted)
			if ok || wait != InFlightRetry {
				t.Errorf("Begin on a full budget = %v, %v", ok, wait)
			}
		})
	}
	wg.Wait()
	if n := st.places.Load(); n > 2*waiters {
		t.Errorf("%d waiters on a full budget made %d Places, want at most %d (one poller)", waiters, n, 2*waiters)
	}
	th.mu.Lock()
	left := len(th.polls)
	th.mu.Unlock()
	if left != 0 {
		t.Errorf("%d pollers remembered after every attempt gave up", left)
	}
}
