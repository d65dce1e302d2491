package tlsconf

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
)

// challengeName is the ACME domain of the answerer tests.
const challengeName = "pop.example.org"

// testChallenges are running answerers with a fake TLS-ALPN-01 challenge
// certificate and no CA.
type testChallenges struct {
	*Challenges
	cacheDir string
	chalCert tls.Certificate // what a validation hello gets
}

// startChallenges runs both answerers on loopback with lim; they wait
// hello for a ClientHello or a request header.
func startChallenges(t *testing.T, lim ChallengeLimits, hello time.Duration, log *slog.Logger) *testChallenges {
	t.Helper()
	cache := filepath.Join(t.TempDir(), "acme")
	srv, err := NewServer(ServerConfig{Logger: log, ACME: &ACMEConfig{
		Domains:          []string{challengeName},
		CacheDir:         cache,
		DirectoryURL:     "http://127.0.0.1:1/directory",
		HTTPChallenge:    "127.0.0.1:0",
		TLSALPNChallenge: "127.0.0.1:0",
	}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeACME{t: t, certs: map[seenKey]*tls.Certificate{}, a: srv.acme}
	srv.acme.get, srv.acme.stored = f.get, f.stored // the prefetch in Serve
	ch, err := srv.ListenChallenges(lim)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testChallenges{Challenges: ch, cacheDir: cache, chalCert: newCert(t, challengeName)}
	ch.challengeCert = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &tc.chalCert, nil }
	ch.helloTimeout = hello
	ch.httpSrv.ReadHeaderTimeout = hello
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Challenges.Serve did not return within 20s of cancel")
		}
	})
	return tc
}

// dialer returns a dialer from the loopback address src.
func dialer(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
}

// flood opens n silent connections to addr from each of srcs (loopback
// addresses) and closes them when t ends. Whether the answerer keeps,
// displaces or refuses them does not matter: the attacker holds its end.
func flood(t *testing.T, addr string, n int, srcs ...string) {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for _, src := range srcs {
		d := dialer(src)
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("flood from %s: %v", src, err)
			}
			conns = append(conns, c)
		}
	}
}

// loopbacks returns 127.0.0.first .. 127.0.0.(first+n-1).
func loopbacks(first, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("127.0.0.%d", first+i))
	}
	return out
}

// validate is a CA's TLS-ALPN-01 validation handshake from src.
func validate(addr, src string) (*tls.ConnectionState, error) {
	raw, err := dialer(src).Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{ServerName: challengeName, NextProtos: []string{acme.ALPNProto}, InsecureSkipVerify: true})
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	st := c.ConnectionState()
	return &st, nil
}

// TestTLSALPNAnswererFlood: the TLS-ALPN-01 answerer answers validations
// while many more silent connections than its caps are held open, from
// one address and from many, and also from the validating address itself;
// a hello that is not a validation is refused.
func TestTLSALPNAnswererFlood(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{MaxConns: 32, MaxConnsPerIP: 4}, time.Minute, nil)
	addr := ch.TLSALPNAddr()
	flood(t, addr, 300, "127.0.0.2")
	flood(t, addr, 20, loopbacks(3, 10)...) // 40 > 32 at the per-address cap: the total cap acts
	for _, src := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.5"} {
		st, err := validate(addr, src)
		if err != nil {
			t.Errorf("validation from %s during the flood: %v", src, err)
			continue
		}
		if !st.PeerCertificates[0].Equal(ch.chalCert.Leaf) || st.NegotiatedProtocol != acme.ALPNProto {
			t.Errorf("validation from %s got %q, ALPN %q; want the challenge certificate and acme-tls/1",
				src, st.PeerCertificates[0].DNSNames, st.NegotiatedProtocol)
		}
	}
	if total, _ := ch.gate.held(netip.Prefix{}); total > 32 {
		t.Errorf("the answerers hold %d connections, cap 32", total)
	}

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tls.Client(raw, &tls.Config{ServerName: challengeName, NextProtos: []string{"pop3"}, InsecureSkipVerify: true}).Handshake(); err == nil {
		t.Error("a handshake that is not a validation succeeded on the TLS-ALPN-01 answerer")
	}
}

// TestChallengeHelloTimeout: a connection that sends nothing is closed
// after the hello timeout, on both answerers.
func TestChallengeHelloTimeout(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{}, 100*time.Millisecond, nil)
	for _, addr := range []string{ch.TLSALPNAddr(), ch.HTTPAddr()} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || isTimeoutErr(err) {
			t.Errorf("silent connection to %s: read %d, %v; want it closed by the answerer", addr, n, err)
		}
		c.Close()
	}
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// writeToken puts an HTTP-01 key authorization where autocert's handler
// finds it (its cache, as after a restart).
func (ch *testChallenges) writeToken(t *testing.T, token, keyAuth string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(ch.cacheDir, token+"+http-01"), []byte(keyAuth), 0o600); err != nil {
		t.Fatal(err)
	}
}

// get fetches path from the HTTP-01 answerer from src with Host host.
func get(addr, src, host, method, path string) (int, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       dialer(src).DialContext,
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}

// TestHTTPAnswererBare404: the HTTP-01 answerer serves a key
// authorization and answers everything else with a 404 without a body, so
// that no error text (the cache directory's path, the host policy) leaks.
func TestHTTPAnswererBare404(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{}, time.Minute, nil)
	const token, keyAuth = "tok3n_-A", "tok3n_-A.thumbprint"
	ch.writeToken(t, token, keyAuth)
	addr := ch.HTTPAddr()
	if code, body, err := get(addr, "127.0.0.1", challengeName, http.MethodGet, challengePath+token); err != nil || code != http.StatusOK || body != keyAuth {
		t.Errorf("GET the token = %d %q, %v; want 200 %q", code, body, err, keyAuth)
	}
	for _, tc := range []struct {
		name, host, method, path string
	}{
		{"not a challenge", challengeName, http.MethodGet, "/index.html"},
		{"root", challengeName, http.MethodGet, "/"},
		{"unknown token", challengeName, http.MethodGet, challengePath + "nope"},
		{"NUL in token", challengeName, http.MethodGet, challengePath + "a%00b"},
		{"300-byte token", challengeName, http.MethodGet, challengePath + strings.Repeat("a", 300)},
		{"slash in token", challengeName, http.MethodGet, challengePath + "a/../../x"},
		{"empty token", challengeName, http.MethodGet, challengePath},
		{"host outside the policy", "evil.example", http.MethodGet, challengePath + token},
		{"POST", challengeName, http.MethodPost, challengePath + token},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := get(addr, "127.0.0.1", tc.host, tc.method, tc.path)
			if err != nil || code != http.StatusNotFound || body != "" {
				t.Errorf("%s %s (Host %s) = %d %q, %v; want a bare 404", tc.method, tc.path, tc.host, code, body, err)
			}
		})
	}
}

// TestHTTPAnswererFlood: the HTTP-01 answerer serves the CA while many
// more idle connections than its caps are held open, and holds no more
// than its cap.
func TestHTTPAnswererFlood(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{MaxConns: 32, MaxConnsPerIP: 4}, time.Minute, nil)
	const token, keyAuth = "flood-token", "flood-token.thumbprint"
	ch.writeToken(t, token, keyAuth)
	addr := ch.HTTPAddr()
	flood(t, addr, 300, "127.0.0.2")
	flood(t, addr, 20, loopbacks(3, 10)...)
	var wg sync.WaitGroup
	for _, src := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.5"} {
		wg.Go(func() {
			if code, body, err := get(addr, src, challengeName, http.MethodGet, challengePath+token); err != nil || code != http.StatusOK || body != keyAuth {
				t.Errorf("GET the token from %s during the flood = %d %q, %v; want 200", src, code, body, err)
			}
		})
	}
	wg.Wait()
	if total, _ := ch.gate.held(netip.Prefix{}); total > 32 {
		t.Errorf("the answerers hold %d connections, cap 32", total)
	}
}

// TestHTTPAnswererBody: a request with a body, which no CA sends, gets no
// answer: its connection is closed at once, the body unread (net/http
// would otherwise wait for it, up to ReadTimeout, and the connection
// would look busy meanwhile).
func TestHTTPAnswererBody(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{}, time.Minute, nil)
	for _, req := range []string{
		"POST " + challengePath + "tok HTTP/1.1\r\nHost: " + challengeName + "\r\nContent-Length: 100000\r\n\r\n",
		"GET " + challengePath + "tok HTTP/1.1\r\nHost: " + challengeName + "\r\nContent-Length: 10\r\n\r\n",
		"GET " + challengePath + "tok HTTP/1.1\r\nHost: " + challengeName + "\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		c, err := net.Dial("tcp", ch.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := c.Read(make([]byte, 512))
		if n != 0 || err == nil || isTimeoutErr(err) {
			t.Errorf("%q: read %d bytes, %v; want the connection closed without an answer", strings.SplitN(req, "\r\n", 2)[0], n, err)
		}
		c.Close()
	}
}

// clientHello returns the first flight of a TLS-ALPN-01 validation
// handshake for name: a ClientHello offering only acme-tls/1.
func clientHello(t *testing.T, name string) []byte {
	t.Helper()
	cli, srv := net.Pipe()
	defer srv.Close()
	go func() {
		defer cli.Close()
		_ = tls.Client(cli, &tls.Config{ServerName: name, NextProtos: []string{acme.ALPNProto}, InsecureSkipVerify: true}).Handshake()
	}()
	_ = srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(srv, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(srv, rec); err != nil {
		t.Fatal(err)
	}
	return append(hdr, rec...)
}

// busyConns returns how many connections the gate holds busy.
func (g *connGate) busyConns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, gn := range g.nets {
		n += gn.busy.Len()
	}
	return n
}

// TestTLSALPNAnswererStalled: connections that send a validation's
// ClientHello and then stall are busy, so not displaced for busyGrace;
// after that they make room for the CA's validation. A ClientHello for a
// name outside the policy does not make a connection busy.
func TestTLSALPNAnswererStalled(t *testing.T) {
	ch := startChallenges(t, ChallengeLimits{MaxConns: 2, MaxConnsPerIP: 2}, time.Minute, nil)
	clock := newFakeClock()
	ch.gate.mu.Lock()
	ch.gate.now = clock.now
	ch.gate.mu.Unlock()
	addr := ch.TLSALPNAddr()

	outside, err := dialer("127.0.0.2").Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	if _, err := outside.Write(clientHello(t, "evil.example")); err != nil {
		t.Fatal(err)
	}
	_ = outside.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, outside); isTimeoutErr(err) { // the alert, then EOF
		t.Fatal("a ClientHello for a name outside the policy was not refused")
	}
	if n := ch.gate.busyConns(); n != 0 {
		t.Errorf("%d busy connections after a ClientHello outside the policy, want 0", n)
	}

	hello := clientHello(t, challengeName)
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		c, err := dialer(src).Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two stalled validations busy", func() bool { return ch.gate.busyConns() == 2 })
	if _, err := validate(addr, "127.0.0.1"); err == nil {
		t.Error("validation admitted while both places were busy for less than busyGrace")
	}
	clock.add(busyGrace + time.Millisecond)
	if _, err := validate(addr, "127.0.0.1"); err != nil {
		t.Errorf("validation with both places held by validations stalled for longer than busyGrace: %v", err)
	}
}
