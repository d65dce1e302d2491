package proxy

import (
	"context"
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
			if !strings.Contains(h.logs.String(), "result=shutdown") {
				t.Errorf("no session ended with result=shutdown:\n%s", h.logs)
			}
		})
	}
}
