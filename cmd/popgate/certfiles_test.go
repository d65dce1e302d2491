package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReloadExpiredCertificate: a reload that would replace the valid
// certificate with an expired one, from the same files, is refused whether
// [tls] is unchanged (the store re-reads its files) or changed (a new store
// is built); the valid certificate stays, the error names the file and the
// date, and popgate_certificate_reload_errors_total{reason="expired"}
// counts both.
func TestReloadExpiredCertificate(t *testing.T) {
	dir := t.TempDir()
	good := writeTestCert(t, dir, "mail", "mail.example.com")
	config := func(minVersion string) string {
		return fmt.Sprintf(`[log]
format = "json"
[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"
[tls]
min_version = %q
certificates = [{ cert = %q, key = %q }]
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
default = "mbox"
[metrics]
address = "127.0.0.1:0"
`, minVersion, good.certFile, good.keyFile, mailbox(t))
	}
	path := writeConfig(t, config("1.2"))
	r, _ := startRunner(t, path)
	want := good.leaf.SerialNumber.String()
	expired := writeTestCertValid(t, t.TempDir(), "old", "mail.example.com",
		time.Now().Add(-90*24*time.Hour), time.Now().Add(-24*time.Hour))
	copyFile(t, expired.certFile, good.certFile)
	copyFile(t, expired.keyFile, good.keyFile)
	for _, minVersion := range []string{"1.2", "1.3"} {
		writeFile(t, path, []byte(config(minVersion)))
		err := r.reload()
		when := "expired at " + expired.leaf.NotAfter.UTC().Format(time.RFC3339)
		if err == nil || !strings.Contains(err.Error(), good.certFile) || !strings.Contains(err.Error(), when) {
			t.Errorf("min_version %s: reload = %v, want an error naming %s and %q", minVersion, err, good.certFile, when)
		}
		if got := serial(t, r.addrOf("pop3s"), "mail.example.com"); got != want {
			t.Errorf("min_version %s: serving serial %s, want the valid %s", minVersion, got, want)
		}
	}
	resp, err := http.Get("http://" + r.adminAddress() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	m := parseMetrics(t, string(body))
	// Two reloads, and maybe the file watch's refusal too.
	if n := m[`popgate_certificate_reload_errors_total{reason="expired"}`]; n < 2 {
		t.Errorf(`popgate_certificate_reload_errors_total{reason="expired"} = %v, want at least 2`, n)
	}
}
