package auth

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Throttle counts failed logins per client address and per user name and
// refuses further attempts once either passes its limit
// (limits.max_failures_per_ip, limits.max_failures_per_user,
// limits.failure_window).
//
// Semantics, per key (address or user):
//   - Failures are counted in a window that opens with the first failure
//     and lasts window; a failure after the window has passed starts a new
//     count.
//   - The failure that reaches the limit locks the key for window from that
//     moment: Allow refuses it, with the time left, until the lock ends,
//     and the count then starts from zero. Failures reported while locked
//     (the caller should not ask then) do not extend the lock.
//   - Success clears the user's count, not the address's: a user who
//     mistyped and then got in is not held to old typos, while one address
//     guessing at many names (or a NAT shared with a legitimate user) keeps
//     its count, as fail2ban does.
//   - Addresses are counted as they are for IPv4 and by /64 for IPv6 (one
//     host holds a whole /64); user names case-insensitively (ASCII).
//   - A max of 0 means no limit on that key; a window <= 0 disables the
//     Throttle.
//
// Memory is bounded: each kind of key lives in an LRU of size entries, so a
// flood of random names or addresses evicts the oldest counts instead of
// growing. An attacker can thereby make the Throttle forget a count; size
// it well above the number of keys failing within a window. A Throttle is
// safe for concurrent use.
type Throttle struct {
	maxIP, maxUser int
	window         time.Duration
	now            func() time.Time

	mu    sync.Mutex
	ips   *simplelru.LRU[netip.Prefix, *failures]
	users *simplelru.LRU[string, *failures]
}

type failures struct {
	n      int
	start  time.Time // first failure of the current count
	locked time.Time // zero, or when the lock ends
}

// DefaultThrottleSize is the LRU size NewThrottle uses for size <= 0.
const DefaultThrottleSize = 100_000

// NewThrottle returns a Throttle. now is the clock (nil: time.Now).
func NewThrottle(maxPerIP, maxPerUser int, window time.Duration, size int, now func() time.Time) *Throttle {
	if size <= 0 {
		size = DefaultThrottleSize
	}
	if now == nil {
		now = time.Now
	}
	t := &Throttle{maxIP: max(maxPerIP, 0), maxUser: max(maxPerUser, 0), window: window, now: now}
	// simplelru.NewLRU fails only for size <= 0.
	t.ips, _ = simplelru.NewLRU[netip.Prefix, *failures](size, nil)
	t.users, _ = simplelru.NewLRU[string, *failures](size, nil)
	return t
}

func (t *Throttle) enabled() bool { return t != nil && t.window > 0 && (t.maxIP > 0 || t.maxUser > 0) }

func ipKey(ip netip.Addr) (netip.Prefix, bool) {
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

func userKey(user string) (string, bool) {
	return strings.ToLower(user), user != ""
}

// Allow reports whether a login attempt from ip for user may go ahead and,
// when not, how long until it may. An invalid ip or empty user is not
// checked on that side.
func (t *Throttle) Allow(ip netip.Addr, user string) (ok bool, retryAfter time.Duration) {
	if !t.enabled() {
		return true, 0
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var wait time.Duration
	if k, ok := ipKey(ip); ok && t.maxIP > 0 {
		if f, ok := t.ips.Get(k); ok {
			wait = max(wait, f.lockLeft(now))
		}
	}
	if k, ok := userKey(user); ok && t.maxUser > 0 {
		if f, ok := t.users.Get(k); ok {
			wait = max(wait, f.lockLeft(now))
		}
	}
	return wait == 0, wait
}

func (f *failures) lockLeft(now time.Time) time.Duration {
	if f.locked.IsZero() || !now.Before(f.locked) {
		return 0
	}
	return f.locked.Sub(now)
}

// add counts one failure at now against limit.
func (f *failures) add(now time.Time, limit int, window time.Duration) {
	switch {
	case !f.locked.IsZero() && now.Before(f.locked):
		return // locked: the lock does not grow
	case !f.locked.IsZero() || now.Sub(f.start) >= window:
		*f = failures{start: now} // lock over or window passed: a new count
	}
	f.n++
	if f.n >= limit {
		f.locked = now.Add(window)
	}
}

// Failure records a failed login from ip for user.
func (t *Throttle) Failure(ip netip.Addr, user string) {
	if !t.enabled() {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if k, ok := ipKey(ip); ok && t.maxIP > 0 {
		f, ok := t.ips.Get(k)
		if !ok {
			f = &failures{start: now}
			t.ips.Add(k, f)
		}
		f.add(now, t.maxIP, t.window)
	}
	if k, ok := userKey(user); ok && t.maxUser > 0 {
		f, ok := t.users.Get(k)
		if !ok {
			f = &failures{start: now}
			t.users.Add(k, f)
		}
		f.add(now, t.maxUser, t.window)
	}
}

// Success records a successful login: it clears user's count and leaves
// the address's alone.
func (t *Throttle) Success(_ netip.Addr, user string) {
	if !t.enabled() {
		return
	}
	if k, ok := userKey(user); ok {
		t.mu.Lock()
		t.users.Remove(k)
		t.mu.Unlock()
	}
}

// Len returns the number of addresses and user names tracked.
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ips.Len() + t.users.Len()
}
