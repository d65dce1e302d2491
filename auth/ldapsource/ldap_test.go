package ldapsource

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dirrun"
)

// plainChecker checks {PLAIN} hashes only.
type plainChecker struct{}

func (plainChecker) Check(_ context.Context, hash string, pw auth.Password) error {
	p, ok := strings.CutPrefix(hash, "{PLAIN}")
	switch {
	case !ok:
		return errors.New("unknown scheme")
	case p != string(pw):
		return auth.ErrPasswordMismatch
	}
	return nil
}

// people are the test directory's entries. The attributes beyond mail, mailHost and
// userPassword are inetOrgPerson's, standing in for a site's own: the
// backend's name in departmentNumber, the backend login in carLicense, the
// master password in roomNumber, enabled in employeeType.
var people = `dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice
sn: Example
mail: alice@example.com
mailHost: 127.0.0.1

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
mail: bob@example.org
departmentNumber: stls

dn: uid=carol,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: carol
cn: Carol
sn: Example
mail: carol@example.net
mailHost: 127.0.0.1
carLicense: carol@example.net*master
roomNumber: Master-pw
userPassword: {PLAIN}Carol-pw

dn: uid=dave,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: dave
cn: Dave
sn: Example
mail: dave@example.com
mailHost: 127.0.0.1
employeeType: FALSE

dn: uid=twin1,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin1
cn: Twin
sn: Example
mail: twin@example.com
departmentNumber: stls

dn: uid=twin2,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin2
cn: Twin
sn: Example
mail: twin@example.com
departmentNumber: stls

dn: uid=multi,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: multi
cn: Multi
sn: Example
mail: multi@example.com
departmentNumber: stls
departmentNumber: template

dn: uid=crlf,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: crlf
cn: CRLF
sn: Example
mail: crlf@example.com
mailHost: 127.0.0.1
carLicense:: Y3JsZkBleGFtcGxlLmNvbQ0KREVMRSAx
roomNumber: x
userPassword: {PLAIN}x

dn: uid=huge,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: huge
cn: Huge
sn: Example
mail: huge@example.com
mailHost: 127.0.0.1
title: ` + strings.Repeat("t", 4096) + `
description: ` + strings.Repeat("d", 100<<10) + `

dn: uid=badhost,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: badhost
cn: Badhost
sn: Example
mail: badhost@example.com
mailHost: evil.example.com:25 x

dn: cn=elsewhere,ou=people,dc=example,dc=com
objectClass: referral
objectClass: extensibleObject
cn: elsewhere
ref: ldap://192.0.2.1/ou=people,dc=example,dc=com
`

// startDir starts a slapd with people in it, stopped when t ends.
func startDir(t testing.TB) *dirrun.Slapd {
	t.Helper()
	s := dirrun.SlapdFor(t)
	if err := s.Add(people); err != nil {
		t.Fatal(err)
	}
	return s
}

// caConfig trusts the slapd's CA for the name "localhost".
func caConfig(t testing.TB, caFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in", caFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// testConfig is a Config for s: StartTLS, the hash-reading account, every
// attribute of people.
func testConfig(t testing.TB, s *dirrun.Slapd) Config {
	return Config{
		URL:          s.URL(),
		TLSConfig:    caConfig(t, s.CAFile),
		BindDN:       dirrun.HashBindDN,
		BindPassword: dirrun.Password,
		Base:         dirrun.PeopleDN,
		Scope:        ldap.ScopeWholeSubtree,
		Filter:       "(&(objectClass=inetOrgPerson)(mail=%u))",
		Attributes: Attributes{
			Backend: "departmentNumber", Host: "mailHost", Login: "carLicense",
			Password: "roomNumber", PasswordHash: "userPassword", Enabled: "employeeType",
		},
		Port:    "110",
		Timeout: 2 * time.Second,
		Directory: auth.Directory{
			Source:       "route.ldap",
			Backend:      "template",
			KnownBackend: func(b string) bool { return b == "stls" || b == "template" },
			Hashes:       plainChecker{},
		},
	}
}

func newSource(t *testing.T, cfg Config) *Source {
	t.Helper()
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func request(user, pass string) *auth.Request {
	return &auth.Request{Credentials: auth.Credentials{User: user, Password: auth.Password(pass), Method: "USER"}}
}

func TestDecide(t *testing.T) {
	s := startDir(t)
	var mu sync.Mutex
	seen := map[string]int{}
	cfg := testConfig(t, s)
	cfg.Observer = func(source, result string, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if source != "route.ldap" || took <= 0 {
			t.Errorf("observer(%q, %q, %v)", source, result, took)
		}
		seen[result]++
	}
	src := newSource(t, cfg)
	tests := []struct {
		user, pass string
		want       auth.Decision
		err        string // in the error; "" for none
		denied     bool   // a *auth.DeniedError
		noRoute    bool
	}{
		{user: "alice@example.com", pass: "a",
			want: auth.Decision{Backend: "template", Address: "127.0.0.1:110", User: "alice@example.com", Password: "a"}},
		{user: "ALICE@Example.COM", pass: "a", // mail matches without regard to case
			want: auth.Decision{Backend: "template", Address: "127.0.0.1:110", User: "ALICE@Example.COM", Password: "a"}},
		{user: "bob@example.org", pass: "b",
			want: auth.Decision{Backend: "stls", User: "bob@example.org", Password: "b"}},
		{user: "carol@example.net", pass: "Carol-pw",
			want: auth.Decision{Backend: "template", Address: "127.0.0.1:110", User: "carol@example.net*master", Password: "Master-pw"}},
		{user: "carol@example.net", pass: "wrong", denied: true},
		{user: "dave@example.com", pass: "d", denied: true},
		{user: "nobody@example.com", pass: "n", noRoute: true},
		{user: "twin@example.com", pass: "t", err: "more than one entry"},
		{user: "multi@example.com", pass: "m", err: "has 2 values"},
		{user: "crlf@example.com", pass: "x", err: "unusable login"},
		{user: "huge@example.com", pass: "h", // title and description are not asked for
			want: auth.Decision{Backend: "template", Address: "127.0.0.1:110", User: "huge@example.com", Password: "h"}},
		{user: "badhost@example.com", pass: "h", err: "neither an IP address nor a host name"},
	}
	for _, tc := range tests {
		dec, err := src.Decide(t.Context(), request(tc.user, tc.pass))
		var de *auth.DeniedError
		switch {
		case tc.noRoute:
			if !errors.Is(err, auth.ErrNoRoute) {
				t.Errorf("%s: %+v, %v; want ErrNoRoute", tc.user, dec, err)
			}
		case tc.denied:
			if !errors.As(err, &de) {
				t.Errorf("%s: %+v, %v; want a refusal", tc.user, dec, err)
			}
		case tc.err != "":
			if err == nil || errors.As(err, &de) || errors.Is(err, auth.ErrNoRoute) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %+v, %v; want an error with %q", tc.user, dec, err, tc.err)
			}
		case err != nil || dec != tc.want:
			t.Errorf("%s: %+v, %v; want %+v", tc.user, dec, err, tc.want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[auth.LookupFound] == 0 || seen[auth.LookupNotFound] != 1 || seen[auth.LookupError] == 0 {
		t.Errorf("observed %v", seen)
	}
	if ps := src.PoolStats(); ps.InUse != 0 || ps.Idle < 1 || ps.Idle > defaultConnections {
		t.Errorf("PoolStats = %+v", ps)
	}
}

// TestHostileDirectory: values too long for a login, an answer too large
// to read, referrals: errors, never a login, and the source keeps working.
func TestHostileDirectory(t *testing.T) {
	s := startDir(t)
	for _, tc := range []struct {
		host, err string
	}{
		{"title", "longer than 1024 bytes"},
		{"description", "more than 65536 bytes"},
	} {
		cfg := testConfig(t, s)
		cfg.Attributes.Host = tc.host
		cfg.Connections = 1
		src := newSource(t, cfg)
		dec, err := src.Decide(t.Context(), request("huge@example.com", "h"))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("host attribute %s: %+v, %v; want an error with %q", tc.host, dec, err, tc.err)
		}
		if _, err := src.Decide(t.Context(), request("bob@example.org", "b")); err != nil {
			t.Errorf("host attribute %s: the next lookup: %v", tc.host, err)
		}
	}

	// The referral object under ou=people is a continuation reference
	// in every subtree search: ignored, never followed.
	src := newSource(t, testConfig(t, s))
	if dec, err := src.Decide(t.Context(), request("bob@example.org", "b")); err != nil || dec.Backend != "stls" {
		t.Errorf("beside a referral: %+v, %v", dec, err)
	}
	// A base at the referral: the server answers with a referral.
	cfg := testConfig(t, s)
	cfg.Base = "cn=elsewhere," + dirrun.PeopleDN
	src = newSource(t, cfg)
	if _, err := src.Decide(t.Context(), request("bob@example.org", "b")); err == nil || !strings.Contains(err.Error(), "referral") {
		t.Errorf("base at a referral: %v, want an error about the referral", err)
	}
	// A base that does not exist.
	cfg.Base = "ou=nowhere," + dirrun.Suffix
	src = newSource(t, cfg)
	if _, err := src.Decide(t.Context(), request("bob@example.org", "b")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing base: %v", err)
	}
}

// TestInjection: names made to widen the filter match nothing; names that
// cannot be relayed are refused before the directory is asked.
func TestInjection(t *testing.T) {
	s := startDir(t)
	src := newSource(t, testConfig(t, s))
	for _, user := range []string{
		"*", "*)(uid=*", "*)(|(uid=*", ")(|(uid=*", `\2a`, `\2a)(uid=\2a`, "alice@example.com)(mail=*",
		"*@example.com", "alice@example.com\\", "(", ")", "(&)", "(|)", "alice*", "*)(objectClass=*))(&(mail=*",
		"alïce@example.com", "\xff\xfe", strings.Repeat("*", 1000),
	} {
		dec, err := src.Decide(t.Context(), request(user, "p"))
		if !errors.Is(err, auth.ErrNoRoute) {
			t.Errorf("%q: %+v, %v; want ErrNoRoute", user, dec, err)
		}
		if _, _, found, err := src.Lookup(t.Context(), user); found || err != nil {
			t.Errorf("Lookup(%q) = %v, %v; want not found", user, found, err)
		}
	}
	for _, user := range []string{"alice@example.com\x00", "\x00", "alice@example.com\r\n(uid=*)", strings.Repeat("a", 2048)} {
		dec, err := src.Decide(t.Context(), request(user, "p"))
		if err == nil || dec != (auth.Decision{}) {
			t.Errorf("%.40q: %+v, %v; want an error", user, dec, err)
		}
	}
	// The directory still answers.
	if dec, err := src.Decide(t.Context(), request("alice@example.com", "a")); err != nil || dec.Address != "127.0.0.1:110" {
		t.Errorf("alice after the attempts: %+v, %v", dec, err)
	}
}

func TestEscape(t *testing.T) {
	parts, err := parseFilter("(&(objectClass=inetOrgPerson)(|(mail=%u)(&(uid=%n)(associatedDomain=%d)))(cn=100%%))")
	if err != nil {
		t.Fatal(err)
	}
	got := makeFilter(parts, "a*b(c)\\d\x00e\xc3\xa9@x*.org")
	want := `(&(objectClass=inetOrgPerson)(|(mail=a\2ab\28c\29\5cd\00e\c3\a9@x\2a.org)(&(uid=a\2ab\28c\29\5cd\00e\c3\a9)(associatedDomain=x\2a.org)))(cn=100%))`
	if got != want {
		t.Errorf("makeFilter =\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []string{"", "(mail=alice)", "(mail=%u", "(mail=%x)", "(mail=%u)%", "mail=%u)"} {
		if _, err := parseFilter(bad); err == nil {
			t.Errorf("parseFilter(%q) accepted", bad)
		}
	}
}

// TestOutage: the directory stopped is an error within the timeout, with
// no connection or goroutine left behind; started again, the next lookup
// works without a new Source. A directory that stops answering (SIGSTOP)
// is an error within the timeout too.
func TestOutage(t *testing.T) {
	s := startDir(t)
	before := runtime.NumGoroutine()
	cfg := testConfig(t, s)
	cfg.Timeout = time.Second
	cfg.Connections = 3
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	decide := func() error {
		_, err := src.Decide(t.Context(), request("bob@example.org", "b"))
		return err
	}
	// Fill the pool: three lookups at once.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := decide(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ps := src.PoolStats(); ps.Idle == 0 || ps.InUse != 0 {
		t.Errorf("PoolStats = %+v", ps)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		start := time.Now()
		err := decide()
		if err == nil || errors.Is(err, auth.ErrNoRoute) {
			t.Fatalf("directory stopped: %v, want an error", err)
		}
		if took := time.Since(start); took > cfg.Timeout+2*time.Second {
			t.Errorf("directory stopped: the error took %v (timeout %v)", took, cfg.Timeout)
		}
	}
	if ps := src.PoolStats(); ps.Idle != 0 || ps.InUse != 0 {
		t.Errorf("directory stopped: PoolStats = %+v, want nothing open", ps)
	}

	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := decide(); err != nil {
		t.Fatalf("first lookup after the directory came back: %v", err)
	}

	// A reused connection whose server went away and came back between
	// two lookups: the lookup is tried again on a new connection.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := decide(); err != nil {
		t.Fatalf("first lookup after a restart: %v", err)
	}

	// A directory that hangs: the lookup gives up at the timeout.
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// kill returns before every thread has stopped: wait for the state
	// to say so.
	for deadline := time.Now().Add(5 * time.Second); !stopped(t, pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("slapd does not stop on SIGSTOP")
		}
	}
	start := time.Now()
	err = decide()
	took := time.Since(start)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "deadline") && !strings.Contains(err.Error(), "timeout") {
		t.Errorf("hung directory: %v, want a timeout", err)
	}
	if took > cfg.Timeout+2*time.Second {
		t.Errorf("hung directory: the error took %v (timeout %v)", took, cfg.Timeout)
	}
	if err := decide(); err != nil {
		t.Fatalf("after the directory resumed: %v", err)
	}

	src.Close()
	if ps := src.PoolStats(); ps.Idle != 0 || ps.InUse != 0 {
		t.Errorf("after Close: PoolStats = %+v", ps)
	}
	// After Close the source still answers, keeping nothing open.
	if err := decide(); err != nil {
		t.Errorf("after Close: %v", err)
	}
	if ps := src.PoolStats(); ps.Idle != 0 || ps.InUse != 0 {
		t.Errorf("lookup after Close: PoolStats = %+v", ps)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the source:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTLS: ldaps:// and StartTLS with the directory's CA; another CA, or
// another name, is refused; plaintext ldap:// only when asked for.
func TestTLS(t *testing.T) {
	s := startDir(t)
	other, err := certgen.NewCA("another CA", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	otherFile := t.TempDir() + "/other.pem"
	if err := other.WriteCert(otherFile); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mod    func(*Config)
		errHas string // "" for a working source
	}{
		{"StartTLS", func(*Config) {}, ""},
		{"ldaps", func(c *Config) { c.URL = s.TLSURL() }, ""},
		{"StartTLS, wrong CA", func(c *Config) { c.TLSConfig = caConfig(t, otherFile) }, "certificate"},
		{"ldaps, wrong CA", func(c *Config) { c.URL, c.TLSConfig = s.TLSURL(), caConfig(t, otherFile) }, "certificate"},
		{"ldaps, wrong name", func(c *Config) { c.URL = s.TLSURL(); c.TLSConfig.ServerName = "ldap.example.com" }, "certificate"},
		{"plaintext", func(c *Config) { c.Plaintext = true }, ""},
		{"wrong bind password", func(c *Config) { c.BindPassword = "Not-the-bind-pw" }, "Invalid Credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, s)
			tc.mod(&cfg)
			src := newSource(t, cfg)
			dec, err := src.Decide(t.Context(), request("bob@example.org", "b"))
			switch {
			case tc.errHas == "" && (err != nil || dec.Backend != "stls"):
				t.Errorf("%+v, %v", dec, err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Errorf("%+v, %v; want an error with %q", dec, err, tc.errHas)
			}
			if err != nil && strings.Contains(err.Error(), string(cfg.BindPassword)) {
				t.Errorf("the error shows the bind password: %v", err)
			}
		})
	}
}

// TestConcurrent: more lookups at once than connections share the pool.
func TestConcurrent(t *testing.T) {
	s := startDir(t)
	cfg := testConfig(t, s)
	cfg.Connections = 2
	src := newSource(t, cfg)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			for range 10 {
				user, want := "bob@example.org", "stls"
				if i%2 == 0 {
					user, want = "alice@example.com", "template"
				}
				dec, err := src.Decide(t.Context(), request(user, "p"))
				if err != nil || dec.Backend != want {
					t.Errorf("%s: %+v, %v", user, dec, err)
					return
				}
				if ps := src.PoolStats(); ps.InUse+ps.Idle > 2 {
					t.Errorf("PoolStats = %+v with 2 connections", ps)
				}
			}
		})
	}
	wg.Wait()
}

// TestLookup: what `popgate route` shows, with no password.
func TestLookup(t *testing.T) {
	s := startDir(t)
	src := newSource(t, testConfig(t, s))
	for _, tc := range []struct {
		user, backend, rule string
		found               bool
	}{
		// A host answer: the entry's address, reached with the template's
		// settings.
		{"alice@example.com", auth.AddressRoute("template", "127.0.0.1:110"), `route.ldap, entry "uid=alice,ou=people,dc=example,dc=com", address 127.0.0.1:110`, true},
		{"bob@example.org", "stls", `entry "uid=bob,ou=people,dc=example,dc=com"`, true},
		{"carol@example.net", auth.AddressRoute("template", "127.0.0.1:110"), `logs in to the backend as "carol@example.net*master", with the directory's password once the client's matches password_hash`, true},
		{"dave@example.com", "", "account disabled", true},
		{"nobody@example.com", "", "", false},
	} {
		b, rule, found, err := src.Lookup(t.Context(), tc.user)
		if err != nil || found != tc.found || b != tc.backend || !strings.Contains(rule, tc.rule) {
			t.Errorf("Lookup(%s) = %q, %q, %v, %v; want %q, %q, %v", tc.user, b, rule, found, err, tc.backend, tc.rule, tc.found)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	base := Config{URL: "ldap://127.0.0.1", TLSConfig: &tls.Config{ServerName: "localhost"}, Base: "dc=x",
		Scope: ldap.ScopeWholeSubtree, Filter: "(mail=%u)", Attributes: Attributes{Backend: "o"}}
	if _, err := New(base); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"http URL", func(c *Config) { c.URL = "http://127.0.0.1" }},
		{"URL with a path", func(c *Config) { c.URL = "ldap://127.0.0.1/dc=x" }},
		{"URL with a user", func(c *Config) { c.URL = "ldap://u:p@127.0.0.1" }},
		{"no TLS config", func(c *Config) { c.TLSConfig = nil }},
		{"plaintext ldaps", func(c *Config) { c.URL, c.Plaintext = "ldaps://127.0.0.1", true }},
		{"password without DN", func(c *Config) { c.BindPassword = "x" }},
		{"bad scope", func(c *Config) { c.Scope = 7 }},
		{"no destination", func(c *Config) { c.Attributes = Attributes{Login: "uid"} }},
		{"password without hash", func(c *Config) { c.Attributes.Password = "p" }},
		{"host without port", func(c *Config) { c.Attributes = Attributes{Host: "mailHost"} }},
		{"bad filter", func(c *Config) { c.Filter = "(mail=%u" }},
	} {
		cfg := base
		tc.mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// dropProxy forwards TCP connections to a server; drop makes every
// connection open so far close as soon as the client sends on it, as a
// server that closed an idle connection (or a firewall that forgot it)
// does, without the client hearing of it before.
type dropProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	conns   []*proxied
	dropped int
}

type proxied struct {
	client, server net.Conn
	drop           atomic.Bool
}

func newDropProxy(t *testing.T, target string) *dropProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.client.Close()
			c.server.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pc := &proxied{client: c, server: s}
			p.mu.Lock()
			p.conns = append(p.conns, pc)
			p.mu.Unlock()
			go func() { io.Copy(c, s); c.Close() }()
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 && pc.drop.Load() {
						p.mu.Lock()
						p.dropped++
						p.mu.Unlock()
						c.Close()
						s.Close()
						return
					}
					if n > 0 {
						if _, err := s.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						s.Close()
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *dropProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.drop.Store(true)
	}
}

// TestDeadIdleConnection: a pooled connection that turns out dead when
// the search is sent is replaced, and the lookup succeeds.
func TestDeadIdleConnection(t *testing.T) {
	s := startDir(t)
	p := newDropProxy(t, s.Addr())
	cfg := testConfig(t, s)
	cfg.URL = "ldap://" + p.ln.Addr().String()
	cfg.Connections = 1
	src := newSource(t, cfg)
	for i := range 3 {
		if _, err := src.Decide(t.Context(), request("bob@example.org", "b")); err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		p.drop()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dropped != 2 {
		t.Errorf("%d connections dropped under a search, want 2", p.dropped)
	}
}

// BenchmarkDecide: one lookup (a search over StartTLS on a pooled
// connection) and its decision, with the time and allocations on
// popgate's side; slapd's CPU is not counted.
func BenchmarkDecide(b *testing.B) {
	s := startDir(b)
	cfg := testConfig(b, s)
	cfg.Attributes.PasswordHash, cfg.Attributes.Password = "", ""
	src, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	req := request("alice@example.com", "a")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := src.Decide(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// FuzzFilter: whatever the user name, the filter keeps the template's
// structure, and the value the server compares is the name itself.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{"alice@example.com", "*", "*)(uid=*", `\2a`, ")(|(uid=*", "\x00", "(", "\\", "a@b@c", "é", "\xff", ""} {
		f.Add(s)
	}
	parts, err := parseFilter("(&(objectClass=inetOrgPerson)(|(mail=%u)(&(uid=%n)(associatedDomain=%d))))")
	if err != nil {
		f.Fatal(err)
	}
	shape := func(p *ber.Packet) string {
		var b strings.Builder
		var walk func(*ber.Packet)
		walk = func(p *ber.Packet) {
			fmt.Fprintf(&b, "(%d/%d/%d", p.ClassType, p.TagType, p.Tag)
			for _, c := range p.Children {
				walk(c)
			}
			b.WriteByte(')')
		}
		walk(p)
		return b.String()
	}
	ref, err := ldap.CompileFilter(makeFilter(parts, "x@y"))
	if err != nil {
		f.Fatal(err)
	}
	want := shape(ref)
	f.Fuzz(func(t *testing.T, user string) {
		p, err := ldap.CompileFilter(makeFilter(parts, user))
		if err != nil {
			t.Fatalf("%q: %v", user, err)
		}
		if got := shape(p); got != want {
			t.Fatalf("%q changes the filter's structure:\n%s\nwant\n%s", user, got, want)
		}
		// (|(mail=VALUE)...): the or's first child, its value.
		mail := p.Children[1].Children[0]
		if v := mail.Children[1].Data.String(); v != user {
			t.Fatalf("%q: the server would compare mail with %q", user, v)
		}
	})
}

// TestGarbage: a server that answers what is not LDAP, or too much of it,
// is an error within the timeout, over StartTLS and in plaintext.
func TestGarbage(t *testing.T) {
	for name, answer := range map[string][]byte{
		"POP3 greeting": []byte("+OK POP3 ready\r\n"),
		"huge length":   {0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x02, 0x01, 0x01},
		"endless":       bytes.Repeat([]byte{0x30, 0x80}, 1<<16),
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					c.Read(make([]byte, 512))
					c.Write(answer)
					io.Copy(io.Discard, c)
				}()
			}
		}()
		for _, plain := range []bool{false, true} {
			cfg := Config{URL: "ldap://" + ln.Addr().String(), Plaintext: plain, TLSConfig: &tls.Config{ServerName: "localhost"},
				Base: dirrun.PeopleDN, Scope: ldap.ScopeWholeSubtree, Filter: "(mail=%u)",
				Attributes: Attributes{Backend: "departmentNumber"}, Timeout: time.Second}
			src := newSource(t, cfg)
			start := time.Now()
			_, err := src.Decide(t.Context(), request("alice@example.com", "a"))
			if err == nil || errors.Is(err, auth.ErrNoRoute) {
				t.Errorf("%s (plaintext %v): %v, want an error", name, plain, err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("%s (plaintext %v): the error took %v, timeout 1s", name, plain, took)
			}
			if ps := src.PoolStats(); ps.Idle != 0 || ps.InUse != 0 {
				t.Errorf("%s: PoolStats = %+v", name, ps)
			}
		}
		ln.Close()
	}
}

// stopped reports whether every thread of process pid is stopped (state
// T in /proc/PID/task/*/stat).
func stopped(t *testing.T, pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) == 0 || f[0] != "T" {
			return false
		}
	}
	return true
}

// BenchmarkCachedDecide: a login answered from the lookup cache in front
// of the source (route.ldap.cache_ttl), the warm path.
func BenchmarkCachedDecide(b *testing.B) {
	s := startDir(b)
	cfg := testConfig(b, s)
	cfg.Attributes.PasswordHash, cfg.Attributes.Password = "", ""
	src, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	c := auth.NewCache(src, 1000, time.Hour, time.Minute, nil)
	chain := &auth.Chain{Sources: []auth.Source{c}}
	req := request("alice@example.com", "a")
	if _, err := chain.Route(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := chain.Route(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
