package pool

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

func users(n int) []string {
	u := make([]string, n)
	for i := range u {
		u[i] = fmt.Sprintf("user%d@example.com", i)
	}
	return u
}

func TestPickSpreadsByWeight(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1}, {1, 2, 3}, {5, 1, 1, 1}} {
		var ms []Member
		total := 0
		for i, w := range weights {
			ms = append(ms, Member{Backend: fmt.Sprintf("b%d", i), Weight: w})
			total += w
		}
		count := map[string]int{}
		const n = 1000
		for _, u := range users(n) {
			count[Pick(u, ms, nil)]++
		}
		for _, m := range ms {
			want := float64(n) * float64(m.Weight) / float64(total)
			if got := float64(count[m.Backend]); math.Abs(got-want) > 0.15*want {
				t.Errorf("weights %v: %s has %v users, want %v ± 15%%", weights, m.Backend, got, want)
			}
		}
	}
}

func TestPickMovesOnlyItsShare(t *testing.T) {
	three := []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}}
	four := append(three[:3:3], Member{"b3", 1})
	moved := 0
	const n = 4000
	for _, u := range users(n) {
		before, after := Pick(u, three, nil), Pick(u, four, nil)
		if before != after {
			moved++
			if after != "b3" {
				t.Fatalf("%s moved from %s to %s, not to the new backend", u, before, after)
			}
		}
	}
	if f := float64(moved) / n; f < 0.2 || f > 0.3 {
		t.Errorf("adding a fourth backend moved %.3f of the users, want about 0.25", f)
	}
	// Removing one moves only its users.
	for _, u := range users(n) {
		before, after := Pick(u, three, nil), Pick(u, three[:2], nil)
		if before != "b2" && before != after {
			t.Fatalf("%s moved from %s to %s though %s stayed", u, before, after, before)
		}
	}
}

func TestPickSkips(t *testing.T) {
	ms := []Member{{"b0", 1}, {"b1", 0}, {"b2", 1}}
	for _, u := range users(200) {
		if got := Pick(u, ms, func(b string) bool { return b == "b0" }); got != "b2" {
			t.Fatalf("Pick(%s) = %q, want b2 (b0 skipped, b1 weight 0)", u, got)
		}
	}
	if got := Pick("x", []Member{{"b0", 0}}, nil); got != "" {
		t.Errorf("Pick with no weight = %q, want \"\"", got)
	}
}

// clock is a settable time for the stores.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestDirector(t *testing.T, ttl time.Duration) (*Director, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1e9, 0)}
	d := New(Config{
		Pools:    []Pool{{Name: "p", Members: []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}}, AffinityTTL: ttl}},
		Backends: []string{"b0", "b1", "b2", "b3", "lone"},
		Store:    NewMemoryStore(c.now),
	})
	return d, c
}

func assign(t *testing.T, d *Director, user string) (string, func(bool)) {
	t.Helper()
	b, release, ok, err := d.Assign(context.Background(), "p", user)
	if !ok || err != nil {
		t.Fatalf("Assign(%s) = %q, ok %v, %v", user, b, ok, err)
	}
	return b, release
}

func TestAffinityOutlivesAPoolChange(t *testing.T) {
	d, c := newTestDirector(t, time.Minute)
	ctx := context.Background()
	// A user whom the fourth backend takes, with a session open.
	var user string
	for _, u := range users(100) {
		if Pick(Fold(u), []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}, {"b3", 1}}, nil) == "b3" {
			user = u
			break
		}
	}
	before, release := assign(t, d, user)
	if err := d.Change(ctx, "p", Op{Action: "add", Backend: "b3"}); err != nil {
		t.Fatal(err)
	}
	// A second session while the first lives, and one after it ended
	// within the TTL, stay.
	b, r2 := assign(t, d, user)
	if b != before {
		t.Fatalf("second session went to %s, want %s where the first is", b, before)
	}
	r2(true)
	release(true)
	c.add(59 * time.Second)
	b, r3 := assign(t, d, user)
	if b != before {
		t.Fatalf("within affinity_ttl: %s, want %s", b, before)
	}
	r3(true)
	c.add(61 * time.Second)
	b, r4 := assign(t, d, user)
	r4(true)
	if b != "b3" {
		t.Fatalf("after affinity_ttl: %s, want b3", b)
	}
	st := d.Stats()
	if st.Moves[MoveRebalance] != 1 || st.Hits != 2 || st.Misses != 2 {
		t.Errorf("stats %+v: want 1 rebalance move, 2 hits, 2 misses", st)
	}
}

func TestUserMatchesWithoutRegardToCase(t *testing.T) {
	d, _ := newTestDirector(t, time.Minute)
	b1, r := assign(t, d, "Alice@Example.com")
	defer r(true)
	d.Change(context.Background(), "p", Op{Action: "drain", Backend: b1})
	if b2, r2 := assign(t, d, "alice@example.com"); b2 != b1 {
		t.Errorf("alice@example.com went to %s, Alice@Example.com is on %s", b2, b1)
	} else {
		r2(true)
	}
}

func TestDrain(t *testing.T) {
	d, c := newTestDirector(t, 10*time.Second)
	ctx := context.Background()
	on := map[string]string{}
	var releases []func(bool)
	for _, u := range users(300) {
		b, r := assign(t, d, u)
		on[u] = b
		releases = append(releases, r)
	}
	if err := d.Change(ctx, "p", Op{Action: "drain", Backend: "b1"}); err != nil {
		t.Fatal(err)
	}
	// While their sessions live, the drained backend's users stay.
	for u, was := range on {
		b, r := assign(t, d, u)
		if b != was {
			t.Fatalf("%s moved from %s to %s with a session open", u, was, b)
		}
		r(true)
	}
	for _, r := range releases {
		r(true)
	}
	c.add(11 * time.Second)
	n := 0
	for u, was := range on {
		b, r := assign(t, d, u)
		r(true)
		switch {
		case b == "b1":
			t.Fatalf("%s still on the drained b1", u)
		case was == "b1":
			n++
		case b != was:
			t.Fatalf("%s moved from %s to %s; only b1 was drained", u, was, b)
		}
	}
	if st := d.Stats(); st.Moves[MoveDrain] != uint64(n) || n == 0 {
		t.Errorf("moves %v, want %d drain moves", st.Moves, n)
	}
	// A reload keeps the drain.
	d.Reconfigure([]Pool{{Name: "p", Members: []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}}, AffinityTTL: time.Second}}, []string{"b0", "b1", "b2"})
	for u := range on {
		if b, r := assign(t, d, u); b == "b1" {
			t.Fatalf("after a reload %s went to the drained b1", u)
		} else {
			r(true)
		}
	}
	if err := d.Change(ctx, "p", Op{Action: "undrain", Backend: "b1"}); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(ctx, false); st[0].Backends[1].Weight != 1 || st[0].Backends[1].Drained {
		t.Errorf("after undrain: %+v", st[0].Backends[1])
	}
}

func TestDownBackendLosesItsUsersAfterTheGrace(t *testing.T) {
	d, c := newTestDirector(t, time.Hour)
	var down sync.Map
	d.SetDown(func(b string) bool { _, ok := down.Load(b); return ok })
	on := map[string]string{}
	for _, u := range users(90) {
		b, r := assign(t, d, u)
		r(true)
		on[u] = b
	}
	down.Store("b2", true)
	// Within DownGrace of their last session they stay: a backend that
	// is only slow may still be finishing it.
	for u, was := range on {
		b, r := assign(t, d, u)
		r(true)
		if b != was {
			t.Fatalf("%s: %s → %s within DownGrace", u, was, b)
		}
	}
	c.add(DownGrace)
	for u, was := range on {
		b, r := assign(t, d, u)
		r(true)
		if b == "b2" || was != "b2" && b != was {
			t.Fatalf("%s: %s → %s with b2 down", u, was, b)
		}
	}
	if d.Stats().Moves[MoveDown] == 0 {
		t.Error("no move counted as down")
	}
}

func TestRemoveAndMove(t *testing.T) {
	d, _ := newTestDirector(t, time.Hour)
	ctx := context.Background()
	b, r := assign(t, d, "bob")
	r(true)
	if err := d.Change(ctx, "p", Op{Action: "remove", Backend: b}); err != nil {
		t.Fatal(err)
	}
	b2, r := assign(t, d, "bob")
	r(true)
	if b2 == b {
		t.Fatalf("bob stayed on removed %s", b)
	}
	if d.Stats().Moves[MoveRemoved] != 1 {
		t.Errorf("moves %v, want one removed", d.Stats().Moves)
	}
	// An operator's move holds at once, whatever the hash says.
	if _, err := d.Move(ctx, "p", "bob", b); err == nil {
		t.Errorf("moved bob to the removed %s", b)
	}
	if err := d.Change(ctx, "p", Op{Action: "add", Backend: "lone", Weight: 3}); err != nil {
		t.Fatal(err)
	}
	if to, err := d.Move(ctx, "p", "Bob", "lone"); err != nil || to != "lone" {
		t.Fatalf("Move = %q, %v", to, err)
	}
	if b3, r := assign(t, d, "bob"); b3 != "lone" {
		t.Errorf("after the move bob went to %s", b3)
	} else {
		r(true)
	}
	users, _ := d.store.Users(ctx, "p")
	if len(users["lone"]) != 1 || users["lone"][0] != "bob" {
		t.Errorf("users %v", users)
	}
	for _, bad := range []Op{{Action: "drain", Backend: "nope"}, {Action: "weight", Backend: "b0", Weight: -1}, {Action: "add", Backend: "b0"}, {Action: "frob", Backend: "b0"}} {
		if err := d.Change(ctx, "p", bad); err == nil {
			t.Errorf("Change(%+v) succeeded", bad)
		}
	}
	if err := d.Change(ctx, "nopool", Op{Action: "drain", Backend: "b0"}); err == nil {
		t.Error("Change of an unknown pool succeeded")
	}
	if err := d.Change(ctx, "p", Op{Action: "reset"}); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(ctx, false); len(st[0].Backends) != 3 {
		t.Errorf("after reset: %+v", st[0].Backends)
	}
}

func TestFailedLoginLeavesNoAffinity(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := NewMemoryStore(c.now)
	d := New(Config{Pools: []Pool{{Name: "p", Members: []Member{{"b0", 1}}, AffinityTTL: time.Hour}}, Backends: []string{"b0"}, Store: s})
	for _, u := range users(100) {
		_, r := assign(t, d, u)
		r(false)
		r(true) // a second call does nothing
	}
	if n := s.Len(); n != 0 {
		t.Errorf("%d entries after 100 failed logins, want 0", n)
	}
	if _, _, ok, _ := d.Assign(context.Background(), "b0", "x"); ok {
		t.Error("a backend's name counted as a pool")
	}
}

func TestNoBackendLeft(t *testing.T) {
	d, _ := newTestDirector(t, time.Hour)
	for _, b := range []string{"b0", "b1", "b2"} {
		d.Change(context.Background(), "p", Op{Action: "drain", Backend: b})
	}
	if _, _, ok, err := d.Assign(context.Background(), "p", "u"); !ok || err == nil {
		t.Errorf("Assign with every backend drained: ok %v, err %v", ok, err)
	}
}

func BenchmarkAssign(b *testing.B) {
	d := New(Config{Pools: []Pool{{Name: "p", Members: []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}}, AffinityTTL: time.Hour}}, Backends: []string{"b0", "b1", "b2"}})
	u := users(1000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, r, _, _ := d.Assign(context.Background(), "p", u[i%len(u)])
		r(true)
	}
}

func TestLiveSessionOutlastsDownAndRemove(t *testing.T) {
	d, _ := newTestDirector(t, time.Hour)
	down := false
	d.SetDown(func(b string) bool { return down })
	b, release := assign(t, d, "dora")
	down = true
	if err := d.Change(context.Background(), "p", Op{Action: "remove", Backend: b}); err != nil {
		t.Fatal(err)
	}
	// Its backend down and out of the pool: a session still lives there,
	// so the next one goes there too.
	b2, r2 := assign(t, d, "dora")
	if b2 != b {
		t.Fatalf("with a session on %s (down, removed) the next went to %s", b, b2)
	}
	r2(true)
	release(true)
	down = false
	if b3, r3 := assign(t, d, "dora"); b3 == b {
		t.Errorf("after its sessions ended dora stayed on the removed %s", b)
	} else {
		r3(true)
	}
}
