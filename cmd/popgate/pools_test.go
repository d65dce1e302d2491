package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/pool"
	"github.com/popgate/popgate/proxy/pop3test"
)

// TestPoolConfigProblems: [[pool]] is checked by name, and a route may
// name a pool.
func TestPoolConfigProblems(t *testing.T) {
	base := `[[listen]]
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "a"
address = "127.0.0.1:1"
tls = "none"
[[backend]]
name = "b"
address = "127.0.0.1:2"
tls = "none"
`
	for _, tc := range []struct {
		pool, route string
		want        []string
	}{
		{`name = "mx"` + "\nbackends = [\"a\", \"b\"]\nweights = { b = 3 }\naffinity_ttl = \"1m\"", `default = "mx"` + "\nusers = { \"x@y\" = \"mx\" }", nil},
		{`name = "a"` + "\nbackends = [\"a\"]", `default = "a"`, []string{`pool[0].name: "a" is a backend's name too`}},
		{`name = "mx"` + "\nbackends = [\"a\", \"c\", \"a\"]", `default = "mx"`, []string{`pool[0].backends[1]: backend "c" is not defined`, `pool[0].backends[2]: "a" listed twice`}},
		{`name = "mx"` + "\nbackends = [\"a\"]\nweights = { b = 1, a = -1 }", `default = "mx"`, []string{`pool[0].weights: "b" is not in backends`, `pool[0].weights.a: -1, must be 0 to 10000`}},
		{`name = "mx"`, `default = "mx"`, []string{"pool[0].backends: missing"}},
		{`name = "mx"` + "\nbackends = [\"a\", \"b\"]\nweights = { a = 0, b = 0 }", `default = "mx"`, []string{"pool[0].weights: every backend has weight 0"}},
		{`name = "mx"` + "\nbackends = [\"a\"]\noutage = \"open\"", `default = "mx"`, []string{`pool[0].outage: "open", want "refuse" or "hash"`}},
		{`name = "mx"` + "\nbackends = [\"a\"]", `default = "nx"`, []string{`route.default: backend "nx" is not defined`}},
	} {
		cfg := base + "[[pool]]\n" + tc.pool + "\n[route]\n" + tc.route + "\n"
		s, err := ParseConfig("test", []byte(cfg))
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.pool, err)
				continue
			}
			want := []pool.Pool{{Name: "mx", Members: []pool.Member{{Backend: "a", Weight: 1}, {Backend: "b", Weight: 3}}, AffinityTTL: time.Minute, Outage: pool.OutageRefuse}}
			if fmt.Sprint(s.Pools) != fmt.Sprint(want) {
				t.Errorf("pools %+v, want %+v", s.Pools, want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tc.pool)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.pool, err, w)
			}
		}
	}
}

// TestPoolRunner: a running popgate spreads a pool's users over its
// backends; popgate pool drains one, lists, moves a user (its session
// ends) and a reload keeps the drain.
func TestPoolRunner(t *testing.T) {
	users := map[string]*pop3test.Mailbox{}
	for i := range 60 {
		users[fmt.Sprint("user", i)] = &pop3test.Mailbox{Password: procPass}
	}
	var addrs []string
	for range 3 {
		b := &pop3test.Server{Mailboxes: users}
		addr, err := b.Start("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		addrs = append(addrs, addr.String())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	config := func(weights string) string {
		return fmt.Sprintf(`[log]
format = "json"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "a"
address = %q
tls = "none"
[[backend]]
name = "b"
address = %q
tls = "none"
[[backend]]
name = "c"
address = %q
tls = "none"
[[pool]]
name = "mx"
backends = ["a", "b", "c"]
weights = %s
affinity_ttl = "1h"
[route]
default = "mx"
[metrics]
address = %q
`, addrs[0], addrs[1], addrs[2], weights, admin)
	}
	path := writeConfig(t, config("{}"))
	r, _ := startRunner(t, path)
	pool := func(args ...string) string {
		t.Helper()
		code, out, errOut := run(t.Context(), append([]string{"pool", "-config", path}, args...)...)
		if code != 0 {
			t.Fatalf("popgate pool %v: %d, %s", args, code, errOut)
		}
		return out
	}
	login := func(user string) *popClient {
		t.Helper()
		c, err := net.Dial("tcp", r.addrOf("plain"))
		if err != nil {
			t.Fatal(err)
		}
		p := newPOPClient(t, c)
		p.login(user, procPass)
		return p
	}
	on := map[string]string{}
	for i := range 60 {
		u := fmt.Sprint("user", i)
		p := login(u)
		on[u] = r.srv.SessionList()[0].Backend
		p.cmd("QUIT")
		p.c.Close()
		waitUntil(t, "the session's end", func() bool { return r.srv.Sessions() == 0 })
	}
	n := map[string]int{}
	for _, b := range on {
		n[b]++
	}
	if len(n) != 3 || n["a"] < 10 || n["b"] < 10 || n["c"] < 10 {
		t.Errorf("60 users spread %v", n)
	}
	if out := pool("drain", "mx", "a"); !strings.Contains(out, "drain done") {
		t.Errorf("drain: %q", out)
	}
	// The affinity (1h) holds a's users there; a move takes one off.
	var ua string
	for u, b := range on {
		if b == "a" {
			ua = u
			break
		}
	}
	p := login(ua)
	if b := r.srv.SessionList()[0].Backend; b != "a" {
		t.Errorf("%s, within its affinity, went to %s after the drain", ua, b)
	}
	if out := pool("move", "mx", ua); !strings.Contains(out, "1 sessions ended") || strings.Contains(out, "-> a ") {
		t.Errorf("move: %q", out)
	}
	if _, err := p.r.ReadString('\n'); err == nil {
		t.Error("the moved user's session still answers")
	}
	waitUntil(t, "the moved session's end", func() bool { return r.srv.Sessions() == 0 })
	p = login(ua)
	if b := r.srv.SessionList()[0].Backend; b == "a" {
		t.Errorf("after the move %s is on the drained a", ua)
	}
	p.cmd("QUIT")
	// A reload with other weights keeps the operator's drain.
	writeFile(t, path, []byte(config("{ b = 2 }")))
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	out := pool("list", "-users")
	for _, want := range []string{"pool mx (affinity_ttl 1h0m0s)", "a        0       1           drained", "b        2       2           up", "c        1       1           up", ua} {
		if !strings.Contains(out, want) {
			t.Errorf("list does not say %q:\n%s", want, out)
		}
	}
	code, _, errOut := run(t.Context(), "pool", "-config", path, "drain", "mx", "nope")
	if code == 0 || !strings.Contains(errOut, `no [[backend]] "nope"`) {
		t.Errorf("drain of an unknown backend: %d, %q", code, errOut)
	}
}
