package pool

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Spellings of one name that the directory takes for one entry (case,
// compatibility forms, format characters, spaces) open one mailbox: they
// must key one affinity, or a pool change in between puts that mailbox on
// two backends at once.
func TestAttack10SpellingsShareOneAffinity(t *testing.T) {
	for _, other := range []string{"ＡＬＩＣＥ", "ali\u200bce", " alice ", "Alice"} {
		d, _ := newTestDirector(t, 0)
		b, release := assign(t, d, "alice")
		// The user's backend is drained while the session lives: a new
		// session of the same mailbox must still go there.
		if err := d.Change(context.Background(), "p", Op{Action: "drain", Backend: b}); err != nil {
			t.Fatal(err)
		}
		got, r2 := assign(t, d, other)
		if got != b {
			t.Errorf("%q went to %s while %q has a session on %s: one mailbox on two backends", other, got, "alice", b)
		}
		r2(true)
		release(true)
	}
}

// TestAttack10MoveKeysAsLoginsDo: with a key form installed (the proxy's,
// behind a route that compares local parts only), a move of
// "carol@a.example" moves the affinity carol's logins use.
func TestAttack10MoveKeysAsLoginsDo(t *testing.T) {
	d, _ := newTestDirector(t, time.Hour)
	d.SetKey(func(u string) string { return strings.Split(u, "@")[0] })
	b, release := assign(t, d, "carol")
	release(true)
	to := map[string]string{"b0": "b1", "b1": "b2", "b2": "b0"}[b]
	if _, err := d.Move(context.Background(), "p", "carol@a.example", to); err != nil {
		t.Fatal(err)
	}
	if got, r := assign(t, d, "carol"); got != to {
		t.Errorf("after a move of carol@a.example to %s, carol's login went to %s", to, got)
		r(true)
	}
}
