package interop

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// TestProxyBackendHealth: a Dovecot stopped mid-test turns down within
// health_interval × health_failures (and a generous slack for a loaded
// machine), logins go to its fallback address, a second Dovecot, and it
// turns up again once restarted on the same port, after which logins
// return to it. The checks never log in: Dovecot logs no login but those
// of the test's client.
func TestProxyBackendHealth(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	primary := startDovecot(t)
	// The fallback serves the same certificate, so that one backend's
	// server_name and ca_file fit both addresses.
	fallback := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.CertFile, o.KeyFile, o.CAFile = primary.CertFile, primary.KeyFile, primary.CAFile
	})
	pass := primary.Users[userAlice]
	const (
		interval = 200 * time.Millisecond
		failures = 3
		slack    = 15 * time.Second // a check's timeout, scrapes, a loaded 2-core machine
	)
	pg := startPopgate(t, popgateConfig{
		Backends: []popgateBackend{{
			Name: "mx", Address: primary.PlainAddr, TLS: "starttls", ServerName: primary.ServerName, CAFile: primary.CAFile,
			Fallbacks:      []string{fallback.PlainAddr},
			HealthInterval: interval.String(), HealthFailures: failures, HealthTimeout: "2s",
		}},
		Default: "mx",
	}, pass)
	primaryUp := fmt.Sprintf(`popgate_backend_address_up{address=%q,backend="mx"}`, primary.PlainAddr)
	fallbackUp := fmt.Sprintf(`popgate_backend_address_up{address=%q,backend="mx"}`, fallback.PlainAddr)
	backendUp := `popgate_backend_up{backend="mx"}`
	// waitMetric waits until series is want, at most within after start.
	waitMetric := func(what, series string, want float64, start time.Time, within time.Duration) time.Duration {
		t.Helper()
		for {
			m := pg.scrape(t)
			if v, ok := m[series]; ok && v == want {
				return time.Since(start)
			}
			if time.Since(start) > within {
				t.Fatalf("%s: %s is not %v after %v\n%s", what, series, want, within, tail(pg.log()))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	logins := func(d *dovecot) int {
		return strings.Count(d.mainLog(t), "Login: user=<"+userAlice+">")
	}
	login := func() {
		t.Helper()
		c := dialPopgate(t, pg, "pop3s")
		c.login(userAlice, pass)
		if resp := c.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("QUIT: %q", resp)
		}
	}
	// Dovecot logs a login as it happens, before it answers.
	waitLogins := func(d *dovecot, name string, want int) {
		t.Helper()
		d.waitLog(t, d.mainLog, fmt.Sprintf("%d logins at the %s", want, name), func(string) bool { return logins(d) >= want })
		if got := logins(d); got != want {
			t.Fatalf("%d logins at the %s, want %d", got, name, want)
		}
	}

	waitMetric("both addresses checked", primaryUp, 1, time.Now(), slack)
	waitMetric("both addresses checked", fallbackUp, 1, time.Now(), slack)
	login()
	waitLogins(primary, "primary", 1)

	stopping := time.Now()
	if err := primary.StopMain(); err != nil {
		t.Fatal(err)
	}
	took := waitMetric("the stopped primary", primaryUp, 0, stopping, interval*failures+slack)
	t.Logf("the primary was down %v after its stop began (health_interval %v × health_failures %d; Dovecot takes about 1 s to stop)", took, interval, failures)
	if v := pg.scrape(t)[backendUp]; v != 1 {
		t.Errorf("%s = %v with the fallback up, want 1", backendUp, v)
	}
	if recs := pg.records("backend address down"); len(recs) != 1 || recs[0]["address"] != primary.PlainAddr || recs[0]["level"] != "WARN" {
		t.Errorf("down records: %v", recs)
	}
	login()
	waitLogins(fallback, "fallback", 1)

	if err := primary.StartMain(); err != nil {
		t.Fatal(err)
	}
	took = waitMetric("the restarted primary", primaryUp, 1, time.Now(), interval+slack)
	t.Logf("the restarted primary was up again %v after it answered", took)
	if recs := pg.records("backend address up again"); len(recs) != 1 || recs[0]["address"] != primary.PlainAddr || recs[0]["level"] != "INFO" {
		t.Errorf("up records: %v", recs)
	}
	login()
	waitLogins(primary, "primary", 2)
	if got := logins(fallback); got != 1 {
		t.Errorf("%d logins at the fallback, want 1", got)
	}
}
