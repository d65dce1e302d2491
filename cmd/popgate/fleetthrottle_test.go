package main

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/cluster"
)

// pass logs in to p as user with password pw on a new connection and
// returns the answer to PASS; a session that logged in ends with QUIT.
func pass(t *testing.T, p *process, user, pw string) string {
	t.Helper()
	c := p.dial("plain")
	c.cmd("USER " + user)
	if _, err := io.WriteString(c.c, "PASS "+pw+"\r\n"); err != nil {
		t.Fatal(err)
	}
	r := c.line()
	if strings.HasPrefix(r, "+OK") {
		c.cmd("QUIT")
	}
	return r
}

const throttled = "-ERR [SYS/TEMP] Too many failed logins"

// clusterUp and throttleFallbacks are the series of replica i ("node<i>").
func clusterUp(i int) string { return fmt.Sprintf(`popgate_cluster_up{node="node%d"}`, i) }
func throttleFallbacks(i int) string {
	return fmt.Sprintf(`popgate_cluster_fallbacks_total{feature="throttle",node="node%d"}`, i)
}

// TestFleetThrottle: three popgate processes sharing one Redis count
// failed logins together: failures spread over them throttle the user,
// and the address, at the limit on every replica, not at three times it,
// and Redis holds neither the user name nor the address in clear.
func TestFleetThrottle(t *testing.T) {
	f := newFleet(t)
	backend := mailbox(t, messages(1)...)
	const perUser, perIP = 3, 6
	limits := fmt.Sprintf("failure_delay = \"0s\"\nmax_failures_per_user = %d\nmax_failures_per_ip = %d\nfailure_window = \"10m\"\n", perUser, perIP)
	ps := f.start(3, func(int) string { return oneBackend(backend, limits) }, "plain")

	// The user: one failure on each replica.
	for i := range perUser {
		if r := pass(t, ps[i%3], procUser, "Wrong-guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("guess %d on node%d: %q", i+1, i%3, r)
		}
	}
	for i, p := range ps {
		if r := pass(t, p, procUser, procPass); !strings.HasPrefix(r, throttled) {
			t.Errorf("node%d: the right password after %d failures over 3 replicas: %q; want the per-user limit", i, perUser, r)
		}
	}
	// The address: the user's failures and as many more with other
	// names; each goes ahead until the last reaches the limit.
	for i := perUser; i < perIP; i++ {
		if r := pass(t, ps[i%3], fmt.Sprint("guess", i), "Wrong-guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("guess %d on node%d: %q", i+1, i%3, r)
		}
	}
	for i, p := range ps {
		if r := pass(t, p, "bob", "Another-guess"); !strings.HasPrefix(r, throttled) {
			t.Errorf("node%d: a new name after %d failures of the address over 3 replicas: %q; want the per-address limit", i, perIP, r)
		}
	}

	for i, p := range ps {
		m := p.metrics()
		if v, ok := m[clusterUp(i)]; !ok || v != 1 {
			t.Errorf("%s = %v (present: %v)", clusterUp(i), v, ok)
		}
		if v := m[throttleFallbacks(i)]; v != 0 {
			t.Errorf("%s = %v with Redis up", throttleFallbacks(i), v)
		}
		checkLogs(t, p.logs)
	}
	keys, err := f.redis.Do("SCAN", "0", "COUNT", "100000")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(keys, "{throttle:user:") || !strings.Contains(keys, "{throttle:ip:") {
		t.Errorf("no failure counts in Redis:\n%s", keys)
	}
	for _, s := range []string{procUser, "guess", "127.0.0.1"} {
		if strings.Contains(keys, s) {
			t.Errorf("%q is in clear in Redis's key names:\n%s", s, keys)
		}
	}
}

// TestFleetThrottleRedisDown: with Redis stopped, logins go on on every
// replica and each counts failures on its own (popgate_cluster_up 0,
// fallbacks counted, one warning); once Redis is back, the replicas count
// together again without a restart.
func TestFleetThrottleRedisDown(t *testing.T) {
	f := newFleet(t)
	backend := mailbox(t, messages(1)...)
	const perUser = 2
	limits := fmt.Sprintf("failure_delay = \"0s\"\nmax_failures_per_user = %d\nmax_failures_per_ip = 1000\nfailure_window = \"10m\"\n", perUser)
	ps := f.start(3, func(int) string { return oneBackend(backend, limits) }, "plain")
	if err := f.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		if r := pass(t, p, procUser, procPass); !strings.HasPrefix(r, "+OK") {
			t.Errorf("node%d: with Redis down, the right password: %q", i, r)
		}
	}
	// Alone, node0 locks carol after its own failures; node1 has not
	// seen them.
	for i := range perUser {
		if r := pass(t, ps[0], "carol", "Wrong-guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("guess %d: %q", i+1, r)
		}
	}
	if r := pass(t, ps[0], "carol", "Wrong-guess"); !strings.HasPrefix(r, throttled) {
		t.Errorf("node0: with Redis down, carol after %d failures there: %q; want the per-user limit", perUser, r)
	}
	if r := pass(t, ps[1], "carol", "Wrong-guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Errorf("node1: with Redis down, carol after failures on node0 only: %q; want a try", r)
	}
	for i, p := range ps {
		m := p.metrics()
		if v, ok := m[clusterUp(i)]; !ok || v != 0 {
			t.Errorf("%s = %v (present: %v) with Redis down", clusterUp(i), v, ok)
		}
		if m[throttleFallbacks(i)] == 0 {
			t.Errorf("%s = 0 with Redis down", throttleFallbacks(i))
		}
		p.waitLog("cluster: Redis is unreachable; this replica works on its own state until it is back")
	}

	if err := f.redis.Start(); err != nil {
		t.Fatal(err)
	}
	// A login after cluster.ThrottleRetry asks Redis again.
	time.Sleep(cluster.ThrottleRetry + 100*time.Millisecond)
	for i, p := range ps {
		if r := pass(t, p, procUser, procPass); !strings.HasPrefix(r, "+OK") {
			t.Errorf("node%d: with Redis back, the right password: %q", i, r)
		}
		if v, ok := p.metrics()[clusterUp(i)]; !ok || v != 1 {
			t.Errorf("%s = %v (present: %v) with Redis back", clusterUp(i), v, ok)
		}
	}
	for i := range perUser {
		if r := pass(t, ps[1+i%2], "dave", "Wrong-guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("guess %d: %q", i+1, r)
		}
	}
	if r := pass(t, ps[0], "dave", "Wrong-guess"); !strings.HasPrefix(r, throttled) {
		t.Errorf("node0: with Redis back, dave after %d failures on node1 and node2: %q; want the per-user limit", perUser, r)
	}
	for _, p := range ps {
		p.waitLog("cluster: Redis is reachable again; sharing resumes")
		if n := strings.Count(p.logs.String(), "Redis is unreachable"); n != 1 {
			t.Errorf("%d outage warnings; want 1", n)
		}
		checkLogs(t, p.logs)
	}
}
