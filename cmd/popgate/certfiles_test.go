package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
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

// TestCacheDirPermissions: `popgate check` and `popgate run` refuse a
// world-writable tls.acme.cache_dir, naming the key, the directory and the
// fix; with insecure_cache_permissions = true check passes, with a WARN.
func TestCacheDirPermissions(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "acme")
	if err := os.Mkdir(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cache, 0o777); err != nil {
		t.Fatal(err)
	}
	config := func(extra string) string {
		return writeConfig(t, listenTLS+backendB+routeB+fmt.Sprintf(`[log]
format = "json"
[metrics]
address = ""
[tls.acme]
domains = ["mail.example.com"]
cache_dir = %q
directory_url = "http://127.0.0.1:1/directory"
http_challenge = ""
%s`, cache, extra))
	}
	path := config("")
	// A guard: run would serve until then if it did not refuse.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, cmd := range []string{"check", "run"} {
		code, _, stderr := run(ctx, cmd, "-config", path)
		for _, want := range []string{"tls.acme.cache_dir: ", cache, "writable by its group or others (mode 0777)",
			"fix: chmod go-w " + cache, "tls.acme.insecure_cache_permissions = true"} {
			if code != 1 || !strings.Contains(stderr, want) {
				t.Errorf("popgate %s with a world-writable cache_dir = %d, stderr %q; want 1 and mention of %q", cmd, code, stderr, want)
			}
		}
	}
	code, stdout, stderr := run(t.Context(), "check", "-config", config("insecure_cache_permissions = true\n"))
	if code != 0 || !strings.Contains(stdout, "OK") || !strings.Contains(stderr, `"level":"WARN","msg":"acme cache permissions are not checked`) {
		t.Errorf("popgate check with insecure_cache_permissions = %d, stdout %q, stderr %q; want 0 and a WARN", code, stdout, stderr)
	}
}
