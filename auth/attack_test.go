package auth

// Regression tests from the attack review of the login path (issue 11):
// each TestAttack* test failed while the defect it names was present.

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestAttackSuccessResetsAttackersCount: a success clears the user's
// count even when the failures came from someone else. A POP3 client
// polls every few minutes, so an attacker who stops one short of
// max_failures_per_user and waits for the victim's next poll gets
// (max-1) guesses per poll instead of max per failure_window. Here, with
// max 3 in a 10-minute window and the victim polling every minute from
// home, the attacker (any number of addresses) makes 20 guesses within
// the window and is never refused.
func TestAttackSuccessResetsAttackersCount(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	th := NewThrottle(ThrottleConfig{MaxPerUser: 3, Window: 10 * time.Minute, Now: func() time.Time { return now }})
	home := netip.MustParseAddr("192.0.2.1")
	guesses := 0
	for poll := range 10 {
		for i := range 2 {
			attacker := netip.AddrFrom4([4]byte{198, 51, 100, byte(poll*2 + i)})
			tk, ok, _ := th.Begin(context.Background(), attacker, "alice")
			if !ok {
				continue
			}
			guesses++
			th.End(tk, AttemptFailed)
		}
		tk, _, _ := th.Begin(context.Background(), home, "alice") // the victim's poll
		th.End(tk, AttemptSucceeded)
		now = now.Add(time.Minute)
	}
	if guesses > 3 {
		t.Errorf("%d guesses for one user within one %v window, max_failures_per_user = 3: the victim's polls cleared the attacker's count", guesses, 10*time.Minute)
	}
}

// TestAttackThrottleMemoryPerKey: the throttle keeps the user name as
// given (lower-cased) for failure_window. Names of 6000 bytes (what
// AUTH LOGIN/PLAIN on a continuation line carries; the proxy hands them
// to Begin before Credentials.Check) cost ~6 KB each: 100000 of them (the
// default size) hold ~600 MB for 10 minutes.
func TestAttackThrottleMemoryPerKey(t *testing.T) {
	const keys, nameLen = 2000, 6000
	th := NewThrottle(ThrottleConfig{MaxPerIP: 1 << 30, MaxPerUser: 10, Window: 10 * time.Minute})
	ip := netip.MustParseAddr("2001:db8::1")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keys {
		u := fmt.Sprintf("%d%s", i, strings.Repeat("a", nameLen))
		tk, _, _ := th.Begin(context.Background(), ip, u)
		th.End(tk, AttemptFailed)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := int64(after.HeapAlloc-before.HeapAlloc) / keys
	t.Logf("%d keys tracked, ~%d bytes held per key", th.Len(), per)
	if per > 2*MaxCredentialLen {
		t.Errorf("each failed name holds ~%d bytes for the window (name length %d > MaxCredentialLen %d)", per, nameLen, MaxCredentialLen)
	}
	runtime.KeepAlive(th)
}
