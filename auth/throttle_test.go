package auth

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
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

func TestThrottlePerIP(t *testing.T) {
	clk := newClock()
	th := NewThrottle(3, 0, 10*time.Minute, 100, clk.now)
	for i := range 3 {
		if ok, _ := th.Allow(ip1, fmt.Sprint("user", i)); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
		th.Failure(ip1, fmt.Sprint("user", i))
	}
	clk.add(time.Minute)
	// The correct password from the same address is refused, without asking.
	if ok, wait := th.Allow(ip1, "alice"); ok || wait != 10*time.Minute-time.Minute {
		t.Errorf("Allow(ip1) = %v, %v; want refused for 9m", ok, wait)
	}
	// Another address works.
	if ok, _ := th.Allow(ip2, "alice"); !ok {
		t.Error("Allow(ip2) refused")
	}
	// IPv4-mapped IPv6 is the same address.
	if ok, _ := th.Allow(netip.MustParseAddr("::ffff:192.0.2.1"), "alice"); ok {
		t.Error("IPv4-mapped form of ip1 allowed")
	}
	// A success from ip1 (from before, say) does not clear the address.
	th.Success(ip1, "alice")
	if ok, _ := th.Allow(ip1, "alice"); ok {
		t.Error("Success cleared the address")
	}
	clk.add(9*time.Minute - time.Nanosecond)
	if ok, _ := th.Allow(ip1, "alice"); ok {
		t.Error("allowed before the window passed")
	}
	clk.add(time.Nanosecond)
	if ok, wait := th.Allow(ip1, "alice"); !ok || wait != 0 {
		t.Errorf("Allow after the window = %v, %v", ok, wait)
	}
	// The count starts over: two more failures do not lock.
	th.Failure(ip1, "x")
	th.Failure(ip1, "x")
	if ok, _ := th.Allow(ip1, "alice"); !ok {
		t.Error("locked after 2 failures in a new window")
	}
}

func TestThrottleWindow(t *testing.T) {
	clk := newClock()
	th := NewThrottle(3, 0, 10*time.Minute, 100, clk.now)
	th.Failure(ip1, "")
	th.Failure(ip1, "")
	clk.add(10 * time.Minute) // the window of those two has passed
	th.Failure(ip1, "")
	if ok, _ := th.Allow(ip1, ""); !ok {
		t.Error("failures from an old window counted")
	}
	// Failures while locked do not extend the lock.
	th.Failure(ip1, "")
	th.Failure(ip1, "") // third in this window: locked until +10m
	clk.add(5 * time.Minute)
	th.Failure(ip1, "")
	clk.add(5 * time.Minute)
	if ok, _ := th.Allow(ip1, ""); !ok {
		t.Error("lock extended by a failure while locked")
	}
}

func TestThrottlePerUser(t *testing.T) {
	clk := newClock()
	th := NewThrottle(0, 2, time.Minute, 100, clk.now)
	th.Failure(ip1, "Alice")
	th.Failure(ip2, "alice")
	for _, ip := range []netip.Addr{ip1, ip2, netip.MustParseAddr("198.51.100.7")} {
		if ok, wait := th.Allow(ip, "ALICE"); ok || wait != time.Minute {
			t.Errorf("Allow(%v, ALICE) = %v, %v; want refused", ip, ok, wait)
		}
	}
	if ok, _ := th.Allow(ip1, "bob"); !ok {
		t.Error("bob refused: per-IP limit is 0 (none)")
	}
	clk.add(time.Minute)
	if ok, _ := th.Allow(ip1, "alice"); !ok {
		t.Error("alice still refused after the window")
	}
	// Success clears the user's count.
	th.Failure(ip1, "alice")
	th.Success(ip1, "alice")
	th.Failure(ip1, "alice")
	if ok, _ := th.Allow(ip1, "alice"); !ok {
		t.Error("count survived a success")
	}
}

func TestThrottleIPv6Prefix(t *testing.T) {
	th := NewThrottle(2, 0, time.Minute, 100, newClock().now)
	th.Failure(netip.MustParseAddr("2001:db8:1:2::1"), "")
	th.Failure(netip.MustParseAddr("2001:db8:1:2:ffff::9"), "")
	if ok, _ := th.Allow(netip.MustParseAddr("2001:db8:1:2::77"), ""); ok {
		t.Error("same /64 allowed")
	}
	if ok, _ := th.Allow(netip.MustParseAddr("2001:db8:1:3::1"), ""); !ok {
		t.Error("other /64 refused")
	}
}

func TestThrottleDisabled(t *testing.T) {
	for _, th := range []*Throttle{
		NewThrottle(0, 0, time.Minute, 10, nil),
		NewThrottle(1, 1, 0, 10, nil),
		nil,
	} {
		th.Failure(ip1, "a")
		th.Failure(ip1, "a")
		if ok, _ := th.Allow(ip1, "a"); !ok {
			t.Errorf("%+v refused", th)
		}
		th.Success(ip1, "a")
	}
	// Invalid address and empty user are not checked.
	th := NewThrottle(1, 1, time.Minute, 10, nil)
	th.Failure(netip.Addr{}, "")
	if ok, _ := th.Allow(netip.Addr{}, ""); !ok || th.Len() != 0 {
		t.Errorf("zero address/user tracked: Len %d", th.Len())
	}
}

func TestThrottleBounded(t *testing.T) {
	th := NewThrottle(5, 5, time.Hour, 1000, newClock().now)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		var a [16]byte
		for i := range a {
			a[i] = byte(rng.Uint32())
		}
		th.Failure(netip.AddrFrom16(a), fmt.Sprintf("user%x", rng.Uint64()))
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

func TestThrottleConcurrent(t *testing.T) {
	th := NewThrottle(1000, 1000, time.Minute, 100, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				ip := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i)})
				th.Allow(ip, "u")
				th.Failure(ip, "u")
				th.Success(ip, "u")
			}
		})
	}
	wg.Wait()
}
