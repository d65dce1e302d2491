package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/dirrun"
)

// TestAttack7PoolBusyIsNotDown: when every connection of the pool is busy
// (a login flood), the throttle refuses the attempt for now with the
// full budget's retry hint; it does not take Redis for down, which would
// make this replica count every login locally for ThrottleRetry.
func TestAttack7PoolBusyIsNotDown(t *testing.T) {
	r := startRedis(t)
	rs := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 5, MaxPerUser: 5, Window: time.Minute})
	rep := rs[0]
	if ok, _ := attempt(rep.th, tip1, "alice", auth.AttemptFailed); !ok {
		t.Fatal("first attempt refused")
	}
	// Hold the 4 connections of the pool with blocking reads.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.c.client.BLPop(context.Background(), 2*time.Second, rep.c.key("nothing"))
		}()
	}
	time.Sleep(200 * time.Millisecond)
	tk, ok, wait := rep.th.Begin(noWait, tip1, "alice")
	rep.th.End(tk, auth.AttemptFailed)
	if ok || wait != auth.InFlightRetry {
		t.Errorf("Begin with a busy pool = %v, %v; want refused with %v", ok, wait, auth.InFlightRetry)
	}
	rep.store.mu.Lock()
	down := rep.store.down
	rep.store.mu.Unlock()
	if down || !rep.c.Up() {
		t.Errorf("a busy pool made the throttle take Redis for down (down %v, up %v)", down, rep.c.Up())
	}
	wg.Wait()
	if ok, _ := attempt(rep.th, tip1, "alice", auth.AttemptFailed); !ok {
		t.Error("attempt refused once the pool is free again")
	}
}

// TestAttack7SessionsListBudget: whoever can write to Redis registers
// many fresh fake replicas, each with an entry of many megabytes (up to
// 64 × 16 MiB). A list must read at most its byte budget of entries, all
// together, and say which it left out.
func TestAttack7SessionsListBudget(t *testing.T) {
	r := dirrun.RedisFor(t)
	a := startMember(t, r, "node0", writeKey(t), func(s *Sessions) { s.listBytes = 3 << 20 })
	ctx := context.Background()
	junk := strings.Repeat("x", 1<<20)
	now := float64(time.Now().UnixMilli())
	for i := range 6 {
		m := fmt.Sprintf("fake%d:0123456789abcdef", i)
		a.s.c.client.Set(ctx, a.s.c.key("{sessions}:node:"+m), junk, time.Minute)
		a.s.c.client.ZAdd(ctx, a.s.index, redis.Z{Score: now, Member: m})
	}
	var rc readCounter
	a.s.c.client.AddHook(&rc)
	_, partial := a.s.List(ctx)
	read := rc.n.Load()
	if read > 3<<20+64<<10 {
		t.Errorf("a list read %d bytes of entries, more than its budget of %d", read, 3<<20)
	}
	if !strings.Contains(partial, "were not read") {
		t.Errorf("partial = %q, want the lists left out named", partial)
	}
}

// readCounter counts the bytes of the string replies the client gets.
type readCounter struct{ n atomic.Int64 }

func (h *readCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *readCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.count(cmd)
		return err
	}
}
func (h *readCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.count(c)
		}
		return err
	}
}
func (h *readCounter) count(c redis.Cmder) {
	if sc, ok := c.(*redis.StringCmd); ok {
		h.n.Add(int64(len(sc.Val())))
	}
}

// TestAttack7ACMEDeletedRestored: whoever can write to Redis deletes a
// certificate's entry (again and again). A replica whose local copy is
// one autocert would load writes it back and serves it rather than
// taking the miss, which would make autocert order again (each time,
// until the CA's duplicate-certificate limit); a copy that is not valid
// stays a miss.
func TestAttack7ACMEDeletedRestored(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a, logs := openNode(t, r, "a", key)
	b, _ := openNode(t, r, "b", key)
	local := &memCache{m: map[string][]byte{}}
	valid := func(k string, data []byte) error {
		if string(data) != "valid "+k {
			return fmt.Errorf("not valid")
		}
		return nil
	}
	ca, cb := a.ACMECacheRestoring(local, valid), b.ACMECache(nil)
	ctx := context.Background()
	for _, k := range []string{"mail.example.net", "acme_account+key"} {
		if err := ca.Put(ctx, k, []byte("valid "+k)); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			a.client.Del(ctx, a.key("acme:"+k))
			got, err := ca.Get(ctx, k)
			if err != nil || string(got) != "valid "+k {
				t.Fatalf("Get(%s) after its Redis entry was deleted = %q, %v; want the local copy", k, got, err)
			}
			if got, err := cb.Get(ctx, k); err != nil || string(got) != "valid "+k {
				t.Errorf("another replica's Get(%s) after the write-back = %q, %v", k, got, err)
			}
		}
	}
	if !strings.Contains(logs.String(), "written back") {
		t.Errorf("the write-back was not logged:\n%s", logs)
	}
	// An invalid local copy (expired, say) is no stand-in.
	local.Put(ctx, "old.example.net", []byte("expired"))
	if _, err := ca.Get(ctx, "old.example.net"); err != autocert.ErrCacheMiss {
		t.Errorf("Get with an invalid local copy: err = %v, want a miss", err)
	}
	// Challenge answers are never restored.
	local.Put(ctx, "tok+http-01", []byte("valid tok+http-01"))
	if _, err := ca.Get(ctx, "tok+http-01"); err != autocert.ErrCacheMiss {
		t.Errorf("Get of a challenge answer with a local copy: err = %v, want a miss", err)
	}
}

// TestAttack7ThrottleFallbackShare: while Redis fails, each replica
// counts failed logins on its own state; with the whole limit each, N
// replicas would let N times the limit through (and a flood that makes
// Redis fail on purpose would get that). Each counts against its share,
// the limit divided by the replicas last seen in the sessions index.
func TestAttack7ThrottleFallbackShare(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	// The replicas the sessions index holds are what the share divides by.
	var ms []*member
	for i := range 3 {
		ms = append(ms, startMember(t, r, fmt.Sprint("node", i), key))
	}
	waitList(t, ms[0], 0)
	deadline := time.Now().Add(10 * time.Second)
	for ms[0].s.c.replicas.Load() != 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := ms[0].s.c.replicas.Load(); n != 3 {
		t.Fatalf("replicas seen in the sessions index = %d, want 3", n)
	}

	rep := throttleFleet(t, r, 1, auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: 6, Window: time.Minute})[0]
	rep.c.replicas.Store(3)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	allowed := 0
	for range 10 {
		if ok, _ := attempt(rep.th, tip1, "alice", auth.AttemptFailed); ok {
			allowed++
		}
	}
	if allowed != 2 {
		t.Errorf("with Redis down and 3 replicas, one replica let %d failed logins of a user through, want 2 (6/3)", allowed)
	}
}
