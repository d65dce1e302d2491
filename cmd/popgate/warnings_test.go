package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/certgen"
)

// The start-up warnings about settings that put passwords or limits at
// risk, as the tests look for them.
const (
	warnHTTPLookup   = "route.http.url is plain http:// to a host that is not loopback: every login's password crosses the network to the lookup service in clear text; use https://"
	warnTrustedProxy = "limits.trusted_proxies includes every address: any client can send a PROXY header and claim to be any address, past max_connections_per_ip, the failed-login limits and the backends' view of the client; list the load balancers only"
)

// TestCheckWarnings: popgate check accepts these settings but warns, at
// WARN, naming what is at risk.
func TestCheckWarnings(t *testing.T) {
	cert := writeTestCert(t, t.TempDir(), "mail", "mail.example.com")
	full := fullConfig(cert)
	lookup := func(url string) string { return full + fmt.Sprintf("[route.http]\nurl = %q\n", url) }
	trusted := func(list string) string {
		return strings.Replace(full, "[limits]\n", "[limits]\ntrusted_proxies = "+list+"\n", 1)
	}
	tests := []struct {
		name   string
		config string
		want   []string // WARN lines, as msg plus an attribute
	}{
		{"http lookup to another host", lookup("http://auth.example.com:8080/auth"),
			[]string{`"level":"WARN","msg":"` + warnHTTPLookup + `","host":"auth.example.com:8080"`}},
		{"http lookup to an address", lookup("http://10.0.0.7/auth"),
			[]string{`"msg":"` + warnHTTPLookup + `","host":"10.0.0.7"`}},
		{"http lookup with credentials in the URL", lookup("http://popgate:url-secret-never-logged@auth.example.com/auth"),
			[]string{`"msg":"` + warnHTTPLookup + `","host":"auth.example.com"`}},
		{"http lookup to 127.0.0.1", lookup("http://127.0.0.1:8080/auth"), nil},
		{"http lookup to localhost", lookup("http://LocalHost:8080/auth"), nil},
		{"http lookup to ::1", lookup("http://[::1]:8080/auth"), nil},
		{"https lookup", lookup("https://auth.example.com/auth"), nil},
		{"trusted_proxies 0.0.0.0/0", trusted(`["10.0.0.0/8", "0.0.0.0/0"]`),
			[]string{`"level":"WARN","msg":"` + warnTrustedProxy + `","trusted_proxy":"0.0.0.0/0"`}},
		{"trusted_proxies ::/0", trusted(`["::/0"]`),
			[]string{`"msg":"` + warnTrustedProxy + `","trusted_proxy":"::/0"`}},
		{"trusted_proxies any /0", trusted(`["192.0.2.1/0"]`),
			[]string{`"msg":"` + warnTrustedProxy + `","trusted_proxy":"192.0.2.1/0"`}},
		{"trusted_proxies both families", trusted(`["0.0.0.0/0", "::/0"]`),
			[]string{`"trusted_proxy":"0.0.0.0/0"`, `"trusted_proxy":"::/0"`}},
		{"trusted_proxies half of IPv4", trusted(`["0.0.0.0/1", "10.0.0.0/8"]`), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"check", "-config", writeConfig(t, tc.config)}
			code, out, errOut := run(t.Context(), args...)
			if code != 0 || !strings.Contains(out, ": OK") {
				t.Fatalf("mainErr(%q) = %d, stdout %q, want 0 and OK; stderr:\n%s", args, code, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("mainErr(%q) stderr = %q, want mention of %q", args, errOut, w)
				}
			}
			if tc.want == nil && strings.Contains(errOut, "WARN") {
				t.Errorf("mainErr(%q) stderr = %q, want no warning", args, errOut)
			}
			if strings.Contains(errOut, "url-secret-never-logged") {
				t.Errorf("mainErr(%q) stderr shows the URL's password", args)
			}
		})
	}
}

// TestRunWarnings: popgate run logs the same warnings at start.
func TestRunWarnings(t *testing.T) {
	path := writeConfig(t, `[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "b"
address = "127.0.0.1:1110"
tls = "none"

[route]
default = "b"

[route.http]
url = "http://192.0.2.1:8080/auth"

[limits]
trusted_proxies = ["0.0.0.0/0", "::/0"]

[metrics]
address = "127.0.0.1:0"
`)
	logs := &logSink{listening: make(chan [2]string, 4)}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- mainContext(ctx, []string{"run", "-config", path}, io.Discard, logs) }()
	select {
	case <-logs.listening:
	case code := <-done:
		t.Fatalf("run exited with %d; log:\n%s", code, logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("run does not listen; log:\n%s", logs)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("run after cancel = %d, want 0; log:\n%s", code, logs)
	}
	if recs := logs.records(t, warnHTTPLookup); len(recs) != 1 || recs[0]["level"] != "WARN" || recs[0]["host"] != "192.0.2.1:8080" {
		t.Errorf("run log has %v for the http:// lookup, want one WARN with host 192.0.2.1:8080; log:\n%s", recs, logs)
	}
	var got []any
	for _, rec := range logs.records(t, warnTrustedProxy) {
		if rec["level"] == "WARN" {
			got = append(got, rec["trusted_proxy"])
		}
	}
	if fmt.Sprint(got) != "[0.0.0.0/0 ::/0]" {
		t.Errorf("run log warns about trusted_proxies %v, want [0.0.0.0/0 ::/0]; log:\n%s", got, logs)
	}
}

// TestCheckRSAOnly: popgate check names the names only an RSA certificate
// covers, with what it costs, and says nothing once an ECDSA one is beside
// it.
func TestCheckRSAOnly(t *testing.T) {
	dir := t.TempDir()
	ca, err := certgen.NewCA("check", certgen.RSA)
	if err != nil {
		t.Fatal(err)
	}
	rsaCert, rsaKey, err := ca.IssueFiles(dir, "rsa", "mail.example.com", certgen.RSA)
	if err != nil {
		t.Fatal(err)
	}
	ecCert, ecKey, err := ca.IssueFiles(dir, "ec", "mail.example.com", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	const notice = "tls certificate has an RSA key and no ECDSA certificate beside it"
	full := fullConfig(testCert{certFile: rsaCert, keyFile: rsaKey})
	both := strings.Replace(full, "certificates = [", fmt.Sprintf("certificates = [{ cert = %q, key = %q }, ", ecCert, ecKey), 1)
	if both == full {
		t.Fatal("fullConfig has no certificates list to add to")
	}
	for _, tc := range []struct {
		name, config string
		want         bool
	}{
		{"rsa only", full, true},
		{"rsa and ecdsa", both, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t.Context(), "check", "-config", writeConfig(t, tc.config))
			if code != 0 || !strings.Contains(out, ": OK") {
				t.Fatalf("check = %d, %q; stderr:\n%s", code, out, errOut)
			}
			if got := strings.Contains(errOut, notice) && strings.Contains(errOut, "mail.example.com"); got != tc.want {
				t.Errorf("check's log mentions the RSA-only notice: %v, want %v; stderr:\n%s", got, tc.want, errOut)
			}
		})
	}
}
