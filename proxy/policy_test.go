package proxy

import (
	"bufio"
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

// TestThrottle: after the throttle refuses, even the right password is
// turned away without reaching the backend; failures that are not guesses
// ([IN-USE]) do not count.
func TestThrottle(t *testing.T) {
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: 2, Window: time.Minute})
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.Throttle = th; c.MaxLoginFailures = 10 }})
	c := h.dial("pop3s")
	c.login()
	c.cmd("QUIT")
	if n := th.Len(); n != 0 {
		t.Errorf("a success left %d keys in the throttle", n)
	}
	c = h.dial("pop3s")
	for range 2 {
		c.cmd("USER " + testUser)
		c.cmd("PASS wrong")
	}
	logins := h.backend.Logins()
	cmds := len(h.backend.Commands())
	c.cmd("USER " + testUser)
	if got := c.cmd("PASS " + testPass); !strings.HasPrefix(got, "-ERR [SYS/TEMP] Too many failed logins") {
		t.Errorf("throttled login = %q", got)
	}
	if h.backend.Logins() != logins || len(h.backend.Commands()) != cmds {
		t.Errorf("a throttled attempt reached the backend: %q", h.backend.Commands()[cmds:])
	}
	c.cmd("QUIT")
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
	if !strings.Contains(h.logs.String(), "reason=throttled") {
		t.Errorf("log lacks reason=throttled:\n%s", h.logs)
	}

	// [IN-USE] is no guess: it does not count.
	th2 := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: 1, Window: time.Minute})
	h = newHarness(t, harnessOpts{backend: func(s *pop3test.Server) { s.LoginError = "[IN-USE] locked" }, config: func(c *Config) { c.Throttle = th2 }})
	c = h.dial("pop3s")
	for range 2 {
		c.cmd("USER " + testUser)
		if got := c.cmd("PASS " + testPass); got != "-ERR [IN-USE] locked" {
			t.Errorf("login = %q, want the backend's [IN-USE] (not throttled)", got)
		}
	}
}

// TestBackendErrorText: a backend's refusal of the credentials gets
// popgate's own words unless RelayBackendErrors is set (names cannot be
// told apart by the text); answers that come after the password was
// checked, and the backend's own trouble, are relayed as they are.
func TestBackendErrorText(t *testing.T) {
	const ours = "-ERR [AUTH] Authentication failed"
	tests := []struct {
		loginError string // the backend's refusal, after "-ERR "
		relay      bool
		want       string
	}{
		{"No such user here", false, ours},
		{"[AUTH] Authentication failed.", false, ours},
		{"[IN-USE] mailbox locked", false, "-ERR [IN-USE] mailbox locked"},
		{"[LOGIN-DELAY] wait 15 minutes", false, "-ERR [LOGIN-DELAY] wait 15 minutes"},
		{"[SYS/TEMP] storage unavailable", false, "-ERR [SYS/TEMP] storage unavailable"},
		{"No such user here", true, "-ERR No such user here"},
		{"[AUTH] Authentication failed.", true, "-ERR [AUTH] Authentication failed."},
		{"[IN-USE] mailbox locked", true, "-ERR [IN-USE] mailbox locked"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/relay=%v", tc.loginError, tc.relay), func(t *testing.T) {
			h := newHarness(t, harnessOpts{backend: func(s *pop3test.Server) { s.LoginError = tc.loginError }, config: func(c *Config) { c.RelayBackendErrors = tc.relay }})
			c := h.dial("pop3s")
			c.cmd("USER " + testUser)
			if got := c.cmd("PASS " + testPass); got != tc.want {
				t.Errorf("login = %q, want %q", got, tc.want)
			}
			// The unknown name gets the same words as the default.
			c.cmd("USER nobody@example.com")
			if got := c.cmd("PASS " + testPass); got != ours {
				t.Errorf("unknown name = %q, want %q", got, ours)
			}
		})
	}
}

// TestFailureTiming: a client that times its failed logins cannot tell a
// routed name with a wrong password (refused by the backend after its
// auth failure delay, with its spread) from a name no route matches
// (refused by popgate): both take what the backend takes. 50 attempts of
// each kind alternate on two connections; the medians must lie within the
// backend's own spread of each other. Before popgate imitated the
// backend's time, the unrouted name was answered at once and the medians
// differed by the whole delay, several times the spread; the margin keeps
// this from hinging on scheduling noise.
func TestFailureTiming(t *testing.T) {
	const (
		delay    = 50 * time.Millisecond // the backend's failure delay ...
		spread   = 20 * time.Millisecond // ... plus up to this much
		attempts = 50
	)
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) { s.AuthFailureDelay, s.AuthFailureJitter = delay, spread },
		config:  func(c *Config) { c.MaxLoginFailures = 1000 },
	})
	routed, unrouted := h.dial("plain"), h.dial("plain")
	timeFailure := func(c *client, user string) time.Duration {
		c.cmd("USER " + user)
		start := time.Now()
		if got := c.cmd("PASS wrong-password"); got != "-ERR [AUTH] Authentication failed" {
			t.Fatalf("%s: %q", user, got)
		}
		return time.Since(start)
	}
	var r, u []time.Duration
	for range attempts {
		r = append(r, timeFailure(routed, testUser))
		u = append(u, timeFailure(unrouted, "nobody@example.com"))
	}
	mr, mu := median(r), median(u)
	t.Logf("median failure: routed %v, unrouted %v (backend %v + up to %v)", mr, mu, delay, spread)
	if diff := (mr - mu).Abs(); diff > spread {
		t.Errorf("medians differ by %v (routed %v, unrouted %v), more than the backend's spread %v", diff, mr, mu, spread)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestBackendFallbacks: an unreachable first address is skipped; a
// reachable one that refuses the login is final.
func TestBackendFallbacks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		b := c.Backends["b1"]
		b.Fallbacks = []string{b.Address}
		b.Address = dead
	}})
	c := h.dial("pop3s")
	c.login()
	c.cmd("QUIT")
	if !strings.Contains(h.logs.String(), "used the next one") {
		t.Errorf("no log line about the fallback:\n%s", h.logs)
	}

	second := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{testUser: {Password: testPass}}}
	addr2, err := second.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	h = newHarness(t, harnessOpts{backend: func(s *pop3test.Server) { s.LoginError = "[AUTH] nope" }, config: func(c *Config) {
		c.Backends["b1"].Fallbacks = []string{addr2.String()}
		c.RelayBackendErrors = true // the first backend's own words prove who answered
	}})
	c = h.dial("pop3s")
	c.cmd("USER " + testUser)
	if got := c.cmd("PASS " + testPass); got != "-ERR [AUTH] nope" {
		t.Errorf("login = %q", got)
	}
	if n := len(second.Commands()); n != 0 {
		t.Errorf("the fallback was asked after a refused login: %q", second.Commands())
	}
}

// TestExtraCapabilities: configured capabilities join popgate's own before
// login.
func TestExtraCapabilities(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.ExtraCapabilities = []string{"TOP", "UIDL"} }})
	c := h.dial("pop3s")
	c.send("CAPA\r\n")
	c.expect("+OK")
	got := c.multi()
	if !slices.Contains(got, "TOP") || !slices.Contains(got, "UIDL") || !slices.Contains(got, "USER") {
		t.Errorf("CAPA = %q", got)
	}
}

// TestThrottleRace: 90 wrong guesses for one user sent at once from two
// addresses, against a lookup that holds every attempt until the test lets
// go (a slow backend), reach the lookup no more than max_failures_per_user
// times; and the right password sent afterwards is refused too. Before
// attempts reserved their place, all 90 went through.
func TestThrottleRace(t *testing.T) {
	const guesses, perUser, perIP = 90, 10, 20
	var (
		mu      sync.Mutex
		routed  int
		release = make(chan struct{})
	)
	router := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
		mu.Lock()
		routed++
		mu.Unlock()
		select {
		case <-release:
		case <-ctx.Done():
			return auth.Decision{}, ctx.Err()
		}
		return auth.Decision{Backend: "b1", User: req.User, Password: req.Password}, nil
	})
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: perIP, MaxPerUser: perUser, Window: time.Minute})
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.Router = router; c.Throttle = th }})

	answers := make(chan string, guesses)
	var wg sync.WaitGroup
	for i := range guesses {
		wg.Go(func() {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%2))}}
			c, err := d.Dial("tcp", h.addrs["plain"])
			if err != nil {
				answers <- "dial: " + err.Error()
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(c, "USER %s\r\nPASS wrong-guess-%d\r\n", testUser, i)
			br := bufio.NewReader(c)
			var last string
			for range 3 { // greeting, USER, PASS
				if last, err = br.ReadString('\n'); err != nil {
					answers <- "read: " + err.Error()
					return
				}
			}
			answers <- strings.TrimSpace(last)
		})
	}
	// The budget's worth of guesses is held by the lookup; the others wait
	// for their outcome, which locks the user.
	waitFor(t, "a budget of guesses held", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return routed >= perUser
	})
	close(release)
	wg.Wait()
	close(answers)
	counts := map[string]int{}
	for a := range answers {
		counts[a]++
	}
	mu.Lock()
	got := routed
	mu.Unlock()
	if got > perUser {
		t.Errorf("%d of %d concurrent guesses reached the lookup, want at most %d (answers %v)", got, guesses, perUser, counts)
	}
	if n := counts["-ERR [SYS/TEMP] Too many failed logins, try again later"]; n != guesses-got {
		t.Errorf("%d guesses throttled, want %d (answers %v)", n, guesses-got, counts)
	}
	// The budget is spent: the right password is refused without a lookup.
	c := h.dial("plain")
	c.cmd("USER " + testUser)
	if a := c.cmd("PASS " + testPass); !strings.HasPrefix(a, "-ERR [SYS/TEMP] Too many failed logins") {
		t.Errorf("right password after the burst = %q", a)
	}
	mu.Lock()
	defer mu.Unlock()
	if routed != got {
		t.Errorf("the throttled login reached the lookup")
	}
}
