package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// shutdownAsync starts a Shutdown with no deadline and returns what it
// will return, once the drain has begun.
func (h *harness) shutdownAsync() <-chan error {
	h.t.Helper()
	done := make(chan error, 1)
	go func() { done <- h.srv.Shutdown(context.Background()) }()
	waitFor(h.t, "the drain to begin", h.srv.isClosing)
	return done
}

// drained fails unless Shutdown returns nil now that every session has
// ended. The wait is a guard against a hang, not a timing check.
func drained(t testing.TB, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown = %v, want nil: the last session has ended", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown still waits after the last session ended")
	}
}

// splicing returns the session that relays, once there is exactly one.
func (h *harness) splicing() *session {
	h.t.Helper()
	var sess *session
	waitFor(h.t, "one relaying session", func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		sess = nil
		for s := range h.srv.sessions {
			if s.relaying {
				sess = s
			}
		}
		return len(h.srv.sessions) == 1 && sess != nil
	})
	return sess
}

// dirStates returns the states of the client→backend and backend→client
// directions.
func (sess *session) dirStates() (up, down dirState) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.sp.dirs[0] == nil {
		return dirDone, dirDone
	}
	return sess.sp.dirs[0].state, sess.sp.dirs[1].state
}

// TestShutdownRelaying: a logged-in session goes on during the drain
// exactly as before it, whatever its directions were doing when it began
// (waiting in the parker, copying a RETR the client reads slowly, or
// waiting with their own goroutines): the RETR completes, the commands
// after it are answered, the client's QUIT reaches the backend, which
// commits the DELE, and Shutdown returns as soon as the session has ended.
func TestShutdownRelaying(t *testing.T) {
	big := pop3test.GenerateMessage(8 << 20)
	small := []byte("Subject: two\r\n\r\nsecond\r\n")
	cases := []struct {
		name      string
		parkAfter time.Duration
		retr      bool // Shutdown comes while the client reads RETR 1
		up, down  dirState
	}{
		{"idle, both directions parked", 10 * time.Millisecond, false, dirParked, dirParked},
		{"reading, client to backend parked", 10 * time.Millisecond, true, dirParked, dirRunning},
		{"idle, not parked", time.Hour, false, dirRunning, dirRunning},
		{"reading, not parked", time.Hour, true, dirRunning, dirRunning},
	}
	for _, tc := range cases {
		for _, listener := range []string{"pop3s", "plain"} {
			t.Run(tc.name+"/"+listener, func(t *testing.T) {
				if (tc.up == dirParked || tc.down == dirParked) && newParkerErr() != nil {
					t.Skip("parking needs epoll") // never skipped in CI, which runs on Linux
				}
				h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) {
					s.Mailboxes[testUser].Messages = [][]byte{big, small}
				}})
				h.srv.parkAfter = tc.parkAfter
				c := h.dial(listener)
				c.login()
				// The first wait after the login parks whatever
				// parkAfter says; after a command, the directions
				// wait with their goroutines for parkAfter.
				c.cmd("NOOP")
				sess := h.splicing()
				states := func() bool {
					up, down := sess.dirStates()
					return up == tc.up && down == tc.down
				}
				var done <-chan error
				if tc.retr {
					c.send("RETR 1\r\n")
					c.expect(fmt.Sprintf("+OK %d octets", len(big)))
					// Read the beginning only: the rest, more than
					// the sockets between backend and client can
					// hold, keeps backend→client busy.
					var got bytes.Buffer
					for got.Len() < 64<<10 {
						got.WriteString(strings.TrimPrefix(c.line(), "."))
						got.WriteString("\r\n")
					}
					waitFor(t, fmt.Sprintf("directions %v/%v", tc.up, tc.down), states)
					done = h.shutdownAsync()
					got.Write(readDotStuffed(t, c))
					if !bytes.Equal(got.Bytes(), big) {
						t.Fatalf("RETR 1 through the drain: %d octets, want the %d-octet message unchanged", got.Len(), len(big))
					}
				} else {
					waitFor(t, fmt.Sprintf("directions %v/%v", tc.up, tc.down), states)
					done = h.shutdownAsync()
					if got := c.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
						t.Fatalf("STAT during the drain = %q", got)
					}
				}
				if got := c.cmd("DELE 1"); !strings.HasPrefix(got, "+OK") {
					t.Fatalf("DELE 1 during the drain = %q", got)
				}
				if got := c.cmd("QUIT"); !strings.HasPrefix(got, "+OK") {
					t.Fatalf("QUIT during the drain = %q", got)
				}
				c.eof()
				drained(t, done)
				if q := h.backend.Quits(); q != 1 {
					t.Errorf("backend saw %d QUITs, want the client's one", q)
				}
				if msgs := h.backend.Messages(testUser); len(msgs) != 1 || !bytes.Equal(msgs[0], small) {
					t.Errorf("mailbox after the QUIT holds %d messages, want the DELE committed", len(msgs))
				}
				if logs := h.logs.String(); !strings.Contains(logs, `end="backend closed"`) || strings.Contains(logs, "ended_by=") {
					t.Errorf("the session did not end by its QUIT:\n%s", logs)
				}
			})
		}
	}
}

// newParkerErr reports whether this system can park directions.
func newParkerErr() error {
	p, err := newParker()
	if err == nil {
		p.close()
	}
	return err
}

// TestShutdownAuthorization: sessions still in the AUTHORIZATION state
// when the drain begins are closed at once, whatever they wait for (the
// client's next command, the failed-login delay, the router, the backend's
// login), and none of them holds the drain up: Shutdown returns as soon as
// the logged-in session beside them has ended. No backend login survives.
func TestShutdownAuthorization(t *testing.T) {
	const hour = time.Hour // longer than any test runs: only the drain can end these waits
	// slowRouter routes slow@example.com with route, after telling
	// routed; everyone else as the harness does.
	slowRouter := func(c *Config, routed chan<- struct{}, route auth.RouterFunc) {
		static := c.Router
		c.Router = auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
			if req.Credentials.User != "slow@example.com" {
				return static.Route(ctx, req)
			}
			routed <- struct{}{}
			return route(ctx, req)
		})
	}
	slowLogin := func(c *client) {
		c.cmd("USER slow@example.com")
		c.send("PASS " + testPass + "\r\n")
	}
	cases := []struct {
		name   string
		config func(t *testing.T, c *Config, routed chan<- struct{})
		start  func(c *client) // brings the client to where the drain finds it
	}{
		{
			name:  "between commands",
			start: func(c *client) { c.cmd("USER " + testUser) },
		},
		{
			name: "in the failure delay",
			config: func(t *testing.T, c *Config, routed chan<- struct{}) {
				c.FailureDelay, c.LoginTimeout = hour, hour
				slowRouter(c, routed, func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
					return auth.Decision{}, &auth.DeniedError{Reason: "wrong password"}
				})
			},
			start: slowLogin,
		},
		{
			name: "waiting for the router",
			config: func(t *testing.T, c *Config, routed chan<- struct{}) {
				c.LoginTimeout = hour
				slowRouter(c, routed, func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
					<-ctx.Done()
					return auth.Decision{}, ctx.Err()
				})
			},
			start: slowLogin,
		},
		{
			name: "waiting for the backend's login",
			config: func(t *testing.T, c *Config, routed chan<- struct{}) {
				silent := &pop3test.Server{Silent: true}
				addr, err := silent.Start("127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { silent.Close() })
				c.LoginTimeout = hour
				c.Backends["silent"] = &Backend{Name: "silent", Address: addr.String(), Timeout: hour}
				slowRouter(c, routed, func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
					return auth.Decision{Backend: "silent"}, nil
				})
			},
			start: slowLogin,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			routed := make(chan struct{}, 1)
			var opts harnessOpts
			if tc.config != nil {
				opts.config = func(c *Config) { tc.config(t, c, routed) }
			}
			h := newHarness(t, opts)
			logged := h.dial("plain")
			logged.login()
			pending := h.dial("pop3s")
			tc.start(pending)
			if tc.config != nil {
				<-routed
			}
			logins := h.backend.Logins()

			done := h.shutdownAsync()
			pending.eof()
			if got := logged.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
				t.Fatalf("STAT of the logged-in session during the drain = %q", got)
			}
			logged.cmd("QUIT")
			logged.eof()
			drained(t, done)
			if n := h.backend.Logins(); n != logins {
				t.Errorf("backend logins went from %d to %d during the drain", logins, n)
			}
			if !strings.Contains(h.logs.String(), "result=shutdown") || !strings.Contains(h.logs.String(), "ended_by=shutdown") {
				t.Errorf("no session ended with result=shutdown, ended_by=shutdown:\n%s", h.logs)
			}
		})
	}
}

// TestShutdownDeadline: a logged-in session still open when Shutdown's
// context is done is closed, both sockets, without a QUIT (its DELE is not
// committed), and its last log line says the drain ended it.
func TestShutdownDeadline(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.dial("pop3s")
	c.login()
	c.cmd("DELE 1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the grace period is over before it began
	if err := h.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want %v", err, context.Canceled)
	}
	c.eof()
	if q, n := h.backend.Quits(), len(h.backend.Messages(testUser)); q != 0 || n != 2 {
		t.Errorf("backend saw %d QUITs and keeps %d messages, want 0 and 2", q, n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "result=ok") || !strings.Contains(logs, "ended_by=shutdown") {
		t.Errorf("session end line does not say the drain ended it:\n%s", logs)
	}
}

// TestHandOver: after a handover the sessions still logging in are served
// to the end, not closed as Shutdown closes them: the client between USER
// and PASS logs in, reads its mailbox and quits, and HandOver returns once
// it has. The listener is closed (another process serves its socket).
func TestHandOver(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	pending := h.dial("pop3s")
	pending.cmd("USER " + testUser)

	done := make(chan error, 1)
	go func() { done <- h.srv.HandOver(context.Background()) }()
	waitFor(t, "the drain to begin", h.srv.isClosing)
	if got := pending.cmd("PASS " + testPass); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("PASS during the handover = %q, want +OK", got)
	}
	if got := pending.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Fatalf("STAT during the handover = %q", got)
	}
	pending.cmd("QUIT")
	pending.eof()
	drained(t, done)
	if strings.Contains(h.logs.String(), "ended_by=shutdown") {
		t.Errorf("a session was ended by the drain:\n%s", h.logs)
	}
	h.srv.mu.Lock()
	n := len(h.srv.listeners)
	h.srv.mu.Unlock()
	if n != 0 {
		t.Errorf("%d listeners still served after the handover", n)
	}
}
