package auth

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Throttle limits failed logins per client address and per user name
// (limits.max_failures_per_ip, limits.max_failures_per_user,
// limits.failure_window).
//
// A login attempt asks [Throttle.Begin] before it reaches a lookup or a
// backend and reports its outcome with [Throttle.End]. Begin reserves a
// place in the budget of the attempt's address and user for as long as the
// attempt is in flight, so that attempts sent at once cannot race past the
// limit: at any moment, an address or user has at most max attempts that
// are in flight or failed within the window, however the attempts are
// timed. A slow backend makes no difference.
//
// Semantics, per key (address or user):
//   - Failures are counted in a window that opens with the first failure
//     and lasts window; a failure after the window has passed starts a new
//     count.
//   - The failure that reaches the limit locks the key for window from that
//     moment: Begin refuses it, with the time left, until the lock ends, and
//     the count then starts from zero.
//   - While failures and attempts in flight together reach the limit,
//     Begin refuses further attempts of that key too, with a retry hint of
//     [InFlightRetry]; once the attempts end, their outcome decides.
//   - Success clears the user's count, not the address's: a user who
//     mistyped and then got in is not held to old typos, while one address
//     guessing at many names (or a NAT shared with a legitimate user) keeps
//     its count, as fail2ban does.
//   - Addresses are grouped as [ClientNet] groups them (IPv6 by
//     ThrottleConfig.IPv6Prefix); user names compare case-insensitively
//     (ASCII).
//   - A max of 0 means no limit on that key; a window <= 0 disables the
//     Throttle.
//
// Memory is bounded: each kind of key lives in an LRU of size entries, so a
// flood of random names or addresses evicts the oldest counts instead of
// growing. An attacker can thereby make the Throttle forget a count; size
// it well above the number of keys failing within a window. A key with
// nothing in flight and no failure is not kept. A Throttle is safe for
// concurrent use.
type Throttle struct {
	maxIP, maxUser int
	window         time.Duration
	ipv6Bits       int
	now            func() time.Time

	mu    sync.Mutex
	ips   *simplelru.LRU[netip.Prefix, *failures]
	users *simplelru.LRU[string, *failures]
}

// ThrottleConfig configures [NewThrottle].
type ThrottleConfig struct {
	MaxPerIP   int           // failed or in-flight logins per client address; 0: no limit
	MaxPerUser int           // the same per user name; 0: no limit
	Window     time.Duration // <= 0 disables the Throttle
	// Size bounds the addresses and the names tracked, each; <= 0 means
	// DefaultThrottleSize.
	Size int
	// IPv6Prefix groups IPv6 clients (see ClientNet); 0 means
	// DefaultIPv6Prefix.
	IPv6Prefix int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

type failures struct {
	n        int
	start    time.Time // first failure of the current count
	locked   time.Time // zero, or when the lock ends
	inFlight int       // attempts begun and not yet ended
}

// DefaultThrottleSize is the LRU size NewThrottle uses for Size <= 0.
const DefaultThrottleSize = 100_000

// InFlightRetry is the retry hint Begin gives when attempts in flight fill
// a budget: they end within a login's time.
const InFlightRetry = time.Second

// AttemptResult is how a login attempt ended, for [Throttle.End].
type AttemptResult int

const (
	// AttemptFailed is a wrong password or an unknown user: it counts.
	AttemptFailed AttemptResult = iota
	// AttemptSucceeded clears the user's count.
	AttemptSucceeded
	// AttemptAborted is neither: the backend or the lookup failed, the
	// mailbox was locked, the client or the server went away. It only
	// gives the attempt's place back.
	AttemptAborted
)

// NewThrottle returns a Throttle.
func NewThrottle(c ThrottleConfig) *Throttle {
	size := c.Size
	if size <= 0 {
		size = DefaultThrottleSize
	}
	now := c.Now
	if now == nil {
		now = time.Now
	}
	t := &Throttle{maxIP: max(c.MaxPerIP, 0), maxUser: max(c.MaxPerUser, 0), window: c.Window, ipv6Bits: c.IPv6Prefix, now: now}
	// simplelru.NewLRU fails only for size <= 0.
	t.ips, _ = simplelru.NewLRU[netip.Prefix, *failures](size, nil)
	t.users, _ = simplelru.NewLRU[string, *failures](size, nil)
	return t
}

func (t *Throttle) enabled() bool { return t != nil && t.window > 0 && (t.maxIP > 0 || t.maxUser > 0) }

func userKey(user string) (string, bool) {
	return strings.ToLower(user), user != ""
}

// Begin reports whether a login attempt from ip for user may go ahead and,
// when not, how long until it may. An attempt that may go ahead holds a
// place in both budgets until End reports how it ended; the caller must
// call End exactly once for it. An invalid ip or empty user is not checked
// on that side.
func (t *Throttle) Begin(ip netip.Addr, user string) (ok bool, retryAfter time.Duration) {
	if !t.enabled() {
		return true, 0
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	ipk, hasIP := ClientNet(ip, t.ipv6Bits)
	hasIP = hasIP && t.maxIP > 0
	uk, hasUser := userKey(user)
	hasUser = hasUser && t.maxUser > 0
	var fi, fu *failures
	if hasIP {
		fi, _ = t.ips.Get(ipk)
		retryAfter = max(retryAfter, fi.wait(now, t.maxIP, t.window))
	}
	if hasUser {
		fu, _ = t.users.Get(uk)
		retryAfter = max(retryAfter, fu.wait(now, t.maxUser, t.window))
	}
	if retryAfter > 0 {
		return false, retryAfter
	}
	if hasIP {
		if fi == nil {
			fi = &failures{}
			t.ips.Add(ipk, fi)
		}
		fi.inFlight++
	}
	if hasUser {
		if fu == nil {
			fu = &failures{}
			t.users.Add(uk, fu)
		}
		fu.inFlight++
	}
	return true, 0
}

// End reports how an attempt that Begin let go ahead ended.
func (t *Throttle) End(ip netip.Addr, user string, r AttemptResult) {
	if !t.enabled() {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if k, ok := ClientNet(ip, t.ipv6Bits); ok && t.maxIP > 0 {
		endKey(t.ips, k, r, false, now, t.maxIP, t.window)
	}
	if k, ok := userKey(user); ok && t.maxUser > 0 {
		endKey(t.users, k, r, true, now, t.maxUser, t.window)
	}
}

// endKey ends one attempt of key k in lru. A success clears the count when
// clearOnSuccess is set (user names).
func endKey[K comparable](lru *simplelru.LRU[K, *failures], k K, r AttemptResult, clearOnSuccess bool, now time.Time, limit int, window time.Duration) {
	f, ok := lru.Get(k)
	if !ok {
		if r != AttemptFailed {
			return
		}
		// Evicted while in flight (a flood of other keys): the failure
		// still counts.
		f = &failures{}
		lru.Add(k, f)
	}
	if f.inFlight > 0 {
		f.inFlight--
	}
	switch {
	case r == AttemptFailed:
		f.add(now, limit, window)
	case r == AttemptSucceeded && clearOnSuccess:
		f.n, f.locked = 0, time.Time{}
	}
	if f.inFlight == 0 && f.count(now, window) == 0 && f.lockLeft(now) == 0 {
		lru.Remove(k)
	}
}

// wait returns how long the key is refused: the lock's time left, or
// InFlightRetry while failures and attempts in flight fill the budget.
// f may be nil (nothing tracked).
func (f *failures) wait(now time.Time, limit int, window time.Duration) time.Duration {
	if f == nil {
		return 0
	}
	if left := f.lockLeft(now); left > 0 {
		return left
	}
	if f.count(now, window)+f.inFlight >= limit {
		return InFlightRetry
	}
	return 0
}

func (f *failures) lockLeft(now time.Time) time.Duration {
	if f.locked.IsZero() || !now.Before(f.locked) {
		return 0
	}
	return f.locked.Sub(now)
}

// count returns the failures of the current window: none once the window
// or the lock has passed.
func (f *failures) count(now time.Time, window time.Duration) int {
	if !f.locked.IsZero() {
		if now.Before(f.locked) {
			return f.n
		}
		return 0
	}
	if f.n == 0 || now.Sub(f.start) >= window {
		return 0
	}
	return f.n
}

// add counts one failure at now against limit.
func (f *failures) add(now time.Time, limit int, window time.Duration) {
	if f.lockLeft(now) > 0 {
		return // locked: the lock does not grow
	}
	if f.count(now, window) == 0 {
		f.n, f.start, f.locked = 0, now, time.Time{} // a new count
	}
	f.n++
	if f.n >= limit {
		f.locked = now.Add(window)
	}
}

// Len returns the number of addresses and user names tracked.
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ips.Len() + t.users.Len()
}
