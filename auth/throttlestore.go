package auth

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"
)

// ThrottleStore keeps a [Throttle]'s budgets where several processes
// share them (the fleet's Redis, cluster.ThrottleStore), so that failures
// spread over replicas count as if one process saw them all. The Throttle
// decides what to ask (which keys, which limits, the user name's fold)
// and what the answers mean; a store only counts, per key, by the rules
// of the Throttle's documentation: a window opened by the first failure,
// a lock for window by the failure that reaches the limit, attempts in
// flight holding a place, a success clearing a user's count when every
// failure came from the succeeding client's network.
//
// A store's error makes the Throttle count that attempt on its own state
// (its LRUs), as it does without a store: a store that fails must answer
// at once (not wait for a dead server at every login) and say nothing
// more than that it failed.
type ThrottleStore interface {
	// Place checks every key's budget at now and, when each has room,
	// reserves a place in each for the attempt, to be released by End
	// with the id returned; when one has none, it reserves nothing and
	// returns "". The verdicts are the keys', in order. A reservation
	// that End never releases (its process died) expires by itself,
	// later than any attempt lasts. When ctx ends first, Place fails
	// with ctx's error.
	Place(ctx context.Context, now time.Time, window time.Duration, keys []StoreKey) (id string, v []StoreVerdict, err error)
	// End releases the places of id and counts the attempt's outcome r
	// at now under each key's Limit (0: counts nothing) and window
	// (<= 0: counts nothing).
	End(ctx context.Context, now time.Time, window time.Duration, keys []StoreKey, id string, r AttemptResult) error
}

// ErrStoreBusy is a [ThrottleStore]'s error when it is up but too busy to
// answer now (every connection to it in use): the Throttle refuses the
// attempt with the retry hint of a full budget ([InFlightRetry]) rather
// than counting it on its own state, which would give the process a
// budget of its own while the store is loaded. End's ErrStoreBusy counts
// the outcome locally, as any other error does.
var ErrStoreBusy = errors.New("auth: the throttle's store is busy; try again in a moment")

// StoreKey is one budget of a [ThrottleStore].
type StoreKey struct {
	// User tells a user name's budget from a client network's.
	User bool
	// Name is the folded user name (as the Throttle keeps it) or the
	// client network (netip.Prefix.String()). A store must not keep
	// either in clear.
	Name string
	// Limit is the budget: failed and in-flight attempts.
	Limit int
	// From is, for a user's key, the client's network ("" when it has
	// none), which End's success clears only when every failure came
	// from it; "" for an address key. A store must not keep it in
	// clear.
	From string
}

// StoreVerdict is a key's answer to [ThrottleStore.Place].
type StoreVerdict struct {
	// RetryAfter > 0: the key is locked (or over its limit) for that
	// long.
	RetryAfter time.Duration
	// Full: failures and attempts in flight fill the budget; an attempt
	// must wait for one of them to end.
	Full bool
}

// ThrottleStoreReplicas is a [ThrottleStore] that knows how many
// processes share it. While the store fails, each of them counts on its
// own state; with a budget of limit each, N processes would let N times
// the limit through, so each counts against limit/N (at least 1).
type ThrottleStoreReplicas interface {
	// Replicas is the number of processes sharing the store when last
	// seen, this one included; 0 or 1 when unknown or alone.
	Replicas() int
}

// localLimit is the budget of limit that the local state counts against:
// limit without a store or alone, else its share while the store fails
// (the local state counts nothing else with a store). t.mu is held or
// the limits are read under it.
func (t *Throttle) localLimit(limit int) int {
	r, ok := t.store.(ThrottleStoreReplicas)
	if !ok || limit <= 0 {
		return limit
	}
	if n := r.Replicas(); n > 1 {
		return max(1, limit/n)
	}
	return limit
}

// Polls of a store while attempts in flight fill a shared budget: a
// store has no wake-up for attempts that end on another process, so
// Begin asks again, sooner at first.
const (
	sharedPollFirst = 20 * time.Millisecond
	sharedPollMax   = 250 * time.Millisecond
)

// beginShared is Begin with t.store. done is false when the store failed:
// the caller then does the attempt on the local state.
func (t *Throttle) beginShared(ctx context.Context, ip netip.Addr, uk string, hasUser bool) (tk Ticket, ok bool, retryAfter time.Duration, done bool) {
	poll := sharedPollFirst
	var polling chan struct{} // this attempt polls the budget (t.polls)
	var pk string
	defer func() {
		if polling != nil {
			t.mu.Lock()
			delete(t.polls, pk)
			t.mu.Unlock()
			close(polling)
		}
	}()
	for {
		t.mu.Lock()
		if !t.enabled() {
			t.mu.Unlock()
			return Ticket{}, true, 0, true
		}
		now, window := t.now(), t.window
		from, _ := ClientNet(ip, t.ipv6Bits)
		tk = Ticket{from: from, placed: true}
		var keys []StoreKey
		if from.IsValid() && t.maxIP > 0 {
			tk.ip = from
			keys = append(keys, StoreKey{Name: from.String(), Limit: t.maxIP})
		}
		if hasUser && t.maxUser > 0 {
			tk.user = uk
			keys = append(keys, StoreKey{User: true, Name: uk, Limit: t.maxUser, From: prefixString(from)})
		}
		// Counts made here while the store failed hold until their
		// window ends, whatever the store says.
		retryAfter = t.localRefusal(now, tk.ip, tk.user)
		t.mu.Unlock()
		if retryAfter > 0 {
			return Ticket{}, false, retryAfter, true
		}
		if len(keys) == 0 {
			return tk, true, 0, true
		}
		// ctx bounds the wait for attempts in flight, as without a
		// store, not the store's round trip, which its own timeouts
		// bound: an ended ctx still gets an answer where no wait is
		// needed.
		id, vs, err := t.store.Place(context.WithoutCancel(ctx), now, window, keys)
		if errors.Is(err, ErrStoreBusy) {
			return Ticket{}, false, InFlightRetry, true
		}
		if err != nil || len(vs) != len(keys) {
			return Ticket{}, false, 0, false
		}
		full := false
		for _, v := range vs {
			retryAfter, full = max(retryAfter, v.RetryAfter), full || v.Full
		}
		switch {
		case retryAfter > 0:
			return Ticket{}, false, retryAfter, true
		case !full && id != "":
			tk.shared = id
			return tk, true, 0, true
		case !full:
			return Ticket{}, false, 0, false // a store that broke its word
		}
		if polling == nil {
			// One attempt per budget polls the store; the others of
			// this process wait until it stops (it has its place, or
			// gave up) and then ask once, so that a flood of attempts
			// on a full budget does not load the store with polls.
			pk = pollKey(keys)
			t.mu.Lock()
			ch, busy := t.polls[pk]
			if !busy {
				polling = make(chan struct{})
				t.polls[pk] = polling
			}
			t.mu.Unlock()
			if busy {
				select {
				case <-ch:
					continue
				case <-ctx.Done():
					return Ticket{}, false, InFlightRetry, true
				}
			}
		}
		timer := time.NewTimer(poll)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return Ticket{}, false, InFlightRetry, true
		}
		poll = min(2*poll, sharedPollMax)
	}
}

// pollKey names the budgets of keys for t.polls.
func pollKey(keys []StoreKey) string {
	var b strings.Builder
	for _, k := range keys {
		if k.User {
			b.WriteString("u:")
		} else {
			b.WriteString("i:")
		}
		b.WriteString(k.Name)
		b.WriteByte(0)
	}
	return b.String()
}

// localRefusal is how long the local counts of the keys ip (invalid:
// none) and user ("": none) refuse an attempt; 0 when they do not. t.mu
// is held.
func (t *Throttle) localRefusal(now time.Time, ip netip.Prefix, user string) time.Duration {
	var retryAfter time.Duration
	check := func(f *failures, limit int) {
		switch left := f.lockLeft(now); {
		case left > 0:
			retryAfter = max(retryAfter, left)
		case f.count(now, t.window) >= limit:
			retryAfter = max(retryAfter, f.start.Add(t.window).Sub(now))
		}
	}
	if f, ok := t.ips.Peek(ip); ok && ip.IsValid() {
		check(f, t.localLimit(t.maxIP))
	}
	if f, ok := t.users.Peek(user); ok && user != "" {
		check(f, t.localLimit(t.maxUser))
	}
	return retryAfter
}

// endShared is End for an attempt placed in t.store. When the store fails,
// the outcome counts on the local state (the store's reservation expires
// by itself), for both keys even when the store counted one of them (an
// unusable entry of the other): a failure then counts here as well as in
// the store, which errs on the side of the limit.
func (t *Throttle) endShared(tk Ticket, r AttemptResult) {
	t.mu.Lock()
	now, window := t.now(), t.window
	var keys []StoreKey
	if tk.ip.IsValid() {
		keys = append(keys, StoreKey{Name: tk.ip.String(), Limit: t.maxIP})
	}
	if tk.user != "" {
		keys = append(keys, StoreKey{User: true, Name: tk.user, Limit: t.maxUser, From: prefixString(tk.from)})
	}
	t.mu.Unlock()
	// The outcome counts even when the client has gone: no ctx of its.
	if t.store.End(context.Background(), now, window, keys, tk.shared, r) == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now = t.now()
	if tk.ip.IsValid() {
		endKey(t.ips, tk.ip, r, netip.Prefix{}, now, t.localLimit(t.maxIP), t.window, false)
	}
	if tk.user != "" {
		endKey(t.users, tk.user, r, tk.from, now, t.localLimit(t.maxUser), t.window, false)
	}
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}
