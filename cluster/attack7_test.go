package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/dirrun"
)

// TestAttack7SameNodeHandover: during an upgrade the old process drains
// its sessions while the new one serves, both with the node's node_name.
// Each must keep its own sessions listed (neither overwrites the other's
// entry), a kick by user asked on the new one must end the old one's
// sessions too, a kick by id must reach the process that holds the
// session, and the old one's exit must not take the new one's sessions
// out of the fleet's list.
func TestAttack7SameNodeHandover(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	old := startMember(t, r, "node0", key)
	old.local.add("aa0001", "mallory")
	old.local.add("aa0002", "carol")
	cur := startMember(t, r, "node0", key)
	cur.local.add("bb0001", "bob")
	waitSubscribed(t, cur, 2)

	// Alone in the fleet but for its predecessor: the kick must reach it.
	e := cur.s.End(context.Background(), "mallory", "")
	if u := old.local.users(); slices.Contains(u, "mallory") {
		t.Errorf("a kick of mallory asked on the new process left the old one's session: %v (End %+v)", u, e)
	}
	if e.Total() != 1 {
		t.Errorf("End(mallory) = %+v, want 1 ended", e)
	}

	other := startMember(t, r, "node1", key)
	waitSubscribed(t, other, 3)
	time.Sleep(3 * other.s.refresh)
	for range 5 {
		list, partial := other.s.List(context.Background())
		var ids []string
		for _, s := range list {
			ids = append(ids, s.ID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"node0:aa0002", "node0:bb0001"}) {
			t.Fatalf("node1 lists %v (partial %q), want the sessions of both processes of node0", ids, partial)
		}
		time.Sleep(old.s.refresh)
	}
	// The new process lists its predecessor's sessions too.
	if list, _ := cur.s.List(context.Background()); len(list) != 2 {
		t.Errorf("the new process lists %+v, want its own and the old one's", list)
	}

	// A kick by id of the old process's session, asked on the new one.
	e = cur.s.End(context.Background(), "", "node0:aa0002")
	if len(old.local.users()) != 0 || e.Total() != 1 {
		t.Errorf("End(node0:aa0002) on the new process = %+v; the old one keeps %v", e, old.local.users())
	}

	old.stop()
	list, partial := other.s.List(context.Background())
	if len(list) != 1 || list[0].ID != "node0:bb0001" {
		t.Errorf("after the old process left, node1 lists %+v (partial %q), want the new one's session", list, partial)
	}
	e = other.s.End(context.Background(), "", "node0:bb0001")
	if e.Total() != 1 || len(cur.local.users()) != 0 {
		t.Errorf("after the old process left, End(node0:bb0001) = %+v", e)
	}
}

// TestAttack7TicketHugeEntry: whoever can write to Redis puts a huge
// string where a ticket key belongs. A replica must not read it whole at
// every refresh nor keep it (in the memory of refusals already logged):
// a ticket key entry is a few dozen bytes.
func TestAttack7TicketHugeEntry(t *testing.T) {
	r := dirrun.RedisFor(t)
	logs := new(syncBuf)
	c, err := Open(Config{Redis: r.URL(), KeyFile: writeKey(t), NodeName: "a"}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	const huge = 48 << 20
	tk := &TicketKeys{c: c, rotation: time.Minute, lifetime: 3 * time.Minute, poll: 20 * time.Millisecond,
		shared: map[int64][32]byte{}, refused: map[string]bool{}}
	now := time.Now()
	for _, e := range []int64{tk.epoch(now), tk.epoch(now) + 1} {
		if err := c.client.SetRange(context.Background(), tk.name(e), huge-1, "x").Err(); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 3 {
		tk.refresh(time.Now())
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if !strings.Contains(logs.String(), "refused") {
		t.Errorf("the huge entries were not refused:\n%s", logs)
	}
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > huge/2 {
		t.Errorf("the replica keeps %d MiB more after reading huge ticket entries", grown>>20)
	}
	if read := after.TotalAlloc - before.TotalAlloc; read > huge {
		t.Errorf("three refreshes allocated %d MiB reading huge ticket entries", read>>20)
	}
	if keys, _, err := tk.TicketKeys(time.Now()); err != nil || len(keys) == 0 {
		t.Errorf("TicketKeys = %d keys, %v: the replica must seal with a key of its own", len(keys), err)
	}
	// Entries of another type are no outage either.
	for _, e := range []int64{tk.epoch(now), tk.epoch(now) + 1} {
		c.client.Del(context.Background(), tk.name(e))
		if err := c.client.HSet(context.Background(), tk.name(e), "a", "b").Err(); err != nil {
			t.Fatal(err)
		}
	}
	tk.refresh(time.Now())
	if !c.Up() || c.Fallbacks()["tickets"] != 0 {
		t.Errorf("ticket entries of another type: Up() = %v, fallbacks %v; want Redis up", c.Up(), c.Fallbacks())
	}
}

// TestAttack7ACMELockForever: whoever can write to Redis leaves an order
// lock, or a failed order's back-off, that never expires (or expires in
// a year). No replica ever sets such a lock: it must expire within what
// a replica's lock or back-off lasts, not hold every renewal of the name
// until the certificate expires.
func TestAttack7ACMELockForever(t *testing.T) {
	r := dirrun.RedisFor(t)
	c, _ := openNode(t, r, "a", writeKey(t))
	l := c.ACMELocks()
	ctx := context.Background()
	for _, tc := range []struct {
		val string
		ttl time.Duration // 0: none
		max time.Duration
	}{
		{"order evil 00", 0, lockTTL},
		{"order evil 01", 365 * 24 * time.Hour, lockTTL},
		{"failed evil", 0, maxLockBackoff},
		{"failed evil", 365 * 24 * time.Hour, maxLockBackoff},
	} {
		name := "mail.example.org"
		key := c.key("acme-lock:" + name)
		if err := c.client.Set(ctx, key, tc.val, tc.ttl).Err(); err != nil {
			t.Fatal(err)
		}
		release, held, _, err := l.TryLock(name)
		if held || err != nil {
			t.Errorf("%q: TryLock held %v, err %v; want held elsewhere", tc.val, held, err)
			if release != nil {
				release(0)
			}
		}
		if left := c.client.PTTL(ctx, key).Val(); left <= 0 || left > tc.max {
			t.Errorf("%q for %s: the lock is left to expire in %s, want within %s", tc.val, tc.ttl, left, tc.max)
		}
		c.client.Del(ctx, key)
	}
}

// TestAttack7SessionsIndexFuture: whoever can write to Redis adds to the
// index of replicas more members than a list reads, scored far in the
// future, so that they come first and stay. The real replicas must still
// be listed and reachable by a kick by id: no replica registers in the
// future, such members are dropped.
func TestAttack7SessionsIndexFuture(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	a := startMember(t, r, "node0", key)
	b := startMember(t, r, "node1", key)
	b.local.add("bb0001", "bob")
	waitSubscribed(t, a, 2)
	waitList(t, a, 1)
	ctx := context.Background()
	future := float64(time.Now().Add(100 * 365 * 24 * time.Hour).UnixMilli())
	for i := range maxNodes + 6 {
		a.s.c.client.ZAdd(ctx, a.s.index, redis.Z{Score: future, Member: fmt.Sprintf("fake%02d", i)})
	}
	list, partial := a.s.List(ctx)
	if len(list) != 1 || list[0].ID != "node1:bb0001" {
		t.Errorf("with future members in the index, node0 lists %+v (partial %q), want node1's session", list, partial)
	}
	if e := a.s.End(ctx, "", "node1:bb0001"); e.Total() != 1 || len(b.local.users()) != 0 {
		t.Errorf("with future members in the index, End(node1:bb0001) = %+v", e)
	}
	if n := a.s.c.client.ZCount(ctx, a.s.index, "("+fmt.Sprint(time.Now().Add(time.Hour).UnixMilli()), "+inf").Val(); n != 0 {
		t.Errorf("%d members scored in the future stay in the index", n)
	}
}

// TestAttack7SessionsIndexHugeMember: whoever can write to Redis adds a
// member of many megabytes to the index of replicas. Every replica reads
// the index at each refresh and list: the member must go at its first
// read, and not be kept in the memory of refusals already logged.
func TestAttack7SessionsIndexHugeMember(t *testing.T) {
	r := dirrun.RedisFor(t)
	a := startMember(t, r, "node0", writeKey(t))
	ctx := context.Background()
	huge := strings.Repeat("x", 8<<20)
	a.s.c.client.ZAdd(ctx, a.s.index, redis.Z{Score: float64(time.Now().UnixMilli()), Member: huge})
	a.s.List(ctx)
	if err := a.s.c.client.ZScore(ctx, a.s.index, huge).Err(); err != redis.Nil {
		t.Errorf("the huge member stays in the index after a read (%v)", err)
	}
	a.s.mu.Lock()
	for k := range a.s.refused {
		if len(k) > 4096 {
			t.Errorf("a refusal of %d bytes is remembered", len(k))
		}
	}
	a.s.mu.Unlock()
	if !strings.Contains(a.logs.String(), "a replica name in the index is refused") {
		t.Errorf("the huge member was not refused:\n%s", a.logs)
	}
}

// TestAttack7ThrottleUnusableForever: whoever can write to Redis makes
// the failed-login counts there unusable (a key of another type, a count
// that is no number) and gives them no expiry, or one in a century. Each
// replica then counts those budgets on its own state, N replicas giving N
// budgets: that must last a window at most, not for ever.
func TestAttack7ThrottleUnusableForever(t *testing.T) {
	r := dirrun.RedisFor(t)
	const window = 10 * time.Minute
	rp := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: 3, Window: window})[0]
	for _, tc := range []struct {
		user    string
		corrupt []string
	}{
		{"string", []string{"SET", "", "1"}},
		{"garbage", []string{"HSET", "", "n", "three"}},
		{"century", []string{"SET", "", "1", "EX", "3153600000"}},
		{"flight", []string{"SET", "flight", "1"}},
	} {
		count, flight := rp.store.names(auth.StoreKey{User: true, Name: tc.user})
		args := append([]string(nil), tc.corrupt...)
		args[1] = count
		if tc.corrupt[1] == "flight" {
			args[1] = flight
		}
		if _, err := r.Do(args...); err != nil {
			t.Fatal(err)
		}
		attempt(rp.th, tip1, tc.user, auth.AttemptFailed)
		ttl := rp.c.client.PTTL(context.Background(), args[1]).Val()
		if ttl != -2*time.Nanosecond && (ttl <= 0 || ttl > window) {
			t.Errorf("%s: the unusable key %s is left to expire in %s, want within the window (%s)", tc.user, args[1], ttl, window)
		}
	}
}

// TestAttack7ThrottleLockForADay: whoever can write to Redis (without
// key_file: the key names say nothing of whose budget they are) sets
// the lock, or the start of the window, of every count there a day
// ahead. No replica locks a key for longer than a window: the users and
// addresses must be refused for a window at most.
func TestAttack7ThrottleLockForADay(t *testing.T) {
	r := dirrun.RedisFor(t)
	const window = 10 * time.Minute
	rp := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: 3, Window: window})[0]
	day := fmt.Sprint(time.Now().Add(23 * time.Hour).UnixMilli())
	for user, fields := range map[string][]string{
		"locked":  {"n", "3", "s", fmt.Sprint(time.Now().UnixMilli()), "l", day},
		"started": {"n", "3", "s", day, "l", "0"},
	} {
		count, _ := rp.store.names(auth.StoreKey{User: true, Name: user})
		if _, err := r.Do(append([]string{"HSET", count}, fields...)...); err != nil {
			t.Fatal(err)
		}
		ok, wait := attempt(rp.th, tip1, user, auth.AttemptFailed)
		if ok || wait > window {
			t.Errorf("%s: Begin = %v, retry after %s; want refused for a window (%s) at most", user, ok, wait, window)
		}
	}
}
