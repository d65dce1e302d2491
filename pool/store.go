package pool

import (
	"context"
	"sync"
	"time"
)

// Store keeps the affinities: which backend each user of a pool is on,
// and until when that holds. The Director's own memory store serves one
// replica; the cluster package's keeps them in Redis for a fleet.
type Store interface {
	// Acquire returns the backend user (folded) of pool is on, for one
	// more session, when the user has an affinity that keep accepts;
	// else it records the backend choose returns (which may be "") and
	// returns it with hit false. prev is the backend of an affinity
	// that keep refused or that ran out, when the store still knows it.
	Acquire(ctx context.Context, a Acquire) (backend string, hit bool, prev string, err error)
	// Release ends a session Acquire counted; the affinity then lasts
	// ttl more once the user has no session left. fresh is true when
	// the session never logged in and its Acquire made the affinity:
	// the store may forget it, so that names nobody has cost nothing.
	Release(pool, user, backend string, ttl time.Duration, fresh bool)
	// Set makes user's affinity in pool name backend ("" forgets it),
	// whatever it was: an operator's move.
	Set(ctx context.Context, pool, user, backend string, ttl time.Duration) error
	// Users lists the affinities of pool that hold, by backend, as far
	// as the store can tell; partial says what it could not.
	Users(ctx context.Context, pool string) (users map[string][]string, partial string)
	// Counts counts, by pool and backend, this replica's live sessions
	// and the users the replica knows to be there: with an affinity in
	// its memory, or with a session here when affinities live elsewhere.
	Counts() map[string]map[string]Count
}

// Count is what [Store.Counts] counts of one backend.
type Count struct{ Users, Sessions int }

// Acquire is the question of [Store.Acquire].
type Acquire struct {
	Pool, User string
	// TTL is the pool's affinity_ttl.
	TTL time.Duration
	// Outage is the pool's [Pool.Outage]: what a store whose shared
	// affinities cannot be read does (the memory store ignores it).
	Outage string
	// Keep reports whether an affinity to backend still holds; live
	// says whether the user has a session now (on any replica the
	// store knows of), idle how long ago its last session ended.
	Keep func(backend string, live bool, idle time.Duration) bool
	// Choose picks the backend for a user without one.
	Choose func() string
}

// memEntry is one affinity in memory.
type memEntry struct {
	backend  string
	sessions int
	until    time.Time // with sessions == 0: when the affinity ends
}

type memKey struct{ pool, user string }

// MemoryStore keeps the affinities of one replica in memory.
type MemoryStore struct {
	now func() time.Time

	mu    sync.Mutex
	m     map[memKey]*memEntry
	swept time.Time
}

// NewMemoryStore returns an empty store; now nil means time.Now.
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, m: map[memKey]*memEntry{}}
}

// sweepEvery is how often entries that ran out are dropped.
const sweepEvery = time.Minute

// Acquire implements [Store].
func (s *MemoryStore) Acquire(_ context.Context, a Acquire) (string, bool, string, error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(now)
	k := memKey{a.Pool, a.User}
	e := s.m[k]
	var prev string
	if e != nil {
		if e.sessions > 0 || now.Before(e.until) {
			var idle time.Duration
			if e.sessions == 0 {
				idle = max(now.Sub(e.until.Add(-a.TTL)), 0)
			}
			if a.Keep(e.backend, e.sessions > 0, idle) {
				e.sessions++
				return e.backend, true, "", nil
			}
		}
		prev = e.backend
	}
	b := a.Choose()
	if b == "" {
		return "", false, prev, nil
	}
	if e == nil {
		e = &memEntry{}
		s.m[k] = e
	}
	// Sessions still counted on a backend that no longer holds (down,
	// or gone from the configuration) end there; the new one counts here.
	e.backend, e.sessions = b, 1
	return b, false, prev, nil
}

// Release implements [Store].
func (s *MemoryStore) Release(pool, user, backend string, ttl time.Duration, fresh bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := memKey{pool, user}
	e := s.m[k]
	if e == nil || e.backend != backend || e.sessions == 0 {
		return // moved meanwhile: the new affinity is not this session's
	}
	e.sessions--
	if e.sessions > 0 {
		return
	}
	if fresh {
		delete(s.m, k)
		return
	}
	e.until = now.Add(ttl)
}

// Set implements [Store].
func (s *MemoryStore) Set(_ context.Context, pool, user, backend string, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := memKey{pool, user}
	if backend == "" {
		delete(s.m, k)
		return nil
	}
	s.m[k] = &memEntry{backend: backend, until: s.now().Add(ttl)}
	return nil
}

// Users implements [Store].
func (s *MemoryStore) Users(_ context.Context, pool string) (map[string][]string, string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	users := map[string][]string{}
	for k, e := range s.m {
		if k.pool == pool && (e.sessions > 0 || now.Before(e.until)) {
			users[e.backend] = append(users[e.backend], k.user)
		}
	}
	return users, ""
}

// Counts implements [Store].
func (s *MemoryStore) Counts() map[string]map[string]Count {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[string]Count{}
	for k, e := range s.m {
		if e.sessions == 0 && !now.Before(e.until) {
			continue
		}
		if out[k.pool] == nil {
			out[k.pool] = map[string]Count{}
		}
		c := out[k.pool][e.backend]
		c.Users++
		c.Sessions += e.sessions
		out[k.pool][e.backend] = c
	}
	return out
}

// Len returns how many entries the store holds, those that ran out but
// were not swept yet included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// sweep drops the entries that ran out a sweepEvery ago or more, at most
// once a sweepEvery: a user who comes back soon after its affinity ran
// out is counted as a move when the hash sends it elsewhere. s.mu is
// held.
func (s *MemoryStore) sweep(now time.Time) {
	if now.Sub(s.swept) < sweepEvery {
		return
	}
	s.swept = now
	for k, e := range s.m {
		if e.sessions == 0 && now.Sub(e.until) >= sweepEvery {
			delete(s.m, k)
		}
	}
}
