package interop

// Regression tests from the attack review of the login path (issue 11):
// each TestAttack* test failed while the defect it names was present.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// TestAttackDeadlineOracleDovecot: against a real Dovecot with its default
// auth_failure_delay (2s), a guess sent ~1.2s before popgate's
// login_timeout gets +OK when right (Dovecot answers a success at once) and
// a closed connection when wrong (Dovecot's delayed refusal arrives after
// the deadline, popgate cuts the backend login and counts the attempt as
// aborted, not failed). With max_failures_per_user = 2 and
// max_failures_per_ip = 2, 6 wrong guesses reach Dovecot, none counts, and
// the throttle still admits the right password: the per-user and
// per-address budgets never apply to an attacker who times his guesses.
func TestAttackDeadlineOracleDovecot(t *testing.T) {
	requireInterop(t, "dovecot")
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.NoTLSInstance, o.HAProxy = false, false
		o.ExtraConfig = []string{"auth_failure_delay = 2 secs"}
	})
	pass := d.Users[userAlice]
	pg := startPopgate(t, popgateConfig{
		Backends:    []popgateBackend{{Name: "dovecot", Address: d.PlainAddr, TLS: "none"}},
		Default:     "dovecot",
		ExtraLimits: []string{`login_timeout = "4s"`, `failure_delay = "0s"`, "max_failures_per_ip = 2", "max_failures_per_user = 2"},
	}, pass)
	conf := pg.ca.clientConfig(pg.ServerName)
	// guess opens a connection, waits until 1.2s before the deadline and
	// sends one login; it returns popgate's answer or "closed".
	guess := func(pw string) string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", pg.POP3SAddr, conf)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			return "greeting: " + err.Error()
		}
		time.Sleep(2800 * time.Millisecond)
		fmt.Fprintf(c, "USER %s\r\nPASS %s\r\n", userAlice, pw)
		br.ReadString('\n')
		l, err := br.ReadString('\n')
		if err != nil {
			return "closed"
		}
		return strings.TrimSpace(l)
	}
	counts := map[string]int{}
	for round := range 3 {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for j := range 2 {
			wg.Go(func() {
				a := guess(fmt.Sprintf("wrong-%d-%d", round, j))
				mu.Lock()
				counts[a]++
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	t.Logf("6 timed wrong guesses: %v", counts)
	right := guess(pass)
	t.Logf("right password, timed the same: %q", right)
	if counts["closed"] > 2 && strings.HasPrefix(right, "+OK") {
		t.Errorf("%d wrong guesses reached Dovecot uncounted (max_failures_per_user = 2), and the right password still got +OK: a yes/no oracle outside the throttle", counts["closed"])
	}
}
