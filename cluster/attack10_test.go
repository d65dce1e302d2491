package cluster

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/pool"
)

// TestAttack10UpgradeKeepsOldProcessHold: during an upgrade two processes
// run as one node (one node name). The new process's session of a user
// ending must not end the hold of the old process's session that still
// relays: with the hold gone, the user's next login goes wherever the
// hash says now, and the mailbox is open on two backends.
func TestAttack10UpgradeKeepsOldProcessHold(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	mk := func(node string) *pool.Director {
		c, _ := openNode(t, r, node, key)
		return pool.New(pool.Config{
			Pools:    []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: 0}},
			Backends: allBackends,
			Store:    c.NewPoolStore(time.Minute),
			Admin:    c.PoolAdmin(),
		})
	}
	old, upgraded, other := mk("node0"), mk("node0"), mk("node1")
	ctx := context.Background()
	b, releaseOld, _, err := old.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseOld(true)
	if err := old.Change(ctx, "p", pool.Op{Action: "drain", Backend: b}); err != nil {
		t.Fatal(err)
	}
	b2, release, _, err := upgraded.Assign(ctx, "p", "bob")
	if err != nil || b2 != b {
		t.Fatalf("the new process sent bob to %q (%v) while the old one has a session on %s", b2, err, b)
	}
	release(true)
	if err := other.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b3, release3, _, err := other.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer release3(true)
	if b3 != b {
		t.Errorf("bob went to %s while the old process still relays a session on %s: one mailbox on two backends", b3, b)
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	m, err := c.w.Write(p)
	c.n.Add(int64(m))
	return m, err
}

// countingProxy forwards loopback connections to addr and counts the
// bytes that come back.
func countingProxy(t *testing.T, addr string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(u, c); u.Close() }()
			go func() {
				io.Copy(countWriter{c, &n}, u)
				c.Close()
			}()
			t.Cleanup(func() { c.Close(); u.Close() })
		}
	}()
	return ln.Addr().String(), &n
}

// TestAttack10HugeEntriesNotRead: a hostile Redis's 16 MiB pools:admin,
// which every replica reads every 2 s, or 16 MiB affinity, read at every
// login of the user, costs no more than the bound of what such an entry
// can be: the replica reads no more of it than that.
func TestAttack10HugeEntriesNotRead(t *testing.T) {
	r := dirrun.RedisFor(t)
	addr, got := countingProxy(t, r.Addr())
	c, err := Open(Config{Redis: strings.Replace(r.URL(), r.Addr(), addr, 1), KeyFile: writeKey(t), NodeName: "node0"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := c.NewPoolStore(time.Hour)
	d := pool.New(pool.Config{Pools: []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: time.Hour}}, Backends: allBackends, Store: s, Admin: c.PoolAdmin()})
	ctx := context.Background()
	huge := strings.Repeat("x", 16<<20)
	if err := c.client.Set(ctx, c.PoolAdmin().key(), huge, 0).Err(); err != nil {
		t.Fatal(err)
	}
	before := got.Load()
	if err := d.Refresh(ctx); err == nil {
		t.Error("a 16 MiB pools:admin loaded")
	}
	if n := got.Load() - before; n > 2*maxPoolAdmin {
		t.Errorf("reading the pools' changes took %d bytes from Redis, more than the %d they can be", n, maxPoolAdmin)
	}
	if err := c.client.Del(ctx, c.PoolAdmin().key()).Err(); err != nil {
		t.Fatal(err)
	}
	key := s.name("p", "bob")
	if err := c.client.HSet(ctx, key, "v", huge).Err(); err != nil {
		t.Fatal(err)
	}
	before = got.Load()
	_, release, _, err := d.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	release(true)
	if n := got.Load() - before; n > 64<<10 {
		t.Errorf("a login read %d bytes of an affinity from Redis, more than the %d one can be", n, maxPoolEntry)
	}
}

// blockingProxy forwards loopback connections to addr until blocked,
// which cuts every connection and refuses new ones until unblocked.
type blockingProxy struct {
	mu      sync.Mutex
	blocked bool
	conns   []net.Conn
}

func (p *blockingProxy) set(blocked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = blocked
	if blocked {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

func startBlockingProxy(t *testing.T, addr string) (string, *blockingProxy) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &blockingProxy{}
	t.Cleanup(func() { p.set(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.blocked {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return ln.Addr().String(), p
}

// TestAttack10OutageSessionHeldWhenBack: a session a replica assigned on
// its own state while it could not reach Redis (outage = "hash") holds its user's backend
// for the fleet once Redis is back, as any session does: another
// replica's login of the user, after a drain of that backend, must not
// open the mailbox on a second backend.
func TestAttack10OutageSessionHeldWhenBack(t *testing.T) {
	r := dirrun.RedisFor(t)
	key := writeKey(t)
	addr, px := startBlockingProxy(t, r.Addr())
	ca, err := Open(Config{Redis: strings.Replace(r.URL(), r.Addr(), addr, 1), KeyFile: key, NodeName: "nodeA"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	a := pool.New(pool.Config{Pools: []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: time.Hour, Outage: pool.OutageHash}}, Backends: allBackends, Store: ca.NewPoolStore(100 * time.Millisecond), Admin: ca.PoolAdmin()})
	cb, _ := openNode(t, r, "nodeB", key)
	sb := cb.NewPoolStore(100 * time.Millisecond)
	b := pool.New(pool.Config{Pools: []pool.Pool{{Name: "p", Members: threeBackends, AffinityTTL: time.Hour}}, Backends: allBackends, Store: sb, Admin: cb.PoolAdmin()})
	ctx := context.Background()
	px.set(true)
	on, release, _, err := a.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer release(true)
	px.set(false)
	// A's heartbeat writes its sessions' holds once Redis answers it
	// again (after PoolRetry); the deadline only bounds a test that fails.
	k := sb.name("p", "bob")
	deadline := time.Now().Add(PoolRetry + 5*time.Second)
	for cb.client.Exists(ctx, k).Val() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := b.Change(ctx, "p", pool.Op{Action: "drain", Backend: on}); err != nil {
		t.Fatal(err)
	}
	got, rb, _, err := b.Assign(ctx, "p", "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer rb(true)
	if got != on {
		t.Errorf("bob went to %s on B while A, Redis back, still relays the session it opened on %s during its outage", got, on)
	}
}
