package main

// Regression tests from the attack review of the login path (issue 11):
// each TestAttack* test failed while the defect it names was present.

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/popgate/popgate/auth"
)

// TestAttackReloadForgetsLocks: a reload that changes any throttle key
// (max_failures_per_ip, max_failures_per_user, failure_window,
// ipv6_prefix) builds a new, empty Throttle. An operator who tightens the
// limits during a password-guessing attack thereby lifts every lock and
// count the attack has earned. (Sessions that started before the reload
// also keep the old Throttle: their in-flight attempts are not seen by
// the new one.)
func TestAttackReloadForgetsLocks(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	c1, err := ParseConfig("t", []byte(minimal+"[limits]\nmax_failures_per_user = 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	in1, err := buildInstance(c1, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("198.51.100.7")
	for range 3 {
		tk, _, _ := in1.throttle.Begin(context.Background(), ip, "alice")
		in1.throttle.End(tk, auth.AttemptFailed)
	}
	if _, ok, _ := in1.throttle.Begin(context.Background(), ip, "alice"); ok {
		t.Fatal("alice not locked after 3 failures")
	}
	// The operator tightens the limit to 2.
	c2, err := ParseConfig("t", []byte(minimal+"[limits]\nmax_failures_per_user = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	in2, err := buildInstance(c2, log, in1, nil)
	if err != nil {
		t.Fatal(err)
	}
	in2.goLive() // as the runner does once the reload is in place
	if _, ok, _ := in2.throttle.Begin(context.Background(), ip, "alice"); ok {
		t.Errorf("after a reload that lowered max_failures_per_user, the locked user may be guessed again")
	}
}
