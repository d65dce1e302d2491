package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// fakeACME stands in for autocert: it holds certificates by name and key
// type (as autocert does in memory and in its cache), "orders" a
// self-signed one of the key type the hello asks for when it has none,
// unless fail is set, and records every name asked for.
type fakeACME struct {
	t     *testing.T
	mu    sync.Mutex
	asked []string
	certs map[seenKey]*tls.Certificate
	fail  error
	// ordered lists the certificates asked for that the fake did not
	// hold: the orders autocert would have placed.
	ordered []seenKey
	// a is the server's ACME state: an order marks its ticket as
	// caTransport would.
	a *acmeState
}

func (f *fakeACME) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, hello.ServerName)
	k := seenKey{hello.ServerName, !slices.Contains(hello.CipherSuites, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)}
	if c := f.certs[k]; c != nil {
		return c, nil
	}
	f.ordered = append(f.ordered, k)
	if f.a != nil {
		f.a.attMu.Lock()
		if tk := f.a.tickets[k]; tk != nil {
			tk.contacted = true
			tk.used = f.fail == nil
		}
		f.a.attMu.Unlock()
	}
	if f.fail != nil {
		return nil, f.fail
	}
	c := newCert(f.t, hello.ServerName)
	if k.rsa {
		c = newRSACert(f.t, hello.ServerName)
	}
	f.certs[k] = &c
	return &c, nil
}

// stored is acmeState.stored: whether the fake holds k.
func (f *fakeACME) stored(_ context.Context, k seenKey) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.certs[k] != nil
}

func (f *fakeACME) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

// newACMEServer makes a Server with ACME for domains whose autocert is
// replaced by a fake; the CA is never contacted.
func newACMEServer(t *testing.T, cfg ServerConfig, domains ...string) (*Server, *fakeACME) {
	t.Helper()
	cfg.ACME = &ACMEConfig{
		Domains:      domains,
		CacheDir:     filepath.Join(t.TempDir(), "acme"),
		DirectoryURL: "http://127.0.0.1:1/directory",
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeACME{t: t, certs: map[seenKey]*tls.Certificate{}, a: srv.acme}
	srv.acme.get, srv.acme.stored = f.get, f.stored
	return srv, f
}

func TestACMEPrecedence(t *testing.T) {
	dir := t.TempDir()
	static := []CertFile{
		writePair(t, dir, "mail", newCert(t, "mail.example.com")),
		writePair(t, dir, "wild", newCert(t, "*.static.example")),
	}
	for _, tc := range []struct {
		name      string
		static    bool
		def       string
		sni       string
		want      string   // first DNS name of the certificate served
		wantAsked []string // names the ACME getter was asked for
	}{
		{"static name uses static", true, "", "mail.example.com", "mail.example.com", nil},
		{"static wildcard beats acme", true, "", "pop.static.example", "*.static.example", nil},
		{"acme name", true, "", "pop.example.org", "pop.example.org", []string{"pop.example.org"}},
		{"acme name normalized", true, "", "POP.Example.ORG.", "pop.example.org", []string{"pop.example.org"}},
		{"outside policy gets static default", true, "", "evil.example", "mail.example.com", nil},
		{"no sni, static default", true, "mail.example.com", "", "mail.example.com", nil},
		{"no sni, acme default", true, "pop.example.org", "", "pop.example.org", []string{"pop.example.org"}},
		{"outside policy, acme default", true, "pop.example.org", "evil.example", "pop.example.org", []string{"pop.example.org"}},
		{"acme only, no sni", false, "", "", "pop.example.org", []string{"pop.example.org"}},
		{"acme only, named default", false, "Imap.Example.NET", "", "imap.example.net", []string{"imap.example.net"}},
		{"acme only, outside policy", false, "", "evil.example", "pop.example.org", []string{"pop.example.org"}},
		{"acme only, dotless", false, "", "localhost", "pop.example.org", []string{"pop.example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ServerConfig{DefaultServerName: tc.def}
			if tc.static {
				cfg.Certificates = static
			}
			srv, f := newACMEServer(t, cfg, "pop.example.org", "imap.example.net", "mail.example.com")
			c, err := srv.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: tc.sni})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Leaf.DNSNames[0]; got != tc.want {
				t.Errorf("GetCertificate(%q) = %q, want %q", tc.sni, got, tc.want)
			}
			if got := f.names(); !slices.Equal(got, tc.wantAsked) {
				t.Errorf("GetCertificate(%q) asked ACME for %q, want %q", tc.sni, got, tc.wantAsked)
			}
			if srv.SelfSigned() {
				t.Error("SelfSigned() with ACME")
			}
		})
	}
}

// TestACMEHandshake: real handshakes against the ACME path: no SNI gets the
// default name's certificate, an ACME failure fails the handshake (and is
// logged), foreign ALPN is refused, and "acme-tls/1" offered beside "pop3"
// is an ordinary handshake, never a challenge.
func TestACMEHandshake(t *testing.T) {
	var logs syncBuffer
	srv, f := newACMEServer(t, ServerConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		"mail.example.com", "pop.example.org")
	if !slices.Contains(srv.TLSConfig().NextProtos, acme.ALPNProto) || srv.TLSConfig().NextProtos[0] != ALPN {
		t.Errorf("NextProtos = %q, want pop3 first, then acme-tls/1", srv.TLSConfig().NextProtos)
	}
	mail, err := f.get(&tls.ClientHelloInfo{ServerName: "mail.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	pop, _ := f.get(&tls.ClientHelloInfo{ServerName: "pop.example.org"})
	roots := pool(*mail, *pop)
	for _, tc := range []struct {
		name, sni, verify string
		alpn              []string
		want              *x509.Certificate
		wantProto         string
		wantErr           bool
	}{
		{"no sni", "", "mail.example.com", nil, mail.Leaf, "", false},
		{"sni", "pop.example.org", "pop.example.org", nil, pop.Leaf, "", false},
		{"alpn pop3 and acme", "pop.example.org", "pop.example.org", []string{acme.ALPNProto, ALPN}, pop.Leaf, ALPN, false},
		{"alpn foreign only", "pop.example.org", "pop.example.org", []string{"http/1.1"}, nil, "", true},
		// A validation hello for a name with no pending challenge: autocert
		// has no token certificate, the handshake fails, no order.
		{"challenge without token", "pop.example.org", "pop.example.org", []string{acme.ALPNProto}, nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.names())
			st, err := handshake(t, srv.TLSConfig(), &tls.Config{
				ServerName: tc.sni, RootCAs: roots, NextProtos: tc.alpn,
				VerifyConnection: func(cs tls.ConnectionState) error {
					return cs.PeerCertificates[0].VerifyHostname(tc.verify)
				},
				InsecureSkipVerify: tc.sni == "", // no SNI: checked by VerifyConnection
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("handshake error = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				if tc.name == "challenge without token" && len(f.names()) != before {
					t.Errorf("a challenge hello reached the ACME getter: %q", f.names()[before:])
				}
				return
			}
			if !st.PeerCertificates[0].Equal(tc.want) || st.NegotiatedProtocol != tc.wantProto {
				t.Errorf("handshake got %q, ALPN %q; want %q, %q", st.PeerCertificates[0].DNSNames,
					st.NegotiatedProtocol, tc.want.DNSNames, tc.wantProto)
			}
		})
	}

	f.mu.Lock()
	f.fail = errors.New("CA unreachable")
	f.certs = map[seenKey]*tls.Certificate{}
	f.mu.Unlock()
	if _, err := handshake(t, srv.TLSConfig(), &tls.Config{ServerName: "pop.example.org", RootCAs: roots}); err == nil {
		t.Error("handshake succeeded although ACME failed")
	}
	if !strings.Contains(logs.String(), "acme order failed") || !strings.Contains(logs.String(), "CA unreachable") {
		t.Errorf("ACME failure not logged:\n%s", logs.String())
	}
}

func TestACMENextProtos(t *testing.T) {
	for _, tc := range []struct {
		name        string
		http, alpn  string
		wantACMETLS bool
		wantFilter  bool
	}{
		{"http only", ":80", "", false, true},
		{"alpn only", "", ":443", true, false},
		{"both", ":80", ":443", true, false},
		{"neither: the TLS listeners answer", "", "", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := NewServer(ServerConfig{ACME: &ACMEConfig{
				Domains: []string{"mail.example.com"}, CacheDir: t.TempDir(),
				HTTPChallenge: tc.http, TLSALPNChallenge: tc.alpn,
			}})
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(srv.TLSConfig().NextProtos, acme.ALPNProto); got != tc.wantACMETLS {
				t.Errorf("NextProtos = %q, want acme-tls/1: %v", srv.TLSConfig().NextProtos, tc.wantACMETLS)
			}
			rt := srv.acme.m.Client.HTTPClient.Transport
			if ct, ok := rt.(*caTransport); ok {
				rt = ct.next
			}
			_, filtered := rt.(*challengeFilter)
			if filtered != tc.wantFilter {
				t.Errorf("challenge filter installed = %v, want %v", filtered, tc.wantFilter)
			}
		})
	}
}

func TestACMEConfigErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  ACMEConfig
		want string
	}{
		{"no domains", ACMEConfig{CacheDir: dir}, "no domains"},
		{"wildcard", ACMEConfig{Domains: []string{"*.example.com"}, CacheDir: dir}, "*.example.com"},
		{"no cache", ACMEConfig{Domains: []string{"a.example.com"}}, "cache"},
		{"ip", ACMEConfig{Domains: []string{"192.0.2.1"}, CacheDir: dir}, "192.0.2.1"},
		{"cache is a file", ACMEConfig{Domains: []string{"a.example.com"}, CacheDir: file}, file},
		{"bad url", ACMEConfig{Domains: []string{"a.example.com"}, CacheDir: dir, DirectoryURL: "ftp://x/"}, "ftp://x/"},
		{"missing ca", ACMEConfig{Domains: []string{"a.example.com"}, CacheDir: dir, CAFile: filepath.Join(dir, "nope.pem")}, "nope.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewServer(ServerConfig{ACME: &tc.cfg}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewServer() = %v, want error containing %q", err, tc.want)
			}
		})
	}
	_, err := NewServer(ServerConfig{DefaultServerName: "other.example.com",
		ACME: &ACMEConfig{Domains: []string{"a.example.com"}, CacheDir: dir}})
	if err == nil || !strings.Contains(err.Error(), "other.example.com") {
		t.Errorf("NewServer(default outside domains) = %v", err)
	}
	sub := filepath.Join(dir, "new", "acme")
	if _, err := NewServer(ServerConfig{ACME: &ACMEConfig{Domains: []string{"a.example.com"}, CacheDir: sub}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sub); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache dir %v, %v; want mode 0700", fi, err)
	}
}

func TestFilterChallenges(t *testing.T) {
	authz := `{"status":"pending","identifier":{"type":"dns","value":"a.example.com"},
	"challenges":[{"type":"tls-alpn-01","url":"u1","token":"t"},{"type":"http-01","url":"u2","token":"t"},{"type":"dns-01","url":"u3","token":"t"}]}`
	var got struct {
		Status     string
		Identifier struct{ Value string }
		Challenges []struct{ Type, URL string }
	}
	if err := json.Unmarshal(filterChallenges([]byte(authz), "http-01"), &got); err != nil {
		t.Fatal(err)
	}
	if got.Status != "pending" || got.Identifier.Value != "a.example.com" || len(got.Challenges) != 1 ||
		got.Challenges[0].Type != "http-01" || got.Challenges[0].URL != "u2" {
		t.Errorf("filterChallenges = %+v", got)
	}
	for _, other := range []string{`{"status":"valid","certificate":"x"}`, `not json`, `[1,2]`} {
		if out := filterChallenges([]byte(other), "http-01"); string(out) != other {
			t.Errorf("filterChallenges(%s) = %s, want it unchanged", other, out)
		}
	}
}

func TestLoggingCache(t *testing.T) {
	var logs syncBuffer
	c := &loggingCache{Cache: autocert.DirCache(t.TempDir()), log: slog.New(slog.NewJSONHandler(&logs, nil))}
	cert := newCert(t, "mail.example.com")
	certPEM, keyPEM, err := EncodePEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	entry := append(keyPEM, certPEM...)
	ctx := context.Background()
	for _, step := range []struct{ key, want string }{
		{"acme_account+key", ""},
		{"mail.example.com+token", ""},
		{"mail.example.com", "acme certificate obtained"},
		{"mail.example.com", "acme certificate renewed"},
		{"mail.example.com+rsa", "acme certificate obtained"},
	} {
		logs.Reset()
		if err := c.Put(ctx, step.key, entry); err != nil {
			t.Fatal(err)
		}
		out := logs.String()
		if step.want == "" {
			if out != "" {
				t.Errorf("Put(%q) logged %s", step.key, out)
			}
			continue
		}
		var rec struct {
			Msg, Name, Issuer string
			KeyType           string `json:"key_type"`
		}
		if err := json.Unmarshal([]byte(out), &rec); err != nil {
			t.Fatalf("Put(%q) log %q: %v", step.key, out, err)
		}
		if rec.Msg != step.want || rec.Name != "mail.example.com" || !strings.Contains(out, "not_after") {
			t.Errorf("Put(%q) logged %s, want %q naming mail.example.com with not_after", step.key, out, step.want)
		}
	}
}

// TestWatch: replacing the files is picked up without Reload being called;
// a broken replacement keeps the old certificate and logs an error.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	var logs syncBuffer
	f := writePair(t, dir, "mail", newCert(t, "old.example.com"))
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); srv.Watch(ctx, 10*time.Millisecond, nil) }()
	defer func() { cancel(); <-done }()
	served := func() string {
		c, err := srv.TLSConfig().GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.DNSNames[0]
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; log:\n%s", what, logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	newPair := writePair(t, t.TempDir(), "mail", newCert(t, "new.example.com"))
	replace(t, newPair.Key, f.Key)
	replace(t, newPair.Cert, f.Cert)
	waitFor("the new certificate", func() bool { return served() == "new.example.com" })

	// A truncated certificate: the new one stays. (A round between the two
	// replacements above may have refused the new key with the old
	// certificate: only an ERROR after those counts.)
	before := strings.Count(logs.String(), "level=ERROR")
	if err := os.WriteFile(f.Cert, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("an error in the log", func() bool { return strings.Count(logs.String(), "level=ERROR") > before })
	if got := served(); got != "new.example.com" {
		t.Errorf("after a broken replacement the server serves %q, want the previous certificate", got)
	}
}

// TestWatchBeforeFirstRound: files replaced after NewServer read them but
// before the watch's first round are reloaded, because the watch compares
// with what was read, not with its own first look at the files (which made
// TestWatch flaky when the goroutine started late).
func TestWatchBeforeFirstRound(t *testing.T) {
	f := writePair(t, t.TempDir(), "mail", newCert(t, "old.example.com"))
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}})
	if err != nil {
		t.Fatal(err)
	}
	newPair := writePair(t, t.TempDir(), "mail", newCert(t, "new.example.com"))
	replace(t, newPair.Key, f.Key)
	replace(t, newPair.Cert, f.Cert)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); srv.Watch(ctx, time.Millisecond, nil) }()
	defer func() { cancel(); <-done }()
	guard := time.After(10 * time.Second) // against a hang, not a timing check
	for {
		c, err := srv.TLSConfig().GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Leaf.DNSNames[0] == "new.example.com" {
			return
		}
		select {
		case <-guard:
			t.Fatalf("serving %s, want the replacement new.example.com", c.Leaf.DNSNames[0])
		case <-time.After(time.Millisecond):
		}
	}
}

// replace moves src over dst atomically, as cert-manager or certbot's
// deploy hooks do, with a fresh modification time.
func replace(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(tmp, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

// TestExpiryAndMissing: static certificates report their expiry at once,
// ACME ones once served; MissingACME names the domains without one yet.
func TestExpiryAndMissing(t *testing.T) {
	dir := t.TempDir()
	static := writePair(t, dir, "static", newCert(t, "static.example.net", "*.example.net"))
	srv, _ := newACMEServer(t, ServerConfig{Certificates: []CertFile{static}}, "mail.example.com", "pop.example.org")
	exp := srv.Expiry()
	if len(exp) != 2 || exp["static.example.net"].IsZero() || exp["*.example.net"].IsZero() {
		t.Errorf("Expiry before any ACME handshake = %v, want the static names only", exp)
	}
	if got := srv.MissingACME(); !slices.Equal(got, []string{"mail.example.com", "pop.example.org"}) {
		t.Errorf("MissingACME = %q", got)
	}
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.example.org"}); err != nil {
		t.Fatal(err)
	}
	if got := srv.MissingACME(); !slices.Equal(got, []string{"mail.example.com"}) {
		t.Errorf("MissingACME after serving pop.example.org = %q", got)
	}
	if at := srv.Expiry()["pop.example.org"]; at.Before(time.Now()) {
		t.Errorf("pop.example.org expiry = %v", at)
	}
}

// TestShareACME: a Server built for a reload shares the ACME client and
// what it has seen, whatever its own ACME says.
func TestShareACME(t *testing.T) {
	old, f := newACMEServer(t, ServerConfig{}, "mail.example.com")
	if _, err := old.getCertificate(&tls.ClientHelloInfo{ServerName: "mail.example.com"}); err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{ShareACME: old, MinVersion: "1.3", ACME: &ACMEConfig{Domains: []string{"other.example.com"}}})
	if err != nil {
		t.Fatal(err)
	}
	if srv.acme != old.acme || !slices.Contains(srv.TLSConfig().NextProtos, acme.ALPNProto) {
		t.Fatal("the new Server has its own ACME client")
	}
	if len(srv.MissingACME()) != 0 || srv.Expiry()["mail.example.com"].IsZero() {
		t.Errorf("shared ACME state lost: missing %q, expiry %v", srv.MissingACME(), srv.Expiry())
	}
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "mail.example.com"}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.names()); n != 2 {
		t.Errorf("the fake CA was asked %d times, want 2 (once per handshake, through the one client)", n)
	}
}

// TestShareACMEFreesPrevious: a Server built with ShareACME does not keep
// the one it shares with, with or without ACME, so that a chain of reloads
// holds one certificate store, not all of them.
func TestShareACMEFreesPrevious(t *testing.T) {
	for _, withACME := range []bool{true, false} {
		t.Run(fmt.Sprint("acme=", withACME), func(t *testing.T) {
			// In a function of its own, so that no local keeps the
			// earlier Servers.
			build := func() (*Server, []weak.Pointer[Server]) {
				var first *Server
				if withACME {
					first, _ = newACMEServer(t, ServerConfig{}, "mail.example.com")
				} else {
					first = newTestServer(t, ServerConfig{})
				}
				prev, earlier := first, []weak.Pointer[Server]{weak.Make(first)}
				for range 3 {
					prev = newTestServer(t, ServerConfig{ShareACME: prev, DefaultServerName: "mail.example.com"})
					earlier = append(earlier, weak.Make(prev))
				}
				return prev, earlier[:len(earlier)-1]
			}
			last, earlier := build()
			alive := 0
			for range 10 {
				runtime.GC()
				alive = 0
				for _, p := range earlier {
					if p.Value() != nil {
						alive++
					}
				}
				if alive == 0 {
					break
				}
			}
			if alive != 0 {
				t.Errorf("%d of the %d earlier Servers are still reachable from the last", alive, len(earlier))
			}
			if last.ACME() != withACME {
				t.Errorf("ACME() = %v, want %v", last.ACME(), withACME)
			}
			if _, err := last.getCertificate(&tls.ClientHelloInfo{ServerName: "mail.example.com"}); err != nil {
				t.Error(err)
			}
		})
	}
}

func newTestServer(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCertificates: the details of static certificates at once, of ACME
// ones once served, ACME domains without one yet, and each name's last
// order.
func TestCertificates(t *testing.T) {
	dir := t.TempDir()
	static := writePair(t, dir, "static", newCert(t, "static.example.net"))
	srv, _ := newACMEServer(t, ServerConfig{Certificates: []CertFile{static}}, "mail.example.com", "pop.example.org")
	if _, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.example.org"}); err != nil {
		t.Fatal(err)
	}
	srv.acme.observe(seenKey{"mail.example.com", false}, OrderFailed, "urn:ietf:params:acme:error:dns: no such name")
	by := map[string]CertInfo{}
	for _, ci := range srv.Certificates() {
		by[strings.Join(ci.Names, ",")] = ci
	}
	if s := by["static.example.net"]; s.Source != "file" || s.NotAfter.IsZero() || s.Issuer == "" || !s.LastOrder.At.IsZero() {
		t.Errorf("static certificate = %+v", s)
	}
	if p := by["pop.example.org"]; p.Source != "acme" || p.NotAfter.Before(time.Now()) {
		t.Errorf("served ACME certificate = %+v", p)
	}
	m := by["mail.example.com"]
	if m.Source != "acme" || !m.NotAfter.IsZero() || m.LastOrder.At.IsZero() || !strings.Contains(m.LastOrder.Err, "no such name") {
		t.Errorf("ACME domain without a certificate = %+v", m)
	}
	if len(by) != 3 {
		t.Errorf("Certificates() = %+v, want 3", by)
	}
}
