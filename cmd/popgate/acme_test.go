package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const listenTLS = "[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n\n"

func TestParseConfigACME(t *testing.T) {
	base := listenTLS + backendB + routeB
	c, err := ParseConfig("acme", []byte(base+`[tls]
default_server_name = "Mail.Example.com."
[tls.acme]
domains = ["mail.example.com", "pop.example.org"]
email = "postmaster@example.com"
cache_dir = "/var/lib/popgate/acme"
directory_url = "https://acme-staging-v02.api.letsencrypt.org/directory"
ca_file = "/etc/popgate/acme-ca.pem"
tls_alpn_challenge = ":443"
renew_before = "720h"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.TLS.ACME.tlsconf(nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.AllowHost != nil {
		t.Error("AllowHost set without domains_from_routes")
	}
	if len(a.Domains) != 2 || a.CacheDir != "/var/lib/popgate/acme" || a.HTTPChallenge != ":80" ||
		a.TLSALPNChallenge != ":443" || a.RenewBefore != 720*time.Hour || a.CAFile == "" || a.Email == "" {
		t.Errorf("tls.acme = %+v", a)
	}
	if a.OrderBudget != 100 || a.OrderBudgetPeriod != 3*time.Hour || a.OrderBudgetReserve != 0 {
		t.Errorf("order budget defaults: %d per %v, reserve %d; want 100 per 3h, tlsconf's default reserve",
			a.OrderBudget, a.OrderBudgetPeriod, a.OrderBudgetReserve)
	}
	for _, tc := range []struct {
		keys    string
		budget  int
		period  time.Duration
		reserve int
	}{
		{"order_budget = 40\norder_budget_period = \"1h\"\norder_budget_reserve = 5\n", 40, time.Hour, 5},
		{"order_budget_reserve = 0\n", 100, 3 * time.Hour, -1},
		{"directory_url = \"https://ca.internal/dir\"\norder_budget = 1000\n", 1000, 3 * time.Hour, 0},
	} {
		c, err := ParseConfig("acme", []byte(base+"[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = \"/c\"\n"+tc.keys))
		if err != nil {
			t.Errorf("%q: %v", tc.keys, err)
			continue
		}
		if a, _ := c.TLS.ACME.tlsconf(nil); a.OrderBudget != tc.budget || a.OrderBudgetPeriod != tc.period || a.OrderBudgetReserve != tc.reserve {
			t.Errorf("%q: order budget %d per %v, reserve %d; want %d per %v, %d", tc.keys,
				a.OrderBudget, a.OrderBudgetPeriod, a.OrderBudgetReserve, tc.budget, tc.period, tc.reserve)
		}
	}
	c, err = ParseConfig("ask", []byte(listenTLS+backendB+"[route]\ndefault = \"b\"\ndomains = { \"example.org\" = \"b\" }\n\n"+
		"[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ndomains_from_routes = true\n"+
		"ask_url = \"http://127.0.0.1:8080/may-order?key=k\"\nask_timeout = \"2s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := c.TLS.ACME.tlsconf(func(string) bool { return true }); a.AskURL != "http://127.0.0.1:8080/may-order?key=k" || a.AskTimeout != 2*time.Second {
		t.Errorf("ask_url, ask_timeout = %q, %v", a.AskURL, a.AskTimeout)
	}
	if total, perIP := c.TLS.ACME.MaxChallengeConns, c.TLS.ACME.MaxChallengeConnsPerIP; total != 256 || perIP != 16 {
		t.Errorf("challenge caps without the keys = %d, %d per address; want 256, 16", total, perIP)
	}
	c, err = ParseConfig("acme", []byte(base+"[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nmax_challenge_connections = 1000\nmax_challenge_connections_per_ip = 4\n"))
	if err != nil {
		t.Fatal(err)
	}
	if total, perIP := c.TLS.ACME.MaxChallengeConns, c.TLS.ACME.MaxChallengeConnsPerIP; total != 1000 || perIP != 4 {
		t.Errorf("challenge caps = %d, %d per address; want 1000, 4", total, perIP)
	}
	c, err = ParseConfig("acme", []byte(base+"[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nhttp_challenge = \"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := c.TLS.ACME.tlsconf(nil); a.HTTPChallenge != "" {
		got := a.HTTPChallenge
		t.Errorf("http_challenge = \"\" gives %q, want disabled", got)
	}

	for _, tc := range []struct{ name, acme, key string }{
		{"no domains", "cache_dir = \"/c\"\n", "tls.acme.domains"},
		{"wildcard", "domains = [\"*.example.com\"]\ncache_dir = \"/c\"\n", "tls.acme.domains[0]"},
		{"dotless", "domains = [\"localhost\"]\ncache_dir = \"/c\"\n", "tls.acme.domains[0]"},
		{"ip", "domains = [\"192.0.2.1\"]\ncache_dir = \"/c\"\n", "tls.acme.domains[0]"},
		{"no cache", "domains = [\"mail.example.com\"]\n", "tls.acme.cache_dir"},
		{"bad url", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ndirectory_url = \"acme.example.com\"\n", "tls.acme.directory_url"},
		{"bad email", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nemail = \"postmaster\"\n", "tls.acme.email"},
		{"bad http port", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nhttp_challenge = \":99999\"\n", "tls.acme.http_challenge"},
		{"bad alpn addr", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ntls_alpn_challenge = \"443\"\n", "tls.acme.tls_alpn_challenge"},
		{"same addr", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nhttp_challenge = \":8000\"\ntls_alpn_challenge = \":8000\"\n", "tls.acme"},
		{"unknown key", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nstaging = true\n", "tls.acme.staging"},
		{"bad renew_before", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nrenew_before = \"a month\"\n", "renew_before"},
		{"zero budget", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget = 0\n", "tls.acme.order_budget"},
		{"short budget period", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget_period = \"10s\"\n", "tls.acme.order_budget_period"},
		{"reserve too large", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget = 10\norder_budget_reserve = 10\n", "tls.acme.order_budget_reserve"},
		{"negative reserve", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget_reserve = -1\n", "tls.acme.order_budget_reserve"},
		{"above Let's Encrypt", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget = 301\n", "tls.acme.order_budget"},
		{"ask without routes", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nask_url = \"http://127.0.0.1:8080/ask\"\n", "tls.acme.ask_url"},
		{"ask with credentials", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ndomains_from_routes = true\nask_url = \"http://u:p@127.0.0.1:8080/ask\"\n", "tls.acme.ask_url"},
		{"ask not http", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ndomains_from_routes = true\nask_url = \"127.0.0.1:8080\"\n", "tls.acme.ask_url"},
		{"ask_timeout alone", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nask_timeout = \"2s\"\n", "tls.acme.ask_timeout"},
		{"ask_timeout too long", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\ndomains_from_routes = true\nask_url = \"http://127.0.0.1:8080/ask\"\nask_timeout = \"5m\"\n", "tls.acme.ask_timeout"},
		{"above Let's Encrypt's rate", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\norder_budget = 200\norder_budget_period = \"1h\"\n", "tls.acme.order_budget"},
		{"zero challenge cap", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nmax_challenge_connections = 0\n", "tls.acme.max_challenge_connections:"},
		{"negative per-ip cap", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nmax_challenge_connections_per_ip = -1\n", "tls.acme.max_challenge_connections_per_ip:"},
		{"per-ip over total", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nmax_challenge_connections = 8\nmax_challenge_connections_per_ip = 9\n", "tls.acme.max_challenge_connections_per_ip: 9"},
		{"per-ip over default total", "domains = [\"mail.example.com\"]\ncache_dir = \"/c\"\nmax_challenge_connections_per_ip = 300\n", "tls.acme.max_challenge_connections_per_ip: 300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.name, []byte(base+"[tls.acme]\n"+tc.acme))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("ParseConfig(%q) = %v, want an error naming %q", tc.acme, err, tc.key)
			}
		})
	}
	_, err = ParseConfig("default", []byte(base+"[tls]\ndefault_server_name = \"other.example.com\"\n[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = \"/c\"\n"))
	if err == nil || !strings.Contains(err.Error(), "tls.default_server_name") {
		t.Errorf("default_server_name outside tls.acme.domains: %v, want an error naming it", err)
	}
}

// TestServeACMEChallenges: serve binds the challenge answerers of
// [tls.acme], answers 404 for anything but a challenge on the HTTP-01 one,
// creates the cache directory 0700, and stops them with the server.
func TestServeACMEChallenges(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "acme")
	httpAddr, alpnAddr := freeAddr(t), freeAddr(t)
	toml := fmt.Sprintf(`%s%s%s[tls.acme]
domains = ["mail.example.com"]
cache_dir = %q
directory_url = "http://127.0.0.1:1/directory"
http_challenge = %q
tls_alpn_challenge = %q
`, listenTLS, backendB, routeB, cache, httpAddr, alpnAddr)
	c, err := ParseConfig("acme", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	var logs syncWriter
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	in, err := build(c, log)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cache); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache_dir: %v, %v; want a directory with mode 0700", fi, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, in, log, time.Second) }()
	var resp *http.Response
	for i := 0; ; i++ {
		resp, err = http.Get("http://" + httpAddr + "/index.html")
		if err == nil || i == 100 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET from the HTTP-01 answerer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /index.html from the HTTP-01 answerer = %s, want 404", resp.Status)
	}
	resp, err = http.Get("http://" + httpAddr + "/.well-known/acme-challenge/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("GET an unknown token = %s, want an error status", resp.Status)
	}
	if c, err := net.Dial("tcp", alpnAddr); err != nil {
		t.Errorf("TLS-ALPN-01 answerer not listening: %v", err)
	} else {
		c.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	if c, err := net.Dial("tcp", httpAddr); err == nil {
		c.Close()
		t.Errorf("HTTP-01 answerer still listening after serve returned")
	}
	if want := planFDs(fdLimit(), c); fdLimit() > 0 && !strings.Contains(logs.String(),
		fmt.Sprintf(`"msg":"file descriptor budget","limit":%d,"reserve":%d,"acme_challenges":%d,"pop3_sessions":%d`,
			want.Limit, fdReserve, want.Challenges, want.pop3Sessions())) {
		t.Errorf("no file descriptor budget line (want %+v) in the log:\n%s", want, logs.String())
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestExampleConfigACME: the commented [tls.acme] block of
// config.example.toml is valid once uncommented.
func TestExampleConfigACME(t *testing.T) {
	data, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "# [tls.acme]" {
			in = true
		} else if in && !strings.HasPrefix(line, "# ") {
			break
		}
		if in {
			block = append(block, strings.TrimPrefix(line, "# "))
		}
	}
	if len(block) < 5 {
		t.Fatalf("config.example.toml has no commented [tls.acme] block")
	}
	routes := routeB + "[route.domains]\n\"example.org\" = \"b\"\n\n" // for domains_from_routes
	c, err := ParseConfig("example acme", []byte(listenTLS+backendB+routes+strings.Join(block, "\n")+"\n"))
	if err != nil {
		t.Fatalf("the [tls.acme] block of config.example.toml: %v", err)
	}
	if a := c.TLS.ACME; a == nil || len(a.ACME.Domains) == 0 || a.ACME.TLSALPNChallenge == "" || a.ACME.CAFile == "" || a.ACME.RenewBefore == 0 ||
		a.RouteNamePatterns == nil {
		t.Errorf("[tls.acme] from the example = %+v, want every key", a)
	}
}

// TestACMEDomainsFromRoutes: tls.acme.domains_from_routes with the default
// and custom patterns, the policy built from route.domains and the live map
// file, and the validation of the new keys.
func TestACMEDomainsFromRoutes(t *testing.T) {
	dir := t.TempDir()
	mapPath := filepath.Join(dir, "routes")
	writeFile(t, mapPath, []byte("@mapped.test b\n"))
	routes := fmt.Sprintf("[route]\ndefault = \"b\"\nmap_file = %q\n[route.domains]\n\"@Customer.Test\" = \"b\"\n\n", mapPath)
	base := listenTLS + backendB + routes
	acmeBase := "[tls.acme]\ndomains = [\"mail.provider.example\"]\ncache_dir = \"/c\"\ndomains_from_routes = true\n"

	c, err := ParseConfig("routes", []byte(base+acmeBase))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.TLS.ACME.RouteNamePatterns; !slices.Equal(got, []string{"pop.{domain}", "mail.{domain}"}) {
		t.Errorf("default route_name_patterns = %q", got)
	}
	in, err := build(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if in.mapFile == nil {
		t.Fatal("no map file loaded")
	}
	a, err := c.TLS.ACME.tlsconf(in.hasDomain)
	if err != nil {
		t.Fatal(err)
	}
	check := func(want map[string]bool) {
		t.Helper()
		for name, w := range want {
			if got := a.AllowHost(name); got != w {
				t.Errorf("AllowHost(%q) = %v, want %v", name, got, w)
			}
		}
	}
	check(map[string]bool{
		"pop.customer.test": true, "mail.customer.test": true, "pop.mapped.test": true,
		"imap.customer.test": false, "pop.other.test": false, "customer.test": false, "pop.new.test": false,
	})
	writeFile(t, mapPath, []byte("@new.test b\n"))
	if err := in.mapFile.Reload(); err != nil {
		t.Fatal(err)
	}
	check(map[string]bool{"pop.new.test": true, "pop.mapped.test": false, "pop.customer.test": true})

	c, err = ParseConfig("patterns", []byte(base+acmeBase+"route_name_patterns = [\"pop3.{domain}\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if in, err = build(c, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if a, err = c.TLS.ACME.tlsconf(in.hasDomain); err != nil {
		t.Fatal(err)
	}
	check(map[string]bool{"pop3.customer.test": true, "pop.customer.test": false})

	for _, tc := range []struct{ name, routes, acme, key string }{
		{"no brace", routes, acmeBase + "route_name_patterns = [\"pop.example.com\"]\n", "tls.acme.route_name_patterns[0]"},
		{"twice", routes, acmeBase + "route_name_patterns = [\"pop.{domain}\", \"{domain}.{domain}\"]\n", "tls.acme.route_name_patterns[1]"},
		{"bare", routes, acmeBase + "route_name_patterns = [\"{domain}\"]\n", "tls.acme.route_name_patterns[0]"},
		{"wildcard", routes, acmeBase + "route_name_patterns = [\"*.{domain}\"]\n", "tls.acme.route_name_patterns[0]"},
		{"not last", routes, acmeBase + "route_name_patterns = [\"{domain}.pop\"]\n", "tls.acme.route_name_patterns[0]"},
		{"bad label", routes, acmeBase + "route_name_patterns = [\"po p.{domain}\"]\n", "tls.acme.route_name_patterns[0]"},
		{"empty list", routes, acmeBase + "route_name_patterns = []\n", "tls.acme.route_name_patterns"},
		{"patterns without flag", routes, "[tls.acme]\ndomains = [\"mail.provider.example\"]\ncache_dir = \"/c\"\nroute_name_patterns = [\"pop.{domain}\"]\n", "tls.acme.domains_from_routes"},
		{"no routing domains", routeB, acmeBase, "tls.acme.domains_from_routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.name, []byte(listenTLS+backendB+tc.routes+tc.acme))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("ParseConfig(%q) = %v, want an error naming %q", tc.acme, err, tc.key)
			}
		})
	}
}
