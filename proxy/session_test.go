package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
	"github.com/popgate/popgate/tlsconf"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestCapa: before login, CAPA lists only what popgate itself offers: no
// TOP/UIDL that the backend, not known until the login routes the user, may
// lack (an operator adds them with ExtraCapabilities), STLS only before TLS
// on a starttls listener, USER and SASL only where login is allowed.
func TestCapa(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	base := []string{"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION popgate"}
	login := []string{"USER", "SASL PLAIN LOGIN"}

	c := h.dial("pop3")
	c.send("capa\r\n") // case-insensitive
	c.expect("+OK")
	if got, want := c.multi(), append([]string{"STLS"}, base...); !slices.Equal(got, want) {
		t.Errorf("CAPA before STLS = %q, want %q", got, want)
	}
	c.send("STLS\r\n")
	c.stls(h.front.client)
	c.send("CAPA\r\n")
	c.expect("+OK")
	if got, want := c.multi(), append(slices.Clone(login), base...); !slices.Equal(got, want) {
		t.Errorf("CAPA after STLS = %q, want %q", got, want)
	}
	if got := c.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("second STLS = %q, want -ERR", got)
	}

	c = h.dial("pop3s")
	c.send("CAPA\r\n")
	c.expect("+OK")
	if got, want := c.multi(), append(slices.Clone(login), base...); !slices.Equal(got, want) {
		t.Errorf("CAPA on pop3s = %q, want %q", got, want)
	}
	if got := c.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("STLS on pop3s = %q, want -ERR", got)
	}
}

// TestPlaintextLoginRefused: a starttls listener refuses USER, PASS and AUTH
// before STLS, except from allow_plaintext_from networks.
func TestPlaintextLoginRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{listeners: []Listener{
		{Name: "pop3", TLS: TLSStartTLS},
		{Name: "trusted", TLS: TLSStartTLS, AllowPlaintextFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	}})
	c := h.dial("pop3")
	for _, cmd := range []string{"USER " + testUser, "PASS " + testPass, "AUTH PLAIN " + auth.EncodePlain(testUser, testPass), "AUTH LOGIN"} {
		got := c.cmd(cmd)
		if !strings.HasPrefix(got, "-ERR") {
			t.Errorf("%s before STLS = %q, want -ERR", strings.Fields(cmd)[0], got)
		}
	}
	if got := c.cmd("USER " + testUser); !strings.Contains(got, "STLS") {
		t.Errorf("USER before STLS = %q, want a hint to use STLS", got)
	}
	if n := h.backend.Logins(); n != 0 {
		t.Errorf("backend saw %d logins", n)
	}

	c = h.dial("trusted")
	c.login()
	if got := c.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Errorf("STAT from an allowed network = %q", got)
	}
}

// TestSTLSInjection: bytes sent behind STLS in the same packet are
// discarded, never executed (CVE-2011-0411).
func TestSTLSInjection(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.dial("pop3")
	c.send("STLS\r\nUSER " + testUser + "\r\n")
	c.stls(h.front.client)
	// Had the injected USER been processed, PASS would log in.
	if got := c.cmd("PASS " + testPass); got != "-ERR USER first" {
		t.Errorf("PASS after STLS with injected USER = %q, want -ERR USER first", got)
	}
	if !strings.Contains(h.logs.String(), "discarded bytes sent after STLS") {
		t.Errorf("no log line about the discarded bytes")
	}
	// A USER sent before STLS is forgotten too (RFC 2595 §4).
	h2 := newHarness(t, harnessOpts{listeners: []Listener{{Name: "pop3", TLS: TLSStartTLS, AllowPlaintextFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}}})
	c = h2.dial("pop3")
	c.cmd("USER " + testUser)
	c.send("STLS\r\n")
	c.stls(h2.front.client)
	if got := c.cmd("PASS " + testPass); got != "-ERR USER first" {
		t.Errorf("PASS after STLS with USER before it = %q, want -ERR USER first", got)
	}
}

// TestLogin covers every client login method against every backend TLS
// mode, and the backend login variants (USER/PASS, AUTH PLAIN only).
func TestLogin(t *testing.T) {
	methods := []struct {
		name  string
		login func(c *client) string
	}{
		{"USER/PASS", func(c *client) string {
			c.expect("+OK")
			return c.cmd("PASS " + testPass)
		}},
		{"AUTH PLAIN initial response", func(c *client) string {
			return c.cmd("AUTH PLAIN " + auth.EncodePlain(testUser, testPass))
		}},
		{"AUTH PLAIN continuation", func(c *client) string {
			if got := c.cmd("AUTH PLAIN"); got != "+ " {
				c.t.Fatalf("AUTH PLAIN = %q, want continuation", got)
			}
			return c.cmd(auth.EncodePlain(testUser, testPass))
		}},
		{"AUTH PLAIN unpadded base64", func(c *client) string {
			return c.cmd("AUTH PLAIN " + strings.TrimRight(auth.EncodePlain(testUser, testPass), "="))
		}},
		{"AUTH PLAIN authzid = authcid", func(c *client) string {
			return c.cmd("AUTH PLAIN " + b64(testUser+"\x00"+testUser+"\x00"+testPass))
		}},
		{"auth login", func(c *client) string {
			if got := c.cmd("auth login"); got != promptUser {
				c.t.Fatalf("AUTH LOGIN = %q", got)
			}
			if got := c.cmd(b64(testUser)); got != promptPass {
				c.t.Fatalf("AUTH LOGIN user = %q", got)
			}
			return c.cmd(b64(testPass))
		}},
		{"AUTH LOGIN initial response", func(c *client) string {
			if got := c.cmd("AUTH LOGIN " + b64(testUser)); got != promptPass {
				c.t.Fatalf("AUTH LOGIN user = %q", got)
			}
			return c.cmd(b64(testPass))
		}},
	}
	backends := []struct {
		name string
		mode TLSMode
		tune func(*pop3test.Server)
		want string // a backend command that must have been used
	}{
		{"plain backend", TLSNone, nil, "USER " + testUser},
		{"STLS backend", TLSStartTLS, nil, "STLS"},
		{"implicit TLS backend", TLSImplicit, nil, "USER " + testUser},
		{"SASL-only backend", TLSNone, func(s *pop3test.Server) { s.NoUSER = true; s.SASL = []string{"PLAIN"} }, "AUTH PLAIN ***"},
	}
	for _, be := range backends {
		h := newHarness(t, harnessOpts{backendMode: be.mode, backend: be.tune})
		for _, m := range methods {
			t.Run(be.name+"/"+m.name, func(t *testing.T) {
				c := h.dial("pop3s")
				c.t = t
				if m.name == "USER/PASS" {
					c.send("USER " + testUser + "\r\n")
				}
				if got := m.login(c); !strings.HasPrefix(got, "+OK") {
					t.Fatalf("login = %q, want +OK", got)
				}
				c.send("RETR 2\r\n")
				c.expect("+OK")
				if got, want := c.multi(), []string{"Subject: two", "", ".dotted line", "second"}; !slices.Equal(got, want) {
					t.Errorf("RETR 2 = %q, want %q", got, want)
				}
				c.cmd("QUIT")
				c.eof()
			})
		}
		if !slices.Contains(h.backend.Commands(), be.want) {
			t.Errorf("%s: backend commands %q lack %q", be.name, h.backend.Commands(), be.want)
		}
	}
}

// TestAuthErrors: malformed or refused SASL exchanges get -ERR and reach
// neither router nor backend.
func TestAuthErrors(t *testing.T) {
	routed := 0
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		r := c.Router
		c.Router = auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
			routed++
			return r.Route(ctx, req)
		})
		c.MaxLoginFailures = 100
	}})
	c := h.dial("pop3s")
	cases := []struct{ send, want string }{
		{"AUTH", "+OK"},
		{"AUTH CRAM-MD5", "-ERR"},
		{"AUTH PLAIN !!!notbase64", "-ERR Invalid base64"},
		{"AUTH PLAIN " + b64("no-nul-bytes"), "-ERR Malformed"},
		{"AUTH PLAIN =", "-ERR Malformed"},
		{"AUTH PLAIN *", "-ERR Authentication cancelled"},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\r\nDELE 1\x00"+testPass), "-ERR [AUTH]"},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00pass\nword"), "-ERR [AUTH]"},
		{"APOP " + testUser + " 0123456789abcdef0123456789abcdef", "-ERR"},
		{"PASS " + testPass, "-ERR USER first"},
	}
	for _, tc := range cases {
		got := c.cmd(tc.send)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%.20s… = %q, want prefix %q", tc.send, got, tc.want)
		}
		if tc.send == "AUTH" {
			if got, want := c.multi(), []string{"PLAIN", "LOGIN"}; !slices.Equal(got, want) {
				t.Errorf("AUTH mechanisms = %q, want %q", got, want)
			}
		}
	}
	// A continuation line that is cancelled.
	if got := c.cmd("AUTH PLAIN"); got != "+ " {
		t.Fatalf("AUTH PLAIN = %q", got)
	}
	if got := c.cmd("*"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("cancel = %q", got)
	}
	// USER/PASS with a NUL in the password.
	c.cmd("USER " + testUser)
	if got := c.cmd("PASS a\x00b"); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Errorf("PASS with NUL = %q", got)
	}
	if routed != 0 {
		t.Errorf("router called %d times for refused credentials", routed)
	}
	if n := len(h.backend.Commands()); n != 0 {
		t.Errorf("backend got commands: %q", h.backend.Commands())
	}
}

// TestNoRouteLooksLikeBadPassword: a user nothing routes gets the same
// answer as a wrong password; only the log tells them apart.
func TestNoRouteLooksLikeBadPassword(t *testing.T) {
	h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {}})
	c := h.dial("pop3s")
	c.cmd("USER nobody@nowhere.example")
	noRoute := c.cmd("PASS " + testPass)
	c.cmd("USER " + testUser)
	badPass := c.cmd("PASS wrong")
	if noRoute != "-ERR [AUTH] Authentication failed" || noRoute != badPass {
		t.Errorf("no route = %q, bad password = %q; want both -ERR [AUTH] Authentication failed", noRoute, badPass)
	}
	if !strings.Contains(h.logs.String(), "reason=no_route") {
		t.Errorf("log does not say no_route:\n%s", h.logs)
	}
}

// TestBackendReplyRelayed: the backend's answer to the login reaches the
// client as it is, response code included.
func TestBackendReplyRelayed(t *testing.T) {
	for _, reply := range []string{"[IN-USE] Mailbox locked by another session", "[LOGIN-DELAY] Wait 5 minutes", "[SYS/PERM] Over quota"} {
		h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) { s.LoginError = reply }})
		c := h.dial("pop3s")
		c.cmd("USER " + testUser)
		if got := c.cmd("PASS " + testPass); got != "-ERR "+reply {
			t.Errorf("login = %q, want %q", got, "-ERR "+reply)
		}
	}
	h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {}})
	c := h.dial("pop3s")
	c.cmd("USER " + testUser)
	if got := c.cmd("PASS " + testPass); got != "+OK Logged in" && !strings.HasPrefix(got, "+OK") {
		t.Errorf("login = %q", got)
	}
}

// TestMaxLoginFailures: the connection closes after max_login_failures
// failed logins; before that the client may try again and succeed.
func TestMaxLoginFailures(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.MaxLoginFailures = 3 }})
	c := h.dial("pop3s")
	for range 2 {
		c.cmd("USER " + testUser)
		if got := c.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("wrong password = %q", got)
		}
	}
	c.login()
	c.cmd("QUIT")

	c = h.dial("pop3s")
	for i := range 3 {
		c.cmd("USER " + testUser)
		if got := c.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("attempt %d = %q", i+1, got)
		}
	}
	c.eof()
}

// TestPipelining: commands written in one go behind the login all reach
// the backend in order and all get their answers (RFC 2449 §6.6).
func TestPipelining(t *testing.T) {
	h := newHarness(t, harnessOpts{backendMode: TLSStartTLS})
	for _, name := range []string{"pop3s", "plain"} {
		c := h.dial(name)
		c.send("USER " + testUser + "\r\nPASS " + testPass + "\r\nSTAT\r\nLIST\r\nUIDL 1\r\nQUIT\r\n")
		c.expect("+OK")    // USER
		c.expect("+OK")    // PASS
		c.expect("+OK 2 ") // STAT
		c.expect("+OK")    // LIST
		if got := c.multi(); len(got) != 2 {
			t.Errorf("%s: LIST = %q", name, got)
		}
		c.expect("+OK 1 ") // UIDL 1
		c.expect("+OK")    // QUIT
		c.eof()
	}
}

// TestDropWithoutQuit: a client that vanishes after DELE leaves the mailbox
// untouched, and popgate sends no QUIT of its own (RFC 1939 §6).
func TestDropWithoutQuit(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.dial("pop3s")
	c.login()
	if got := c.cmd("DELE 1"); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("DELE 1 = %q", got)
	}
	c.conn.Close()
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
	if n := len(h.backend.Messages(testUser)); n != 2 {
		t.Errorf("mailbox has %d messages after DELE without QUIT, want 2", n)
	}
	if slices.Contains(h.backend.Commands(), "QUIT") {
		t.Errorf("backend got QUIT: %q", h.backend.Commands())
	}

	// Shutdown must not QUIT either.
	c = h.dial("pop3s")
	c.login()
	c.cmd("DELE 1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no grace at all
	h.srv.Shutdown(ctx)
	c.eof()
	if n := len(h.backend.Messages(testUser)); n != 2 {
		t.Errorf("mailbox has %d messages after shutdown, want 2", n)
	}
	if slices.Contains(h.backend.Commands(), "QUIT") {
		t.Errorf("backend got QUIT: %q", h.backend.Commands())
	}
}

// TestBackendFailures: an unreachable, silent, misbehaving or non-STLS
// backend refuses the login with -ERR [SYS/TEMP] and never receives a
// password in clear.
func TestBackendFailures(t *testing.T) {
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	cases := []struct {
		name    string
		mode    TLSMode
		backend func(*pop3test.Server)
		config  func(*Config)
		log     string
	}{
		{"down", TLSNone, nil, func(c *Config) { c.Backends["b1"].Address = closedPort }, "connection refused"},
		{"no STLS offered", TLSStartTLS, func(s *pop3test.Server) { s.STLS = false }, nil, "does not offer STLS"},
		{"STLS response injection", TLSStartTLS, func(s *pop3test.Server) { s.InjectAfterSTLS = "+OK injected\r\n" }, nil, "possible injection"},
		{"untrusted certificate", TLSImplicit, nil, func(c *Config) {
			c.Backends["b1"].TLSConfig = newTLSPair(t, "other.test").client
		}, "certificate"},
		{"wrong name", TLSStartTLS, nil, func(c *Config) {
			tc := c.Backends["b1"].TLSConfig.Clone()
			tc.ServerName = "wrong.test"
			c.Backends["b1"].TLSConfig = tc
		}, "certificate"},
		{"silent", TLSNone, func(s *pop3test.Server) { s.Silent = true }, func(c *Config) { c.Backends["b1"].Timeout = 100 * time.Millisecond }, "timeout"},
		{"bad greeting", TLSNone, func(s *pop3test.Server) { s.Greeting = "" }, func(c *Config) {
			c.Backends["b1"].Address = startFake(t, "-ERR go away\r\n")
		}, "greeting is not +OK"},
		{"unknown backend", TLSNone, nil, func(c *Config) { c.Router = auth.NewStatic(nil, nil, "nope") }, "unknown backend"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{backendMode: tc.mode, backend: tc.backend, config: tc.config})
			c := h.dial("pop3s")
			c.t = t
			c.cmd("USER " + testUser)
			if got := c.cmd("PASS " + testPass); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
				t.Errorf("login = %q, want -ERR [SYS/TEMP]", got)
			}
			for _, cmd := range h.backend.Commands() {
				if strings.HasPrefix(cmd, "USER") || strings.HasPrefix(cmd, "PASS") || strings.HasPrefix(cmd, "AUTH") {
					t.Errorf("backend received %q", cmd)
				}
			}
			if !strings.Contains(h.logs.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, h.logs)
			}
		})
	}
}

// startFake serves every connection with a fixed reply and closes it.
func startFake(t *testing.T, reply string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// TestBadInput: over-long lines and junk get -ERR without killing the
// session; a flood of junk closes it.
func TestBadInput(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.dial("plain")
	if got := c.cmd(strings.Repeat("A", 253)); !strings.HasPrefix(got, "-ERR") || strings.Contains(got, "too long") {
		t.Errorf("253+2-octet line = %q, want an ordinary -ERR", got)
	}
	if got := c.cmd("NOOP " + strings.Repeat("x", 250)); !strings.Contains(got, "too long") {
		t.Errorf("256-octet line = %q, want -ERR Line too long", got)
	}
	if got := c.cmd("USER " + strings.Repeat("x", 1<<20)); !strings.Contains(got, "too long") {
		t.Errorf("1 MiB line = %q, want -ERR Line too long", got)
	}
	if got := c.cmd("noop"); got != "+OK" {
		t.Errorf("NOOP after long lines = %q", got)
	}
	if got := c.cmd("STAT"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("STAT before login = %q", got)
	}
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	for range 3 {
		c.expect("-ERR")
	}
	c.send(strings.Repeat("\x16\x03\x01junk\r\n", maxBadCommands))
	for {
		l := c.line()
		if strings.Contains(l, "Too many bad commands") {
			break
		}
	}
	c.eof()
}

// TestLoginTimeout: login_timeout bounds the whole AUTHORIZATION state,
// however the client trickles.
func TestLoginTimeout(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.LoginTimeout = 300 * time.Millisecond }})
	c := h.dial("plain")
	// Keep sending NOOPs: activity does not extend the deadline.
	for range 1000 {
		c.send("NOOP\r\n")
		c.deadline()
		l, err := c.br.ReadString('\n')
		if err != nil || strings.Contains(l, "Login timeout") {
			// Either the goodbye arrived, or the close raced our
			// NOOP and reset the connection: the session ended.
			waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
			if !strings.Contains(h.logs.String(), "result=timeout") {
				t.Errorf("log does not say timeout:\n%s", h.logs)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("session outlived login_timeout by far")
}

// TestIdleTimeout: a logged-in session with no traffic either way is closed
// after idle_timeout, without QUIT.
func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.IdleTimeout = 200 * time.Millisecond }})
	c := h.dial("pop3s")
	c.login()
	c.cmd("DELE 1")
	c.eof()
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
	if !strings.Contains(h.logs.String(), "end=\"idle timeout\"") {
		t.Errorf("log does not record the idle timeout:\n%s", h.logs)
	}
	if n := len(h.backend.Messages(testUser)); n != 2 || slices.Contains(h.backend.Commands(), "QUIT") {
		t.Errorf("mailbox has %d messages, backend commands %q", n, h.backend.Commands())
	}
}

// TestHalfClose: a client that half-closes after its commands still gets
// every answer (here a large RETR).
func TestHalfClose(t *testing.T) {
	big := pop3test.GenerateMessage(1 << 20)
	h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {
		s.Mailboxes[testUser].Messages = [][]byte{big}
	}})
	c := h.dial("plain")
	c.send("USER " + testUser + "\r\nPASS " + testPass + "\r\nRETR 1\r\n")
	c.conn.(*net.TCPConn).CloseWrite()
	c.expect("+OK")
	c.expect("+OK")
	c.expect(fmt.Sprintf("+OK %d octets", len(big)))
	got := readDotStuffed(t, c)
	if !bytes.Equal(got, big) {
		t.Errorf("RETR after half-close: got %d octets, want %d identical", len(got), len(big))
	}
	c.eof()
}

// readDotStuffed reads a multi-line body and undoes the dot-stuffing,
// returning the message with CRLF line ends.
func readDotStuffed(t testing.TB, c *client) []byte {
	var out bytes.Buffer
	for {
		l := c.line()
		if l == "." {
			return out.Bytes()
		}
		out.WriteString(strings.TrimPrefix(l, "."))
		out.WriteString("\r\n")
	}
}

// TestLargeRetr: 10 MiB through TLS on both sides arrives byte-identical,
// and DropAfterBytes mid-RETR ends the client's session cleanly.
func TestLargeRetr(t *testing.T) {
	big := pop3test.GenerateMessage(10 << 20)
	h := newHarness(t, harnessOpts{backendMode: TLSImplicit, backend: func(s *pop3test.Server) {
		s.Mailboxes[testUser].Messages = [][]byte{big}
	}})
	c := h.dial("pop3s")
	c.login()
	c.send("RETR 1\r\n")
	c.expect(fmt.Sprintf("+OK %d octets", len(big)))
	if got := readDotStuffed(t, c); !bytes.Equal(got, big) {
		t.Fatalf("RETR 1: got %d octets, want %d identical", len(got), len(big))
	}
	c.cmd("QUIT")
	c.eof()

	h = newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {
		s.Mailboxes[testUser].Messages = [][]byte{big}
		s.DropAfterBytes = 100000
	}})
	c = h.dial("pop3s")
	c.login()
	c.send("RETR 1\r\n")
	c.deadline()
	n, _ := io.Copy(io.Discard, c.br)
	if n != 100000 {
		t.Errorf("client got %d octets before the drop, want 100000", n)
	}
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
}

// TestIdleHoldsNoBuffer: logged-in sessions that sit idle hold no splice
// buffer; all are back in the pool.
func TestIdleHoldsNoBuffer(t *testing.T) {
	big := pop3test.GenerateMessage(200 << 10)
	h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {
		s.Mailboxes = map[string]*pop3test.Mailbox{}
		for i := range 100 {
			s.Mailboxes[fmt.Sprint("u", i)] = &pop3test.Mailbox{Password: testPass, Messages: [][]byte{big}}
		}
	}, config: func(c *Config) { c.Router = auth.NewStatic(nil, nil, "b1") }})
	var clients []*client
	for i := range 100 {
		name := "pop3s"
		if i%2 == 1 {
			name = "plain"
		}
		c := h.dial(name)
		c.send(fmt.Sprintf("USER u%d\r\nPASS %s\r\nRETR 1\r\n", i, testPass))
		c.expect("+OK")
		c.expect("+OK")
		c.expect("+OK")
		if got := readDotStuffed(t, c); len(got) != len(big) {
			t.Fatalf("RETR: %d octets, want %d", len(got), len(big))
		}
		clients = append(clients, c)
	}
	// All 100 sessions are now idle after a transfer that borrowed buffers.
	waitFor(t, "splice buffers back in the pool", func() bool {
		return h.srv.bufs.borrowed.Load() == 0 && h.srv.rawBufs.borrowed.Load() == 0 && h.srv.batchBufs.borrowed.Load() == 0
	})
	if n := h.srv.Sessions(); n != 100 {
		t.Errorf("%d live sessions, want 100", n)
	}
	for _, c := range clients {
		if got := c.cmd("NOOP"); got != "+OK" {
			t.Errorf("NOOP after idling = %q", got)
		}
	}
}

// TestALPN: a TLS client that offers only other protocols is refused
// (ALPACA); one that offers pop3, or nothing, is served.
func TestALPN(t *testing.T) {
	ts, err := tlsconf.NewServer(tlsconf.ServerConfig{DefaultServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOpts{listeners: []Listener{{Name: "pop3s", TLS: TLSImplicit, TLSConfig: ts.TLSConfig()}}})
	for _, tc := range []struct {
		protos []string
		ok     bool
	}{{nil, true}, {[]string{"pop3"}, true}, {[]string{"http/1.1", "pop3"}, true}, {[]string{"http/1.1"}, false}, {[]string{"imap"}, false}} {
		cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: tc.protos}
		conn, err := tls.Dial("tcp", h.addrs["pop3s"], cfg)
		if (err == nil) != tc.ok {
			t.Errorf("ALPN %q: handshake error %v, want ok=%v", tc.protos, err, tc.ok)
		}
		if err == nil {
			conn.Close()
		}
	}
}

// TestACMEALPNClosed: a handshake that negotiates acme-tls/1 (a CA's
// TLS-ALPN-01 validation, or a client offering it beside a foreign
// protocol) is closed without a greeting, on POP3S and after STLS; one
// that offers pop3 too gets pop3 and is served.
func TestACMEALPNClosed(t *testing.T) {
	front := newTLSPair(t, "localhost")
	srvCfg := front.server.Clone()
	srvCfg.NextProtos = []string{"pop3", alpnACME} // as tlsconf offers them where TLS-ALPN-01 is answered
	h := newHarness(t, harnessOpts{listeners: []Listener{
		{Name: "pop3s", TLS: TLSImplicit, TLSConfig: srvCfg},
		{Name: "pop3", TLS: TLSStartTLS, TLSConfig: srvCfg},
	}})
	for _, tc := range []struct {
		name     string
		listener string
		protos   []string
		served   bool
	}{
		{"pop3s acme-tls/1", "pop3s", []string{alpnACME}, false},
		{"pop3s acme-tls/1 and foreign", "pop3s", []string{alpnACME, "imap"}, false},
		{"pop3s acme-tls/1 and pop3", "pop3s", []string{alpnACME, "pop3"}, true},
		{"stls acme-tls/1", "pop3", []string{alpnACME}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", h.addrs[tc.listener])
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := &client{t: t, conn: raw, br: bufio.NewReader(raw)}
			cfg := front.client.Clone()
			cfg.NextProtos = tc.protos
			if tc.listener == "pop3" {
				c.expect("+OK")
				c.send("STLS\r\n")
				c.stls(cfg)
			} else {
				tc := tls.Client(raw, cfg)
				c.deadline()
				if err := tc.Handshake(); err != nil {
					t.Fatalf("handshake: %v", err)
				}
				c.conn, c.br = tc, bufio.NewReader(tc)
			}
			st := c.conn.(*tls.Conn).ConnectionState()
			if !tc.served {
				if st.NegotiatedProtocol != alpnACME {
					t.Fatalf("ALPN %q negotiated %q, want %q", tc.protos, st.NegotiatedProtocol, alpnACME)
				}
				c.deadline()
				if rest, err := io.ReadAll(c.br); len(rest) > 0 || err != nil && !isClosedErr(err) {
					t.Errorf("after an acme-tls/1 handshake the server sent %q (%v), want it closed without a greeting", rest, err)
				}
				return
			}
			if st.NegotiatedProtocol != "pop3" {
				t.Errorf("ALPN %q negotiated %q, want pop3", tc.protos, st.NegotiatedProtocol)
			}
			c.expect("+OK")
			c.login()
			c.cmd("QUIT")
		})
	}
	waitFor(t, "three session end lines with result=acme_tls_alpn", func() bool {
		return strings.Count(h.logs.String(), "result="+resultACMEALPN) == 3
	})
}

// TestBackendCapsCache: a second login skips CAPA; a backend that stops
// offering STLS while its capabilities are cached still never gets a
// password in clear.
func TestBackendCapsCache(t *testing.T) {
	h := newHarness(t, harnessOpts{backendMode: TLSStartTLS})
	for range 2 {
		c := h.dial("pop3s")
		c.login()
		c.cmd("QUIT")
		c.eof()
	}
	capas := 0
	for _, cmd := range h.backend.Commands() {
		if cmd == "CAPA" {
			capas++
		}
	}
	if capas != 2 { // once before and once after STLS, on the first login only
		t.Errorf("backend got %d CAPA for two logins, want 2: %q", capas, h.backend.Commands())
	}

	// Replace the backend by one without STLS on the same address.
	addr := h.srv.config().Backends["b1"].Address
	h.backend.Close()
	plain := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{testUser: {Password: testPass}}}
	if _, err := plain.Start(addr); err != nil {
		t.Fatalf("cannot rebind %s: %v", addr, err)
	}
	t.Cleanup(func() { plain.Close() })
	c := h.dial("pop3s")
	c.cmd("USER " + testUser)
	if got := c.cmd("PASS " + testPass); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("login = %q, want -ERR [SYS/TEMP]", got)
	}
	for _, cmd := range plain.Commands() {
		if !slices.Contains([]string{"STLS", "CAPA"}, cmd) {
			t.Errorf("backend without STLS received %q", cmd)
		}
	}
	// The failure forgot the cache: the next login asks CAPA again and
	// refuses before STLS.
	c.cmd("USER " + testUser)
	c.cmd("PASS " + testPass)
	if !slices.Contains(plain.Commands(), "CAPA") {
		t.Errorf("no CAPA after the failed login: %q", plain.Commands())
	}
}

// TestAuthzID: a SASL PLAIN authorization identity other than the user is
// refused unless the route's backend relays it; then popgate logs in with
// AUTH PLAIN carrying it (a master user opening a mailbox).
func TestAuthzID(t *testing.T) {
	const master, masterPass = "admin", "master-PASSWORD-never-logged"
	ir := b64(testUser + "\x00" + master + "\x00" + masterPass)
	for _, relay := range []bool{false, true} {
		h := newHarness(t, harnessOpts{
			backend: func(s *pop3test.Server) {
				s.SASL = []string{"PLAIN"}
				s.MasterUsers = map[string]string{master: masterPass}
			},
			config: func(c *Config) {
				c.Router = auth.NewStatic(nil, nil, "b1")
				c.Backends["b1"].RelayAuthzID = relay
			},
		})
		c := h.dial("pop3s")
		got := c.cmd("AUTH PLAIN " + ir)
		if !relay {
			if !strings.HasPrefix(got, "-ERR [AUTH]") {
				t.Errorf("without relay: login = %q, want -ERR [AUTH]", got)
			}
			if n := len(h.backend.Commands()); n != 0 {
				t.Errorf("without relay the backend got %q", h.backend.Commands())
			}
			continue
		}
		if !strings.HasPrefix(got, "+OK") {
			t.Fatalf("with relay: login = %q", got)
		}
		if got := c.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
			t.Errorf("STAT in alice's mailbox = %q", got)
		}
		if !slices.Contains(h.backend.Commands(), "AUTH PLAIN ***") {
			t.Errorf("backend commands %q lack AUTH PLAIN", h.backend.Commands())
		}
		c.cmd("QUIT")
		if strings.Contains(h.logs.String(), masterPass) {
			t.Error("master password in the log")
		}
	}
}

func TestCipherSuiteName(t *testing.T) {
	var ids []uint16
	for _, c := range tls.CipherSuites() {
		ids = append(ids, c.ID)
	}
	for _, c := range tls.InsecureCipherSuites() {
		ids = append(ids, c.ID)
	}
	ids = append(ids, 0x0000, 0xfefe) // unknown to crypto/tls
	for _, id := range ids {
		if got, want := cipherSuiteName(id), tls.CipherSuiteName(id); got != want {
			t.Errorf("cipherSuiteName(%#04x) = %q, want %q", id, got, want)
		}
	}
	if n := testing.AllocsPerRun(10, func() { cipherSuiteName(tls.TLS_AES_128_GCM_SHA256) }); n != 0 {
		t.Errorf("cipherSuiteName allocates %v times per call, want 0", n)
	}
}
