package auth

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingRouter accepts password "right" (and "master-me", rewritten to a
// master password), refuses others, and fails for user "down".
type countingRouter struct{ n atomic.Int32 }

func (r *countingRouter) Route(_ context.Context, req *Request) (Decision, error) {
	r.n.Add(1)
	switch {
	case req.User == "down":
		return Decision{}, errors.New("auth: service down")
	case req.User == "nobody":
		return Decision{}, ErrNoRoute
	case req.Password == "right":
		return Decision{Backend: "b1", User: req.User, Password: req.Password}, nil
	case req.Password == "master-me":
		return Decision{Backend: "b1", User: req.User + "*admin", Password: "masterpw"}, nil
	}
	return Decision{}, &DeniedError{Reason: "bad password", Wait: time.Second}
}

func creq(user, pass string) *Request {
	return &Request{Credentials: Credentials{User: user, Password: Password(pass)}, Listener: "pop3s", TLS: true}
}

func TestCache(t *testing.T) {
	inner := &countingRouter{}
	c := NewCache(inner, 100, time.Hour, time.Hour, nil)
	ctx := context.Background()
	steps := []struct {
		name      string
		req       *Request
		reachable bool // the inner router is asked
		wantErr   string
		wantPass  string
	}{
		{"first login", creq("alice", "right"), true, "", "right"},
		{"same again", creq("alice", "right"), false, "", "right"},
		{"other password", creq("alice", "wrong"), true, "denied", ""},
		{"wrong again", creq("alice", "wrong"), false, "denied", ""},
		{"right still cached", creq("alice", "right"), false, "", "right"},
		{"case differs", creq("ALICE", "right"), true, "", "right"},
		{"other listener", &Request{Credentials: Credentials{User: "alice", Password: "right"}, Listener: "pop3", TLS: true}, true, "", "right"},
		{"plaintext", &Request{Credentials: Credentials{User: "alice", Password: "right"}, Listener: "pop3s"}, true, "", "right"},
		{"service down", creq("down", "right"), true, "service down", ""},
		{"down not cached", creq("down", "right"), true, "service down", ""},
		{"no route", creq("nobody", "x"), true, "no route", ""},
		{"no route cached", creq("nobody", "x"), false, "no route", ""},
		{"master", creq("bob", "master-me"), true, "", "masterpw"},
		{"master cached", creq("bob", "master-me"), false, "", "masterpw"},
	}
	for _, s := range steps {
		before := inner.n.Load()
		d, err := c.Route(ctx, s.req)
		reached := inner.n.Load() != before
		if reached != s.reachable {
			t.Errorf("%s: inner router reached = %v, want %v", s.name, reached, s.reachable)
		}
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Errorf("%s: err = %v, want %q", s.name, err, s.wantErr)
			}
			continue
		}
		if err != nil || d.Backend != "b1" || string(d.Password) != s.wantPass {
			t.Errorf("%s: Route = %q, %v", s.name, d.Backend, err)
		}
	}
	if c.Hits() != 5 || c.Misses() != 9 {
		t.Errorf("hits %d misses %d, want 5 and 9", c.Hits(), c.Misses())
	}
	// A cached refusal keeps its Wait and is a *DeniedError.
	_, err := c.Route(ctx, creq("alice", "wrong"))
	var de *DeniedError
	if !errors.As(err, &de) || de.Wait != time.Second {
		t.Errorf("cached refusal = %v", err)
	}
}

func TestCacheHoldsNoClientPassword(t *testing.T) {
	c := NewCache(&countingRouter{}, 100, time.Hour, time.Hour, nil)
	const secret = "right"
	for _, u := range []string{"a", "b", "c"} {
		if _, err := c.Route(context.Background(), creq(u, secret)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range c.pos.lru.Keys() {
		if strings.Contains(k, secret) {
			t.Errorf("a cache key holds the password")
		}
	}
	for _, v := range c.pos.lru.Values() {
		if v.v.d.Password != "" || !v.v.clientPass {
			t.Errorf("a cached decision holds the client's password")
		}
	}
}

func TestCacheExpiry(t *testing.T) {
	inner := &countingRouter{}
	clk := newClock()
	c := NewCache(inner, 100, time.Minute, 10*time.Second, clk.now)
	ctx := context.Background()
	steps := []struct {
		name      string
		advance   time.Duration // before the step
		pass      string
		reachable bool
	}{
		{"success", 0, "right", true},
		{"refusal", 0, "wrong", true},
		{"success cached", 0, "right", false},
		{"refusal cached", 0, "wrong", false},
		{"refusal at its TTL", 10 * time.Second, "wrong", false},
		{"refusal past its TTL", time.Nanosecond, "wrong", true},
		{"refusal cached anew", 9 * time.Second, "wrong", false},
		// Hits did not extend the success's TTL: it was added at 0.
		{"success at its TTL", 41*time.Second - time.Nanosecond, "right", false},
		{"success past its TTL", time.Nanosecond, "right", true},
		{"success cached anew", 59 * time.Second, "right", false},
		{"success expired again", time.Minute, "right", true},
	}
	for _, s := range steps {
		clk.add(s.advance)
		before := inner.n.Load()
		if _, err := c.Route(ctx, creq("alice", s.pass)); (err == nil) != (s.pass == "right") {
			t.Errorf("%s: Route = %v", s.name, err)
		}
		if reached := inner.n.Load() != before; reached != s.reachable {
			t.Errorf("%s: inner router reached = %v, want %v", s.name, reached, s.reachable)
		}
	}
}

// TestTTLLRU: expired entries are dropped where they are met: by get, and
// at the least recently used end by add, up to the first live one.
func TestTTLLRU(t *testing.T) {
	clk := newClock()
	l := newTTLLRU[int](10, time.Minute)
	for i, k := range []string{"a", "b", "c"} {
		l.add(k, i, clk.now())
	}
	clk.add(30 * time.Second)
	l.add("d", 3, clk.now())
	if v, ok := l.get("a", clk.now()); !ok || v != 0 {
		t.Errorf(`get("a") = %d, %v; want 0, true`, v, ok)
	}
	clk.add(31 * time.Second) // a, b, c expired; d not
	if _, ok := l.get("b", clk.now()); ok {
		t.Error(`get("b") found an expired entry`)
	}
	if n := l.lru.Len(); n != 3 {
		t.Errorf("Len() after getting an expired entry = %d, want 3", n)
	}
	// From the LRU end: c goes, d stops the sweep, a (used after d) stays.
	l.add("e", 4, clk.now())
	if got, want := fmt.Sprint(l.lru.Keys()), "[d a e]"; got != want {
		t.Errorf("keys after add = %s, want %s", got, want)
	}
	if _, ok := l.get("a", clk.now()); ok {
		t.Error(`get("a") found an expired entry`)
	}
	if n := l.lru.Len(); n != 2 {
		t.Errorf("Len() = %d, want 2", n)
	}
}

// TestCacheDropsExpired: expired answers leave memory as new answers come
// in, the stored master password among them, without a goroutine.
func TestCacheDropsExpired(t *testing.T) {
	clk := newClock()
	c := NewCache(&countingRouter{}, 100, time.Minute, time.Minute, clk.now)
	ctx := context.Background()
	c.Route(ctx, creq("bob", "master-me"))
	for i := range 10 {
		c.Route(ctx, creq(fmt.Sprint("u", i), "right"))
		c.Route(ctx, creq(fmt.Sprint("u", i), "wrong"))
	}
	if c.Len() != 21 {
		t.Fatalf("Len() = %d, want 21", c.Len())
	}
	clk.add(time.Minute + time.Second)
	c.Route(ctx, creq("carol", "right"))
	c.Route(ctx, creq("carol", "wrong"))
	if c.Len() != 2 {
		t.Errorf("Len() after new answers = %d, want 2 (carol's)", c.Len())
	}
	for _, v := range c.pos.lru.Values() {
		if v.v.d.Password == "masterpw" {
			t.Error("an expired master password is still held")
		}
	}
}

// TestCacheNoGoroutine: a Cache starts no goroutine, so a reload that
// makes a new one leaks nothing.
func TestCacheNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	caches := make([]*Cache, 50)
	for i := range caches {
		caches[i] = NewCache(&countingRouter{}, 100, time.Minute, time.Second, nil)
		caches[i].Route(context.Background(), creq("alice", "right"))
		caches[i].Route(context.Background(), creq("alice", "wrong"))
	}
	// Other tests' goroutines may still be ending, never starting: a
	// small slack, not an exact count.
	if after := runtime.NumGoroutine(); after > before+5 {
		t.Errorf("goroutines: %d before making %d caches, %d after", before, len(caches), after)
	}
	runtime.KeepAlive(caches)
}

// TestCacheConcurrent runs lookups, expiries and purges at once, for the
// race detector.
func TestCacheConcurrent(t *testing.T) {
	inner := &countingRouter{}
	clk := newClock()
	c := NewCache(inner, 8, time.Second, time.Second, clk.now)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				pass := "right"
				if i%3 == 0 {
					pass = "wrong"
				}
				d, err := c.Route(context.Background(), creq(fmt.Sprint("u", (g+i)%12), pass))
				if (err == nil) != (pass == "right") || (err == nil && string(d.Password) != pass) {
					t.Errorf("Route(%q) = %+v, %v", pass, d, err)
					return
				}
				switch i % 50 {
				case 0:
					clk.add(300 * time.Millisecond)
				case 25:
					c.Purge()
				}
			}
		})
	}
	wg.Wait()
	if n := c.Len(); n > 16 {
		t.Errorf("Len() = %d, want <= 16", n)
	}
	if c.Hits()+c.Misses() != 8*300 {
		t.Errorf("hits %d + misses %d, want %d", c.Hits(), c.Misses(), 8*300)
	}
}

func TestCacheDisabled(t *testing.T) {
	for _, tc := range []struct {
		size     int
		ttl, neg time.Duration
		want     int32 // inner calls for 2× right + 2× wrong
	}{
		{0, time.Hour, time.Hour, 4},
		{100, 0, time.Hour, 3},
		{100, time.Hour, 0, 3},
		{100, 0, 0, 4},
	} {
		t.Run(fmt.Sprint(tc.size, tc.ttl, tc.neg), func(t *testing.T) {
			inner := &countingRouter{}
			c := NewCache(inner, tc.size, tc.ttl, tc.neg, nil)
			for _, p := range []string{"right", "right", "wrong", "wrong"} {
				c.Route(context.Background(), creq("alice", p))
			}
			if n := inner.n.Load(); n != tc.want {
				t.Errorf("inner asked %d times, want %d", n, tc.want)
			}
		})
	}
}

func TestCacheSizeBound(t *testing.T) {
	c := NewCache(&countingRouter{}, 10, time.Hour, time.Hour, nil)
	for i := range 1000 {
		c.Route(context.Background(), creq(fmt.Sprint("u", i), "right"))
		c.Route(context.Background(), creq(fmt.Sprint("u", i), "wrong"))
	}
	if c.Len() > 20 {
		t.Errorf("Len() = %d, want <= 20", c.Len())
	}
	c.Purge()
	if c.Len() != 0 {
		t.Errorf("Len() after Purge = %d", c.Len())
	}
}

func TestCacheKeyUnambiguous(t *testing.T) {
	c := NewCache(&countingRouter{}, 10, time.Hour, time.Hour, nil)
	a := &Request{Credentials: Credentials{User: "ab", AuthzID: "c"}}
	b := &Request{Credentials: Credentials{User: "a", AuthzID: "bc"}}
	if c.cacheKey(a) == c.cacheKey(b) {
		t.Error("different requests share a key")
	}
	c2 := NewCache(&countingRouter{}, 10, time.Hour, time.Hour, nil)
	if c.cacheKey(a) == c2.cacheKey(a) {
		t.Error("two caches share the HMAC key")
	}
}
