package auth

import (
	"context"
	"errors"
	"testing"
	"time"
)

// stubStore places every attempt, or fails Place or End.
type stubStore struct {
	failPlace, failEnd bool
	places, ends       int
}

var errStub = errors.New("store down")

func (s *stubStore) Place(_ context.Context, now time.Time, window time.Duration, keys []StoreKey) (string, []StoreVerdict, error) {
	s.places++
	if s.failPlace {
		return "", nil, errStub
	}
	return "id", make([]StoreVerdict, len(keys)), nil
}

func (s *stubStore) End(_ context.Context, now time.Time, window time.Duration, keys []StoreKey, id string, r AttemptResult) error {
	s.ends++
	if s.failEnd {
		return errStub
	}
	return nil
}

// TestThrottleStoreFails: a store that fails leaves the Throttle counting
// on its own, as without one; a failure whose End the store fails still
// counts here, and a lock counted here refuses though the store would
// let the attempt go ahead.
func TestThrottleStoreFails(t *testing.T) {
	clk := newClock()
	cfg := ThrottleConfig{MaxPerIP: 0, MaxPerUser: 3, Window: 10 * time.Minute, Now: clk.now}
	cfg.Store = &stubStore{failPlace: true}
	th := NewThrottle(cfg)
	for i := range 3 {
		if !try(th, ip1, "alice", AttemptFailed) {
			t.Fatalf("failure %d refused", i+1)
		}
	}
	if ok, wait := allowed(th, ip2, "alice"); ok || wait != 10*time.Minute {
		t.Errorf("with the store failing, after 3 failures Begin = %v, %v; want refused for 10m", ok, wait)
	}

	store := &stubStore{failEnd: true}
	cfg.Store = store
	th = NewThrottle(cfg)
	for i := range 3 {
		if !try(th, ip1, "bob", AttemptFailed) {
			t.Fatalf("failure %d refused", i+1)
		}
	}
	places := store.places
	clk.add(time.Minute)
	if ok, wait := allowed(th, ip2, "bob"); ok || wait != 9*time.Minute {
		t.Errorf("after 3 failures whose End the store failed, Begin = %v, %v; want refused for 9m", ok, wait)
	}
	if store.places != places {
		t.Error("the store was asked though a local lock refuses")
	}
	// Nothing in flight was left behind by the failed Ends: carol, whose
	// attempts End in the store, is not held up.
	store.failEnd = false
	for i := range 5 {
		if !try(th, ip1, "carol", AttemptAborted) {
			t.Fatalf("attempt %d of carol refused", i+1)
		}
	}
	if th.Len() != 1 {
		t.Errorf("Len = %d; want bob's count only", th.Len())
	}
}
