package tlsconf

// Regression tests from the attack review of upgrades (the session ticket
// keys a new process inherits).

import (
	"testing"
	"time"
)

// TestAttack8InheritedKeyFromTheFuture: a key the process being replaced
// says it made after now (a garbage or hostile key stream, a clock set
// back) became the newest key: it sealed every ticket, and since a key is
// rotated out only once it is a rotation period old, it sealed them until
// that date came, and was accepted a lifetime after; the rotation and the
// lifetime meant nothing. A key from the future is not taken.
func TestAttack8InheritedKeyFromTheFuture(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	past := TicketKey{Key: [32]byte{1}, Made: now.Add(-10 * time.Minute)}
	future := TicketKey{Key: [32]byte{2}, Made: now.Add(365 * 24 * time.Hour)}
	heir, err := NewTickets(TicketsConfig{Rotation: time.Hour, Lifetime: 2 * time.Hour, Now: clock,
		Inherited: []TicketKey{past, future}})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(3 * time.Hour) // past every lifetime
	keys, _, err := heir.src.TicketKeys(now)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k == future.Key {
			t.Fatal("a key made a year from now still seals or opens tickets after the key lifetime")
		}
	}
	if got := heir.LocalKeys(); len(got) != 1 || got[0].Key == past.Key || got[0].Key == future.Key {
		t.Errorf("keys after the lifetime: %d; want one new key", len(got))
	}
}
