package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// routedDomains is a live routing table for the tests: domains can be added
// while the server runs, as a reloaded map file would.
type routedDomains struct {
	mu sync.Mutex
	m  map[string]bool
}

func (r *routedDomains) has(d string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[d]
}

func (r *routedDomains) add(d string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[d] = true
}

// newOnDemandServer is newACMEServer with AllowHost from RouteNames over
// routes with the default patterns.
func newOnDemandServer(t *testing.T, routes *routedDomains, retry time.Duration) (*Server, *fakeACME) {
	t.Helper()
	allow, err := RouteNames([]string{"pop.{domain}", "mail.{domain}"}, routes.has)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{ACME: &ACMEConfig{
		Domains:      []string{"pop.provider.example"},
		CacheDir:     filepath.Join(t.TempDir(), "acme"),
		DirectoryURL: "http://127.0.0.1:1/directory",
		AllowHost:    allow,
		OrderRetry:   retry,
	}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeACME{t: t, certs: map[seenKey]*tls.Certificate{}, a: srv.acme}
	srv.acme.get, srv.acme.stored = f.get, f.stored
	return srv, f
}

func count(names []string, name string) int {
	n := 0
	for _, x := range names {
		if x == name {
			n++
		}
	}
	return n
}

// TestOnDemandPolicy: a name under a routed domain is ordered once (later
// handshakes reuse it); unrelated names, unrouted domains and bad names
// never reach the ACME getter and get the default certificate; a domain
// added to the live table is picked up without a restart.
func TestOnDemandPolicy(t *testing.T) {
	routes := &routedDomains{m: map[string]bool{"customer.test": true}}
	srv, f := newOnDemandServer(t, routes, 0)
	get := srv.TLSConfig().GetCertificate

	for range 3 {
		c, err := get(&tls.ClientHelloInfo{ServerName: "Pop.Customer.TEST."})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Leaf.DNSNames[0]; got != "pop.customer.test" {
			t.Errorf("pop.customer.test served %q", got)
		}
	}
	if len(f.certs) != 1 || f.certs[seenKey{"pop.customer.test", false}] == nil {
		t.Errorf("orders placed: %v, want exactly one for pop.customer.test", f.names())
	}
	if c, err := get(&tls.ClientHelloInfo{ServerName: "mail.customer.test"}); err != nil || c.Leaf.DNSNames[0] != "mail.customer.test" {
		t.Errorf("mail.customer.test: %v, %v", c, err)
	}

	before := f.names()
	for _, sni := range []string{
		"imap.customer.test",     // no such pattern
		"pop.other.test",         // domain not routed
		"customer.test",          // bare domain
		"pop.pop.customer.test",  // domain "pop.customer.test" not routed
		"x.pop.customer.test",    // deeper name
		"pop.customer.test.evil", // suffix
		"pop.cust_omer.test",     // not a host name
		"pop.*.test",
	} {
		c, err := get(&tls.ClientHelloInfo{ServerName: sni})
		if err != nil {
			t.Fatalf("%s: %v", sni, err)
		}
		if got := c.Leaf.DNSNames[0]; got != "pop.provider.example" {
			t.Errorf("%s served %q, want the default certificate", sni, got)
		}
	}
	// The default certificate is an ACME one (pop.provider.example); only
	// it may have been asked for.
	for _, n := range f.names()[len(before):] {
		if n != "pop.provider.example" {
			t.Errorf("a name outside the policy reached ACME: %q", n)
		}
	}
	for _, host := range []string{"pop.other.test", "imap.customer.test"} {
		if err := srv.acme.hostPolicy(context.Background(), host); err == nil {
			t.Errorf("autocert host policy allows %q", host)
		}
	}
	for _, host := range []string{"pop.customer.test", "POP.PROVIDER.EXAMPLE"} {
		if err := srv.acme.hostPolicy(context.Background(), host); err != nil {
			t.Errorf("autocert host policy refuses %q: %v", host, err)
		}
	}

	routes.add("new.test")
	if c, err := get(&tls.ClientHelloInfo{ServerName: "pop.new.test"}); err != nil || c.Leaf.DNSNames[0] != "pop.new.test" {
		t.Errorf("pop.new.test after its domain was routed: %v, %v", c, err)
	}
}

// TestOnDemandRateLimit: after a failed order, handshakes for the name fail
// without a new order until the retry period has passed; other names and
// the explicit domains are not held back.
func TestOnDemandRateLimit(t *testing.T) {
	routes := &routedDomains{m: map[string]bool{"customer.test": true, "other.test": true}}
	srv, f := newOnDemandServer(t, routes, time.Hour)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	srv.acme.limiter.now = func() time.Time { return now }
	get := srv.TLSConfig().GetCertificate

	f.mu.Lock()
	f.fail = errors.New("rateLimited: too many failed authorizations")
	f.mu.Unlock()
	for range 5 {
		if _, err := get(&tls.ClientHelloInfo{ServerName: "pop.customer.test"}); err == nil {
			t.Fatal("handshake with a failing order succeeded")
		}
	}
	if n := count(f.names(), "pop.customer.test"); n != 1 {
		t.Errorf("5 handshakes after a failure placed %d orders, want 1", n)
	}
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	now = now.Add(59 * time.Minute)
	if _, err := get(&tls.ClientHelloInfo{ServerName: "pop.customer.test"}); err == nil || !strings.Contains(err.Error(), "no new order before") {
		t.Errorf("within the retry period: %v, want a held-back order", err)
	}
	if _, err := get(&tls.ClientHelloInfo{ServerName: "pop.other.test"}); err != nil {
		t.Errorf("another name is held back too: %v", err)
	}
	if n := count(f.names(), "pop.customer.test"); n != 1 {
		t.Errorf("orders within the retry period: %d, want still 1", n)
	}
	now = now.Add(time.Minute)
	c, err := get(&tls.ClientHelloInfo{ServerName: "pop.customer.test"})
	if err != nil || c.Leaf.DNSNames[0] != "pop.customer.test" {
		t.Fatalf("after the retry period: %v, %v", c, err)
	}
	if n := count(f.names(), "pop.customer.test"); n != 2 {
		t.Errorf("orders after the retry period: %d, want 2", n)
	}
	// Success clears the record: a later failure starts a new period.
	if _, ok := srv.acme.limiter.blocked(seenKey{"pop.customer.test", false}); ok {
		t.Error("name still held back after a successful order")
	}
}

// TestOrderLimiterBounded: the failure memory never exceeds its cap.
func TestOrderLimiterBounded(t *testing.T) {
	l := newOrderLimiter(0)
	if l.retry != DefaultOrderRetry {
		t.Errorf("retry = %v, want %v", l.retry, DefaultOrderRetry)
	}
	for i := range maxFailedNames + 100 {
		l.fail(seenKey{fmt.Sprintf("pop.d%d.test", i), false}, time.Hour)
	}
	if n := l.failed.Len(); n > maxFailedNames {
		t.Errorf("%d names remembered, cap %d", n, maxFailedNames)
	}
}

func TestCheckNamePattern(t *testing.T) {
	for _, p := range []string{"pop.{domain}", "mail.{domain}", "pop3.mx-1.{domain}", "POP.{domain}"} {
		if err := CheckNamePattern(p); err != nil {
			t.Errorf("CheckNamePattern(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "pop", "{domain}", "pop{domain}", "pop.{domain}.{domain}", "{domain}.pop",
		"*.{domain}", "-pop.{domain}", "pop..{domain}", ".{domain}", "po_p.{domain}", "pop.{DOMAIN}", "pop.{domain}x"} {
		if err := CheckNamePattern(p); err == nil {
			t.Errorf("CheckNamePattern(%q) = nil, want an error", p)
		}
	}
	if _, err := RouteNames([]string{"pop.{domain}", "*.{domain}"}, func(string) bool { return true }); err == nil {
		t.Error("RouteNames with a wildcard pattern succeeded")
	}
	allow, err := RouteNames([]string{"pop.{domain}"}, func(d string) bool { return d == "example.com" })
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"pop.example.com": true, "POP.Example.com.": true, "mail.example.com": false, "pop.example.org": false, "pop.": false} {
		if got := allow(name); got != want {
			t.Errorf("allow(%q) = %v, want %v", name, got, want)
		}
	}
}
