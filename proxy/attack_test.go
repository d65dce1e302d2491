package proxy

// Regression tests from the attack review of the login path (issue 11):
// each TestAttack* test failed while the defect it names was present.

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// TestAttackInFlightLoginsRefusedAsFailures: the throttle's reservation
// counts a login *in flight* against the failure budget whatever its
// outcome, so max_failures_per_ip becomes a cap on concurrent logins per
// client address. With max_failures_per_ip = 5 and a lookup that takes a
// while, 8 users behind one NAT (or one fetcher host) logging in at once
// with the RIGHT passwords: 3 are told "-ERR [SYS/TEMP] Too many failed
// logins" although nobody ever failed. (Default 20: a CGNAT, a webmail or
// a fetcher service that polls many mailboxes from one address trips it.)
func TestAttackInFlightLoginsRefusedAsFailures(t *testing.T) {
	const logins, perIP = 8, 5
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
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: perIP, Window: time.Minute})
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) {
			for i := range logins {
				s.Mailboxes[fmt.Sprintf("u%d@example.com", i)] = &pop3test.Mailbox{Password: testPass}
			}
		},
		config: func(c *Config) { c.Router = router; c.Throttle = th },
	})
	answers := make(chan string, logins)
	var wg sync.WaitGroup
	for i := range logins {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", h.addrs["plain"], 5*time.Second)
			if err != nil {
				answers <- "dial: " + err.Error()
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(c, "USER u%d@example.com\r\nPASS %s\r\n", i, testPass)
			br := bufio.NewReader(c)
			var last string
			for range 3 {
				if last, err = br.ReadString('\n'); err != nil {
					answers <- "read: " + err.Error()
					return
				}
			}
			answers <- strings.TrimSpace(last)
		})
	}
	// perIP logins are held by the lookup; the others wait for a place
	// (before the fix they were refused at once).
	waitFor(t, "the first logins held by the lookup", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return routed >= perIP
	})
	close(release)
	wg.Wait()
	close(answers)
	counts := map[string]int{}
	for a := range answers {
		counts[a]++
	}
	ok := 0
	for a, n := range counts {
		if strings.HasPrefix(a, "+OK") {
			ok += n
		}
	}
	if ok != logins {
		t.Errorf("%d of %d logins with the right password succeeded (answers %v)", ok, logins, counts)
	}
	if n := counts["-ERR [SYS/TEMP] Too many failed logins, try again later"]; n > 0 {
		t.Errorf("%d of %d concurrent logins with the right password were refused as 'too many failed logins' with no failure at all (answers %v)", n, logins, counts)
	}
}

// TestAttackOversizedNameReachesThrottle: Begin runs before
// Credentials.Check, so a user name far beyond MaxCredentialLen (AUTH
// LOGIN or AUTH PLAIN on a continuation line carries up to 6 KiB decoded)
// becomes a throttle key; the failure keeps it for failure_window. An
// attacker with many client networks (an IPv6 /48 is 65536 of them, each
// with max_failures_per_ip failures) fills the 100000-entry user LRU with
// 6 KiB keys: about 600 MiB for 10 minutes. See auth's
// TestAttackThrottleMemoryPerKey for the bytes held per key.
func TestAttackOversizedNameReachesThrottle(t *testing.T) {
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: 100, MaxPerUser: 10, Window: time.Minute})
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.Throttle = th }})
	long := strings.Repeat("A", 6000)
	c2 := h.dial("plain")
	c2.send("AUTH LOGIN\r\n")
	c2.expect("+ ")
	c2.send(base64.StdEncoding.EncodeToString([]byte(long)) + "\r\n")
	c2.expect("+ ")
	if got := c2.cmd(base64.StdEncoding.EncodeToString([]byte("guess"))); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("login = %q", got)
	}
	// The failure counts against the address alone: one key, no name.
	if n := th.Len(); n != 1 {
		t.Errorf("the throttle tracks %d keys after a %d-byte name was refused, want 1 (the address)", n, len(long))
	}
}

// TestAttackTimingPoolFromOtherBackends: the durations popgate's own
// refusals imitate are drawn from every backend's recent refusals, so with
// backends that refuse at different speeds an unrouted name takes what the
// mixture (or whichever backend refused last) takes, not what the backend
// of a routed name takes. An attacker fills the 64 samples with refusals
// from the slow backend (wrong passwords for any names a domain route
// sends there, or just waits for its users' typos) and then tells a name
// routed to the fast backend (fast refusal) from an unrouted one (slow) in
// one or two attempts, within max_failures_per_user.
func TestAttackTimingPoolFromOtherBackends(t *testing.T) {
	const slowDelay = 150 * time.Millisecond
	slow := &pop3test.Server{AuthFailureDelay: slowDelay}
	slowAddr, err := slow.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Backends["slow"] = &Backend{Name: "slow", Address: slowAddr.String()}
		c.Router = auth.NewStatic(map[string]string{testUser: "b1"}, map[string]string{"slow.example": "slow"}, "")
		c.MaxLoginFailures = 1000
	}})
	// Fill the samples with the slow backend's refusals.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c := h.dial("plain")
			for j := range 9 {
				c.cmd(fmt.Sprintf("USER u%d-%d@slow.example", i, j))
				c.cmd("PASS wrong")
			}
			c.cmd("QUIT")
		})
	}
	wg.Wait()
	timeFailure := func(c *client, user string) time.Duration {
		c.cmd("USER " + user)
		start := time.Now()
		if got := c.cmd("PASS wrong-password"); got != "-ERR [AUTH] Authentication failed" {
			t.Fatalf("%s: %q", user, got)
		}
		return time.Since(start)
	}
	c := h.dial("plain")
	var r, u []time.Duration
	for range 3 {
		r = append(r, timeFailure(c, testUser))
		u = append(u, timeFailure(c, "nobody@example.com"))
	}
	mr, mu := median(r), median(u)
	t.Logf("routed (fast backend) %v, unrouted %v", r, u)
	if diff := (mr - mu).Abs(); diff > slowDelay/2 {
		t.Errorf("routed name answered in %v, unrouted in %v: three attempts tell them apart", mr, mu)
	}
}

// TestAttackTimingColdStart: before any backend has refused a login there
// is no sample, and an unrouted name is refused at once while a routed one
// takes the backend's time: right after every start, one attempt per name
// says whether it is routed. (pace.go says "nothing to tell apart either";
// the first routed probe is what there is to tell apart.)
func TestAttackTimingColdStart(t *testing.T) {
	const delay = 150 * time.Millisecond
	// A backend is assumed to take a while (Dovecot's 2 s by default) until
	// it has refused enough logins to learn its speed: here 300ms.
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) { s.AuthFailureDelay = delay },
		config:  func(c *Config) { c.AssumedFailureTime = 2 * delay },
	})
	c := h.dial("plain")
	timeFailure := func(user string) time.Duration {
		c.cmd("USER " + user)
		start := time.Now()
		c.cmd("PASS wrong-password")
		return time.Since(start)
	}
	u := timeFailure("nobody@example.com") // first: no sample yet
	r := timeFailure(testUser)
	t.Logf("unrouted %v, routed %v", u, r)
	if r-u > delay/2 {
		t.Errorf("cold start: unrouted refused in %v, routed in %v", u, r)
	}
}

// TestAttackMasterSeparatorEvadesUserThrottle: with a backend that has
// Dovecot master users and auth_master_user_separator (as in interop's
// TestAuthzIDMasterUser) and a route that takes any name (route.default),
// the master password - which opens every mailbox - can be guessed as
// "u1*master", "u2*master", ...: each is a new per-user key, so only the
// per-address budget holds. The same guesses as AUTH PLAIN authcid
// "master" stop at max_failures_per_user.
func TestAttackMasterSeparatorEvadesUserThrottle(t *testing.T) {
	const perUser, guesses = 3, 9
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerUser: perUser, Window: time.Minute})
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) {
			s.MasterUsers = map[string]string{"master": "master-PASSWORD-never-logged"}
			s.MasterSeparator = "*"
		},
		config: func(c *Config) {
			c.Router = auth.NewStatic(nil, nil, "b1")
			c.Throttle = th
			c.MaxLoginFailures = 1000
			c.MasterUserSeparator = "*"
		},
	})
	c := h.dial("plain")
	reached := 0
	for i := range guesses {
		c.cmd(fmt.Sprintf("USER %s*master", strings.Replace(testUser, "alice", fmt.Sprintf("u%d", i), 1)))
		if got := c.cmd(fmt.Sprintf("PASS guess-%d", i)); strings.HasPrefix(got, "-ERR [AUTH]") {
			reached++
		}
	}
	if reached > perUser {
		t.Errorf("%d guesses of the master password reached the backend, max_failures_per_user = %d", reached, perUser)
	}
}

// TestAttackDeadlineUncountedGuesses: a guess whose answer the backend
// delays past the session's login deadline ends as AttemptAborted (the
// backend login is cut by the context), so it never counts, while a right
// password (which backends answer at once; Dovecot delays only failures,
// auth_failure_delay = 2s by default) gets its +OK before the deadline.
// An attacker who sends PASS just under auth_failure_delay before
// login_timeout gets a yes (+OK) / no (connection closed) oracle that the
// throttle never sees: here 6 wrong guesses for one user with
// max_failures_per_user = 2 and max_failures_per_ip = 2, none counted,
// and the next guess still goes ahead. (In production: one connection per
// guess held for login_timeout, max_connections_per_ip of them at once,
// from any number of addresses.)
func TestAttackDeadlineUncountedGuesses(t *testing.T) {
	const (
		loginTimeout = 1500 * time.Millisecond
		failDelay    = 800 * time.Millisecond // the backend's auth_failure_delay
		sendAt       = 1000 * time.Millisecond
		guesses      = 6
	)
	th := auth.NewThrottle(auth.ThrottleConfig{MaxPerIP: 2, MaxPerUser: 2, Window: time.Minute})
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) { s.AuthFailureDelay = failDelay },
		config:  func(c *Config) { c.Throttle = th; c.LoginTimeout = loginTimeout },
	})
	// Rounds of 2 at once: the in-flight reservation admits 2 at a time,
	// and since none of them ever counts, every round is admitted.
	answers := make(chan string, guesses)
	for round := range guesses / 2 {
		var wg sync.WaitGroup
		for j := range 2 {
			i := round*2 + j
			wg.Go(func() {
				c, err := net.DialTimeout("tcp", h.addrs["plain"], 5*time.Second)
				if err != nil {
					answers <- "dial: " + err.Error()
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				br.ReadString('\n') // greeting
				time.Sleep(sendAt)
				fmt.Fprintf(c, "USER %s\r\nPASS wrong-guess-%d\r\n", testUser, i)
				br.ReadString('\n') // +OK to USER
				l, err := br.ReadString('\n')
				if err != nil {
					l = "closed: " + err.Error()
				}
				answers <- strings.TrimSpace(l)
			})
		}
		wg.Wait()
	}
	close(answers)
	counts := map[string]int{}
	for a := range answers {
		counts[a]++
	}
	passes := 0
	for _, cmd := range h.backend.Commands() {
		if strings.HasPrefix(cmd, "PASS") {
			passes++
		}
	}
	t.Logf("wrong guesses that reached the backend: %d", passes)
	t.Logf("answers to the wrong guesses: %v", counts)
	// The right password, timed the same way, is answered +OK: the oracle.
	c := h.dial("plain")
	time.Sleep(sendAt)
	c.cmd("USER " + testUser)
	got := c.cmd("PASS " + testPass)
	t.Logf("right password near the deadline: %q", got)
	if _, ok, _ := th.Begin(noWait, netip.MustParseAddr("127.0.0.1"), testUser); ok {
		t.Errorf("%d wrong guesses for %s reached the backend and ended uncounted (cut by login_timeout); the throttle (max 2) still lets guesses through, and the right password got %q", passes, testUser, got)
	}
}

// noWait is an ended context: Throttle.Begin refuses at once where it
// would wait for attempts in flight.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// TestLongNameBoundedInLog: a name over MaxCredentialLen, refused before
// any lookup, appears in the log and in the session list only cut short.
func TestLongNameBoundedInLog(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	long := strings.Repeat("N", 5000)
	c := h.dial("plain")
	c.send("AUTH LOGIN\r\n")
	c.expect("+ ")
	c.send(base64.StdEncoding.EncodeToString([]byte(long)) + "\r\n")
	c.expect("+ ")
	if got := c.cmd(base64.StdEncoding.EncodeToString([]byte("guess"))); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("login = %q", got)
	}
	for _, s := range h.srv.SessionList() {
		if len(s.User) > 200 {
			t.Errorf("session list holds a %d-byte user name", len(s.User))
		}
	}
	if strings.Contains(h.logs.String(), strings.Repeat("N", 200)) {
		t.Error("the log holds the over-long name")
	}
}
