package cluster

import (
	"crypto/tls"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/tlsconf"
)

// mute is a Redis that accepts connections, reads what it is sent and
// never answers: what a handshake would wait on if it asked Redis.
type mute struct {
	ln    net.Listener
	bytes atomic.Int64 // read from clients
	conns atomic.Int64 // accepted
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func newMute(t *testing.T) *mute {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mute{ln: ln}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m.conns.Add(1)
			m.mu.Lock()
			m.open = append(m.open, c)
			m.mu.Unlock()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					m.bytes.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		m.mu.Lock()
		for _, c := range m.open {
			c.Close()
		}
		m.mu.Unlock()
		m.wg.Wait()
	})
	return m
}

// counting counts the calls of a key source.
type counting struct {
	src   tlsconf.TicketKeySource
	calls atomic.Int64
}

func (c *counting) TicketKeys(now time.Time) ([][32]byte, time.Time, error) {
	c.calls.Add(1)
	return c.src.TicketKeys(now)
}

// TestTicketsHandshakeNoRedis: handshakes never ask Redis. Against a
// Redis that never answers, with a clock that passes a rotation between
// handshakes (so that every one finds the keys due and asks the key
// source), every handshake completes, and Redis is sent nothing while
// they run: the keys come from what the refresher holds.
func TestTicketsHandshakeNoRedis(t *testing.T) {
	m := newMute(t)
	logs := new(syncBuf)
	c, err := Open(Config{Redis: "redis://" + m.ln.Addr().String() + "/0", KeyFile: writeKey(t), NodeName: "a"}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The refresher's first run (in newTicketKeys) asks the mute Redis
	// and gives up; the next would be in an hour.
	src := &counting{src: c.newTicketKeys(time.Minute, 3*time.Minute, time.Hour)}
	if c.Up() {
		t.Fatal("Up() = true with a Redis that never answers")
	}
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	tk, err := tlsconf.NewTickets(tlsconf.TicketsConfig{Source: src, Now: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{serverCert(t)}}
	tk.Apply(conf)

	sentBefore, callsBefore := m.bytes.Load(), src.calls.Load()
	cli := client(tls.VersionTLS13)
	const n = 6
	for i := range n {
		clock.Add(int64(time.Minute))
		resumed := resumes(t, conf, cli) // fails the test if the handshake fails
		if i == 0 && resumed {
			t.Error("the first handshake resumed")
		}
	}
	if sent := m.bytes.Load() - sentBefore; sent != 0 {
		t.Errorf("%d bytes were sent to Redis during %d handshakes, want none", sent, n)
	}
	if calls := src.calls.Load() - callsBefore; calls < n {
		t.Errorf("the key source was asked %d times during %d handshakes across rotations, want %d or more (the test does not test what it says)", calls, n, n)
	}
}

// TestTicketsRefresherStops: Close ends the refresher, even in the
// middle of a read from a Redis that never answers, and leaves no
// goroutine behind.
func TestTicketsRefresherStops(t *testing.T) {
	m := newMute(t)
	before := runtime.NumGoroutine()
	for range 2 {
		c, err := Open(Config{Redis: "redis://" + m.ln.Addr().String() + "/0", KeyFile: writeKey(t), NodeName: "a"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.newTicketKeys(time.Minute, 3*time.Minute, time.Millisecond)
		// The refresher is now waiting on the mute Redis most of the
		// time; the connection count shows it asked again.
		conns := m.conns.Load()
		for m.conns.Load() == conns {
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after closing, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestTicketsNextKeyAhead: the refresher makes the next period's key a
// rotation ahead, so that when a period begins every replica seals with
// the same key without asking Redis, here stopped before the boundary.
func TestTicketsNextKeyAhead(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	// Both replicas must start in the same period.
	if left := time.Until(time.Now().Truncate(time.Minute).Add(time.Minute)); left < 2*time.Second {
		time.Sleep(left + 100*time.Millisecond)
	}
	var srcs []*TicketKeys
	for _, node := range []string{"a", "b"} {
		c, err := Open(Config{Redis: r.URL(), KeyFile: key, NodeName: node}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		srcs = append(srcs, c.newTicketKeys(time.Minute, 3*time.Minute, time.Hour))
	}
	now := time.Now()
	next := srcs[0].epoch(now) + 1
	if n := ticketLen(t, r, ticketName(next)); n != "60" {
		t.Fatalf("the next period's entry is %s bytes, want 60 (made ahead)", n)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	at := srcs[0].start(next).Add(time.Second)
	var first [][32]byte
	for _, s := range srcs {
		keys, _, err := s.TicketKeys(at)
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, keys[0])
		if keys[0] != s.shared[next] {
			t.Errorf("%s seals the new period's tickets with a key of its own, not the fleet's", s.c.Node())
		}
	}
	if first[0] != first[1] {
		t.Error("the replicas seal the new period's tickets with different keys")
	}
}

func ticketLen(t *testing.T, r *dirrun.Redis, name string) string {
	t.Helper()
	v, err := r.Do("--raw", "STRLEN", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(v)
}

// TestTicketsReplacedKeysBounded: a key the fleet replaced or lost stays
// accepted here, but whoever can write to Redis replaces the entries, or
// takes one away and puts it back, as often as it likes: the keys held
// apart (TicketKeys.own) grew by a key or two at every refresh, for a
// key lifetime, each handshake's key list built from all of them. Each is
// held once, and no more of them than TicketKeys ever gives.
func TestTicketsReplacedKeysBounded(t *testing.T) {
	r := startRedis(t)
	c, err := Open(Config{Redis: r.URL(), KeyFile: writeKey(t), NodeName: "a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.newTicketKeys(time.Minute, 3*time.Minute, time.Hour) // refreshed here only
	now := time.Now()
	prev := src.name(src.epoch(now) - 1)
	var k [32]byte
	k[0] = 7
	if err := c.client.Set(t.Context(), prev, c.seal(prev, k[:]), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	src.refresh(now)
	// Taken away and put back, again and again.
	for range 40 {
		if _, err := r.Do("RENAME", prev, "elsewhere"); err != nil {
			t.Fatal(err)
		}
		src.refresh(now)
		if _, err := r.Do("RENAME", "elsewhere", prev); err != nil {
			t.Fatal(err)
		}
		src.refresh(now)
	}
	src.mu.Lock()
	copies := 0
	for _, h := range src.own {
		if h.key == k {
			copies++
		}
	}
	src.mu.Unlock()
	if copies != 1 {
		t.Errorf("the key taken away and put back 40 times is held apart %d times, want once", copies)
	}
	// Replaced at every refresh.
	for range 40 {
		if _, err := r.Do("DEL", src.name(src.epoch(now)), src.name(src.epoch(now)+1)); err != nil {
			t.Fatal(err)
		}
		src.refresh(now)
	}
	src.mu.Lock()
	n := len(src.own)
	src.mu.Unlock()
	if n > maxTicketKeys {
		t.Errorf("%d keys held apart after 40 replacements, want at most %d", n, maxTicketKeys)
	}
	if n < maxTicketKeys {
		t.Errorf("%d keys held apart after 40 replacements of two entries, want %d (the test does not test what it says)", n, maxTicketKeys)
	}
}

// TestTicketsEntryOfAnotherType: a ticket key's entry of another Redis
// type (a key_prefix shared with something else, or whoever writes to
// Redis) is never replaced (SET NX does not set it), so the fleet no
// longer shares that period's key: it is refused like an entry that does
// not open, with one ERROR line naming it, not ignored without a word.
func TestTicketsEntryOfAnotherType(t *testing.T) {
	r := startRedis(t)
	logs := new(syncBuf)
	c, err := Open(Config{Redis: r.URL(), KeyFile: writeKey(t), NodeName: "a"}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.newTicketKeys(time.Minute, 3*time.Minute, time.Hour) // refreshed here only
	now := time.Now()
	var names []string
	for _, e := range []int64{src.epoch(now), src.epoch(now) + 1} {
		n := src.name(e)
		names = append(names, n)
		if _, err := r.Do("DEL", n); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Do("HSET", n, "a", "b"); err != nil {
			t.Fatal(err)
		}
	}
	src.refresh(now)
	src.refresh(now)
	for _, n := range names {
		if got := strings.Count(logs.String(), "refused and not used; this replica seals tickets with a key of its own meanwhile\" key="+n+" "); got != 1 {
			t.Errorf("the entry %s of another type was logged %d times, want once:\n%s", n, got, logs)
		}
	}
	if !c.Up() || c.Fallbacks()["tickets"] != 0 {
		t.Errorf("ticket entries of another type: Up() = %v, fallbacks %v; want Redis up", c.Up(), c.Fallbacks())
	}
	if keys, _, err := src.TicketKeys(now); err != nil || len(keys) == 0 {
		t.Errorf("TicketKeys = %d keys, %v: the replica must seal with a key of its own", len(keys), err)
	}
}
