package pool

import (
	"context"
	"testing"
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
