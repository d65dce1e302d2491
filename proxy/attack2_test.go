package proxy

// Regression tests from the second attack review (admin endpoints, login
// path hardening, drain): each TestAttack2* test failed while the defect it
// names was present.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// TestAttack2FloorCountsThrottleWait: login() starts its clock before
// Throttle.Begin, so a login that waited in Begin for a place (its
// address's or user's budget full of attempts in flight) and was then
// refused by a backend records the wait as the backend's refusal time.
// The floor is the longest of the last 64 samples across all backends,
// and every refusal of credentials, for every client, is padded to it. An
// attacker fills his own address's 20 places (max_failures_per_ip) with
// slow attempts that end uncounted (names of a domain whose backend is
// unreachable: connect_timeout; a lookup that times out or says WAIT; a
// [SYS/TEMP] or [IN-USE] answer), queues a wrong password for any name on
// a working backend behind them, and the floor becomes however long it
// queued, up to login_timeout (60 s): every failed login of every user
// then takes that long, until the working backend has refused 64 more
// logins, and one more queued login renews it. The wait depends on the
// throttle, not on whether the name is routed, so it tells nothing the
// floor must hide. Here the user's one place is held by a lookup that
// times out; the backend refuses at once, yet afterwards the floor, and
// the refusal of an unrouted name from another client, is the 600 ms the
// login queued.
func TestAttack2FloorCountsThrottleWait(t *testing.T) {
	const wait = 600 * time.Millisecond
	routed := make(chan struct{}, 1)
	release := make(chan struct{})
	var first atomic.Bool
	static := auth.NewStatic(map[string]string{testUser: "b1"}, nil, "")
	router := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
		if !first.Swap(true) {
			routed <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			// A lookup that timed out: no refusal, the attempt
			// ends uncounted.
			return auth.Decision{}, errors.New("lookup service timed out")
		}
		return static.Route(ctx, req)
	})
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerUser: 1, Window: time.Minute})
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Router = router
		c.Throttle = th
		c.FailureDelay = time.Millisecond
	}})
	holder := h.dial("plain")
	holder.cmd("USER " + testUser)
	holder.send("PASS whatever\r\n")
	<-routed // the user's one place is taken
	c := h.dial("plain")
	c.cmd("USER " + testUser)
	start := time.Now()
	c.send("PASS wrong-password\r\n")
	time.Sleep(wait) // the wrong password waits in Begin meanwhile
	close(release)
	if got := holder.line(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("slow login = %q", got)
	}
	if got := c.line(); got != "-ERR [AUTH] Authentication failed" {
		t.Fatalf("queued login = %q", got)
	}
	t.Logf("queued wrong password answered after %v", time.Since(start))
	floor := h.srv.failTimes.floor(time.Millisecond)
	// Any unrouted name, from anyone, now waits the floor.
	c3 := h.dial("plain")
	c3.cmd("USER nobody@example.com")
	s3 := time.Now()
	c3.cmd("PASS x")
	t.Logf("floor %v; an unrouted name from another client then took %v", floor, time.Since(s3))
	if floor >= wait/2 {
		t.Errorf("the backend refused at once, but the floor every refusal now waits is %v: the %v the login waited in the throttle was recorded as the backend's refusal time", floor, wait)
	}
}

// TestAttack2OutageCountsAsFailures: an attempt that the login deadline
// cuts off while the lookup or the backend is deciding counts as a failed
// login (the throttle's AttemptResult), whenever the credentials were sent. That
// closes the oracle of a PASS sent just before login_timeout, but it also
// counts every login of a client that sent the right password at once and
// waited for a lookup or backend that stalled: an auth_http service that
// answers "Auth-Status: WAIT" with "Auth-Wait: 30" (twice is the whole
// 60 s login_timeout), a Dovecot whose login processes are all busy (the
// greeting comes when one is free), steps that each stay within
// backend.timeout but add up to more than login_timeout. Every poll of
// every client during such a brownout is a failure against its user and
// its address; a webmail or a fetcher that logs in for many users from one
// address, or an office NAT, reaches max_failures_per_ip (20) within the
// brownout and stays refused for failure_window (10 min) after it ends.
// Anyone who can slow the lookup or a backend turns that into lockouts.
// Here: two logins with the right password during a stalled lookup lock
// the client's address, and the third, after the lookup recovered, is
// refused "Too many failed logins".
func TestAttack2OutageCountsAsFailures(t *testing.T) {
	var stalled atomic.Bool
	stalled.Store(true)
	static := auth.NewStatic(map[string]string{testUser: "b1"}, nil, "")
	router := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
		if stalled.Load() {
			<-ctx.Done() // the lookup service says WAIT, and WAIT again
			return auth.Decision{}, fmt.Errorf("auth_http: waiting to ask again: %w", ctx.Err())
		}
		return static.Route(ctx, req)
	})
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: 2, MaxPerUser: 10, Window: time.Minute})
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Router = router
		c.Throttle = th
		c.LoginTimeout = 300 * time.Millisecond
		c.FailureDelay = time.Millisecond
	}})
	for i := range 2 {
		c := h.dial("plain")
		c.cmd("USER " + testUser)
		c.send("PASS " + testPass + "\r\n") // at once, the right password
		got, err := c.br.ReadString('\n')
		if err != nil {
			got = "closed: " + err.Error()
		}
		t.Logf("login %d during the stall: %q", i+1, got)
	}
	stalled.Store(false)
	c := h.dial("plain")
	c.cmd("USER " + testUser)
	got := c.cmd("PASS " + testPass)
	t.Logf("login after the stall: %q", got)
	if !strings.HasPrefix(got, "+OK") {
		t.Errorf("after a stall of the lookup, the right password is answered %q: the logins the stall cut off, sent at once with the right password, were counted as failed", got)
	}
}
