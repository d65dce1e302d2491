package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// switchBackend is a backend address whose behaviour a test switches: it
// hands each connection to the current serve function and counts them.
type switchBackend struct {
	ln    net.Listener
	serve atomic.Pointer[func(net.Conn)]
	conns atomic.Int64
	wg    sync.WaitGroup
}

func newSwitchBackend(t *testing.T, serve func(net.Conn)) *switchBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sb := &switchBackend{ln: ln}
	sb.set(serve)
	sb.wg.Add(1)
	go func() {
		defer sb.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sb.conns.Add(1)
			f := *sb.serve.Load()
			sb.wg.Add(1)
			go func() {
				defer sb.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				f(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); sb.wg.Wait() })
	return sb
}

func (sb *switchBackend) set(serve func(net.Conn)) { sb.serve.Store(&serve) }
func (sb *switchBackend) addr() string             { return sb.ln.Addr().String() }

// errGreeting answers with -ERR, as a backend that is shutting down.
func errGreeting(c net.Conn) { io.WriteString(c, "-ERR [SYS/TEMP] shutting down\r\n") }

// healthOf returns the state of address addr of backend b, or fails.
func healthOf(t *testing.T, srv *Server, b, addr string) BackendHealth {
	t.Helper()
	for _, h := range srv.BackendHealth() {
		if h.Backend == b && h.Address == addr {
			return h
		}
	}
	t.Fatalf("no health of %s %s in %+v", b, addr, srv.BackendHealth())
	return BackendHealth{}
}

// checked reports whether address addr of backend b has been checked.
func checked(srv *Server, b, addr string) bool {
	for _, h := range srv.BackendHealth() {
		if h.Backend == b && h.Address == addr {
			return !h.LastCheck.IsZero()
		}
	}
	return false
}

// newMailServer starts a pop3test server with the test user, closed at the
// end of the test.
func newMailServer(t *testing.T) *pop3test.Server {
	t.Helper()
	s := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{testUser: {Password: testPass}}}
	t.Cleanup(func() { s.Close() })
	return s
}

// loginOK logs in through the plain listener and quits.
func (h *harness) loginOK() {
	h.t.Helper()
	c := h.dial("plain")
	c.login()
	c.cmd("QUIT")
	c.eof()
}

// TestHealthDownAndUpAgain: an address that fails HealthFailures checks in
// a row turns down, logged once, and logins skip it for the fallback even
// though its backend would have answered them (a connection that stands
// is never retried elsewhere, so a -ERR greeting would have failed them);
// once a check passes it is up again, logged once, and logins return to it.
func TestHealthDownAndUpAgain(t *testing.T) {
	primary := newMailServer(t)
	sb := newSwitchBackend(t, primary.ServeConn)
	var fallback string
	h := newHarness(t, harnessOpts{
		listeners: []Listener{{Name: "plain", TLS: TLSNone}},
		config: func(c *Config) {
			b := c.Backends["b1"]
			fallback = b.Address
			b.Fallbacks = []string{b.Address}
			b.Address = sb.addr()
			b.HealthInterval = 20 * time.Millisecond
			b.HealthFailures = 3
			b.HealthTimeout = 2 * time.Second
		},
	})
	waitFor(t, "a first check", func() bool { return checked(h.srv, "b1", sb.addr()) })
	if st := healthOf(t, h.srv, "b1", sb.addr()); !st.Up || st.LastErr != "" || st.Index != 0 {
		t.Fatalf("primary after a good check: %+v", st)
	}
	h.loginOK()
	if primary.Logins() != 1 {
		t.Fatalf("primary logins = %d, want 1", primary.Logins())
	}

	sb.set(errGreeting)
	waitFor(t, "the primary down", func() bool { return !healthOf(t, h.srv, "b1", sb.addr()).Up })
	st := healthOf(t, h.srv, "b1", sb.addr())
	if st.Failures < 3 || !strings.Contains(st.LastErr, "greeting is not +OK") {
		t.Errorf("down primary: %+v", st)
	}
	if fb := healthOf(t, h.srv, "b1", fallback); !fb.Up || fb.Index != 1 {
		t.Errorf("fallback: %+v", fb)
	}
	// More failed checks do not log again.
	waitFor(t, "two more failed checks", func() bool { return healthOf(t, h.srv, "b1", sb.addr()).Failures >= st.Failures+2 })
	h.loginOK()
	if primary.Logins() != 1 || h.backend.Logins() != 1 {
		t.Fatalf("logins: primary %d, fallback %d; want the fallback's", primary.Logins(), h.backend.Logins())
	}

	sb.set(primary.ServeConn)
	waitFor(t, "the primary up again", func() bool { return healthOf(t, h.srv, "b1", sb.addr()).Up })
	if st := healthOf(t, h.srv, "b1", sb.addr()); st.Failures != 0 || st.LastErr != "" {
		t.Errorf("primary up again: %+v", st)
	}
	h.loginOK()
	if primary.Logins() != 2 {
		t.Fatalf("primary logins = %d, want 2", primary.Logins())
	}
	logs := h.logs.String()
	if n := strings.Count(logs, "backend address down"); n != 1 {
		t.Errorf("%d lines say the address is down, want 1:\n%s", n, logs)
	}
	if n := strings.Count(logs, "backend address up again"); n != 1 {
		t.Errorf("%d lines say the address is up again, want 1:\n%s", n, logs)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "backend address down") && !strings.Contains(l, "level=WARN") ||
			strings.Contains(l, "up again") && !strings.Contains(l, "level=INFO") {
			t.Errorf("wrong level: %s", l)
		}
	}
	// The checks never logged in.
	for _, cmd := range primary.Commands() {
		if !strings.HasPrefix(cmd, "QUIT") && !strings.HasPrefix(cmd, "USER") && !strings.HasPrefix(cmd, "PASS") && !strings.HasPrefix(cmd, "CAPA") {
			t.Errorf("unexpected command %q", cmd)
		}
	}
}

// markDownOnce runs one check that fails (HealthFailures 1) and leaves the
// next for an hour later: the address stays down whatever it does next.
func markDownOnce(b *Backend) {
	b.HealthInterval = time.Hour
	b.HealthFailures = 1
	b.HealthTimeout = 2 * time.Second
}

// TestHealthOrder: logins try the addresses that are up in their order,
// then those that are down; with all of them down, every address is still
// tried in the configured order: a check alone never refuses a login.
func TestHealthOrder(t *testing.T) {
	for _, tc := range []struct {
		name     string
		down     []int // which of the three addresses fail their check
		wantUsed int   // the address the login goes to
	}{
		{"first down", []int{0}, 1},
		{"first two down", []int{0, 1}, 2},
		{"middle down", []int{1}, 0},
		{"all down", []int{0, 1, 2}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mail [3]*pop3test.Server
			var sbs [3]*switchBackend
			for i := range sbs {
				mail[i] = newMailServer(t)
				sbs[i] = newSwitchBackend(t, mail[i].ServeConn)
			}
			for _, i := range tc.down {
				sbs[i].set(errGreeting)
			}
			h := newHarness(t, harnessOpts{
				listeners: []Listener{{Name: "plain", TLS: TLSNone}},
				config: func(c *Config) {
					b := c.Backends["b1"]
					b.Address = sbs[0].addr()
					b.Fallbacks = []string{sbs[1].addr(), sbs[2].addr()}
					markDownOnce(b)
				},
			})
			for i := range sbs {
				waitFor(t, "a first check", func() bool { return checked(h.srv, "b1", sbs[i].addr()) })
			}
			for i := range sbs {
				sbs[i].set(mail[i].ServeConn) // all would serve now
			}
			h.loginOK()
			for i := range mail {
				want := 0
				if i == tc.wantUsed {
					want = 1
				}
				if got := mail[i].Logins(); got != want {
					t.Errorf("address %d: %d logins, want %d", i, got, want)
				}
			}
		})
	}
}

// TestHealthAllDownUnreachable: with every address down, a login still
// connects to each in order until one answers.
func TestHealthAllDownUnreachable(t *testing.T) {
	mail := newMailServer(t)
	sb := newSwitchBackend(t, errGreeting)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	h := newHarness(t, harnessOpts{
		listeners: []Listener{{Name: "plain", TLS: TLSNone}},
		config: func(c *Config) {
			b := c.Backends["b1"]
			b.Address = closedAddr
			b.Fallbacks = []string{sb.addr()}
			markDownOnce(b)
		},
	})
	waitFor(t, "both addresses down", func() bool {
		return checked(h.srv, "b1", closedAddr) && checked(h.srv, "b1", sb.addr()) && !healthOf(t, h.srv, "b1", closedAddr).Up && !healthOf(t, h.srv, "b1", sb.addr()).Up
	})
	sb.set(mail.ServeConn)
	h.loginOK()
	if mail.Logins() != 1 {
		t.Fatalf("logins = %d, want 1", mail.Logins())
	}
}

// TestHealthHostileBackends: every way a backend can fail a check turns
// it down within the timeout, and the reason says what happened.
func TestHealthHostileBackends(t *testing.T) {
	back := newTLSPair(t, "backend.test")
	stranger := newTLSPair(t, "backend.test") // same name, another key
	for _, tc := range []struct {
		name    string
		tls     TLSMode
		serve   func(net.Conn)
		wantErr string
	}{
		{"err greeting", TLSNone, errGreeting, "greeting is not +OK"},
		{"silent", TLSNone, func(c net.Conn) { io.Copy(io.Discard, c) }, "timed out"},
		{"greeting never ends", TLSNone, func(c net.Conn) {
			io.WriteString(c, "+OK ")
			for {
				if _, err := io.WriteString(c, strings.Repeat("x", 100)); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}, "timed out"},
		{"huge line", TLSNone, func(c net.Conn) {
			io.WriteString(c, "+OK "+strings.Repeat("x", 1<<20)+"\r\n")
		}, "too long"},
		{"slow greeting", TLSNone, func(c net.Conn) {
			time.Sleep(2 * time.Second)
			io.WriteString(c, "+OK late\r\n")
		}, "timed out"},
		{"closes at once", TLSNone, func(c net.Conn) {}, "greeting"},
		{"no TLS on implicit", TLSImplicit, func(c net.Conn) { io.WriteString(c, "+OK plaintext\r\n") }, "TLS handshake"},
		{"untrusted certificate", TLSImplicit, func(c net.Conn) {
			s := &pop3test.Server{TLSConfig: stranger.server, Implicit: true}
			s.ServeConn(c)
		}, "TLS handshake"},
		{"STLS refused", TLSStartTLS, func(c net.Conn) {
			io.WriteString(c, "+OK hi\r\n")
			io.ReadFull(c, make([]byte, 6))
			io.WriteString(c, "-ERR no TLS here\r\n")
		}, "STLS refused"},
		{"data before TLS", TLSStartTLS, func(c net.Conn) {
			io.WriteString(c, "+OK hi\r\n")
			io.ReadFull(c, make([]byte, 6))
			io.WriteString(c, "+OK go\r\n+OK injected\r\n")
		}, "injection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := newSwitchBackend(t, tc.serve)
			h := newHarness(t, harnessOpts{
				listeners: []Listener{{Name: "plain", TLS: TLSNone}},
				config: func(c *Config) {
					c.Backends["b1"] = &Backend{Name: "b1", Address: sb.addr(), TLS: tc.tls, TLSConfig: back.client,
						HealthInterval: time.Hour, HealthFailures: 1, HealthTimeout: 300 * time.Millisecond}
				},
			})
			waitFor(t, "a check", func() bool { return checked(h.srv, "b1", sb.addr()) })
			st := healthOf(t, h.srv, "b1", sb.addr())
			if st.Up || !strings.Contains(st.LastErr, tc.wantErr) {
				t.Errorf("got %+v, want down with %q", st, tc.wantErr)
			}
			if st.Latency > 5*time.Second {
				t.Errorf("the check took %v", st.Latency)
			}
		})
	}
}

// TestHealthCheckSpeaksLikeALogin: a check does what a login does before
// the credentials (PROXY header, STLS, TLS), then QUITs; it never sends
// a user name or password.
func TestHealthCheckSpeaksLikeALogin(t *testing.T) {
	for _, tc := range []struct {
		mode  TLSMode
		proxy ClientAddressMode
	}{
		{TLSNone, ClientAddressNone},
		{TLSStartTLS, ClientAddressProxyV1},
		{TLSImplicit, ClientAddressProxyV2},
	} {
		t.Run(tc.mode.String()+"/"+tc.proxy.String(), func(t *testing.T) {
			h := newHarness(t, harnessOpts{
				backendMode: tc.mode,
				backend:     func(s *pop3test.Server) { s.ProxyHeader = tc.proxy != ClientAddressNone },
				listeners:   []Listener{{Name: "plain", TLS: TLSNone}},
				config: func(c *Config) {
					b := c.Backends["b1"]
					b.ClientAddress = tc.proxy
					b.HealthInterval = 20 * time.Millisecond
				},
			})
			waitFor(t, "three checks", func() bool { return countPrefix(h.backend.Commands(), "QUIT") >= 3 })
			if st := healthOf(t, h.srv, "b1", h.srv.config().Backends["b1"].Address); !st.Up || st.LastErr != "" {
				t.Fatalf("health: %+v", st)
			}
			cmds := h.backend.Commands()
			for _, c := range cmds {
				if strings.HasPrefix(c, "USER") || strings.HasPrefix(c, "PASS") || strings.HasPrefix(c, "AUTH") {
					t.Errorf("a check sent %q", c)
				}
			}
			if tc.mode == TLSStartTLS && countPrefix(cmds, "STLS") < 3 {
				t.Errorf("no STLS in %q", cmds)
			}
			if tc.proxy != ClientAddressNone && countPrefix(cmds, "PROXY LOCAL") < 3 {
				t.Errorf("no LOCAL PROXY header in %q", cmds)
			}
		})
	}
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// TestHealthReconfigure: a reload's backends replace the checked set, an
// address that stays keeps its state, checks off stops every check, and
// no goroutine is left behind, neither then nor after Close.
func TestHealthReconfigure(t *testing.T) {
	base := runtime.NumGoroutine()
	bad := newSwitchBackend(t, errGreeting)
	good := newMailServer(t)
	goodAddr, err := good.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mk := func(interval time.Duration, addrs ...string) map[string]*Backend {
		m := map[string]*Backend{}
		for i, a := range addrs {
			name := "b" + string(rune('1'+i))
			m[name] = &Backend{Name: name, Address: a, HealthInterval: interval, HealthFailures: 1}
		}
		return m
	}
	cfg := Config{
		Router:   auth.NewStatic(nil, nil, "b1"),
		Backends: mk(20*time.Millisecond, bad.addr(), goodAddr.String(), "127.0.0.1:1"),
		Logger:   slog.New(slog.DiscardHandler),
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(srv.BackendHealth()); n != 0 {
		t.Fatalf("%d addresses checked before Serve", n)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln, Listener{Name: "plain"}) }()
	waitFor(t, "three addresses checked", func() bool {
		list := srv.BackendHealth()
		if len(list) != 3 {
			return false
		}
		for _, h := range list {
			if h.LastCheck.IsZero() {
				return false
			}
		}
		return true
	})
	if st := healthOf(t, srv, "b1", bad.addr()); st.Up {
		t.Fatalf("bad address up: %+v", st)
	}
	withChecks := runtime.NumGoroutine()

	// b1 stays (its state with it), b2 and b3 go, b9 comes.
	cfg.Backends = mk(time.Hour, bad.addr())
	cfg.Backends["b9"] = &Backend{Name: "b9", Address: goodAddr.String(), HealthInterval: time.Hour}
	if err := srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	list := srv.BackendHealth()
	if len(list) != 2 || list[0].Backend != "b1" || list[0].Up || list[1].Backend != "b9" {
		t.Fatalf("after the reload: %+v", list)
	}
	waitFor(t, "b9 checked", func() bool { return checked(srv, "b9", goodAddr.String()) })
	waitFor(t, "the checks of the removed addresses to end", func() bool { return runtime.NumGoroutine() <= withChecks-1 })

	cfg.Backends = mk(0, bad.addr())
	if err := srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.BackendHealth()); n != 0 {
		t.Fatalf("%d addresses checked with checks off", n)
	}
	cfg.Backends = mk(20*time.Millisecond, bad.addr(), goodAddr.String())
	if err := srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "checks on again", func() bool { return len(srv.BackendHealth()) == 2 })
	srv.Close()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
	if n := len(srv.BackendHealth()); n != 0 {
		t.Errorf("%d addresses checked after Close", n)
	}
	// Reconfigure after Close starts nothing.
	if err := srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	good.Close()
	waitFor(t, "every goroutine to end", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestHealthOff: without HealthInterval nothing is checked and nobody
// connects to the backend before a login.
func TestHealthOff(t *testing.T) {
	sb := newSwitchBackend(t, errGreeting)
	h := newHarness(t, harnessOpts{
		listeners: []Listener{{Name: "plain", TLS: TLSNone}},
		config:    func(c *Config) { c.Backends["b1"].Fallbacks = []string{sb.addr()} },
	})
	h.loginOK()
	if n := len(h.srv.BackendHealth()); n != 0 {
		t.Errorf("%d addresses checked", n)
	}
	if n := sb.conns.Load(); n != 0 {
		t.Errorf("%d connections to the fallback", n)
	}
}

// TestHealthStopsAtShutdown: the checks end when the drain begins, while
// sessions still run, and none is made again.
func TestHealthStopsAtShutdown(t *testing.T) {
	h := newHarness(t, harnessOpts{
		listeners: []Listener{{Name: "plain", TLS: TLSNone}},
		config:    func(c *Config) { c.Backends["b1"].HealthInterval = 20 * time.Millisecond },
	})
	addr := h.srv.config().Backends["b1"].Address
	waitFor(t, "a first check", func() bool { return checked(h.srv, "b1", addr) })
	c := h.dial("plain")
	c.login()
	done := h.shutdownAsync()
	if n := len(h.srv.BackendHealth()); n != 0 {
		t.Errorf("%d addresses checked while draining", n)
	}
	quits := countPrefix(h.backend.Commands(), "QUIT")
	// A reload during the drain starts nothing.
	if err := h.srv.Reconfigure(*h.srv.config()); err != nil {
		t.Fatal(err)
	}
	if n := len(h.srv.BackendHealth()); n != 0 {
		t.Errorf("%d addresses checked after a reload while draining", n)
	}
	if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
		t.Errorf("STAT while draining: %q", resp)
	}
	if got := countPrefix(h.backend.Commands(), "QUIT"); got != quits {
		t.Errorf("%d more checks while draining", got-quits)
	}
	c.cmd("QUIT")
	c.eof()
	drained(t, done)
}
