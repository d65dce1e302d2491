package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
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
//     Begin waits for attempts of that key to end (until its context ends,
//     then it refuses with a retry hint of [InFlightRetry]); their outcome
//     decides. Logins that all succeed thus wait for each other, at worst,
//     and are never refused for failures nobody made.
//   - Success clears the user's count, not the address's, and only when
//     every failure counted for the user came from the succeeding client's
//     network: a user who mistyped and then got in is not held to old
//     typos, while an attacker guessing from elsewhere keeps his count even
//     when the real user logs in meanwhile. One address guessing at many
//     names (or a NAT shared with a legitimate user) keeps its count, as
//     fail2ban does.
//   - Addresses are grouped as [ClientNet] groups them (IPv6 by
//     ThrottleConfig.IPv6Prefix); user names compare as [foldUser] folds
//     them (case, accents, compatibility forms, spaces around them),
//     and one longer than 64 bytes is kept as its SHA-256.
//   - A max of 0 means no limit on that key; a window <= 0 disables the
//     Throttle.
//
// Memory is bounded: each kind of key lives in an LRU of size entries, so a
// flood of random names or addresses evicts the oldest counts instead of
// growing. An attacker can thereby make the Throttle forget a count; size
// it well above the number of keys failing within a window. A key with
// nothing in flight and no failure is not kept. A Throttle is safe for
// concurrent use.
//
// With a [ThrottleStore] (ThrottleConfig.Store), the budgets are kept
// there, shared with other processes, by the same rules; an attempt the
// store fails (Redis down) counts on the local state instead, and local
// counts refuse attempts until their window ends even once the store
// answers again. An attempt waiting for a shared budget full of attempts
// in flight asks the store again every few hundred milliseconds at most.
type Throttle struct {
	now func() time.Time

	mu             sync.Mutex
	maxIP, maxUser int
	window         time.Duration
	ipv6Bits       int
	ips            *simplelru.LRU[netip.Prefix, *failures]
	users          *simplelru.LRU[string, *failures]
	store          ThrottleStore // nil: the LRUs only
	// reconfigured is closed (and replaced) by Reconfigure, waking every
	// Begin that waits, to look again under the new limits.
	reconfigured chan struct{}
	// polls are the shared budgets (by pollKey) that an attempt of this
	// process polls in the store, each with a channel closed when it
	// stops: the other attempts waiting for the same budget wait for
	// that rather than each polling the store.
	polls map[string]chan struct{}
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
	// Store, when not nil, keeps the budgets for several processes
	// (see ThrottleStore); Reconfigure ignores it.
	Store ThrottleStore
}

type failures struct {
	n        int
	start    time.Time // first failure of the current count
	locked   time.Time // zero, or when the lock ends
	inFlight int       // attempts begun and not yet ended
	// from is the client network of the count's failures (user keys);
	// mixed is set once they came from more than one.
	from  netip.Prefix
	mixed bool
	// ended, when not nil, is closed when an attempt of this key ends
	// (or the key is evicted), waking the Begins that wait for a place.
	ended chan struct{}
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
	now := c.Now
	if now == nil {
		now = time.Now
	}
	t := &Throttle{now: now, store: c.Store, reconfigured: make(chan struct{}), polls: map[string]chan struct{}{}}
	// simplelru.NewLRU fails only for size <= 0. An evicted key's waiters
	// look again (and find a fresh budget).
	t.ips, _ = simplelru.NewLRU(throttleSize(c), func(_ netip.Prefix, f *failures) { f.wake() })
	t.users, _ = simplelru.NewLRU(throttleSize(c), func(_ string, f *failures) { f.wake() })
	t.setLimits(c)
	return t
}

func throttleSize(c ThrottleConfig) int {
	if c.Size <= 0 {
		return DefaultThrottleSize
	}
	return c.Size
}

func (t *Throttle) setLimits(c ThrottleConfig) {
	t.maxIP, t.maxUser, t.window, t.ipv6Bits = max(c.MaxPerIP, 0), max(c.MaxPerUser, 0), c.Window, c.IPv6Prefix
}

// Reconfigure changes the limits (c.Now is ignored) and keeps every count,
// lock and attempt in flight: a reload that tightens or loosens the limits
// does not unlock a user under attack. Counts made under another
// IPv6Prefix stay under their old key until they expire.
func (t *Throttle) Reconfigure(c ThrottleConfig) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setLimits(c)
	t.ips.Resize(throttleSize(c))
	t.users.Resize(throttleSize(c))
	t.wakeAll() // waiters look again under the new limits
}

// enabled reports whether the Throttle limits anything; t.mu is held.
func (t *Throttle) enabled() bool { return t.window > 0 && (t.maxIP > 0 || t.maxUser > 0) }

// maxUserKey is the longest user name kept as it is; longer ones are kept
// as their SHA-256, so that a flood of long names costs little memory.
const maxUserKey = 64

func userKey(user string) (string, bool) {
	k := foldUser(user)
	if len(k) > maxUserKey {
		h := sha256.Sum256([]byte(k))
		k = "sha256:" + hex.EncodeToString(h[:])
	}
	return k, user != ""
}

// foldUser returns the form of a user name that the failed-login limits
// count it by. A directory finds one entry for many spellings: OpenLDAP's
// matching rules ignore case, compatibility forms ("ｃａｒｏｌ", "car𝐨l")
// and spaces around the value (any number of them); MariaDB's default
// collations ignore case and accents ("sám" is "sam"), and so does a
// backend that looks names up there, behind route.default; route.sql's
// user column compares with Unicode case folding ("ſam" is "sam").
// Counted apart, each spelling would be a fresh budget of guesses at the
// one password; folded, they are one name. The fold decomposes (NFKD),
// drops combining marks and format characters (accents, zero-width
// spaces, soft hyphens), folds case (full folding) and does so once more
// for what folding composed, then trims spaces (Unicode's) and makes each
// run of them one. Names that differ only in these share a budget, which
// costs them nothing an attacker could not do to each alone.
func foldUser(user string) string {
	k := user
	if !isASCII(user) {
		k = stripMarks(norm.NFKD.String(cases.Fold().String(stripMarks(norm.NFKD.String(user)))))
	}
	k = strings.ToLower(k)
	if strings.ContainsFunc(k, unicode.IsSpace) {
		k = strings.Join(strings.Fields(k), " ")
	}
	return k
}

// FoldUser is the form of a user name that the failed-login limits count
// it by ([foldUser]): the spellings a directory takes for one entry fold
// to one form. The admin endpoints end and list a user's sessions by it,
// so that a kick of a user misses no session logged in with another
// spelling of the name (an attacker's with a stolen password).
func FoldUser(user string) string { return foldUser(user) }

// stripMarks drops combining marks and format characters from s.
func stripMarks(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf) {
			return -1
		}
		return r
	}, s)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// wakeAll wakes every Begin that waits (a reconfiguration); t.mu is held.
func (t *Throttle) wakeAll() {
	close(t.reconfigured)
	t.reconfigured = make(chan struct{})
}

// Ticket is an attempt's place in the budgets, from Begin to End: it
// records which keys Begin counted, so that End releases exactly those,
// whatever the limits became meanwhile (a reload).
type Ticket struct {
	ip     netip.Prefix // the address key counted; invalid: none
	user   string       // the user key counted; "": none
	from   netip.Prefix // the client's network, which a success may clear
	placed bool         // Begin let the attempt go ahead
	shared string       // the reservation in the ThrottleStore; "": local
}

// Begin reports whether a login attempt from ip for user may go ahead and,
// when not, how long until it may. An attempt that may go ahead holds a
// place in both budgets until End reports how it ended with the Ticket;
// the caller must call End exactly once for it (End with a Ticket of a
// refused attempt does nothing). When only attempts in flight fill a
// budget, Begin waits for one of that budget to end, at most until ctx
// ends. An invalid ip or empty user is not checked on that side.
func (t *Throttle) Begin(ctx context.Context, ip netip.Addr, user string) (tk Ticket, ok bool, retryAfter time.Duration) {
	if t == nil {
		return Ticket{}, true, 0
	}
	// The user's key is made once and outside t.mu, which every login
	// takes: folding a long name of compatibility forms takes about a
	// millisecond, which a client could otherwise make every other
	// login wait for.
	uk, hasUser := userKey(user)
	if t.store != nil {
		if tk, ok, retryAfter, done := t.beginShared(ctx, ip, uk, hasUser); done {
			return tk, ok, retryAfter
		}
	}
	for {
		tk, ok, retryAfter, ended, reconf := t.begin(ip, uk, hasUser)
		if ended == nil {
			return tk, ok, retryAfter
		}
		select {
		case <-ended:
		case <-reconf:
		case <-ctx.Done():
			return Ticket{}, false, InFlightRetry
		}
	}
}

// begin makes one try of Begin for the user key uk (hasUser false: no
// user to check). A non-nil ended means the budget is full of
// attempts in flight: wait for it or reconf to close and try again.
func (t *Throttle) begin(ip netip.Addr, uk string, hasUser bool) (tk Ticket, ok bool, retryAfter time.Duration, ended, reconf <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.enabled() {
		return Ticket{}, true, 0, nil, nil
	}
	now := t.now()
	from, _ := ClientNet(ip, t.ipv6Bits)
	ipk, hasIP := from, from.IsValid() && t.maxIP > 0
	hasUser = hasUser && t.maxUser > 0
	var fi, fu *failures
	check := func(f *failures, limit int) {
		if f == nil {
			return
		}
		n := f.count(now, t.window)
		switch left := f.lockLeft(now); {
		case left > 0:
			retryAfter = max(retryAfter, left)
		case n >= limit:
			// Counted under a looser limit (before a reload): as
			// good as locked until the count's window ends.
			retryAfter = max(retryAfter, f.start.Add(t.window).Sub(now))
		case n+f.inFlight >= limit && ended == nil:
			if f.ended == nil {
				f.ended = make(chan struct{})
			}
			ended = f.ended
		}
	}
	if hasIP {
		fi, _ = t.ips.Get(ipk)
		check(fi, t.localLimit(t.maxIP))
	}
	if hasUser {
		fu, _ = t.users.Get(uk)
		check(fu, t.localLimit(t.maxUser))
	}
	switch {
	case retryAfter > 0:
		return Ticket{}, false, retryAfter, nil, nil
	case ended != nil:
		return Ticket{}, false, InFlightRetry, ended, t.reconfigured
	}
	tk = Ticket{from: from, placed: true}
	if hasIP {
		placeKey(t.ips, ipk, fi)
		tk.ip = ipk
	}
	if hasUser {
		placeKey(t.users, uk, fu)
		tk.user = uk
	}
	return tk, true, 0, nil, nil
}

// placeKey counts an attempt in flight for key k in lru, whose entry f is
// (nil when it has none yet); endKey takes it off.
func placeKey[K comparable](lru *simplelru.LRU[K, *failures], k K, f *failures) {
	if f == nil {
		f = &failures{}
		lru.Add(k, f)
	}
	f.inFlight++
}

// End reports how the attempt of tk ended.
func (t *Throttle) End(tk Ticket, r AttemptResult) {
	if t == nil || !tk.placed {
		return
	}
	if tk.shared != "" {
		t.endShared(tk, r)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if tk.ip.IsValid() {
		endKey(t.ips, tk.ip, r, netip.Prefix{}, now, t.localLimit(t.maxIP), t.window, true)
	}
	if tk.user != "" {
		endKey(t.users, tk.user, r, tk.from, now, t.localLimit(t.maxUser), t.window, true)
	}
}

// endKey ends one attempt of key k in lru under the current limit and
// window (a limit of 0 or a window <= 0 counts nothing). from is the
// client's network for a user key, which a success clears when all its
// failures came from there; invalid for an address key, which a success
// never clears. placed tells whether the attempt holds a place in flight
// here (not when it was placed in the ThrottleStore, which then failed).
func endKey[K comparable](lru *simplelru.LRU[K, *failures], k K, r AttemptResult, from netip.Prefix, now time.Time, limit int, window time.Duration, placed bool) {
	counts := limit > 0 && window > 0
	f, ok := lru.Get(k)
	if !ok {
		if r != AttemptFailed || !counts {
			return
		}
		// Evicted while in flight (a flood of other keys): the failure
		// still counts.
		f = &failures{}
		lru.Add(k, f)
	}
	if placed && f.inFlight > 0 {
		f.inFlight--
	}
	switch {
	case !counts:
	case r == AttemptFailed:
		f.add(now, limit, window, from)
	case r == AttemptSucceeded && from.IsValid() && !f.mixed && (f.n == 0 || f.from == from):
		f.n, f.locked = 0, time.Time{}
	}
	// The attempts waiting for this key's budget look again.
	f.wake()
	if f.inFlight == 0 && f.count(now, window) == 0 && f.lockLeft(now) == 0 {
		lru.Remove(k)
	}
}

// wake wakes the Begins waiting for f's budget.
func (f *failures) wake() {
	if f.ended != nil {
		close(f.ended)
		f.ended = nil
	}
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

// add counts one failure from the client network from at now against
// limit.
func (f *failures) add(now time.Time, limit int, window time.Duration, from netip.Prefix) {
	if f.lockLeft(now) > 0 {
		return // locked: the lock does not grow
	}
	if f.count(now, window) == 0 {
		// A new count.
		f.n, f.start, f.locked, f.from, f.mixed = 0, now, time.Time{}, from, false
	} else if from != f.from {
		f.mixed = true
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
