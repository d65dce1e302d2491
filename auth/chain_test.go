package auth

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, "carol@example.com b1\n@example.net b2\nalice@example.com b2\n")
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	service := decider(func(_ context.Context, req *Request) (Decision, error) {
		asked.Add(1)
		switch req.User {
		case "http@else.org":
			return Decision{Backend: "new", Address: "192.0.2.9:110", User: req.User, Password: req.Password}, nil
		case "refused@else.org":
			return Decision{}, &DeniedError{Reason: "no"}
		case "broken@else.org":
			return Decision{}, errors.New("auth: service down")
		}
		return Decision{}, ErrNoRoute
	})
	static := NewStatic(map[string]string{"alice@example.com": "legacy"}, map[string]string{"example.com": "new"}, "static-default-unused")
	full := &Chain{Sources: []Source{static, m, service}, Default: "legacy"}

	cases := []struct {
		name    string
		chain   *Chain
		user    string
		backend string
		err     error // nil, ErrNoRoute, or errAny (denied or temporary)
		http    bool  // the HTTP service is asked
		explain string
	}{
		{"static user beats map user", full, "Alice@Example.com", "legacy", nil, false, `backend "legacy" (route.users "alice@example.com")`},
		{"static domain beats map user", full, "carol@example.com", "new", nil, false, `backend "new" (route.domains "example.com")`},
		{"map domain", full, "dave@example.net", "b2", nil, false, `(map file ` + path + `:2 domain "example.net")`},
		{"http", full, "http@else.org", "new", nil, true, "would ask the HTTP service"},
		{"http refusal is final", full, "refused@else.org", "", errAny, true, "would ask the HTTP service"},
		{"http failure is final", full, "broken@else.org", "", errAny, true, "would ask the HTTP service"},
		{"http no route falls to default", full, "x@else.org", "legacy", nil, true, `route.default`},
		{"no http: default", &Chain{Sources: []Source{static, m}, Default: "legacy"}, "x@else.org", "legacy", nil, false, `backend "legacy" (route.default)`},
		{"nothing", &Chain{Sources: []Source{static}}, "x@else.org", "", ErrNoRoute, false, "no route"},
		{"empty chain", &Chain{}, "x", "", ErrNoRoute, false, "no route"},
		{"static default ignored", &Chain{Sources: []Source{static}}, "x@else.org", "", ErrNoRoute, false, "no route"},
		{"order is the list's", &Chain{Sources: []Source{m, static}}, "alice@example.com", "b2", nil, false, `(map file ` + path + `:3 user "alice@example.com")`},
		{"source error is final", &Chain{Sources: []Source{failing{}, static}, Default: "legacy"}, "alice@example.com", "", errAny, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := asked.Load()
			d, err := tc.chain.Route(context.Background(), &Request{Credentials: Credentials{User: tc.user, Password: "pw"}})
			if (asked.Load() != before) != tc.http {
				t.Errorf("HTTP asked = %v, want %v", asked.Load() != before, tc.http)
			}
			switch tc.err {
			case nil:
				if err != nil || d.Backend != tc.backend || d.User != tc.user || d.Password != "pw" {
					t.Errorf("Route(%q) = %+v, %v; want backend %q", tc.user, d, err, tc.backend)
				}
			case ErrNoRoute:
				if !errors.Is(err, ErrNoRoute) {
					t.Errorf("Route(%q) = %v, want ErrNoRoute", tc.user, err)
				}
			default:
				if err == nil || errors.Is(err, ErrNoRoute) {
					t.Errorf("Route(%q) = %v, want the service's error", tc.user, err)
				}
			}
			before = asked.Load()
			b, why, err := tc.chain.Explain(context.Background(), tc.user)
			if tc.explain == "" {
				if err == nil {
					t.Errorf("Explain(%q) = %q, %q, nil; want the source's error", tc.user, b, why)
				}
				return
			}
			if err != nil || !strings.Contains(why, tc.explain) {
				t.Errorf("Explain(%q) = %q, %q, %v; want it to contain %q", tc.user, b, why, err, tc.explain)
			}
			// Explain names a backend only where it is known without
			// the HTTP service.
			wantB := tc.backend
			if tc.http {
				wantB = ""
			}
			if b != wantB {
				t.Errorf("Explain(%q) backend = %q, want %q", tc.user, b, wantB)
			}
			if asked.Load() != before {
				t.Error("Explain asked the HTTP service")
			}
		})
	}
}

// decider is a Decider from a function, as the HTTP service is one.
type decider RouterFunc

func (d decider) Lookup(context.Context, string) (string, string, bool, error) {
	return "", "would ask the HTTP service", true, nil
}
func (d decider) Decide(ctx context.Context, req *Request) (Decision, error) { return d(ctx, req) }
func (decider) Close() error                                                 { return nil }

// failing is a Source whose store is down.
type failing struct{}

func (failing) Lookup(context.Context, string) (string, string, bool, error) {
	return "", "", false, errors.New("auth: store down")
}
func (failing) Close() error { return nil }

func TestStaticLookup(t *testing.T) {
	s := NewStatic(map[string]string{"Bob": "b"}, map[string]string{"@Example.com": "d"}, "def")
	for _, tc := range []struct{ user, backend, rule string }{
		{"BOB", "b", `route.users "bob"`},
		{"x@EXAMPLE.com", "d", `route.domains "example.com"`},
		{"x@other", "", ""},
	} {
		b, rule, ok, err := s.Lookup(context.Background(), tc.user)
		if b != tc.backend || rule != tc.rule || ok != (tc.backend != "") || err != nil {
			t.Errorf("Lookup(%q) = %q, %q, %v, %v", tc.user, b, rule, ok, err)
		}
	}
	// Route keeps its Default.
	if d, err := s.Route(context.Background(), &Request{Credentials: Credentials{User: "x@other"}}); err != nil || d.Backend != "def" {
		t.Errorf("Route = %+v, %v", d, err)
	}
	for d, want := range map[string]bool{"example.com": true, "EXAMPLE.com.": true, "other": false, "": false} {
		if got := s.HasDomain(d); got != want {
			t.Errorf("HasDomain(%q) = %v, want %v", d, got, want)
		}
	}
	var nilStatic *Static
	if nilStatic.HasDomain("example.com") {
		t.Error("nil Static has a domain")
	}
}

// TestChainHasDomain: every source that routes domains is asked, and
// nothing else counts.
func TestChainHasDomain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, "@mapped.test b1\nuser@users.test b1\n")
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	static := NewStatic(map[string]string{"a@users.test": "b1"}, map[string]string{"@Static.Test": "b1"}, "")
	c := &Chain{Sources: []Source{static, m, decider(nil)}, Default: "b1"}
	for d, want := range map[string]bool{"static.test": true, "mapped.test": true, "users.test": false, "other.test": false} {
		if got := c.HasDomain(d); got != want {
			t.Errorf("HasDomain(%q) = %v, want %v", d, got, want)
		}
	}
}

// TestChainHTTPSource: the HTTP service behind its Cache is a Decider:
// Explain never asks it, Route does (once, then the cache answers), and
// Close forgets the cached answers.
func TestChainHTTPSource(t *testing.T) {
	var asked atomic.Int32
	srv, _ := authServer(t, func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		ok("", "", "Auth-Backend", "b1")(w, r)
	})
	h := &HTTP{URL: srv.URL}
	c := &Chain{Sources: []Source{NewCache(h, 10, time.Minute, time.Second, nil)}}
	if b, why, err := c.Explain(context.Background(), "alice"); err != nil || b != "" || !strings.Contains(why, "would ask the HTTP service") {
		t.Errorf("Explain = %q, %q, %v; want the service to decide", b, why, err)
	}
	req := &Request{Credentials: Credentials{User: "alice", Password: "pw", Method: "USER"}}
	for range 2 {
		if d, err := c.Route(context.Background(), req); err != nil || d.Backend != "b1" {
			t.Fatalf("Route = %+v, %v; want b1", d, err)
		}
		if asked.Load() != 1 {
			t.Fatalf("service asked %d times, want once (then the cache answers)", asked.Load())
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Route(context.Background(), req); err != nil || d.Backend != "b1" || asked.Load() != 2 {
		t.Errorf("Route after Close = %+v, %v, service asked %d times; want b1, asked again", d, err, asked.Load())
	}
}
