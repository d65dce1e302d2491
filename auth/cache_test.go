package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	c := NewCache(inner, 100, time.Hour, time.Hour)
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
	c := NewCache(&countingRouter{}, 100, time.Hour, time.Hour)
	const secret = "right"
	for _, u := range []string{"a", "b", "c"} {
		if _, err := c.Route(context.Background(), creq(u, secret)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range c.pos.Keys() {
		if strings.Contains(k, secret) {
			t.Errorf("a cache key holds the password")
		}
	}
	for _, v := range c.pos.Values() {
		if v.d.Password != "" || !v.clientPass {
			t.Errorf("a cached decision holds the client's password")
		}
	}
}

func TestCacheExpiry(t *testing.T) {
	inner := &countingRouter{}
	c := NewCache(inner, 100, 50*time.Millisecond, 20*time.Millisecond)
	ctx := context.Background()
	c.Route(ctx, creq("alice", "right"))
	c.Route(ctx, creq("alice", "wrong"))
	c.Route(ctx, creq("alice", "right"))
	c.Route(ctx, creq("alice", "wrong"))
	if n := inner.n.Load(); n != 2 {
		t.Fatalf("inner asked %d times before expiry, want 2", n)
	}
	time.Sleep(200 * time.Millisecond)
	c.Route(ctx, creq("alice", "right"))
	c.Route(ctx, creq("alice", "wrong"))
	if n := inner.n.Load(); n != 4 {
		t.Errorf("inner asked %d times after expiry, want 4", n)
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
			c := NewCache(inner, tc.size, tc.ttl, tc.neg)
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
	c := NewCache(&countingRouter{}, 10, time.Hour, time.Hour)
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
	c := NewCache(&countingRouter{}, 10, time.Hour, time.Hour)
	a := &Request{Credentials: Credentials{User: "ab", AuthzID: "c"}}
	b := &Request{Credentials: Credentials{User: "a", AuthzID: "bc"}}
	if c.cacheKey(a) == c.cacheKey(b) {
		t.Error("different requests share a key")
	}
	c2 := NewCache(&countingRouter{}, 10, time.Hour, time.Hour)
	if c.cacheKey(a) == c2.cacheKey(a) {
		t.Error("two caches share the HMAC key")
	}
}
