package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
	"github.com/popgate/popgate/tlsconf"
)

// Test credentials. The password is long and unusual so that a leak into a
// log line cannot pass unnoticed (see checkNoSecrets).
const (
	testUser = "alice@example.com"
	testPass = "s3cret-PASSWORD-never-logged"
)

// syncBuffer collects log output from concurrent sessions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tlsPair is a self-signed certificate and a client config that trusts it.
type tlsPair struct {
	server *tls.Config
	client *tls.Config
}

func newTLSPair(t testing.TB, name string) tlsPair {
	t.Helper()
	cert, err := tlsconf.SelfSigned(name, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tlsPair{
		server: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"pop3"}},
		client: &tls.Config{RootCAs: pool, ServerName: name},
	}
}

// harness is a popgate Server in front of a pop3test backend, both on
// loopback.
type harness struct {
	t       testing.TB
	backend *pop3test.Server
	srv     *Server
	logs    *syncBuffer
	front   tlsPair // the proxy's certificate
	back    tlsPair // the backend's certificate
	addrs   map[string]string
}

type harnessOpts struct {
	backendMode TLSMode
	// backend tweaks the pop3test server before it starts.
	backend func(*pop3test.Server)
	// config tweaks the proxy config before New.
	config func(*Config)
	// listeners to start; nil means one of each mode.
	listeners []Listener
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	h := &harness{
		t:     t,
		logs:  &syncBuffer{},
		front: newTLSPair(t, "localhost"),
		back:  newTLSPair(t, "backend.test"),
		addrs: map[string]string{},
	}
	h.backend = &pop3test.Server{
		Mailboxes: map[string]*pop3test.Mailbox{
			testUser: {Password: testPass, Messages: [][]byte{
				[]byte("Subject: one\r\n\r\nfirst\r\n"),
				[]byte("Subject: two\r\n\r\n.dotted line\r\nsecond\r\n"),
			}},
		},
		TLSConfig: h.back.server,
	}
	switch o.backendMode {
	case TLSImplicit:
		h.backend.Implicit = true
	case TLSStartTLS:
		h.backend.STLS = true
	}
	if o.backend != nil {
		o.backend(h.backend)
	}
	baddr, err := h.backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.backend.Close() })

	be := &Backend{Name: "b1", Address: baddr.String(), TLS: o.backendMode}
	if o.backendMode != TLSNone {
		be.TLSConfig = h.back.client
	}
	cfg := Config{
		Router:   auth.NewStatic(map[string]string{testUser: "b1"}, nil, ""),
		Backends: map[string]*Backend{"b1": be},
		Logger:   slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// Refusals wait for the backends' time from the start; tests
		// that time them set their own.
		AssumedFailureTime: time.Millisecond,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	listeners := o.listeners
	if listeners == nil {
		listeners = []Listener{
			{Name: "pop3s", TLS: TLSImplicit},
			{Name: "pop3", TLS: TLSStartTLS},
			{Name: "plain", TLS: TLSNone},
		}
	}
	var wg sync.WaitGroup
	for _, l := range listeners {
		if l.TLS != TLSNone && l.TLSConfig == nil {
			l.TLSConfig = h.front.server
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h.addrs[l.Name] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(context.Background(), ln, l); !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve(%s) = %v", l.Name, err)
			}
		}()
	}
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
		checkNoSecrets(t, h.logs.String())
	})
	return h
}

// checkNoSecrets fails when a password or SASL payload shows up in the log.
func checkNoSecrets(t testing.TB, logs string) {
	t.Helper()
	for _, secret := range []string{testPass, auth.EncodePlain(testUser, testPass)} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains a secret:\n%s", logs)
		}
	}
}

// client is a line-oriented POP3 test client with deadlines.
type client struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// dial connects to listener name; implicit TLS listeners get a handshake.
func (h *harness) dial(name string) *client {
	h.t.Helper()
	c, err := net.Dial("tcp", h.addrs[name])
	if err != nil {
		h.t.Fatal(err)
	}
	cl := &client{t: h.t, conn: c}
	h.t.Cleanup(func() { cl.conn.Close() })
	if name == "pop3s" {
		tc := tls.Client(c, h.front.client)
		cl.conn = tc
	}
	cl.br = bufio.NewReader(cl.conn)
	cl.expect("+OK")
	return cl
}

func (c *client) deadline() { c.conn.SetDeadline(time.Now().Add(10 * time.Second)) }

// send writes s as it is, in one write.
func (c *client) send(s string) {
	c.t.Helper()
	c.deadline()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	c.deadline()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// expect reads a line and fails unless it starts with prefix.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// cmd sends one command and returns the status line.
func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.line()
}

// multi reads the body of a multi-line response, undoing dot-stuffing.
func (c *client) multi() []string {
	c.t.Helper()
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(l, "."))
	}
}

// stls upgrades the connection after a +OK to STLS.
func (c *client) stls(cfg *tls.Config) {
	c.t.Helper()
	c.expect("+OK")
	tc := tls.Client(c.conn, cfg)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("STLS handshake: %v", err)
	}
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

// login logs in with USER/PASS and fails unless the answer is +OK.
func (c *client) login() {
	c.t.Helper()
	c.send("USER " + testUser + "\r\n")
	c.expect("+OK")
	c.send("PASS " + testPass + "\r\n")
	c.expect("+OK")
}

// eof fails unless the server closes the connection.
func (c *client) eof() {
	c.t.Helper()
	c.deadline()
	rest, err := io.ReadAll(c.br)
	if err != nil && !isClosedErr(err) {
		c.t.Fatalf("want EOF, got %v after %q", err, rest)
	}
}

func isClosedErr(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && !ne.Timeout() || strings.Contains(err.Error(), "reset")
}

// waitFor polls cond until it holds or the test's patience ends; it is for
// state that settles asynchronously (a session being torn down), not for
// timing.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
