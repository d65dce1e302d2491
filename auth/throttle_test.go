package auth

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

var (
	ip1 = netip.MustParseAddr("192.0.2.1")
	ip2 = netip.MustParseAddr("192.0.2.2")
)

func newTestThrottle(perIP, perUser int, window time.Duration, clk *fakeClock) *Throttle {
	c := ThrottleConfig{MaxPerIP: perIP, MaxPerUser: perUser, Window: window, Size: 100}
	if clk != nil {
		c.Now = clk.now
	}
	return NewThrottle(c)
}

// noWait is an ended context: Begin refuses at once where it would wait
// for attempts in flight.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// try runs one attempt that ends with r; it reports whether Begin let it go
// ahead.
func try(th *Throttle, ip netip.Addr, user string, r AttemptResult) bool {
	tk, ok, _ := th.Begin(noWait, ip, user)
	th.End(tk, r)
	return ok
}

// allowed asks Begin and gives the place back at once.
func allowed(th *Throttle, ip netip.Addr, user string) (bool, time.Duration) {
	tk, ok, wait := th.Begin(noWait, ip, user)
	th.End(tk, AttemptAborted)
	return ok, wait
}

func TestThrottlePerIP(t *testing.T) {
	clk := newClock()
	th := newTestThrottle(3, 0, 10*time.Minute, clk)
	for i := range 3 {
		if !try(th, ip1, fmt.Sprint("user", i), AttemptFailed) {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	clk.add(time.Minute)
	// The correct password from the same address is refused, without asking.
	if ok, wait := allowed(th, ip1, "alice"); ok || wait != 10*time.Minute-time.Minute {
		t.Errorf("Begin(ip1) = %v, %v; want refused for 9m", ok, wait)
	}
	// Another address works.
	if ok, _ := allowed(th, ip2, "alice"); !ok {
		t.Error("Begin(ip2) refused")
	}
	// IPv4-mapped IPv6 is the same address.
	if ok, _ := allowed(th, netip.MustParseAddr("::ffff:192.0.2.1"), "alice"); ok {
		t.Error("IPv4-mapped form of ip1 allowed")
	}
	clk.add(9*time.Minute - time.Nanosecond)
	if ok, _ := allowed(th, ip1, "alice"); ok {
		t.Error("allowed before the window passed")
	}
	clk.add(time.Nanosecond)
	if ok, wait := allowed(th, ip1, "alice"); !ok || wait != 0 {
		t.Errorf("Begin after the window = %v, %v", ok, wait)
	}
	// The count starts over: two more failures do not lock.
	try(th, ip1, "x", AttemptFailed)
	try(th, ip1, "x", AttemptFailed)
	if ok, _ := allowed(th, ip1, "alice"); !ok {
		t.Error("locked after 2 failures in a new window")
	}
	// A success does not clear the address's count.
	try(th, ip1, "alice", AttemptSucceeded)
	try(th, ip1, "y", AttemptFailed)
	if ok, _ := allowed(th, ip1, "alice"); ok {
		t.Error("a success cleared the address's count")
	}
}

func TestThrottleWindow(t *testing.T) {
	clk := newClock()
	th := newTestThrottle(3, 0, 10*time.Minute, clk)
	try(th, ip1, "", AttemptFailed)
	try(th, ip1, "", AttemptFailed)
	clk.add(10 * time.Minute) // the window of those two has passed
	try(th, ip1, "", AttemptFailed)
	if ok, _ := allowed(th, ip1, ""); !ok {
		t.Error("failures from an old window counted")
	}
	try(th, ip1, "", AttemptFailed)
	try(th, ip1, "", AttemptFailed) // third in this window: locked until +10m
	clk.add(5 * time.Minute)
	if try(th, ip1, "", AttemptFailed) {
		t.Error("an attempt went ahead while locked")
	}
	clk.add(5 * time.Minute)
	if ok, _ := allowed(th, ip1, ""); !ok {
		t.Error("still locked after the window")
	}
}

func TestThrottlePerUser(t *testing.T) {
	clk := newClock()
	th := newTestThrottle(0, 2, time.Minute, clk)
	try(th, ip1, "Alice", AttemptFailed)
	try(th, ip2, "alice", AttemptFailed)
	for _, ip := range []netip.Addr{ip1, ip2, netip.MustParseAddr("198.51.100.7")} {
		if ok, wait := allowed(th, ip, "ALICE"); ok || wait != time.Minute {
			t.Errorf("Begin(%v, ALICE) = %v, %v; want refused", ip, ok, wait)
		}
	}
	if ok, _ := allowed(th, ip1, "bob"); !ok {
		t.Error("bob refused: per-IP limit is 0 (none)")
	}
	clk.add(time.Minute)
	if ok, _ := allowed(th, ip1, "alice"); !ok {
		t.Error("alice still refused after the window")
	}
	// Success clears the user's count when the failures came from the
	// succeeding client's network ...
	try(th, ip1, "alice", AttemptFailed)
	try(th, ip1, "alice", AttemptSucceeded)
	try(th, ip1, "alice", AttemptFailed)
	if ok, _ := allowed(th, ip1, "alice"); !ok {
		t.Error("count survived a success")
	}
	clk.add(time.Minute)
	// ... and not when an attacker elsewhere made them: the real user's
	// polling does not renew the attacker's budget.
	try(th, ip2, "alice", AttemptFailed)
	try(th, ip1, "alice", AttemptSucceeded)
	try(th, ip2, "alice", AttemptFailed)
	if ok, _ := allowed(th, ip2, "alice"); ok {
		t.Error("the user's success cleared failures made from another network")
	}
	clk.add(time.Minute)
	// An aborted attempt (backend down) does not count.
	try(th, ip1, "alice", AttemptAborted)
	try(th, ip1, "alice", AttemptAborted)
	if ok, _ := allowed(th, ip1, "alice"); !ok {
		t.Error("aborted attempts counted")
	}
}

// TestThrottleMixedSuccess: failures from two networks are not cleared by
// a success from either.
func TestThrottleMixedSuccess(t *testing.T) {
	th := newTestThrottle(0, 3, time.Minute, newClock())
	try(th, ip1, "alice", AttemptFailed)
	try(th, ip2, "alice", AttemptFailed)
	try(th, ip1, "alice", AttemptSucceeded)
	try(th, ip1, "alice", AttemptFailed) // third: locked
	if ok, _ := allowed(th, ip1, "alice"); ok {
		t.Error("a success cleared failures from two networks")
	}
}

// TestThrottleInFlight: attempts in flight hold their place, so that a
// burst cannot pass the limit before the first failures are reported.
func TestThrottleInFlight(t *testing.T) {
	clk := newClock()
	th := newTestThrottle(5, 3, time.Minute, clk)
	var tks []Ticket
	for i := range 3 {
		tk, ok, _ := th.Begin(context.Background(), ip1, "alice")
		if !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
		tks = append(tks, tk)
	}
	// Three in flight fill alice's budget; the address has room. A
	// fourth waits for one of them, here until its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok, wait := th.Begin(ctx, ip2, "alice"); ok || wait != InFlightRetry {
		t.Fatalf("4th attempt in flight = %v, %v; want refused for %v", ok, wait, InFlightRetry)
	}
	// One that waits goes ahead as soon as one in flight ends well.
	went := make(chan Ticket)
	go func() {
		tk, ok, _ := th.Begin(context.Background(), ip2, "alice")
		if !ok {
			t.Error("a waiting attempt was refused after one in flight succeeded")
		}
		went <- tk
	}()
	th.End(tks[0], AttemptSucceeded)
	tk := <-went
	th.End(tk, AttemptAborted)
	if tk, ok, _ := th.Begin(context.Background(), ip1, "alice"); !ok {
		t.Fatal("place not given back")
	} else {
		tks[0] = tk
	}
	// Three in flight again; they fail: 3 failures lock alice.
	for _, tk := range tks {
		th.End(tk, AttemptFailed)
	}
	if ok, wait := allowed(th, ip1, "alice"); ok || wait != time.Minute {
		t.Errorf("after 3 failures: %v, %v; want locked for 1m", ok, wait)
	}
	// Nothing in flight, no failure: nothing kept.
	th2 := newTestThrottle(5, 5, time.Minute, clk)
	try(th2, ip1, "carol", AttemptSucceeded)
	try(th2, ip2, "dave", AttemptAborted)
	if n := th2.Len(); n != 0 {
		t.Errorf("Len() = %d after attempts that left nothing to count", n)
	}
}

func TestClientNet(t *testing.T) {
	tests := []struct {
		ip   string
		bits int
		want string
	}{
		{"192.0.2.1", 64, "192.0.2.1/32"},
		{"::ffff:192.0.2.1", 64, "192.0.2.1/32"},
		{"2001:db8:1:2:3:4:5:6", 0, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 56, "2001:db8:1::/56"},
		{"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"},
		{"2001:db8:1:2:3:4:5:6", 200, "2001:db8:1:2::/64"},
		{"fe80::1%eth0", 64, "fe80::/64"},
	}
	for _, tc := range tests {
		p, ok := ClientNet(netip.MustParseAddr(tc.ip), tc.bits)
		if !ok || p.String() != tc.want {
			t.Errorf("ClientNet(%s, %d) = %v, %v; want %s", tc.ip, tc.bits, p, ok, tc.want)
		}
	}
	if _, ok := ClientNet(netip.Addr{}, 64); ok {
		t.Error("ClientNet(invalid) ok")
	}
}

func TestThrottleIPv6Prefix(t *testing.T) {
	for _, tc := range []struct {
		bits      int
		same, oth string
	}{
		{0, "2001:db8:1:2::77", "2001:db8:1:3::1"},
		{56, "2001:db8:1:ff::1", "2001:db8:2::1"},
		{128, "2001:db8:1:2::1", "2001:db8:1:2::2"},
	} {
		th := NewThrottle(ThrottleConfig{MaxPerIP: 2, Window: time.Minute, IPv6Prefix: tc.bits, Now: newClock().now})
		try(th, netip.MustParseAddr("2001:db8:1:2::1"), "", AttemptFailed)
		try(th, netip.MustParseAddr("2001:db8:1:2::1"), "", AttemptFailed)
		if ok, _ := allowed(th, netip.MustParseAddr(tc.same), ""); ok {
			t.Errorf("/%d: %s allowed", tc.bits, tc.same)
		}
		if ok, _ := allowed(th, netip.MustParseAddr(tc.oth), ""); !ok {
			t.Errorf("/%d: %s refused", tc.bits, tc.oth)
		}
	}
}

func TestThrottleDisabled(t *testing.T) {
	for _, th := range []*Throttle{
		newTestThrottle(0, 0, time.Minute, nil),
		newTestThrottle(1, 1, 0, nil),
		nil,
	} {
		try(th, ip1, "a", AttemptFailed)
		try(th, ip1, "a", AttemptFailed)
		if ok, _ := allowed(th, ip1, "a"); !ok {
			t.Errorf("%+v refused", th)
		}
	}
	// Invalid address and empty user are not checked.
	th := newTestThrottle(1, 1, time.Minute, nil)
	try(th, netip.Addr{}, "", AttemptFailed)
	if ok, _ := allowed(th, netip.Addr{}, ""); !ok || th.Len() != 0 {
		t.Errorf("zero address/user tracked: Len %d", th.Len())
	}
}

func TestThrottleBounded(t *testing.T) {
	th := NewThrottle(ThrottleConfig{MaxPerIP: 5, MaxPerUser: 5, Window: time.Hour, Size: 1000, Now: newClock().now})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		var a [16]byte
		for i := range a {
			a[i] = byte(rng.Uint32())
		}
		try(th, netip.AddrFrom16(a), fmt.Sprintf("user%x", rng.Uint64()), AttemptFailed)
	}
	if n := th.Len(); n > 2000 {
		t.Errorf("Len() = %d, want <= 2000 (1000 per kind)", n)
	}
	th.mu.Lock()
	defer th.mu.Unlock()
	if th.ips.Len() > 1000 || th.users.Len() > 1000 {
		t.Errorf("ips %d users %d, want <= 1000 each", th.ips.Len(), th.users.Len())
	}
}

// TestThrottleConcurrent: however attempts interleave, no more than the
// limit go ahead before their failures are in; run with -race.
func TestThrottleConcurrent(t *testing.T) {
	const limit = 10
	th := newTestThrottle(1000, limit, time.Minute, nil)
	var (
		wg      sync.WaitGroup
		ahead   atomic.Int32
		release = make(chan struct{})
	)
	for g := range 90 {
		wg.Go(func() {
			ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(g % 2)})
			tk, ok, _ := th.Begin(context.Background(), ip, "victim")
			if !ok {
				return
			}
			ahead.Add(1)
			<-release // the backend is slow: all attempts are in flight together
			th.End(tk, AttemptFailed)
		})
	}
	// Let every goroutine reach Begin before any attempt ends.
	for deadline := time.Now().Add(10 * time.Second); ahead.Load() < limit && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if n := ahead.Load(); n != limit {
		t.Errorf("%d of 90 concurrent attempts went ahead, want %d", n, limit)
	}
	if ok, _ := allowed(th, ip1, "victim"); ok {
		t.Error("the victim's budget is not spent")
	}
}

// TestThrottleLongNames: a long user name is kept as its hash, so a flood
// of long names costs little memory; names still compare as before.
func TestThrottleLongNames(t *testing.T) {
	th := newTestThrottle(0, 1, time.Minute, newClock())
	long := strings.Repeat("a", 1000)
	try(th, ip1, long, AttemptFailed)
	if ok, _ := allowed(th, ip1, strings.ToUpper(long)); ok {
		t.Error("the long name's count was lost")
	}
	if ok, _ := allowed(th, ip1, long+"b"); !ok {
		t.Error("another long name shares its count")
	}
	th.mu.Lock()
	defer th.mu.Unlock()
	for _, k := range th.users.Keys() {
		if len(k) > 80 {
			t.Errorf("a %d-byte key is kept", len(k))
		}
	}
}

// TestThrottleReconfigure: new limits apply to the counts already made; a
// lock survives.
func TestThrottleReconfigure(t *testing.T) {
	clk := newClock()
	th := newTestThrottle(0, 2, time.Minute, clk)
	try(th, ip1, "alice", AttemptFailed)
	try(th, ip1, "alice", AttemptFailed) // locked
	th.Reconfigure(ThrottleConfig{MaxPerUser: 5, Window: time.Minute})
	if ok, _ := allowed(th, ip1, "alice"); ok {
		t.Error("a reload unlocked alice")
	}
	try(th, ip1, "bob", AttemptFailed)
	th.Reconfigure(ThrottleConfig{MaxPerUser: 1, Window: time.Minute})
	if ok, _ := allowed(th, ip1, "bob"); ok {
		t.Error("bob's failure did not count against the tightened limit")
	}
}

// BenchmarkThrottleBeginHostileNames times Begin and End for an ordinary
// name while another goroutine sends the longest names of compatibility
// forms, whose folding is the costliest (about a millisecond each): the
// folding must not hold up the ordinary name's logins.
func BenchmarkThrottleBeginHostileNames(b *testing.B) {
	th := NewThrottle(ThrottleConfig{MaxPerIP: 1 << 30, MaxPerUser: 1 << 30, Window: time.Minute})
	hostile := strings.Repeat("\uFDFA", MaxCredentialLen/len("\uFDFA"))
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		ip := netip.MustParseAddr("192.0.2.2")
		for {
			select {
			case <-stop:
				return
			default:
			}
			tk, _, _ := th.Begin(ctx, ip, hostile)
			th.End(tk, AttemptSucceeded)
		}
	})
	ip := netip.MustParseAddr("192.0.2.1")
	b.ResetTimer()
	for b.Loop() {
		tk, ok, _ := th.Begin(ctx, ip, "alice@example.com")
		if !ok {
			b.Fatal("refused under a limit no benchmark reaches")
		}
		th.End(tk, AttemptSucceeded)
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
}
