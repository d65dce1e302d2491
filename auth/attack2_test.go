package auth

// Regression tests from the second attack review (admin endpoints, login
// path hardening, drain): each TestAttack2* test failed while the defect it
// names was present.

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAttack2BeginWakesEveryWaiter: Begin's waiters all wait on one
// channel, t.ended, which End closes for every attempt that ends, of any
// key. Each waiter then takes t.mu and rechecks its keys: W waiters and E
// attempts ending elsewhere cost W*E lock round trips, all on the one
// mutex every login's Begin and End needs. Waiters are cheap to make: a
// budget (max_failures_per_ip of one /64, max_failures_per_user of one
// name) full of attempts in flight holds every further login for it in
// Begin until login_timeout. Here 40 waiters on one user name and 25
// attempts that end for other addresses and names: none of those endings
// can make room for the waiters, yet each wakes all of them (about 1000
// rechecks where at most one per waiter and ending is any use: 65).
func TestAttack2BeginWakesEveryWaiter(t *testing.T) {
	const waiters, others = 40, 25
	var checks atomic.Int64
	th := NewThrottle(ThrottleConfig{MaxPerUser: 1, MaxPerIP: 1000, Window: time.Minute, Now: func() time.Time {
		checks.Add(1)
		return time.Unix(1_000_000, 0)
	}})
	holder := netip.MustParseAddr("192.0.2.1")
	holderTk, ok, _ := th.Begin(context.Background(), holder, "victim")
	if !ok {
		t.Fatal("first attempt refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Go(func() {
			ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			tk, _, _ := th.Begin(ctx, ip, "victim")
			th.End(tk, AttemptAborted)
		})
	}
	// settle waits until the waiters have stopped rechecking.
	settle := func() int64 {
		last, stable := checks.Load(), 0
		for deadline := time.Now().Add(5 * time.Second); stable < 5 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			if n := checks.Load(); n == last {
				stable++
			} else {
				last, stable = n, 0
			}
		}
		return last
	}
	for checks.Load() < 1+waiters {
		time.Sleep(time.Millisecond)
	}
	before := settle()
	for i := range others {
		ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		user := fmt.Sprintf("other%d", i)
		tk, ok, _ := th.Begin(context.Background(), ip, user)
		if !ok {
			t.Fatalf("unrelated attempt %d refused", i)
		}
		th.End(tk, AttemptAborted)
		settle()
	}
	extra := checks.Load() - before - 2*others // each Begin and End reads the clock once
	cancel()
	wg.Wait()
	th.End(holderTk, AttemptAborted)
	t.Logf("%d waiters rechecked their keys %d times for %d attempts that ended on other keys", waiters, extra, others)
	if extra > waiters+others {
		t.Errorf("%d attempts ending on unrelated keys made %d waiters recheck %d times under the throttle's one mutex (O(waiters x endings)); only endings of a waiter's own keys can make room", others, waiters, extra)
	}
}

// TestAttack2NAT64ClientsShareOneNetwork: ClientNet groups IPv6 clients by
// their first ipv6_prefix bits (64), with no regard for IPv6 addresses
// that embed an IPv4 client's address in their last 32 bits (RFC 6052:
// 64:ff9b::/96, and the network-specific /96 prefixes of SIIT-DC, RFC
// 7755). Behind such a translator, every IPv4 client on the Internet is
// one "client network": max_failures_per_ip (20) wrong guesses by one of
// them lock out all the others for failure_window, and
// max_connections_per_ip (50) is shared by all of them. Before ipv6_prefix
// each such address counted on its own.
func TestAttack2NAT64ClientsShareOneNetwork(t *testing.T) {
	attacker := netip.MustParseAddr("64:ff9b::c000:201") // 192.0.2.1
	victim := netip.MustParseAddr("64:ff9b::c633:6407")  // 198.51.100.7
	a, _ := ClientNet(attacker, DefaultIPv6Prefix)
	v, _ := ClientNet(victim, DefaultIPv6Prefix)
	th := NewThrottle(ThrottleConfig{MaxPerIP: 3, Window: time.Minute})
	for range 3 {
		tk, _, _ := th.Begin(context.Background(), attacker, "guess")
		th.End(tk, AttemptFailed)
	}
	tk, ok, _ := th.Begin(context.Background(), victim, "victim")
	th.End(tk, AttemptAborted)
	if a == v || !ok {
		t.Errorf("IPv4 clients 192.0.2.1 and 198.51.100.7 behind a NAT64/SIIT translator are one client network (%v, %v); after 3 failures of the first the second is refused: %v", a, v, !ok)
	}
}

// TestAttack2ReconfigureLeaksInFlight: End gives an attempt's place back
// only on the sides the limits of the moment check (t.enabled(),
// t.maxIP > 0, t.maxUser > 0), not on the sides Begin reserved. A reload
// that sets max_failures_per_ip (or _per_user) to 0, or failure_window
// to 0, while logins are in flight, and a later reload that sets it back,
// leave every address (user) that had a login in flight with a place
// taken for good: the entry is never removed (inFlight > 0) nor expired,
// and each use refreshes it in the LRU. An address with max leaked places
// (a webmail's, a NAT's, popgate's busiest) then waits in Begin until
// login_timeout on every login and is told "Too many failed logins",
// with no failure at all, until a restart.
func TestAttack2ReconfigureLeaksInFlight(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	th := NewThrottle(ThrottleConfig{MaxPerIP: 1, MaxPerUser: 10, Window: time.Minute})
	first, ok, _ := th.Begin(context.Background(), ip, "alice")
	if !ok {
		t.Fatal("first login refused")
	}
	th.Reconfigure(ThrottleConfig{MaxPerIP: 0, MaxPerUser: 10, Window: time.Minute}) // reload: no per-address limit
	th.End(first, AttemptSucceeded)
	th.Reconfigure(ThrottleConfig{MaxPerIP: 1, MaxPerUser: 10, Window: time.Minute}) // reload: back
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	tk, ok, _ := th.Begin(ctx, ip, "bob")
	th.End(tk, AttemptSucceeded)
	if !ok {
		t.Errorf("after two reloads, a login from %v waits for a place that a login which ended long ago still holds (refused at its deadline, no failure counted)", ip)
	}
}
