package pop3test

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testUser = "alice"
	testPass = "s3cret pass" // a space: PASS takes the rest of the line
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// client is a minimal POP3 client for driving the server.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func newClient(t *testing.T, c net.Conn) *client {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s+"\r\n"); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// cmd sends a command and returns the status line.
func (c *client) cmd(s string) string {
	c.t.Helper()
	c.send(s)
	return c.line()
}

// want sends a command and checks the status line starts with prefix.
func (c *client) want(s, prefix string) string {
	c.t.Helper()
	got := c.cmd(s)
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("%s = %q, want prefix %q", redact(s), got, prefix)
	}
	return got
}

// body reads a dot-stuffed multi-line body and returns it unstuffed.
func (c *client) body() []byte {
	c.t.Helper()
	var b bytes.Buffer
	start := true // at the start of a line
	for {
		l, err := c.r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			c.t.Fatalf("read body: %v", err)
		}
		if start && string(l) == ".\r\n" {
			return b.Bytes()
		}
		if start && len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		b.Write(l)
		start = err == nil
	}
}

func (c *client) lines() []string {
	c.t.Helper()
	s := strings.TrimSuffix(string(c.body()), "\r\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\r\n")
}

func (c *client) login(user, pass string) {
	c.t.Helper()
	c.want("USER "+user, "+OK")
	c.want("PASS "+pass, "+OK")
}

// transport connects a client to s over net.Pipe or loopback TCP.
type transport struct {
	name string
	dial func(t *testing.T, s *Server) net.Conn
}

var transports = []transport{
	{"pipe", func(t *testing.T, s *Server) net.Conn {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() { defer close(done); s.ServeConn(b) }()
		t.Cleanup(func() { a.Close(); <-done })
		return a
	}},
	{"loopback", func(t *testing.T, s *Server) net.Conn {
		s.mu.Lock()
		var addr net.Addr
		for ln := range s.listeners {
			addr = ln.Addr()
		}
		s.mu.Unlock()
		if addr == nil { // first dial: start listening
			var err error
			if addr, err = s.Start("127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
		}
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}},
}

func newServer(t *testing.T, s *Server) *Server {
	t.Helper()
	if s.Mailboxes == nil {
		mb := SampleMailbox()
		mb.Password = testPass
		s.Mailboxes = map[string]*Mailbox{testUser: mb}
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// connect dials s and reads the greeting.
func connect(t *testing.T, tr transport, s *Server) *client {
	t.Helper()
	c := newClient(t, tr.dial(t, s))
	if g := c.line(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting = %q", g)
	}
	return c
}

func forEachTransport(t *testing.T, f func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { f(t, tr) })
	}
}

func TestLogin(t *testing.T) {
	tests := []struct {
		name   string
		srv    *Server
		cmds   []string // all but the last must succeed
		want   string   // prefix of the last reply
		logins int
	}{
		{"user pass", &Server{}, []string{"USER alice", "PASS " + testPass}, "+OK maildrop locked", 1},
		{"lower case", &Server{}, []string{"user alice", "pass " + testPass}, "+OK", 1},
		{"wrong password", &Server{}, []string{"USER alice", "PASS nope"}, "-ERR [AUTH] Authentication failed", 0},
		{"unknown user", &Server{}, []string{"USER bob", "PASS " + testPass}, "-ERR [AUTH] Authentication failed", 0},
		{"user case matters", &Server{}, []string{"USER Alice", "PASS " + testPass}, "-ERR [AUTH] Authentication failed", 0},
		{"pass without user", &Server{}, []string{"PASS " + testPass}, "-ERR", 0},
		{"NoUSER user", &Server{NoUSER: true}, []string{"USER alice"}, "-ERR", 0},
		{"LoginError", &Server{LoginError: "[IN-USE] mailbox locked"}, []string{"USER alice", "PASS " + testPass}, "-ERR [IN-USE] mailbox locked", 0},
		{"LoginError wrong password", &Server{LoginError: "[SYS/TEMP] x"}, []string{"USER alice", "PASS x"}, "-ERR [AUTH]", 0},
		{"plain ir", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN " + b64("\x00alice\x00"+testPass)}, "+OK", 1},
		{"plain authzid", &Server{SASL: []string{"PLAIN"}}, []string{"auth plain " + b64("alice\x00alice\x00"+testPass)}, "+OK", 1},
		{"plain other authzid", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN " + b64("bob\x00alice\x00"+testPass)}, "-ERR [AUTH]", 0},
		{"plain continuation", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN", b64("\x00alice\x00" + testPass)}, "+OK", 1},
		{"plain wrong", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN", b64("\x00alice\x00bad")}, "-ERR [AUTH] Authentication failed", 0},
		{"plain empty ir", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN ="}, "-ERR [AUTH]", 0},
		{"plain empty continuation", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN", ""}, "-ERR [AUTH]", 0},
		{"plain cancel", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN", "*"}, "-ERR", 0},
		{"plain bad base64", &Server{SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN !!!"}, "-ERR", 0},
		{"plain not offered", &Server{}, []string{"AUTH PLAIN " + b64("\x00alice\x00"+testPass)}, "-ERR", 0},
		{"mech offered not implemented", &Server{SASL: []string{"CRAM-MD5"}}, []string{"AUTH CRAM-MD5"}, "-ERR", 0},
		{"login", &Server{SASL: []string{"PLAIN", "LOGIN"}}, []string{"AUTH LOGIN", b64("alice"), b64(testPass)}, "+OK", 1},
		{"login ir", &Server{SASL: []string{"LOGIN"}}, []string{"AUTH LOGIN " + b64("alice"), b64(testPass)}, "+OK", 1},
		{"NoUSER plain", &Server{NoUSER: true, SASL: []string{"PLAIN"}}, []string{"AUTH PLAIN " + b64("\x00alice\x00"+testPass)}, "+OK", 1},
		{"LoginError plain", &Server{SASL: []string{"PLAIN"}, LoginError: "[SYS/TEMP] try later"}, []string{"AUTH PLAIN " + b64("\x00alice\x00"+testPass)}, "-ERR [SYS/TEMP] try later", 0},
		{"quit", &Server{}, []string{"QUIT"}, "+OK", 0},
		{"unknown", &Server{}, []string{"FOO"}, "-ERR", 0},
		{"transaction command before login", &Server{}, []string{"STAT"}, "-ERR", 0},
		{"apop unsupported", &Server{}, []string{"APOP alice c4c9334bac560ecc979e58001b3e22fb"}, "-ERR", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			forEachTransport(t, func(t *testing.T, tr transport) {
				s := newServer(t, &Server{NoUSER: tc.srv.NoUSER, SASL: tc.srv.SASL, LoginError: tc.srv.LoginError})
				c := connect(t, tr, s)
				var got string
				for i, cmd := range tc.cmds {
					got = c.cmd(cmd)
					if i < len(tc.cmds)-1 && !strings.HasPrefix(got, "+") {
						t.Fatalf("%s = %q, want +", redact(cmd), got)
					}
				}
				if !strings.HasPrefix(got, tc.want) {
					t.Fatalf("last reply = %q, want prefix %q", got, tc.want)
				}
				if got := s.Logins(); got != tc.logins {
					t.Errorf("Logins() = %d, want %d", got, tc.logins)
				}
			})
		})
	}
}

func TestAuthFailureKeepsAuthorization(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{SASL: []string{"PLAIN"}})
		c := connect(t, tr, s)
		c.want("USER alice", "+OK")
		c.want("PASS wrong", "-ERR [AUTH]")
		c.want("AUTH PLAIN", "+ ")
		c.want("*", "-ERR")
		c.want("STAT", "-ERR")
		c.want("USER alice", "+OK")
		c.want("CAPA", "+OK")
		c.lines()
		c.want("PASS "+testPass, "-ERR send USER first") // PASS must follow USER
		c.login("alice", testPass)
		c.want("STAT", "+OK 3 ")
		c.want("USER alice", "-ERR") // not valid in TRANSACTION
	})
}

func TestTransaction(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{})
		msgs := s.Mailboxes[testUser].Messages
		total := 0
		for _, m := range msgs {
			total += len(m)
		}
		c := connect(t, tr, s)
		c.login(testUser, testPass)

		c.want("STAT", fmt.Sprintf("+OK 3 %d", total))
		c.want("LIST", "+OK 3 messages")
		var want []string
		for i, m := range msgs {
			want = append(want, fmt.Sprintf("%d %d", i+1, len(m)))
		}
		if got := c.lines(); !slices.Equal(got, want) {
			t.Fatalf("LIST = %q, want %q", got, want)
		}
		c.want("list 2", fmt.Sprintf("+OK 2 %d", len(msgs[1])))
		c.want("UIDL", "+OK")
		uids := c.lines()
		if len(uids) != 3 {
			t.Fatalf("UIDL = %q", uids)
		}
		c.want("UIDL 3", "+OK "+uids[2])

		for i, m := range msgs {
			c.want(fmt.Sprintf("RETR %d", i+1), fmt.Sprintf("+OK %d octets", len(m)))
			if got := c.body(); !bytes.Equal(got, m) {
				t.Fatalf("RETR %d = %q, want %q", i+1, got, m)
			}
		}
		// The second sample message has a lone "." line; check the wire form.
		c.send("RETR 2")
		c.line()
		var wire []string
		for {
			l := c.line()
			if l == "." {
				break
			}
			wire = append(wire, l)
		}
		if !slices.Contains(wire, "..") || !slices.Contains(wire, "..env") || !slices.Contains(wire, "...and nothing that starts with two dots.") {
			t.Fatalf("RETR 2 not dot-stuffed: %q", wire)
		}

		c.want("TOP 2 0", "+OK")
		head, _, _ := bytes.Cut(msgs[1], []byte("\r\n\r\n"))
		if got, want := string(c.body()), string(head)+"\r\n\r\n"; got != want {
			t.Fatalf("TOP 2 0 = %q, want %q", got, want)
		}
		c.want("TOP 2 4", "+OK")
		if got := c.lines(); got[len(got)-1] != ".env" {
			t.Fatalf("TOP 2 4 ends with %q, want .env", got[len(got)-1])
		}
		c.want("TOP 1 1000", "+OK")
		if got := c.body(); !bytes.Equal(got, msgs[0]) {
			t.Fatalf("TOP 1 1000 = %q", got)
		}

		for _, bad := range []string{"RETR 0", "RETR 4", "RETR", "RETR x", "RETR +1", "RETR 1 2", "LIST 9", "UIDL -1", "TOP 1", "TOP 1 -1", "DELE 4", "XYZZY", "STLS", "PASS x"} {
			c.want(bad, "-ERR")
		}
		c.want("NOOP", "+OK")
		c.want("DELE 1", "+OK")
		c.want("DELE 1", "-ERR")
		c.want("RETR 1", "-ERR")
		c.want("LIST 1", "-ERR")
		c.want("STAT", fmt.Sprintf("+OK 2 %d", total-len(msgs[0])))
		c.want("LIST", "+OK 2 messages")
		if got := c.lines(); len(got) != 2 || !strings.HasPrefix(got[0], "2 ") {
			t.Fatalf("LIST after DELE = %q", got)
		}
		c.want("RSET", "+OK maildrop has 3 messages")
		c.want("RETR 1", "+OK")
		c.body()
		c.want("QUIT", "+OK")
		if got := len(s.Messages(testUser)); got != 3 {
			t.Errorf("after RSET and QUIT, %d messages, want 3", got)
		}
		if got := s.Quits(); got != 1 {
			t.Errorf("Quits() = %d, want 1", got)
		}
	})
}

func TestDeleCommitsOnlyOnQuit(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{})
		orig := s.Mailboxes[testUser].Messages

		// Session 1 deletes and disconnects without QUIT.
		c := connect(t, tr, s)
		c.login(testUser, testPass)
		c.want("DELE 1", "+OK")
		c.want("DELE 3", "+OK")
		c.conn.Close()

		// Session 2 can log in once session 1 has released the lock,
		// sees all messages, deletes two and QUITs.
		c2 := connect(t, tr, s)
		for {
			c2.want("USER alice", "+OK")
			r := c2.cmd("PASS " + testPass)
			if strings.HasPrefix(r, "+OK") {
				break
			}
			if !strings.HasPrefix(r, "-ERR [IN-USE]") {
				t.Fatalf("PASS = %q", r)
			}
			time.Sleep(time.Millisecond) // session 1 is still being torn down
		}
		c2.want("STAT", "+OK 3 ")
		c2.want("DELE 1", "+OK")
		c2.want("DELE 2", "+OK")
		c2.want("QUIT", "+OK pop3test signing off (1 messages left)")
		if got := s.Messages(testUser); len(got) != 1 || !bytes.Equal(got[0], orig[2]) {
			t.Fatalf("Messages = %q, want only message 3", got)
		}
		if got := s.Quits(); got != 1 {
			t.Errorf("Quits() = %d, want 1", got)
		}
		// The caller's Mailbox is untouched.
		if len(s.Mailboxes[testUser].Messages) != 3 {
			t.Errorf("Mailbox.Messages modified")
		}

		// A new session sees the committed state; UIDs are stable.
		c3 := connect(t, tr, s)
		c3.login(testUser, testPass)
		c3.want("STAT", fmt.Sprintf("+OK 1 %d", len(orig[2])))
		c3.want("UIDL 1", "+OK 1 "+uniqueID(2, orig[2]))
	})
}

func TestDeleWithoutQuitAfterClose(t *testing.T) {
	s := newServer(t, &Server{})
	c := connect(t, transports[0], s)
	c.login(testUser, testPass)
	c.want("DELE 2", "+OK")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(s.Messages(testUser)); got != 3 {
		t.Fatalf("after Close without QUIT, %d messages, want 3", got)
	}
	if s.Messages("nobody") != nil {
		t.Error("Messages(unknown) != nil")
	}
}

func TestInUse(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{SASL: []string{"PLAIN"}})
		c1 := connect(t, tr, s)
		c1.login(testUser, testPass)
		c2 := connect(t, tr, s)
		c2.want("USER alice", "+OK")
		c2.want("PASS "+testPass, "-ERR [IN-USE]")
		c2.want("AUTH PLAIN "+b64("\x00alice\x00"+testPass), "-ERR [IN-USE]")
		c2.want("USER alice", "+OK")
		c2.want("PASS wrong", "-ERR [AUTH]") // credentials checked first
		c1.want("QUIT", "+OK")
		c2.login(testUser, testPass)
		if got := s.Logins(); got != 2 {
			t.Errorf("Logins() = %d, want 2", got)
		}
	})
}

func TestCAPA(t *testing.T) {
	tlsConf, _ := testTLS(t)
	tests := []struct {
		name string
		srv  *Server
		want []string
	}{
		{"default", &Server{}, []string{"USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "IMPLEMENTATION pop3test"}},
		{"sasl stls", &Server{SASL: []string{"PLAIN", "LOGIN"}, STLS: true, TLSConfig: tlsConf}, []string{"USER", "SASL PLAIN LOGIN", "STLS", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "IMPLEMENTATION pop3test"}},
		{"NoUSER", &Server{NoUSER: true, SASL: []string{"PLAIN"}}, []string{"SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "IMPLEMENTATION pop3test"}},
		{"STLS without TLSConfig", &Server{STLS: true}, []string{"USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "IMPLEMENTATION pop3test"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, &Server{NoUSER: tc.srv.NoUSER, SASL: tc.srv.SASL, STLS: tc.srv.STLS, TLSConfig: tc.srv.TLSConfig})
			c := connect(t, transports[0], s)
			c.want("capa", "+OK")
			if got := c.lines(); !slices.Equal(got, tc.want) {
				t.Fatalf("CAPA = %q, want %q", got, tc.want)
			}
			if !slices.Contains(tc.want, "STLS") {
				c.want("STLS", "-ERR")
			}
			if !tc.srv.NoUSER {
				c.login(testUser, testPass)
				c.want("CAPA", "+OK")
				want := []string{"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "IMPLEMENTATION pop3test"}
				if got := c.lines(); !slices.Equal(got, want) {
					t.Fatalf("CAPA in TRANSACTION = %q, want %q", got, want)
				}
			}
		})
	}
}

// testTLS returns a server config with a fresh self-signed ECDSA
// certificate and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pop3test.example"},
		DNSNames:     []string{"pop3test.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool, ServerName: "pop3test.example"}
	return server, client
}

// startTLS runs the client side of STLS's handshake on c's raw conn.
func (c *client) startTLS(conf *tls.Config) {
	c.t.Helper()
	if n := c.r.Buffered(); n > 0 {
		c.t.Fatalf("%d octets buffered before the TLS handshake", n)
	}
	tc := tls.Client(c.conn, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

func TestSTLS(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		srvConf, cliConf := testTLS(t)
		s := newServer(t, &Server{STLS: true, TLSConfig: srvConf, InjectAfterSTLS: "+OK injected\r\n"})
		c := connect(t, tr, s)
		c.want("USER alice", "+OK")
		// "USER x" pipelined after STLS must be discarded, never parsed.
		if _, err := io.WriteString(c.conn, "STLS\r\nUSER x\r\n"); err != nil {
			t.Fatal(err)
		}
		if got := c.line(); got != "+OK Begin TLS negotiation" {
			t.Fatalf("STLS = %q", got)
		}
		if got := c.line(); got != "+OK injected" { // InjectAfterSTLS
			t.Fatalf("after STLS got %q, want the injected line", got)
		}
		c.startTLS(cliConf)
		// The session restarts in AUTHORIZATION: neither the USER before
		// STLS nor the injected one counts.
		c.want("PASS "+testPass, "-ERR")
		c.want("CAPA", "+OK")
		if got := c.lines(); slices.Contains(got, "STLS") || !slices.Contains(got, "USER") {
			t.Fatalf("CAPA after STLS = %q", got)
		}
		c.want("STLS", "-ERR")
		c.login(testUser, testPass)
		c.want("RETR 2", "+OK")
		if got := c.body(); !bytes.Equal(got, s.Mailboxes[testUser].Messages[1]) {
			t.Fatalf("RETR 2 over TLS = %q", got)
		}
		c.want("QUIT", "+OK")
		want := []string{"USER alice", "STLS", "PASS ***", "CAPA", "STLS", "USER alice", "PASS ***", "RETR 2", "QUIT"}
		if got := s.Commands(); !slices.Equal(got, want) {
			t.Fatalf("Commands() = %q, want %q", got, want)
		}
	})
}

func TestImplicitTLS(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		srvConf, cliConf := testTLS(t)
		s := newServer(t, &Server{Implicit: true, STLS: true, TLSConfig: srvConf, Greeting: "hello"})
		tc := tls.Client(tr.dial(t, s), cliConf)
		c := newClient(t, tc)
		if g := c.line(); g != "+OK hello" {
			t.Fatalf("greeting = %q", g)
		}
		if !tc.ConnectionState().HandshakeComplete {
			t.Fatal("handshake not complete")
		}
		c.want("CAPA", "+OK")
		if got := c.lines(); slices.Contains(got, "STLS") {
			t.Fatalf("CAPA on implicit TLS offers STLS: %q", got)
		}
		c.want("STLS", "-ERR")
		c.login(testUser, testPass)
		c.want("QUIT", "+OK")
	})
}

func TestDropAfterBytes(t *testing.T) {
	msg := GenerateMessage(5000)
	var full bytes.Buffer
	fmt.Fprintf(&full, "+OK %d octets\r\n", len(msg))
	writeStuffed(&full, msg, -1)
	full.WriteString(".\r\n")
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{
			DropAfterBytes: 1000,
			Mailboxes:      map[string]*Mailbox{testUser: {Password: testPass, Messages: [][]byte{msg}}},
		})
		c := connect(t, tr, s)
		c.login(testUser, testPass)
		c.want("LIST", "+OK") // other responses are not affected
		c.lines()
		c.send("RETR 1")
		got, err := io.ReadAll(c.r)
		if err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got, full.Bytes()[:1000]) {
			t.Fatalf("got %d octets, want the first 1000 of the response", len(got))
		}
	})
}

func TestLineTooLong(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{})
		c := connect(t, tr, s)
		// 255 octets with CRLF: accepted (RFC 2449 §4).
		c.want("USER "+strings.Repeat("u", MaxLineLength-2-5), "+OK")
		// 256 octets with CRLF: refused, and the session goes on.
		c.want("USER "+strings.Repeat("u", MaxLineLength-1-5), "-ERR line too long")
		c.want("PASS x", "-ERR send USER first") // the long USER did not count
		// Far longer than the read buffer.
		c.want("NOOP "+strings.Repeat("x", 100000), "-ERR line too long")
		c.want("USER alice", "+OK")
		c.want("PASS "+testPass, "+OK")
		for _, cmd := range s.Commands() {
			if len(cmd) > MaxLineLength {
				t.Errorf("recorded a %d-octet command", len(cmd))
			}
		}
	})
}

func TestCommandsRedactionAndLog(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	s := newServer(t, &Server{
		SASL: []string{"PLAIN", "LOGIN"},
		Logf: func(format string, args ...any) {
			mu.Lock()
			logs = append(logs, fmt.Sprintf(format, args...))
			mu.Unlock()
		},
	})
	c := connect(t, transports[1], s)
	c.want("USER alice", "+OK")
	c.want("pass wrong-one", "-ERR")
	c.want("AUTH PLAIN "+b64("\x00alice\x00wrong-two"), "-ERR")
	c.want("AUTH PLAIN", "+ ")
	c.want(b64("\x00alice\x00wrong-three"), "-ERR")
	c.want("AUTH LOGIN", "+ "+b64("Username:"))
	c.want(b64("alice"), "+ "+b64("Password:"))
	c.want(b64("wrong-four"), "-ERR")
	c.want("PASS", "-ERR")
	c.login(testUser, testPass)
	c.want("QUIT", "+OK")
	want := []string{
		"USER alice", "pass ***", "AUTH PLAIN ***", "AUTH PLAIN", "***",
		"AUTH LOGIN", "***", "***", "PASS", "USER alice", "PASS ***", "QUIT",
	}
	if got := s.Commands(); !slices.Equal(got, want) {
		t.Fatalf("Commands() = %q, want %q", got, want)
	}
	s.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(logs) == 0 {
		t.Fatal("Logf never called")
	}
	all := strings.Join(logs, "\n")
	for _, secret := range []string{"wrong-", testPass, b64("alice"), b64("\x00alice")} {
		if strings.Contains(all, secret) {
			t.Errorf("log contains %q:\n%s", secret, all)
		}
	}
}

func TestPipelining(t *testing.T) {
	s := newServer(t, &Server{})
	c := connect(t, transports[1], s)
	var batch strings.Builder
	fmt.Fprintf(&batch, "USER alice\r\nPASS %s\r\nSTAT\r\n", testPass)
	for range 50 {
		batch.WriteString("RETR 2\r\nNOOP\r\n")
	}
	batch.WriteString("QUIT\r\n")
	if _, err := io.WriteString(c.conn, batch.String()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"+OK", "+OK", "+OK 3 "} {
		if got := c.line(); !strings.HasPrefix(got, p) {
			t.Fatalf("got %q, want %q", got, p)
		}
	}
	for range 50 {
		if got := c.line(); !strings.HasPrefix(got, "+OK") {
			t.Fatalf("RETR = %q", got)
		}
		if got := c.body(); !bytes.Equal(got, s.Mailboxes[testUser].Messages[1]) {
			t.Fatalf("RETR body = %q", got)
		}
		if got := c.line(); got != "+OK" {
			t.Fatalf("NOOP = %q", got)
		}
	}
	if got := c.line(); !strings.HasPrefix(got, "+OK pop3test signing off") {
		t.Fatalf("QUIT = %q", got)
	}
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("after QUIT: %v, want EOF", err)
	}
}

func TestLargeRETR(t *testing.T) {
	size := 10 << 20
	if testing.Short() {
		size = 1 << 20
	}
	msg := GenerateMessage(size)
	forEachTransport(t, func(t *testing.T, tr transport) {
		s := newServer(t, &Server{Mailboxes: map[string]*Mailbox{"big": {Password: "pw", Messages: [][]byte{msg}}}})
		c := connect(t, tr, s)
		c.login("big", "pw")
		c.want("RETR 1", fmt.Sprintf("+OK %d octets", size))
		if got := c.body(); !bytes.Equal(got, msg) {
			t.Fatalf("RETR of %d octets not byte-identical (got %d octets)", size, len(got))
		}
	})
}

func TestGenerateMessage(t *testing.T) {
	for _, size := range []int{0, 100, 300, 301, 302, 1000, 4097, 1 << 20} {
		m := GenerateMessage(size)
		if !bytes.Equal(m, GenerateMessage(size)) {
			t.Fatalf("GenerateMessage(%d) not deterministic", size)
		}
		if size > 400 && len(m) != size {
			t.Errorf("len(GenerateMessage(%d)) = %d", size, len(m))
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) || bytes.Contains(bytes.ReplaceAll(m, []byte("\r\n"), nil), []byte("\n")) {
			t.Errorf("GenerateMessage(%d): bad line endings", size)
		}
		if size >= 1000 && (!bytes.Contains(m, []byte("\r\n.\r\n")) || !bytes.Contains(m, []byte("\r\n..line"))) {
			t.Errorf("GenerateMessage(%d) lacks dot lines", size)
		}
	}
}

func TestGreetingDelayAndSilent(t *testing.T) {
	t.Run("delay", func(t *testing.T) {
		s := newServer(t, &Server{GreetingDelay: 20 * time.Millisecond})
		c := connect(t, transports[1], s)
		c.want("CAPA", "+OK")
	})
	for _, srv := range []*Server{{GreetingDelay: time.Hour}, {Silent: true}} {
		t.Run(fmt.Sprintf("close delay=%v silent=%v", srv.GreetingDelay, srv.Silent), func(t *testing.T) {
			s := newServer(t, srv)
			for _, tr := range transports {
				c := newClient(t, tr.dial(t, s))
				c.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if srv.Silent {
					c.send("CAPA") // read and discarded
				}
				var ne net.Error
				if _, err := c.r.ReadByte(); !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("%s: read = %v, want timeout", tr.name, err)
				}
			}
			done := make(chan error)
			go func() { done <- s.Close() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not return")
			}
		})
	}
}

func TestServeAndClose(t *testing.T) {
	s := &Server{Mailboxes: map[string]*Mailbox{"demo": SampleMailbox()}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, conn)
	if g := c.line(); !strings.HasPrefix(g, "+OK POP3 server ready <") || !strings.HasSuffix(g, "@pop3test>") {
		t.Fatalf("greeting = %q", g)
	}
	c.login("demo", SamplePassword)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v, want ErrServerClosed", err)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Fatal("connection still open after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Start("127.0.0.1:0"); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Start after Close = %v", err)
	}
	a, b := net.Pipe()
	s.ServeConn(b) // returns at once
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("ServeConn after Close left the conn open")
	}
}

func BenchmarkRETR10MiB(b *testing.B) {
	msg := GenerateMessage(10 << 20)
	s := &Server{Mailboxes: map[string]*Mailbox{"big": {Password: "pw", Messages: [][]byte{msg}}}}
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 64<<10)
	io.WriteString(conn, "USER big\r\nPASS pw\r\n")
	for range 3 {
		r.ReadString('\n')
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		io.WriteString(conn, "RETR 1\r\n")
		for {
			l, err := r.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				b.Fatal(err)
			}
			if string(l) == ".\r\n" {
				break
			}
		}
	}
}
