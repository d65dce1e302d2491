package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// recorder is an Observer that keeps every event as a string.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func (r *recorder) Accepted(l string)           { r.add("accepted %s", l) }
func (r *recorder) Refused(l, reason string)    { r.add("refused %s %s", l, reason) }
func (r *recorder) TLSHandshakeFailed(l string) { r.add("tls_failed %s", l) }
func (r *recorder) Login(l, result string)      { r.add("login %s %s", l, result) }
func (r *recorder) TLSHandshake(l string, v, c uint16, _ bool) {
	r.add("tls %s %x %x", l, v, c)
}
func (r *recorder) BackendConnect(b string, _ time.Duration, err error) {
	r.add("connect %s %v", b, err == nil)
}
func (r *recorder) BackendLogin(b string, _ time.Duration, result string) {
	r.add("backend_login %s %s", b, result)
}
func (r *recorder) SessionEnd(l string, _ time.Duration, in, out int64) {
	r.add("session_end %s %d %d", l, in, out)
}

func TestObserverEvents(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Observer = rec
		c.Backends["down"] = &Backend{Name: "down", Address: "127.0.0.1:1"}
		c.Router = auth.NewStatic(map[string]string{testUser: "b1", "down@example.com": "down"}, nil, "")
		c.MaxLoginFailures = 10
	}})

	// A TLS client that logs in, fails once first, reads, and quits.
	c := h.dial("pop3s")
	c.send("USER " + testUser + "\r\n")
	c.expect("+OK")
	c.send("PASS wrong\r\n")
	c.expect("-ERR")
	c.send("USER nobody@example.com\r\nPASS x\r\n")
	c.expect("+OK")
	c.expect("-ERR [AUTH]")
	c.send("USER down@example.com\r\nPASS x\r\n")
	c.expect("+OK")
	c.expect("-ERR [SYS/TEMP]")
	c.login()
	c.cmd("RETR 1")
	c.multi()
	c.cmd("QUIT")
	c.eof()
	waitFor(t, "session end", func() bool { return rec.count("session_end") == 1 })

	for _, want := range []string{
		"accepted pop3s",
		"tls pop3s 304 ", // TLS 1.3
		"login pop3s auth_failed",
		"login pop3s no_route",
		"login pop3s backend_error",
		"login pop3s ok",
		"backend_login b1 rejected",
		"backend_login b1 ok",
		"backend_login down unreachable",
		"connect down false",
		"session_end pop3s ",
	} {
		if rec.count(want) != 1 {
			t.Errorf("%q seen %d times, want once; events:\n%s", want, rec.count(want), strings.Join(rec.events, "\n"))
		}
	}
	if n := rec.count("connect b1 true"); n != 2 {
		t.Errorf("connect b1 seen %d times, want 2 (two logins)", n)
	}
	// RETR 1 through the splice: the octets the session counted.
	rec.mu.Lock()
	end := rec.events[slices.IndexFunc(rec.events, func(e string) bool { return strings.HasPrefix(e, "session_end") })]
	rec.mu.Unlock()
	var in, out int64
	fmt.Sscanf(end, "session_end pop3s %d %d", &in, &out)
	if in != int64(len("RETR 1\r\nQUIT\r\n")) || out < 20 {
		t.Errorf("session end %q: want in=%d and out > 20", end, len("RETR 1\r\nQUIT\r\n"))
	}
	st := h.srv.Stats()
	if st.BytesIn != in || st.BytesOut != out || st.Relaying != 0 || st.Active["pop3s"] != 0 || len(st.Active) != 3 {
		t.Errorf("Stats after the session = %+v, want bytes %d/%d and the three listeners with nothing live", st, in, out)
	}

	// A failed handshake, and a refusal by max_connections.
	raw, err := net.Dial("tcp", h.addrs["pop3s"])
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("not a client hello\r\n"))
	raw.Close()
	waitFor(t, "handshake failure", func() bool { return rec.count("tls_failed pop3s") == 1 })
}

func TestRefusedObserved(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Observer = rec
		c.MaxConnectionsPerIP = 1
	}})
	c := h.dial("plain")
	c2, err := net.Dial("tcp", h.addrs["plain"])
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitFor(t, "refusal", func() bool { return rec.count("refused plain max_connections_per_ip") == 1 })
	c.cmd("QUIT")
}

// TestStatsAndSessionList follows two live sessions through Stats and
// SessionList.
func TestStatsAndSessionList(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	a := h.dial("pop3s")
	a.login()
	a.cmd("STAT")
	b := h.dial("plain")
	b.send("USER " + testUser + "\r\n")
	b.expect("+OK")

	waitFor(t, "two sessions", func() bool { return len(h.srv.SessionList()) == 2 })
	list := h.srv.SessionList()
	if list[0].State != "relaying" || list[0].User != testUser || list[0].Backend != "b1" ||
		list[0].Listener != "pop3s" || list[0].TLSVersion != "TLS 1.3" || list[0].BytesIn != int64(len("STAT\r\n")) || list[0].BytesOut == 0 {
		t.Errorf("first session = %+v", list[0])
	}
	// USER alone is no login attempt yet: no user, no backend.
	if list[1].State != "authorization" || list[1].User != "" || list[1].Backend != "" || list[1].TLSVersion != "" || !list[1].Client.Addr().IsLoopback() {
		t.Errorf("second session = %+v", list[1])
	}
	if list[0].ID == list[1].ID || list[0].Started.After(list[1].Started) {
		t.Errorf("ids %q %q, started %v %v", list[0].ID, list[1].ID, list[0].Started, list[1].Started)
	}
	st := h.srv.Stats()
	if st.Relaying != 1 || st.Active["pop3s"] != 1 || st.Active["plain"] != 1 || st.BytesIn != list[0].BytesIn {
		t.Errorf("Stats = %+v", st)
	}
}

// TestEndSessions ends a user's sessions: both sockets close, the backend
// sees no QUIT (so nothing is deleted), other users' sessions go on.
func TestEndSessions(t *testing.T) {
	h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {
		s.Mailboxes["bob@example.com"] = &pop3test.Mailbox{Password: testPass, Messages: [][]byte{[]byte("Subject: b\r\n\r\nb\r\n")}}
	}, config: func(c *Config) {
		c.Router = auth.NewStatic(map[string]string{testUser: "b1", "bob@example.com": "b1"}, nil, "")
	}})
	h.srv.parkAfter = 10 * time.Millisecond
	a := h.dial("pop3s")
	a.login()
	a.cmd("DELE 1")
	waitFor(t, "the session to park", func() bool { return h.srv.Parked() == 2 })
	bob := h.dial("plain")
	bob.send("USER bob@example.com\r\nPASS " + testPass + "\r\n")
	bob.expect("+OK")
	bob.expect("+OK")
	// A session of the same user still logging in is ended too.
	pending := h.dial("plain")
	pending.send("USER " + strings.ToUpper(testUser) + "\r\nPASS wrong\r\n")
	pending.expect("+OK")
	pending.expect("-ERR")

	if n := h.srv.EndSessions("nobody@example.com"); n != 0 {
		t.Errorf("EndSessions(nobody) = %d", n)
	}
	if n := h.srv.EndSessions(testUser); n != 2 {
		t.Errorf("EndSessions(%s) = %d, want 2", testUser, n)
	}
	a.eof()
	pending.eof()
	waitFor(t, "sessions to end", func() bool { return len(h.srv.SessionList()) == 1 })
	if got := bob.cmd("STAT"); !strings.HasPrefix(got, "+OK 1 ") {
		t.Errorf("bob's session after ending alice's: STAT = %q", got)
	}
	if h.backend.Quits() != 0 {
		t.Errorf("backend saw %d QUITs; ending a session must not send QUIT", h.backend.Quits())
	}
	if n := len(h.backend.Messages(testUser)); n != 2 {
		t.Errorf("alice has %d messages after the ended session, want 2 (DELE without QUIT commits nothing)", n)
	}
	if !strings.Contains(h.logs.String(), "ended_by=admin") {
		t.Errorf("no session end line says ended_by=admin:\n%s", h.logs.String())
	}
	id := h.srv.SessionList()[0].ID
	if h.srv.EndSession("nope") || !h.srv.EndSession(id) {
		t.Errorf("EndSession by id did not end exactly bob's session")
	}
	bob.eof()
}

// TestReconfigure: a new configuration routes new logins; a session that
// started before keeps its backend; an invalid configuration is refused.
func TestReconfigure(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	second := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		testUser: {Password: testPass, Messages: [][]byte{[]byte("Subject: moved\r\n\r\nmoved\r\n"), []byte("x\r\n"), []byte("y\r\n")}},
	}}
	addr, err := second.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })

	before := h.dial("plain")
	before.login()

	cfg := *h.srv.config()
	cfg.Backends = map[string]*Backend{"b2": {Name: "b2", Address: addr.String()}}
	cfg.Router = auth.NewStatic(map[string]string{testUser: "b2"}, nil, "")
	cfg.Greeting = "new config"
	bad := cfg
	bad.Router = nil
	if err := h.srv.Reconfigure(bad); err == nil {
		t.Fatal("Reconfigure accepted a config without a router")
	}
	if err := h.srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	after := h.dial("plain")
	after.login()
	if got := after.cmd("STAT"); !strings.HasPrefix(got, "+OK 3 ") {
		t.Errorf("login after Reconfigure: STAT = %q, want the new backend's 3 messages", got)
	}
	if got := before.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Errorf("session from before Reconfigure: STAT = %q, want the old backend's 2 messages", got)
	}
	before.cmd("QUIT")
	after.cmd("QUIT")
}

// TestUpdateListener changes a listener's settings while it serves.
func TestUpdateListener(t *testing.T) {
	h := newHarness(t, harnessOpts{listeners: []Listener{{Name: "p", TLS: TLSNone}}})
	before := h.dial("p")
	var ln net.Listener
	h.srv.mu.Lock()
	for l := range h.srv.listeners {
		ln = l
	}
	h.srv.mu.Unlock()
	if err := h.srv.UpdateListener(ln, Listener{Name: "p", TLS: TLSStartTLS}); err == nil {
		t.Fatal("UpdateListener accepted STLS without a TLS config")
	}
	if err := h.srv.UpdateListener(ln, Listener{Name: "p2", TLS: TLSStartTLS, TLSConfig: h.front.server}); err != nil {
		t.Fatal(err)
	}
	c := h.dial("p")
	c.send("USER " + testUser + "\r\n")
	c.expect("-ERR [AUTH] Plaintext login is not allowed")
	c.send("STLS\r\n")
	c.stls(h.front.client)
	c.login()
	c.cmd("QUIT")
	// The connection accepted before keeps the plaintext listener's rules.
	before.login()
	waitFor(t, "the STLS session to end", func() bool { return len(h.srv.SessionList()) == 1 })
	if list := h.srv.SessionList(); len(list) != 1 || list[0].Listener != "p" {
		t.Errorf("sessions = %+v, want the one from before the update, on listener p", list)
	}
}

// TestUpdateListenerBeforeServe: settings given before Serve has
// registered the socket are the ones it serves.
func TestUpdateListenerBeforeServe(t *testing.T) {
	h := newHarness(t, harnessOpts{listeners: []Listener{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.UpdateListener(ln, Listener{Name: "updated", TLS: TLSNone}); err != nil {
		t.Fatal(err)
	}
	go h.srv.Serve(context.Background(), ln, Listener{Name: "original", TLS: TLSNone})
	h.addrs["x"] = ln.Addr().String()
	c := h.dial("x")
	waitFor(t, "the session", func() bool { return len(h.srv.SessionList()) == 1 })
	if got := h.srv.SessionList()[0].Listener; got != "updated" {
		t.Errorf("listener = %q, want the updated settings", got)
	}
	c.cmd("QUIT")
}
