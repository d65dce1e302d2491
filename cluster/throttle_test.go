package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/dirrun"
)

// throttleReplica is one replica's failed-login throttle over the
// fleet's Redis.
type throttleReplica struct {
	c     *Cluster
	store *ThrottleStore
	th    *auth.Throttle
	logs  *syncBuf
}

func newThrottleReplica(t *testing.T, r *dirrun.Redis, node, keyFile string, cfg auth.ThrottleConfig) *throttleReplica {
	t.Helper()
	logs := new(syncBuf)
	c, err := Open(Config{Redis: r.URL(), KeyFile: keyFile, NodeName: node}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := c.NewThrottleStore(time.Hour)
	cfg.Store = s
	return &throttleReplica{c: c, store: s, th: auth.NewThrottle(cfg), logs: logs}
}

// throttleFleet is n replicas' throttles sharing one Redis.
func throttleFleet(t *testing.T, r *dirrun.Redis, n int, cfg auth.ThrottleConfig) []*throttleReplica {
	t.Helper()
	key := writeKey(t)
	rs := make([]*throttleReplica, n)
	for i := range rs {
		rs[i] = newThrottleReplica(t, r, fmt.Sprint("node", i), key, cfg)
	}
	return rs
}

// noWait is an ended context: Begin refuses at once where it would wait
// for attempts in flight.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func attempt(th *auth.Throttle, ip netip.Addr, user string, r auth.AttemptResult) (bool, time.Duration) {
	tk, ok, wait := th.Begin(noWait, ip, user)
	th.End(tk, r)
	return ok, wait
}

var (
	tip1 = netip.MustParseAddr("192.0.2.1")
	tip2 = netip.MustParseAddr("198.51.100.7")
)

// TestThrottleFleetBudget: failures spread over three replicas lock the
// user, and the address, at the limit, not at three times it, on every
// replica; neither the user name nor the address is in clear in Redis.
func TestThrottleFleetBudget(t *testing.T) {
	r := startRedis(t)
	const n = 4
	rs := throttleFleet(t, r, 3, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: n, Window: 10 * time.Minute})
	// The user: n failures from n addresses, round robin.
	for i := range n {
		ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
		if ok, _ := attempt(rs[i%3].th, ip, "Alice@Example.org", auth.AttemptFailed); !ok {
			t.Fatalf("failure %d refused", i+1)
		}
	}
	for i, rp := range rs {
		// The fold applies: another spelling is the same user.
		ok, wait := attempt(rp.th, tip1, "  alice@EXAMPLE.org", auth.AttemptSucceeded)
		if ok || wait <= 9*time.Minute || wait > 10*time.Minute {
			t.Errorf("node%d: after %d failures over 3 replicas, Begin(user) = %v, %v; want refused for about 10m", i, n, ok, wait)
		}
	}
	if ok, _ := attempt(rs[0].th, tip1, "bob", auth.AttemptSucceeded); !ok {
		t.Error("another user is refused")
	}

	// The address: n failures with n names, round robin.
	rs = throttleFleet(t, r, 3, auth.ThrottleConfig{MaxPerIP: n, MaxPerUser: 100, Window: 10 * time.Minute})
	for i := range n {
		if ok, _ := attempt(rs[i%3].th, tip2, fmt.Sprint("user", i), auth.AttemptFailed); !ok {
			t.Fatalf("failure %d refused", i+1)
		}
	}
	for i, rp := range rs {
		if ok, _ := attempt(rp.th, tip2, "carol", auth.AttemptSucceeded); ok {
			t.Errorf("node%d: after %d failures of one address over 3 replicas, it may try again", i, n)
		}
	}
	if ok, _ := attempt(rs[1].th, tip1, "carol", auth.AttemptSucceeded); !ok {
		t.Error("another address is refused")
	}

	keys, err := r.Do("SCAN", "0", "COUNT", "100000")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(keys, "popgate:{throttle:user:") || !strings.Contains(keys, "popgate:{throttle:ip:") {
		t.Errorf("no throttle keys in Redis:\n%s", keys)
	}
	dump := keys
	for _, k := range strings.Fields(keys) {
		if strings.HasSuffix(k, ":n") {
			v, _ := r.Do("HGETALL", k)
			dump += v
		}
	}
	for _, s := range []string{"alice", "Alice", "user0", "192.0.2", "198.51", "203.0.113"} {
		if strings.Contains(dump, s) {
			t.Errorf("%q is in clear in Redis:\n%s", s, dump)
		}
	}
}

// TestThrottleFleetSameAnswers: a random run of attempts gets the same
// answers (go ahead or not, Retry-After) from three replicas sharing
// Redis, taken in turn, as from one Throttle on its own: the store keeps
// the Throttle's rules (windows, locks, attempts in flight, a success
// clearing a user's count from the user's network only).
func TestThrottleFleetSameAnswers(t *testing.T) {
	r := startRedis(t)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := auth.ThrottleConfig{MaxPerIP: 5, MaxPerUser: 3, Window: 10 * time.Minute, Now: clk.now}
	local := auth.NewThrottle(cfg)
	rs := throttleFleet(t, r, 3, cfg)
	ips := []netip.Addr{tip1, netip.MustParseAddr("192.0.2.9"), tip2, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")}
	users := []string{"alice", "ALICE", "bob", "", "carol"}
	type open struct {
		local, shared auth.Ticket
		th            *auth.Throttle
	}
	var held []open
	rnd := rand.New(rand.NewPCG(1, 2))
	result := func() auth.AttemptResult { return auth.AttemptResult(rnd.IntN(3)) }
	for i := range 2000 {
		switch op := rnd.IntN(10); {
		case op < 6:
			ip, user := ips[rnd.IntN(len(ips))], users[rnd.IntN(len(users))]
			th := rs[i%3].th
			ltk, lok, lwait := local.Begin(noWait, ip, user)
			stk, sok, swait := th.Begin(noWait, ip, user)
			if lok != sok || lwait != swait {
				t.Fatalf("step %d: Begin(%v, %q): local %v, %v; fleet %v, %v", i, ip, user, lok, lwait, sok, swait)
			}
			if len(held) < 4 && rnd.IntN(2) == 0 {
				held = append(held, open{ltk, stk, th})
				continue
			}
			r := result()
			local.End(ltk, r)
			th.End(stk, r)
		case op < 8 && len(held) > 0:
			j := rnd.IntN(len(held))
			r := result()
			local.End(held[j].local, r)
			held[j].th.End(held[j].shared, r)
			held = append(held[:j], held[j+1:]...)
		default:
			// Steps on a grid, which land on the ends of windows and
			// locks.
			clk.add(time.Duration(rnd.IntN(13)) * 10 * time.Second)
		}
	}
	for _, rp := range rs {
		if f := rp.c.Fallbacks()["throttle"]; f != 0 {
			t.Errorf("%s: %d fallbacks with Redis up", rp.c.Node(), f)
		}
	}
}

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

// TestThrottleFleetConcurrent: attempts sent at once to three replicas
// cannot race past the budget: at most the limit go ahead when they all
// fail, and never more than the limit are in flight at once when they
// end otherwise.
func TestThrottleFleetConcurrent(t *testing.T) {
	r := startRedis(t)
	const n, tries = 5, 60
	rs := throttleFleet(t, r, 3, auth.ThrottleConfig{MaxPerIP: n, MaxPerUser: n, Window: 10 * time.Minute})
	run := func(ip netip.Addr, user string, res auth.AttemptResult) (went, most int64) {
		var wg sync.WaitGroup
		var inFlight, maxInFlight, ok atomic.Int64
		start := make(chan struct{})
		for i := range tries {
			wg.Go(func() {
				<-start
				// A guard against a hang, not a timing assertion.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				th := rs[i%3].th
				tk, went, _ := th.Begin(ctx, ip, user)
				if went {
					ok.Add(1)
					m := inFlight.Add(1)
					for {
						old := maxInFlight.Load()
						if m <= old || maxInFlight.CompareAndSwap(old, m) {
							break
						}
					}
					time.Sleep(5 * time.Millisecond)
					inFlight.Add(-1)
				}
				th.End(tk, res)
			})
		}
		close(start)
		wg.Wait()
		return ok.Load(), maxInFlight.Load()
	}
	if went, _ := run(tip1, "alice", auth.AttemptFailed); went != n {
		t.Errorf("%d failing attempts at once over 3 replicas: %d went ahead; want the budget, %d", tries, went, n)
	}
	went, most := run(tip2, "bob", auth.AttemptAborted)
	if most > n {
		t.Errorf("%d attempts at once over 3 replicas: %d in flight at once; want at most %d", tries, most, n)
	}
	if went != tries {
		t.Errorf("%d attempts that do not fail: %d went ahead; want all (each waits for a place)", tries, went)
	}
}

// TestThrottleFleetRedisDown: with Redis stopped, each replica counts on
// its own (one warning per outage, fallbacks counted); once Redis is back,
// the count is shared again without a restart, and what a replica
// counted alone still holds there.
func TestThrottleFleetRedisDown(t *testing.T) {
	r := startRedis(t)
	const n = 3
	rs := throttleFleet(t, r, 2, auth.ThrottleConfig{MaxPerIP: 1000, MaxPerUser: n, Window: 10 * time.Minute})
	goroutines := runtime.NumGoroutine()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	// Many logins while Redis is down leave nothing behind.
	for i := range 200 {
		attempt(rs[i%2].th, tip2, fmt.Sprint("user", i), auth.AttemptSucceeded)
	}
	// Alone, each replica gives n tries.
	for _, rp := range rs {
		for i := range n {
			if ok, _ := attempt(rp.th, tip1, "alice", auth.AttemptFailed); !ok {
				t.Fatalf("%s: failure %d with Redis down refused", rp.c.Node(), i+1)
			}
		}
		if ok, _ := attempt(rp.th, tip1, "alice", auth.AttemptFailed); ok {
			t.Errorf("%s: with Redis down, the local count does not lock", rp.c.Node())
		}
		if rp.c.Up() {
			t.Errorf("%s: Up with Redis down", rp.c.Node())
		}
		if f := rp.c.Fallbacks()["throttle"]; f == 0 {
			t.Errorf("%s: no fallback counted", rp.c.Node())
		}
		if w := strings.Count(rp.logs.String(), "Redis is unreachable"); w != 1 {
			t.Errorf("%s: %d outage warnings; want 1:\n%s", rp.c.Node(), w, rp.logs)
		}
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	// Within ThrottleRetry, the replicas ask Redis again.
	deadline := time.Now().Add(ThrottleRetry + 5*time.Second)
	for !rs[0].c.Up() || !rs[1].c.Up() {
		if time.Now().After(deadline) {
			t.Fatal("the replicas do not use Redis again")
		}
		for _, rp := range rs {
			attempt(rp.th, tip2, "probe", auth.AttemptAborted)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Shared again: n failures over both lock bob on both.
	for i := range n {
		if ok, _ := attempt(rs[i%2].th, tip2, "bob", auth.AttemptFailed); !ok {
			t.Fatalf("failure %d refused", i+1)
		}
	}
	for _, rp := range rs {
		if ok, _ := attempt(rp.th, tip2, "bob", auth.AttemptSucceeded); ok {
			t.Errorf("%s: after Redis came back, %d failures over 2 replicas do not lock", rp.c.Node(), n)
		}
		// The lock made alone holds, though Redis (restarted empty)
		// knows nothing of it.
		if ok, _ := attempt(rp.th, tip2, "alice", auth.AttemptSucceeded); ok {
			t.Errorf("%s: the lock counted while Redis was down ended with the outage", rp.c.Node())
		}
		if !strings.Contains(rp.logs.String(), "Redis is reachable again") {
			t.Errorf("%s: the end of the outage is not logged", rp.c.Node())
		}
		if c := rp.c.client.PoolStats().TotalConns; c > 4 {
			t.Errorf("%s: %d connections to Redis; want at most the pool's 4", rp.c.Node(), c)
		}
	}
	// A guard against a leak, with room for the pools' own goroutines.
	if g := runtime.NumGoroutine(); g > goroutines+10 {
		t.Errorf("%d goroutines after the outage, %d before", g, goroutines)
	}
}

// TestThrottleFleetUnusable: a count in Redis that is no count (garbage,
// a huge number, a key of another type) makes the replica count that key
// on its own state, with one ERROR naming the key; it is never a crash
// or a wait, and Redis stays up for everything else.
func TestThrottleFleetUnusable(t *testing.T) {
	r := startRedis(t)
	const n = 3
	rs := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: n, Window: 10 * time.Minute})
	rp := rs[0]
	for _, tc := range []struct {
		user    string
		corrupt []string
	}{
		{"garbage", []string{"HSET", "", "n", "three", "s", "0", "l", "0"}},
		{"huge", []string{"HSET", "", "n", strings.Repeat("9", 40), "s", "0", "l", "0"}},
		{"hex", []string{"HSET", "", "n", "0x10", "s", "0", "l", "0"}},
		{"negative", []string{"HSET", "", "n", "1", "s", "0", "l", "-5"}},
		{"string", []string{"SET", "", "1"}},
		{"flight", []string{"SET", "flight", "1"}},
		{"bigfrom", []string{"HSET", "", "f", strings.Repeat("x", 100_000)}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			count, flight := rp.store.names(auth.StoreKey{User: true, Name: tc.user})
			args := append([]string(nil), tc.corrupt...)
			args[1] = count
			if tc.corrupt[1] == "flight" {
				args[1] = flight
			}
			if _, err := r.Do(args...); err != nil {
				t.Fatal(err)
			}
			before := rp.c.Fallbacks()["throttle"]
			for i := range n {
				if ok, _ := attempt(rp.th, tip1, tc.user, auth.AttemptFailed); !ok {
					t.Fatalf("failure %d refused", i+1)
				}
			}
			// Counted here: n lock.
			if ok, _ := attempt(rp.th, tip1, tc.user, auth.AttemptSucceeded); ok {
				t.Error("the user is not locked after n failures counted locally")
			}
			if rp.c.Fallbacks()["throttle"] == before {
				t.Error("no fallback counted")
			}
			if !rp.c.Up() {
				t.Error("an unusable key takes Redis for down")
			}
			if got := strings.Count(rp.logs.String(), "level=ERROR msg=\"cluster: a failed-login count in Redis is unusable"); got == 0 {
				t.Errorf("no ERROR line:\n%s", rp.logs)
			}
			if !strings.Contains(rp.logs.String(), "key="+args[1]) {
				t.Errorf("the ERROR line does not name %s:\n%s", args[1], rp.logs)
			}
			// The address's places were given back.
			_, ipFlight := rp.store.names(auth.StoreKey{Name: netip.PrefixFrom(tip1, 32).String()})
			if n, err := r.Do("ZCARD", ipFlight); err != nil || strings.TrimSpace(n) != "0" {
				t.Errorf("ZCARD %s = %q, %v: places of the address left behind", ipFlight, n, err)
			}
		})
	}
	// Each key is logged once.
	if got, want := strings.Count(rp.logs.String(), "level=ERROR"), 7; got != want {
		t.Errorf("%d ERROR lines; want %d (one per key):\n%s", got, want, rp.logs)
	}
	// Reservations from afar (not this fleet's) are dropped.
	_, flight := rp.store.names(auth.StoreKey{User: true, Name: "dave"})
	for i := range n {
		if _, err := r.Do("ZADD", flight, "99999999999999", fmt.Sprint("x", i)); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := attempt(rp.th, tip1, "dave", auth.AttemptAborted); !ok {
		t.Error("reservations that end in the far future fill dave's budget")
	}
}

// TestThrottleFleetDeadReplica: the places of a replica that dies with
// attempts in flight expire: its attempts never end, and once their
// reservations have run out (an hour here), another replica's attempt
// goes ahead; the Redis key holding them expires by then too.
func TestThrottleFleetDeadReplica(t *testing.T) {
	r := startRedis(t)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	rs := throttleFleet(t, r, 2, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: 2, Window: 10 * time.Minute, Now: clk.now})
	for i := range 2 {
		if _, ok, _ := rs[0].th.Begin(noWait, tip1, "alice"); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	// node0 dies: its two attempts never end.
	if ok, wait := attempt(rs[1].th, tip2, "alice", auth.AttemptSucceeded); ok || wait != auth.InFlightRetry {
		t.Fatalf("with 2 attempts in flight on node0, node1's = %v, %v; want a wait", ok, wait)
	}
	_, flight := rs[1].store.names(auth.StoreKey{User: true, Name: "alice"})
	ttl, err := r.Do("PTTL", flight)
	if err != nil {
		t.Fatal(err)
	}
	if ms, err := strconv.Atoi(strings.TrimSpace(ttl)); err != nil || ms <= 0 || ms > int((time.Hour+time.Second)/time.Millisecond) {
		t.Errorf("PTTL %s = %q; want at most the reservations' hour and a second", flight, ttl)
	}
	clk.add(time.Hour)
	if ok, wait := attempt(rs[1].th, tip2, "alice", auth.AttemptSucceeded); !ok {
		t.Errorf("an hour after node0 died, node1's attempt = %v, %v; want it to go ahead", ok, wait)
	}
}

// BenchmarkThrottleFleetLogin: one login's Begin and End (a success)
// with the budgets in Redis, and without, for the client's side of the
// cost (Redis's own CPU is pop3bench -cluster's).
func BenchmarkThrottleFleetLogin(b *testing.B) {
	cfg := auth.ThrottleConfig{MaxPerIP: 20, MaxPerUser: 10, Window: 10 * time.Minute}
	run := func(b *testing.B, th *auth.Throttle) {
		b.ReportAllocs()
		cpu := func() time.Duration {
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		start, i := cpu(), 0
		for b.Loop() {
			tk, ok, _ := th.Begin(context.Background(), tip1, "user"+strconv.Itoa(i%100))
			if !ok {
				b.Fatal("refused")
			}
			th.End(tk, auth.AttemptSucceeded)
			i++
		}
		// This process's CPU (user and system) per login: the
		// client's side of the cost, without the wait for Redis.
		b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
	}
	b.Run("local", func(b *testing.B) { run(b, auth.NewThrottle(cfg)) })
	b.Run("redis", func(b *testing.B) {
		r, err := dirrun.StartRedis()
		if err != nil {
			b.Fatalf("redis-server (Debian package redis-server) is needed: %v", err)
		}
		defer r.Close()
		key := filepath.Join(b.TempDir(), "cluster.key")
		if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
			b.Fatal(err)
		}
		c, err := Open(Config{Redis: r.URL(), KeyFile: key, NodeName: "bench"}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cfg := cfg
		cfg.Store = c.NewThrottleStore(time.Hour)
		run(b, auth.NewThrottle(cfg))
		if f := c.Fallbacks()["throttle"]; f != 0 {
			b.Errorf("%d fallbacks", f)
		}
	})
}

// TestThrottleKeyNames: a budget's Redis keys are the same on every
// replica with the same key_file, differ with another key_file (whoever
// reads Redis cannot test guesses at names without it), and an address
// and a user name never share keys.
func TestThrottleKeyNames(t *testing.T) {
	r := startRedis(t)
	cfg := auth.ThrottleConfig{MaxPerIP: 1, MaxPerUser: 1, Window: time.Minute}
	fleet := throttleFleet(t, r, 2, cfg)
	other := newThrottleReplica(t, r, "other", writeKey(t), cfg)
	user := auth.StoreKey{User: true, Name: "alice"}
	n0, f0 := fleet[0].store.names(user)
	n1, _ := fleet[1].store.names(user)
	n2, _ := other.store.names(user)
	if n0 != n1 {
		t.Errorf("two replicas with one key_file name alice's count %s and %s", n0, n1)
	}
	if n0 == n2 {
		t.Errorf("replicas with different key_files both name alice's count %s", n0)
	}
	if ip, _ := fleet[0].store.names(auth.StoreKey{Name: "alice"}); ip == n0 {
		t.Errorf("an address and a user name share %s", ip)
	}
	if !strings.HasPrefix(n0, "popgate:{throttle:user:") || !strings.HasSuffix(n0, "}:n") || strings.TrimSuffix(n0, ":n") != strings.TrimSuffix(f0, ":r") {
		t.Errorf("alice's keys %s and %s are not popgate:{throttle:user:HASH}:n and :r in one hash slot", n0, f0)
	}
}

// TestThrottleRedisCluster: replicas on a Redis Cluster of three masters,
// each told one node, share the budgets: each script's keys are in one
// hash slot, an attempt's two keys may be in two (one pipeline to two
// masters), and failures spread over the replicas lock at the limit.
func TestThrottleRedisCluster(t *testing.T) {
	rc := dirrun.RedisClusterFor(t)
	key := writeKey(t)
	pw := writeSecret(t, dirrun.Password)
	const n = 4
	cfg := auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: n, Window: 10 * time.Minute}
	var rs []*throttleReplica
	for i, addr := range rc.Addrs() {
		logs := new(syncBuf)
		c, err := Open(Config{Addresses: []string{addr}, User: "popgate", PasswordFile: pw, KeyFile: key, NodeName: fmt.Sprint("node", i)},
			slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s := c.NewThrottleStore(time.Hour)
		cfg := cfg
		cfg.Store = s
		rs = append(rs, &throttleReplica{c: c, store: s, th: auth.NewThrottle(cfg), logs: logs})
	}
	// Names whose keys land on different masters, with high odds.
	for u := range 6 {
		user := fmt.Sprint("user", u)
		for i := range n {
			ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(10*u + i + 1)})
			if ok, _ := attempt(rs[(u+i)%3].th, ip, user, auth.AttemptFailed); !ok {
				t.Fatalf("%s: failure %d refused", user, i+1)
			}
		}
		for _, rp := range rs {
			if ok, _ := attempt(rp.th, tip1, user, auth.AttemptSucceeded); ok {
				t.Errorf("%s: %s may try again after %d failures over 3 replicas", rp.c.Node(), user, n)
			}
		}
	}
	for _, rp := range rs {
		if f := rp.c.Fallbacks()["throttle"]; f != 0 {
			t.Errorf("%s: %d fallbacks on the Redis Cluster:\n%s", rp.c.Node(), f, rp.logs)
		}
		if strings.Contains(rp.logs.String(), "level=WARN") || strings.Contains(rp.logs.String(), "level=ERROR") {
			t.Errorf("%s logged a problem:\n%s", rp.c.Node(), rp.logs)
		}
	}
}
