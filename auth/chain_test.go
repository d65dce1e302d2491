package auth

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, "carol@example.com b1\n@example.net b2\nalice@example.com b2\n")
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	service := RouterFunc(func(_ context.Context, req *Request) (Decision, error) {
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
	full := &Chain{Static: static, Map: m, HTTP: service, Default: "legacy"}

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
		{"no http: default", &Chain{Static: static, Map: m, Default: "legacy"}, "x@else.org", "legacy", nil, false, `backend "legacy" (route.default)`},
		{"nothing", &Chain{Static: static}, "x@else.org", "", ErrNoRoute, false, "no route"},
		{"empty chain", &Chain{}, "x", "", ErrNoRoute, false, "no route"},
		{"static default ignored", &Chain{Static: static}, "x@else.org", "", ErrNoRoute, false, "no route"},
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
			if got := tc.chain.Explain(tc.user); !strings.Contains(got, tc.explain) {
				t.Errorf("Explain(%q) = %q, want it to contain %q", tc.user, got, tc.explain)
			}
			if asked.Load() != before {
				t.Error("Explain asked the HTTP service")
			}
		})
	}
}

func TestStaticMatch(t *testing.T) {
	s := NewStatic(map[string]string{"Bob": "b"}, map[string]string{"@Example.com": "d"}, "def")
	for _, tc := range []struct{ user, backend, rule string }{
		{"BOB", "b", `route.users "bob"`},
		{"x@EXAMPLE.com", "d", `route.domains "example.com"`},
		{"x@other", "", ""},
	} {
		b, rule, ok := s.Match(tc.user)
		if b != tc.backend || rule != tc.rule || ok != (tc.backend != "") {
			t.Errorf("Match(%q) = %q, %q, %v", tc.user, b, rule, ok)
		}
	}
	// Lookup keeps its Default.
	if b, ok := s.Lookup("x@other"); !ok || b != "def" {
		t.Errorf("Lookup = %q, %v", b, ok)
	}
	var nilStatic *Static
	if _, _, ok := nilStatic.Match("x"); ok {
		t.Error("nil Static matched")
	}
}
