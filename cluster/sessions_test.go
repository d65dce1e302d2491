package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/proxy"
)

// fakeLocal is a replica's own sessions.
type fakeLocal struct {
	mu   sync.Mutex
	list []proxy.SessionInfo
}

func (f *fakeLocal) add(id, user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = append(f.list, proxy.SessionInfo{ID: id, User: user, Client: netip.MustParseAddrPort("192.0.2.1:1100"),
		Listener: "pop3s", State: "relaying", Started: time.Now()})
}

func (f *fakeLocal) SessionList() []proxy.SessionInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list)
}

func (f *fakeLocal) end(match func(proxy.SessionInfo) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.list)
	f.list = slices.DeleteFunc(f.list, match)
	return n - len(f.list)
}

func (f *fakeLocal) EndSessions(user string) int {
	return f.end(func(s proxy.SessionInfo) bool { return strings.EqualFold(s.User, user) })
}

func (f *fakeLocal) EndSession(id string) bool {
	return f.end(func(s proxy.SessionInfo) bool { return s.ID == id }) > 0
}

func (f *fakeLocal) users() []string {
	var u []string
	for _, s := range f.SessionList() {
		u = append(u, s.User)
	}
	return u
}

// member is one replica of a sessions test.
type member struct {
	s     *Sessions
	local *fakeLocal
	logs  *syncBuf
	stop  func()
}

// startMember opens a cluster for node and runs its Sessions with a short
// refresh, until the test ends.
func startMember(t *testing.T, r *dirrun.Redis, node, keyFile string, setup ...func(*Sessions)) *member {
	t.Helper()
	logs := new(syncBuf)
	c, err := Open(Config{Redis: r.URL(), KeyFile: keyFile, NodeName: node}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	m := &member{local: &fakeLocal{}, logs: logs}
	m.s = c.NewSessions(m.local)
	m.s.refresh, m.s.ttl = 100*time.Millisecond, 2*time.Second
	for _, f := range setup {
		f(m.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.s.Run(ctx); close(done) }()
	var once sync.Once
	m.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			c.Close()
		})
	}
	t.Cleanup(m.stop)
	// Registered once the index names it.
	deadline := time.Now().Add(10 * time.Second) // against a hang
	for c.client.ZScore(context.Background(), m.s.index, m.s.member).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not registered; log:\n%s", node, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return m
}

// waitList waits until m's fleet list holds n sessions.
func waitList(t *testing.T, m *member, n int) ([]proxy.SessionInfo, string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, partial := m.s.List(context.Background())
		if len(list) == n || time.Now().After(deadline) {
			if len(list) != n {
				t.Fatalf("%s lists %d sessions, want %d (partial %q): %+v", m.s.c.node, len(list), n, partial, list)
			}
			return list, partial
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startFleet(t *testing.T, setup ...func(*Sessions)) (*dirrun.Redis, []*member) {
	t.Helper()
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	var ms []*member
	for i, node := range []string{"node0", "node1", "node2"} {
		m := startMember(t, r, node, key, setup...)
		m.local.add("aa000"+string(rune('1'+i)), "alice")
		m.local.add("bb000"+string(rune('1'+i)), "bob-"+node)
		ms = append(ms, m)
	}
	waitSubscribed(t, ms[0], 3)
	return r, ms
}

// TestSessionsFleet: any replica lists the sessions of all, with
// fleet-wide ids naming their node; a kick by user ends them everywhere
// and counts them by node; a kick by fleet id ends one on its replica; a
// bare id is one of the asking replica.
func TestSessionsFleet(t *testing.T) {
	_, ms := startFleet(t)
	list, partial := waitList(t, ms[2], 6)
	if partial != "" {
		t.Errorf("partial = %q with every replica up", partial)
	}
	for _, s := range list {
		if s.Node == "" || !strings.HasPrefix(s.ID, s.Node+":") {
			t.Errorf("session %+v: want its node and an id NODE:ID", s)
		}
		if s.Client != netip.MustParseAddrPort("192.0.2.1:1100") || s.Listener != "pop3s" {
			t.Errorf("session %+v: the fields did not travel", s)
		}
	}

	e := ms[0].s.End(context.Background(), "ALICE", "")
	if want := map[string]int{"node0": 1, "node1": 1, "node2": 1}; !sameCounts(e.Nodes, want) || len(e.Unreached) != 0 || e.Partial != "" || e.Total() != 3 {
		t.Errorf("End(ALICE) = %+v, want one ended on each node", e)
	}
	for i, m := range ms {
		if u := m.local.users(); len(u) != 1 || u[0] != "bob-"+m.s.c.node {
			t.Errorf("node%d keeps %v after the kick, want its bob only", i, u)
		}
	}
	if !strings.Contains(ms[1].logs.String(), "by_node=node0") {
		t.Errorf("node1 did not log the kick it acted on:\n%s", ms[1].logs)
	}

	e = ms[2].s.End(context.Background(), "", "node1:bb0002")
	if e.Total() != 1 || e.Nodes["node1"] != 1 || len(e.Unreached) != 0 {
		t.Errorf("End(id node1:bb0002) = %+v, want 1 on node1", e)
	}
	if len(ms[1].local.users()) != 0 || len(ms[0].local.users()) != 1 {
		t.Errorf("after the kick by id: node0 %v, node1 %v", ms[0].local.users(), ms[1].local.users())
	}
	// A bare id is the asking replica's: node2 has none such.
	if e := ms[2].s.End(context.Background(), "", "bb0001"); e.Total() != 0 || len(ms[0].local.users()) != 1 {
		t.Errorf("a bare id of node0 asked on node2 ended %+v", e)
	}
	if e := ms[0].s.End(context.Background(), "", "bb0001"); e.Total() != 1 || len(ms[0].local.users()) != 0 {
		t.Errorf("a bare id of node0 asked on node0 ended %+v", e)
	}
	waitList(t, ms[0], 1)

	// A replica that stops drops out of the list at once.
	ms[2].stop()
	if list, _ := waitList(t, ms[0], 0); len(list) != 0 {
		t.Errorf("after node2 stopped: %+v", list)
	}
}

func sameCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSessionsTruncated: a replica with more sessions than an entry
// holds lists its oldest, and the fleet's list says it is partial.
func TestSessionsTruncated(t *testing.T) {
	_, ms := startFleet(t, func(s *Sessions) { s.listed = 3 })
	for i := range 3 {
		ms[1].local.add("dd000"+string(rune('1'+i)), "carol")
	}
	list, _ := waitList(t, ms[0], 7)
	_, partial := ms[0].s.List(context.Background())
	if !strings.Contains(partial, "node1 holds its 3 oldest sessions only") {
		t.Errorf("partial = %q, want node1's list cut", partial)
	}
	for _, s := range list {
		if s.ID == "node1:dd0003" || s.ID == "node1:dd0002" {
			t.Errorf("the newest sessions of node1 are listed: %+v", list)
		}
	}
}

// TestSessionsRedisDown: with Redis stopped a replica lists its own
// sessions, says the list is partial, ends its own and names the
// replicas it could not reach, and counts fallbacks; with Redis back the
// fleet's list returns without a restart.
func TestSessionsRedisDown(t *testing.T) {
	r, ms := startFleet(t)
	waitList(t, ms[0], 6)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	list, partial := ms[0].s.List(context.Background())
	if len(list) != 2 || !strings.Contains(partial, "unreachable") {
		t.Errorf("with Redis down: %d sessions, partial %q; want node0's 2 and a partial list", len(list), partial)
	}
	e := ms[0].s.End(context.Background(), "alice", "")
	if e.Nodes["node0"] != 1 || !slices.Equal(e.Unreached, []string{"node1", "node2"}) || e.Partial == "" {
		t.Errorf("End with Redis down = %+v, want node0's ended and node1, node2 unreached", e)
	}
	if d := time.Since(start); d > 10*time.Second { // against a hang, not a timing check
		t.Errorf("listing and ending with Redis down took %s", d)
	}
	if ms[0].s.c.Fallbacks()["sessions"] == 0 {
		t.Error("no sessions fallback counted")
	}
	if len(ms[1].local.users()) != 2 {
		t.Errorf("node1 lost sessions without a kick: %v", ms[1].local.users())
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	_, partial = waitList(t, ms[0], 5)
	if partial != "" {
		t.Errorf("with Redis back: partial %q", partial)
	}
	// The subscriptions are back too.
	waitSubscribed(t, ms[0], 3)
	if e := ms[0].s.End(context.Background(), "alice", ""); e.Nodes["node1"] != 1 || e.Nodes["node2"] != 1 || e.Partial != "" {
		t.Errorf("End with Redis back = %+v, want node1 and node2 one each", e)
	}
}

// waitSubscribed waits until n replicas listen on the kick channel.
func waitSubscribed(t *testing.T, m *member, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // against a hang
	for {
		subs, err := m.s.c.client.PubSubNumSub(context.Background(), m.s.channel).Result()
		if err == nil && subs[m.s.channel] == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v replicas subscribed (%v), want %d", subs, err, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSessionsKickReplayed: a kick recorded from Redis and published
// again, one sealed with another key, one out of its time window and
// garbage do nothing but a log line.
func TestSessionsKickReplayed(t *testing.T) {
	r, ms := startFleet(t)
	ctx := context.Background()
	spy := redis.NewClient(&redis.Options{Addr: r.Addr(), Username: "popgate", Password: dirrun.Password})
	defer spy.Close()
	ps := spy.Subscribe(ctx, ms[0].s.channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if e := ms[0].s.End(ctx, "alice", ""); e.Total() != 3 {
		t.Fatalf("End(alice) = %+v", e)
	}
	var recorded string
	for recorded == "" {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if msg, err := ms[1].s.c.open(ms[1].s.channel, []byte(m.Payload)); err == nil && strings.Contains(string(msg), `"kind":"kick"`) {
			recorded = m.Payload
		}
	}
	ms[1].local.add("cc0001", "alice")

	other := startMember(t, r, "intruder", writeKey(t))
	stale := kickMsg{Kind: "kick", User: "alice"}
	ms[0].s.stamp(&stale)
	stale.Time = time.Now().Add(-time.Hour).UnixMilli()
	plain, _ := json.Marshal(stale)
	forged := kickMsg{Kind: "kick", User: "alice"}
	other.s.stamp(&forged)
	forgedPlain, _ := json.Marshal(forged)
	other.stop() // out of the index: it would not answer the kick below
	for _, p := range []string{
		recorded,
		string(ms[0].s.c.seal(ms[0].s.channel, plain)),
		string(other.s.c.seal(other.s.channel, forgedPlain)),
		"garbage",
		strings.Repeat("x", maxKickBytes+1),
	} {
		if err := spy.Publish(ctx, ms[0].s.channel, p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The messages are read in order: a kick sent after them is acted
	// on once they were dropped.
	if e := ms[2].s.End(ctx, "nobody", ""); e.Partial != "" {
		t.Fatalf("End(nobody) = %+v", e)
	}
	if u := ms[1].local.users(); !slices.Contains(u, "alice") {
		t.Errorf("node1's alice was ended by a replayed, stale or forged kick: %v", u)
	}
	logs := ms[1].logs.String()
	for _, want := range []string{"already received (replayed)", "not sent within", "does not open", "more than 4096 bytes"} {
		if !strings.Contains(logs, want) {
			t.Errorf("node1 did not log a refused kick %q:\n%s", want, logs)
		}
	}
	if strings.Count(logs, "does not open") != 1 {
		t.Errorf("refusals of one kind are logged once, not per message:\n%s", logs)
	}
}

// TestSessionsBadEntries: entries in Redis that do not open, are stale,
// too large, of another replica, of the wrong type, or a broken index,
// are refused with a log line naming the key; the list says it is
// partial, and nothing crashes.
func TestSessionsBadEntries(t *testing.T) {
	r, ms := startFleet(t)
	waitList(t, ms[0], 6)
	ctx := context.Background()
	cl := ms[0].s.c.client
	ms[1].stop()
	ms[2].stop()
	// Ahead, so that they outlive the test's TTL; within the clock error a
	// replica allows (kickWindow), past which a member is dropped.
	now := float64(time.Now().Add(10 * time.Second).UnixMilli())
	node := func(n string) string { return ms[0].s.c.key("{sessions}:node:" + n) }
	// An entry of node0 copied under node3's name does not open.
	own, err := cl.Get(ctx, ms[0].s.entry).Result()
	if err != nil {
		t.Fatal(err)
	}
	staleE := nodeEntry{Node: "node6", Time: time.Now().Add(-time.Hour).UnixMilli(), Sessions: ms[0].local.SessionList()}
	plain, _ := json.Marshal(staleE)
	for n, v := range map[string]any{
		"node3": own,
		"node4": "garbage",
		"node6": ms[0].s.c.seal(node("node6"), plain),
	} {
		if err := cl.Set(ctx, node(n), v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.SetRange(ctx, node("node5"), maxEntryBytes+10, "x").Err(); err != nil {
		t.Fatal(err)
	}
	if err := cl.HSet(ctx, node("node7"), "a", "b").Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node3", "node4", "node5", "node6", "node7", "bad\nname"} {
		cl.ZAdd(ctx, ms[0].s.index, redis.Z{Score: now, Member: n})
	}
	list, partial := ms[0].s.List(ctx)
	if len(list) != 2 || !strings.Contains(partial, "refused") {
		t.Errorf("List = %d sessions, partial %q; want node0's 2 and the refusals", len(list), partial)
	}
	logs := ms[0].logs.String()
	for _, n := range []string{"node3", "node4", "node5", "node6", "node7"} {
		if !strings.Contains(logs, "key="+node(n)) {
			t.Errorf("no log line names %s's key:\n%s", n, logs)
		}
	}
	for _, want := range []string{"does not open", "more than 16777216 bytes", "not within the last", "WRONGTYPE", "not a node_name"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no refusal %q logged:\n%s", want, logs)
		}
	}
	if !ms[0].s.c.Up() {
		t.Error("entries of the wrong type count as Redis down")
	}
	// Asking again logs nothing more.
	ms[0].s.List(ctx)
	if again := ms[0].logs.String(); again != logs {
		t.Errorf("a second read logged again:\n%s", strings.TrimPrefix(again, logs))
	}

	// An index of the wrong type is replaced at the next refresh.
	if err := cl.Set(ctx, ms[0].s.index, "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, partial := ms[0].s.List(ctx); partial != "" {
		t.Errorf("with a broken index: partial %q (the replica's own list is whole)", partial)
	}
	deadline := time.Now().Add(10 * time.Second)
	for cl.Type(ctx, ms[0].s.index).Val() != "zset" {
		if time.Now().After(deadline) {
			t.Fatalf("the index is not a sorted set again: %s", cl.Type(ctx, ms[0].s.index).Val())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = r
}

// TestSessionsNoLeak: a Sessions that stops leaves no goroutine, with
// Redis up or down.
func TestSessionsNoLeak(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	before := runtime.NumGoroutine()
	for i := range 3 {
		m := startMember(t, r, "a", key)
		m.s.List(context.Background())
		if i == 1 {
			// It stops while Redis is down, then Redis comes back.
			if err := r.Stop(); err != nil {
				t.Fatal(err)
			}
			m.s.End(context.Background(), "alice", "")
			time.Sleep(300 * time.Millisecond)
			m.stop()
			if err := r.Start(); err != nil {
				t.Fatal(err)
			}
		}
		m.stop()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after stopping, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestSessionsMuteRedis: against a Redis that accepts connections and
// never answers, a list and a kick answer with this replica's sessions,
// marked partial, and Run stops without leaving a goroutine.
func TestSessionsMuteRedis(t *testing.T) {
	m := newMute(t)
	before := runtime.NumGoroutine()
	c, err := Open(Config{Redis: "redis://" + m.ln.Addr().String() + "/0", KeyFile: writeKey(t), NodeName: "a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	local := &fakeLocal{}
	local.add("aa0001", "alice")
	local.add("aa0002", "bob")
	s := c.NewSessions(local)
	s.refresh = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()

	start := time.Now()
	list, partial := s.List(context.Background())
	if len(list) != 2 || !strings.Contains(partial, "unreachable") {
		t.Errorf("List = %d sessions, partial %q", len(list), partial)
	}
	if e := s.End(context.Background(), "alice", ""); e.Nodes["a"] != 1 || e.Partial == "" {
		t.Errorf("End = %+v, want a's alice ended, partial", e)
	}
	if d := time.Since(start); d > 10*time.Second { // against a hang, not a timing check
		t.Errorf("a list and a kick took %s", d)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after stopping, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// BenchmarkSessionsRegister: one refresh of a replica with 10,000
// sessions (encode, seal, write), and the size of its entry.
func BenchmarkSessionsRegister(b *testing.B) {
	r := dirrun.RedisFor(b)
	name := filepath.Join(b.TempDir(), "cluster.key")
	if err := os.WriteFile(name, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	c, err := Open(Config{Redis: r.URL(), KeyFile: name, NodeName: "a"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	local := &fakeLocal{}
	for i := range 10000 {
		local.add(fmt.Sprintf("%012x", i), fmt.Sprintf("user%d@example.com", i))
	}
	s := c.NewSessions(local)
	for b.Loop() {
		s.register()
	}
	n, _ := c.client.StrLen(context.Background(), s.entry).Result()
	b.ReportMetric(float64(n)/10000, "entry-bytes/session")
}
