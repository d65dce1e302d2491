package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/internal/dirrun"
)

// memCache is a local autocert cache in memory.
type memCache struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (c *memCache) Get(_ context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[key]
	if !ok {
		return nil, autocert.ErrCacheMiss
	}
	return bytes.Clone(v), nil
}

func (c *memCache) Put(_ context.Context, key string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = bytes.Clone(data)
	return nil
}

func (c *memCache) Delete(_ context.Context, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
	return nil
}

func openNode(t *testing.T, r *dirrun.Redis, node, keyFile string) (*Cluster, *syncBuf) {
	t.Helper()
	logs := new(syncBuf)
	c, err := Open(Config{Redis: r.URL(), KeyFile: keyFile, NodeName: node}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, logs
}

// TestACMECacheShared: what one replica puts, another gets; Redis holds
// it sealed; a miss is autocert.ErrCacheMiss; certificates and the
// account key go to the local copy too, challenge answers do not and
// expire.
func TestACMECacheShared(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a, _ := openNode(t, r, "a", key)
	b, _ := openNode(t, r, "b", key)
	localA := &memCache{m: map[string][]byte{}}
	ca, cb := a.ACMECache(localA), b.ACMECache(nil)
	ctx := context.Background()

	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret-key-material\n-----END EC PRIVATE KEY-----\n")
	for _, k := range []string{"mail.example.net", "mail.example.net+rsa", "acme_account+key", "tok123+http-01", "mail.example.net+token"} {
		if _, err := cb.Get(ctx, k); !errors.Is(err, autocert.ErrCacheMiss) {
			t.Fatalf("Get(%s) before Put: %v, want ErrCacheMiss", k, err)
		}
		if err := ca.Put(ctx, k, append([]byte(k+"\n"), secret...)); err != nil {
			t.Fatalf("Put(%s): %v", k, err)
		}
		got, err := cb.Get(ctx, k)
		if err != nil || !bytes.Equal(got, append([]byte(k+"\n"), secret...)) {
			t.Fatalf("Get(%s) on another replica: %q, %v", k, got, err)
		}
		raw, err := a.client.Get(ctx, "popgate:acme:"+k).Result()
		if err != nil || raw == "" {
			t.Fatalf("Redis GET popgate:acme:%s: %q, %v", k, raw, err)
		}
		if strings.Contains(raw, "secret-key-material") {
			t.Errorf("Redis holds %s in clear", k)
		}
		ttl := a.client.PTTL(ctx, "popgate:acme:"+k).Val()
		_, inLocal := localA.m[k]
		if isToken(k) {
			if ttl <= 0 || ttl > acmeTokenTTL || inLocal {
				t.Errorf("challenge answer %s: PTTL %s, in the local copy %v; want an expiry and Redis only", k, ttl, inLocal)
			}
		} else if ttl != -1 || !inLocal {
			t.Errorf("%s: PTTL %s, in the local copy %v; want no expiry and a local copy", k, ttl, inLocal)
		}
	}
	// What another replica reads is kept in its local copy too.
	localB := &memCache{m: map[string][]byte{}}
	if got, err := b.ACMECache(localB).Get(ctx, "mail.example.net"); err != nil || !bytes.Equal(localB.m["mail.example.net"], got) {
		t.Errorf("a certificate read from Redis: %v; the local copy holds %q", err, localB.m["mail.example.net"])
	}
	if err := cb.Delete(ctx, "tok123+http-01"); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Get(ctx, "tok123+http-01"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Errorf("Get after Delete: %v, want ErrCacheMiss", err)
	}
	// An entry copied under another key does not open there.
	raw, _ := a.client.Get(ctx, "popgate:acme:mail.example.net").Result()
	if err := a.client.Set(ctx, "popgate:acme:other.example.net", raw, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Get(ctx, "other.example.net"); !errors.As(err, new(*RefusedError)) {
		t.Errorf("an entry moved to another key: %v, want a *RefusedError", err)
	}
}

// TestACMECacheRefused: an entry that does not open (garbage, sealed
// with another key_file), of another Redis type, or too big is an error
// that is not a miss (autocert orders nothing), logged once as an ERROR
// naming the Redis key.
func TestACMECacheRefused(t *testing.T) {
	r := startRedis(t)
	good, logs := openNode(t, r, "good", writeKey(t))
	wrong, _ := openNode(t, r, "wrong", writeKey(t))
	cg, cw := good.ACMECache(nil), wrong.ACMECache(nil)
	ctx := context.Background()

	if err := cw.Put(ctx, "sealed-elsewhere.example.net", []byte("a certificate")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Do("SET", "popgate:acme:garbage.example.net", "not sealed at all, long enough to be taken for a sealed entry"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Do("RPUSH", "popgate:acme:list.example.net", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Do("SETRANGE", "popgate:acme:huge.example.net", "2097152", "x"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"sealed-elsewhere.example.net", "garbage.example.net", "list.example.net", "huge.example.net"} {
		for range 3 {
			data, err := cg.Get(ctx, k)
			var refused *RefusedError
			if !errors.As(err, &refused) || errors.Is(err, autocert.ErrCacheMiss) || data != nil {
				t.Fatalf("Get(%s): %q, %v; want a *RefusedError, not a miss", k, data, err)
			}
			if refused.Key != "popgate:acme:"+k {
				t.Errorf("refused key %q, want popgate:acme:%s", refused.Key, k)
			}
		}
		if n := strings.Count(logs.String(), "level=ERROR msg=\"cluster: an ACME cache entry in Redis is refused"); n == 0 {
			t.Errorf("no ERROR for %s", k)
		}
		if n := strings.Count(logs.String(), "key=popgate:acme:"+k+" "); n != 1 {
			t.Errorf("%s: logged %d times, want once:\n%s", k, n, logs)
		}
	}
	if !good.Up() {
		t.Errorf("a refused entry took Redis for down")
	}
	// The good replica's entries are untouched by the wrong one's reads.
	if err := cg.Put(ctx, "fleet.example.net", []byte("the fleet's certificate")); err != nil {
		t.Fatal(err)
	}
	if _, err := cw.Get(ctx, "fleet.example.net"); !errors.As(err, new(*RefusedError)) {
		t.Errorf("the wrong key read the fleet's entry: %v", err)
	}
	if got, err := cg.Get(ctx, "fleet.example.net"); err != nil || string(got) != "the fleet's certificate" {
		t.Errorf("the fleet's entry: %q, %v", got, err)
	}
}

// TestACMECacheRedisDown: while Redis is down the local copy serves what
// it holds; anything else is an error, never a miss; it is counted; once
// Redis is back the shared entries are read again.
func TestACMECacheRedisDown(t *testing.T) {
	r := startRedis(t)
	c, _ := openNode(t, r, "a", writeKey(t))
	local := &memCache{m: map[string][]byte{}}
	cc := c.ACMECache(local)
	ctx := context.Background()
	if err := cc.Put(ctx, "mail.example.net", []byte("cert")); err != nil {
		t.Fatal(err)
	}
	if err := cc.Put(ctx, "tok+http-01", []byte("answer")); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got, err := cc.Get(ctx, "mail.example.net"); err != nil || string(got) != "cert" {
		t.Errorf("Redis down: Get of a certificate with a local copy: %q, %v", got, err)
	}
	for _, k := range []string{"other.example.net", "tok+http-01"} {
		if _, err := cc.Get(ctx, k); err == nil || errors.Is(err, autocert.ErrCacheMiss) {
			t.Errorf("Redis down: Get(%s): %v, want an error that is not a miss", k, err)
		}
	}
	if err := cc.Put(ctx, "new.example.net", []byte("x")); err == nil {
		t.Errorf("Redis down: Put succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("four operations with Redis down took %v", d)
	}
	if c.Up() || c.Fallbacks()["acme"] == 0 {
		t.Errorf("Redis down: Up %v, fallbacks %v", c.Up(), c.Fallbacks())
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	// The restarted Redis lost nothing that popgate needs to know of
	// (the dirrun Redis keeps no data): a miss again, not the local copy.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := cc.Get(ctx, "mail.example.net")
		if errors.Is(err, autocert.ErrCacheMiss) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis back: Get: %v, want a miss from Redis", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !c.Up() {
		t.Errorf("Redis back: not up")
	}
}

// TestACMELocks: one holder per name across replicas; a release frees it
// for another; a lock is extended while held and expires when its holder
// died; a release never deletes a lock another replica took since.
func TestACMELocks(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a, _ := openNode(t, r, "a", key)
	b, _ := openNode(t, r, "b", key)
	la, lb := a.ACMELocks(), b.ACMELocks()
	ctx := context.Background()

	rel, held, _, err := la.TryLock("mail.example.net")
	if err != nil || !held {
		t.Fatalf("first TryLock: %v, %v", held, err)
	}
	if _, held, _, err := lb.TryLock("mail.example.net"); err != nil || held {
		t.Fatalf("second TryLock while held: %v, %v; want not held", held, err)
	}
	relOther, held, _, err := lb.TryLock("other.example.net")
	if err != nil || !held {
		t.Fatalf("TryLock of another name: %v, %v", held, err)
	}
	relOther(0)
	if v := a.client.Get(ctx, "popgate:acme-lock:mail.example.net").Val(); !strings.HasPrefix(v, "order a ") {
		t.Errorf("lock value %q, want the node's name first", v)
	}
	rel(0)
	rel(0) // a second release does nothing
	relB, held, _, err := lb.TryLock("mail.example.net")
	if err != nil || !held {
		t.Fatalf("TryLock after release: %v, %v", held, err)
	}
	relB(0)

	// Extended while held.
	la.ttl, la.every = 300*time.Millisecond, 50*time.Millisecond
	rel, held, _, _ = la.TryLock("slow.example.net")
	if !held {
		t.Fatal("TryLock slow.example.net: not held")
	}
	time.Sleep(time.Second)
	if _, held, _, _ := lb.TryLock("slow.example.net"); held {
		t.Errorf("a lock held and extended was taken by another replica after 3 TTLs")
	}
	rel(0)

	// A holder that died: its lock expires.
	if err := a.client.Set(ctx, "popgate:acme-lock:dead.example.net", "order c 0123", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if _, held, _, _ := lb.TryLock("dead.example.net"); held {
		t.Errorf("took a lock another replica holds")
	}
	time.Sleep(400 * time.Millisecond)
	relB, held, _, _ = lb.TryLock("dead.example.net")
	if !held {
		t.Errorf("the lock of a dead holder did not expire")
	} else {
		relB(0)
	}

	// A lock that expired and was taken by another is not released by
	// its first holder.
	la.every = time.Hour // no extension
	rel, held, _, _ = la.TryLock("expired.example.net")
	if !held {
		t.Fatal("TryLock expired.example.net: not held")
	}
	time.Sleep(400 * time.Millisecond)
	relB, held, _, _ = lb.TryLock("expired.example.net")
	if !held {
		t.Fatal("an expired lock was not taken")
	}
	rel(0)
	if v := a.client.Get(ctx, "popgate:acme-lock:expired.example.net").Val(); !strings.HasPrefix(v, "order b ") {
		t.Errorf("after the first holder's late release the lock is %q, want b's", v)
	}
	relB(0)
}

// TestACMELocksBackoff: a holder whose order failed releases the lock
// with a back-off: no replica takes it meanwhile, and each is told when
// the back-off ends; then it is free. A lock key Redis holds as something
// else than a string is refused (an ERROR, once), not taken for an outage.
func TestACMELocksBackoff(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a, _ := openNode(t, r, "a", key)
	b, logs := openNode(t, r, "b", key)
	la, lb := a.ACMELocks(), b.ACMELocks()
	ctx := context.Background()

	rel, held, _, _ := la.TryLock("failed.example.net")
	if !held {
		t.Fatal("TryLock: not held")
	}
	rel(500 * time.Millisecond)
	for _, l := range []*ACMELocks{la, lb} {
		_, held, until, err := l.TryLock("failed.example.net")
		if err != nil || held || time.Until(until) <= 0 || time.Until(until) > 500*time.Millisecond {
			t.Errorf("during the back-off: held %v, until in %v, %v; want not held, until within 500ms", held, time.Until(until), err)
		}
	}
	if v := a.client.Get(ctx, "popgate:acme-lock:failed.example.net").Val(); v != "failed a" {
		t.Errorf("the back-off's lock value is %q, want %q", v, "failed a")
	}
	time.Sleep(600 * time.Millisecond)
	relB, held, until, err := lb.TryLock("failed.example.net")
	if err != nil || !held || !until.IsZero() {
		t.Fatalf("after the back-off: held %v, until %v, %v", held, until, err)
	}
	relB(0)

	if err := a.client.RPush(ctx, "popgate:acme-lock:odd.example.net", "x").Err(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, held, _, err := lb.TryLock("odd.example.net"); err == nil || held {
			t.Errorf("a lock key of another type: held %v, %v; want an error", held, err)
		}
	}
	if n := strings.Count(logs.String(), "cluster: an ACME order lock in Redis is refused"); n != 1 || !strings.Contains(logs.String(), "key=popgate:acme-lock:odd.example.net") {
		t.Errorf("a lock key of another type logged %d times, want once with its key:\n%s", n, logs)
	}
	if !b.Up() || b.Fallbacks()["acme"] != 0 {
		t.Errorf("a lock key of another type taken for an outage: up %v, fallbacks %v", b.Up(), b.Fallbacks())
	}
}

// TestACMELocksConcurrent: many goroutines on three replicas contend for
// a few names; at no time do two hold the same name, and every one gets
// its turn.
func TestACMELocksConcurrent(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	var locks []*ACMELocks
	for _, n := range []string{"a", "b", "c"} {
		c, _ := openNode(t, r, n, key)
		locks = append(locks, c.ACMELocks())
	}
	names := []string{"one.example.net", "two.example.net"}
	goroutines := runtime.NumGoroutine()
	var holders [2]atomic.Int32
	var taken [2]atomic.Int32
	var wg sync.WaitGroup
	for g := range 24 {
		wg.Go(func() {
			l, i := locks[g%3], g%2
			for got := 0; got < 3; {
				rel, held, _, err := l.TryLock(names[i])
				if err != nil {
					t.Errorf("TryLock: %v", err)
					return
				}
				if !held {
					time.Sleep(time.Millisecond)
					continue
				}
				if n := holders[i].Add(1); n != 1 {
					t.Errorf("%s held by %d at once", names[i], n)
				}
				time.Sleep(2 * time.Millisecond)
				holders[i].Add(-1)
				taken[i].Add(1)
				rel(0)
				got++
			}
		})
	}
	wg.Wait()
	for i := range names {
		if n := taken[i].Load(); n != 36 {
			t.Errorf("%s taken %d times, want 36", names[i], n)
		}
	}
	// Every lock's extender has ended with its release.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines after the locks were released, %d before", n, goroutines)
	}
}

// TestACMELocksRedisDown: no lock while Redis is down (an error, not
// "held by another"), one WARN for the outage, counted; locks again once
// it is back.
func TestACMELocksRedisDown(t *testing.T) {
	r := startRedis(t)
	c, logs := openNode(t, r, "a", writeKey(t))
	l := c.ACMELocks()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if rel, held, _, err := l.TryLock("mail.example.net"); err == nil || held || rel != nil {
			t.Fatalf("Redis down: TryLock %v, %v; want an error", held, err)
		}
	}
	if n := strings.Count(logs.String(), "no ACME certificate is ordered or renewed until it is back"); n != 1 {
		t.Errorf("Redis down: the outage logged %d times for ACME, want once:\n%s", n, logs)
	}
	if c.Fallbacks()["acme"] != 3 {
		t.Errorf("fallbacks %v, want acme 3", c.Fallbacks())
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rel, held, _, err := l.TryLock("mail.example.net")
		if err == nil && held {
			rel(0)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis back: TryLock %v, %v", held, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
