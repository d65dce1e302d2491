package ldapsource

// Regression tests from the attack review of the directory sources.

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// throttleShares reports whether the failed-login limit per user counts a
// and b as one name: one failure for a leaves b no attempt from another
// address under max_failures_per_user = 1.
func throttleShares(t *testing.T, a, b string) bool {
	t.Helper()
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerUser: 1, Window: time.Minute})
	tk, ok, _ := th.Begin(context.Background(), netip.MustParseAddr("192.0.2.1"), a)
	if !ok {
		t.Fatalf("Begin(%q) refused on a fresh throttle", a)
	}
	th.End(tk, auth.AttemptFailed)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	tk, ok, _ = th.Begin(ctx, netip.MustParseAddr("198.51.100.1"), b)
	if ok {
		th.End(tk, auth.AttemptSucceeded)
	}
	return !ok
}

// TestAttack5Spellings: OpenLDAP's matching rules find carol's entry for
// "carol ", " carol", "ｃａｒｏｌ" and more (insignificant spaces,
// compatibility forms). Each of those, with carol's password, logged in to
// her mailbox with the directory's master credentials, and the failed-login
// limit per user counted each spelling apart: a fresh budget of guesses at
// one password per spelling, without end (any number of spaces).
func TestAttack5Spellings(t *testing.T) {
	s := startDir(t)
	cfg := testConfig(t, s)
	cfg.Filter = "(&(objectClass=inetOrgPerson)(uid=%u))"
	src := newSource(t, cfg)
	found := 0
	for _, u := range []string{
		"carol", "CAROL", "carol ", " carol", "  carol   ", "carol\u00a0", "carol\u3000",
		"ｃａｒｏｌ", "ⓒarol", "car𝐨l", "car\u00adol", "\tcarol",
	} {
		dec, err := src.Decide(t.Context(), request(u, "Carol-pw"))
		switch {
		case errors.Is(err, auth.ErrNoRoute):
		case err != nil:
			t.Errorf("%q: %v", u, err)
		default:
			found++
			if dec.User != "carol@example.net*master" {
				t.Errorf("%q: logs in as %q", u, dec.User)
			}
			if !throttleShares(t, "carol", u) {
				t.Errorf("%q reaches carol's mailbox with a failed-login budget of its own", u)
			}
		}
	}
	if found < 5 {
		t.Errorf("the directory found carol for %d spellings; the test no longer shows what it is about", found)
	}
}
