package main

// Tests of [metrics]: who may use the admin endpoints.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeToken writes a fresh random admin token to a file and returns the
// file and the token.
func writeToken(t *testing.T) (path, token string) {
	t.Helper()
	token = rand.Text()
	path = filepath.Join(t.TempDir(), "admin-token")
	writeFile(t, path, []byte(token+"\n"))
	return path, token
}

func TestParseConfigMetricsAccess(t *testing.T) {
	accept := []struct{ name, metrics string }{
		{"default loopback address", ""},
		{"IPv6 loopback without token", "address = \"[::1]:9110\"\n"},
		{"localhost without token", "address = \"localhost:9110\"\n"},
		{"disabled", "address = \"\"\n"},
		{"all interfaces with a token", "address = \"0.0.0.0:9110\"\ntoken_file = \"/etc/popgate/admin-token\"\n"},
		{"all interfaces, insecure_open", "address = \":9110\"\ninsecure_open = true\n"},
		{"protect_metrics with a token", "token_file = \"/etc/popgate/admin-token\"\nprotect_metrics = true\n"},
		{"allowed_hosts", "allowed_hosts = [\"popgate-admin.internal\", \"admin.example.\", \"10.0.0.5\", \"::1\", \"[2001:db8::1]\", \"my_host\"]\n"},
		{"every key", "address = \"10.0.0.5:9110\"\ntoken_file = \"/run/secrets/popgate-admin-token\"\nprotect_metrics = false\ninsecure_open = false\nallowed_hosts = [\"popgate.internal\"]\n"},
	}
	for _, tc := range accept {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseConfig(tc.name, []byte(minimal+"[metrics]\n"+tc.metrics)); err != nil {
				t.Errorf("ParseConfig(%s) error = %v, want nil", tc.name, err)
			}
		})
	}

	open := []string{"metrics.address", "not a loopback address", "metrics.token_file is not set", "metrics.insecure_open"}
	reject := []struct {
		name    string
		metrics string
		want    []string
	}{
		{"all interfaces without token", "address = \"0.0.0.0:9110\"\n", open},
		{"empty host without token", "address = \":9110\"\n", open},
		{"IPv6 all interfaces without token", "address = \"[::]:9110\"\n", open},
		{"management address without token", "address = \"10.0.0.5:9110\"\n", open},
		{"host name without token", "address = \"popgate.internal:9110\"\n", open},
		{"insecure_open false said", "address = \"0.0.0.0:9110\"\ninsecure_open = false\n", open},
		{"insecure_open with a token", "address = \"0.0.0.0:9110\"\ntoken_file = \"/t\"\ninsecure_open = true\n", []string{"metrics.insecure_open", "contradicts metrics.token_file"}},
		{"protect_metrics without token", "protect_metrics = true\n", []string{"metrics.protect_metrics: needs metrics.token_file"}},
		{"allowed_hosts with a port", "allowed_hosts = [\"admin.example:9110\"]\n", []string{`metrics.allowed_hosts[0]: "admin.example:9110"`}},
		{"allowed_hosts with a scheme", "allowed_hosts = [\"ok.example\", \"http://admin.example\"]\n", []string{`metrics.allowed_hosts[1]`}},
		{"allowed_hosts wildcard", "allowed_hosts = [\"*.example.com\"]\n", []string{`metrics.allowed_hosts[0]`}},
		{"allowed_hosts empty", "allowed_hosts = [\"\"]\n", []string{`metrics.allowed_hosts[0]`}},
		{"unknown key", "token = \"s3cret\"\n", []string{`unknown key "metrics.token"`}},
	}
	for _, tc := range reject {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.name, []byte(minimal+"[metrics]\n"+tc.metrics))
			if err == nil {
				t.Fatalf("ParseConfig(%s) error = nil, want mention of %q", tc.name, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseConfig(%s) error = %v, want mention of %q", tc.name, err, w)
				}
			}
		})
	}
}

// TestAdminAccess: what adminAccess makes of [metrics] and of the token
// file.
func TestAdminAccess(t *testing.T) {
	dir := t.TempDir()
	const token = "0123456789abcdef0123456789abcdef"
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, []byte(content))
		return p
	}
	tests := []struct {
		name    string
		metrics string // the [metrics] section; %s is a token file with token and a newline
		content string // the token file's content, when not token+"\n"

		wantToken     bool
		wantCheckHost bool
		wantHosts     []string
		wantErr       []string
	}{
		{name: "default: loopback, no token", wantCheckHost: true, wantHosts: []string{"127.0.0.1"}},
		{name: "token, newline dropped", metrics: "token_file = %q\n", wantToken: true, wantCheckHost: true, wantHosts: []string{"127.0.0.1"}},
		{name: "token, CRLF dropped", metrics: "token_file = %q\n", content: token + "\r\n", wantToken: true, wantCheckHost: true, wantHosts: []string{"127.0.0.1"}},
		{name: "token without line end", metrics: "token_file = %q\n", content: token, wantToken: true, wantCheckHost: true, wantHosts: []string{"127.0.0.1"}},
		{name: "localhost", metrics: "address = \"localhost:9110\"\n", wantCheckHost: true, wantHosts: []string{"localhost"}},
		{name: "IPv6 loopback and allowed_hosts", metrics: "address = \"[::1]:9110\"\nallowed_hosts = [\"admin.example\"]\n", wantCheckHost: true, wantHosts: []string{"::1", "admin.example"}},
		{name: "all interfaces with a token: no Host check", metrics: "address = \"0.0.0.0:9110\"\ntoken_file = %q\n", wantToken: true},
		{name: "all interfaces with allowed_hosts", metrics: "address = \":9110\"\ntoken_file = %q\nallowed_hosts = [\"admin.example\"]\n", wantToken: true, wantCheckHost: true, wantHosts: []string{"admin.example"}},
		{name: "a management address", metrics: "address = \"10.0.0.5:9110\"\ntoken_file = %q\n", wantToken: true, wantHosts: []string{"10.0.0.5"}},
		{name: "empty token file", metrics: "token_file = %q\n", content: "\n", wantErr: []string{"metrics.token_file", "is empty"}},
		{name: "short token", metrics: "token_file = %q\n", content: "0123456789\n", wantErr: []string{"metrics.token_file", "10 characters, too short (at least 16)"}},
		{name: "token with a space", metrics: "token_file = %q\n", content: "0123456789 abcdef0123456789\n", wantErr: []string{"metrics.token_file", "space"}},
		{name: "two lines", metrics: "token_file = %q\n", content: token + "\n" + token + "\n", wantErr: []string{"metrics.token_file", "control character"}},
		{name: "not a token file", metrics: "token_file = %q\n", content: strings.Repeat("x", 5000), wantErr: []string{"metrics.token_file", "more than 4096 bytes"}},
		{name: "missing token file", metrics: "token_file = \"/nonexistent/admin-token\"\n", wantErr: []string{"metrics.token_file", "/nonexistent/admin-token"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			content := tc.content
			if content == "" {
				content = token + "\n"
			}
			metrics := tc.metrics
			if strings.Contains(metrics, "%q") {
				metrics = fmt.Sprintf(metrics, file(fmt.Sprint("token", i), content))
			}
			c, err := ParseConfig(tc.name, []byte(minimal+"[metrics]\n"+metrics))
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			a, err := adminAccess(c.Metrics, slog.New(slog.NewJSONHandler(&logs, nil)))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("adminAccess = %+v, want an error naming %q", a, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("adminAccess error = %v, want mention of %q", err, w)
					}
				}
				for _, secret := range []string{"0123456789", "abcdef", "xxxxxxxx"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("adminAccess error = %v shows the file's content", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("adminAccess error = %v", err)
			}
			if tc.wantToken && a.Token != token || !tc.wantToken && a.Token != "" {
				t.Errorf("adminAccess token set %v (right %v), want %v", a.Token != "", a.Token == token, tc.wantToken)
			}
			if a.CheckHost != tc.wantCheckHost || !reflect.DeepEqual(a.Hosts, tc.wantHosts) {
				t.Errorf("adminAccess CheckHost, Hosts = %v, %q, want %v, %q", a.CheckHost, a.Hosts, tc.wantCheckHost, tc.wantHosts)
			}
			if strings.Contains(logs.String(), token) {
				t.Error("the log shows the token")
			}
		})
	}
}

// TestCheckAdmin: popgate check refuses an open non-loopback admin
// address and a bad token file, and warns about insecure_open.
func TestCheckAdmin(t *testing.T) {
	cert := writeTestCert(t, t.TempDir(), "mail", "mail.example.com")
	tokenFile, token := writeToken(t)
	full := fullConfig(cert)
	metrics := func(section string) string {
		return strings.Replace(full, "[metrics]\naddress = \"\"\n", "[metrics]\n"+section, 1)
	}
	tests := []struct {
		name     string
		config   string
		wantCode int
		wantErr  []string // in stderr
		wantNot  string   // not in stderr, when set
	}{
		{"all interfaces without token", metrics("address = \"0.0.0.0:9110\"\n"), 1,
			[]string{`metrics.address: "0.0.0.0:9110" is not a loopback address`, "metrics.token_file", "metrics.insecure_open"}, ""},
		{"all interfaces with a token", metrics(fmt.Sprintf("address = \"0.0.0.0:9110\"\ntoken_file = %q\n", tokenFile)), 0, nil, "WARN"},
		{"insecure_open", metrics("address = \"0.0.0.0:9110\"\ninsecure_open = true\n"), 0,
			[]string{`"level":"WARN"`, "ADMIN ENDPOINTS OPEN WITHOUT A TOKEN", "metrics.insecure_open", `"address":"0.0.0.0:9110"`}, ""},
		{"missing token file", metrics("token_file = \"/nonexistent/admin-token\"\n"), 1, []string{"metrics.token_file", "/nonexistent/admin-token"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"check", "-config", writeConfig(t, tc.config)}
			code, out, errOut := run(t.Context(), args...)
			if code != tc.wantCode {
				t.Errorf("mainErr(%q) = %d, want %d (stderr: %s)", args, code, tc.wantCode, errOut)
			}
			if tc.wantCode == 0 && !strings.Contains(out, ": OK") {
				t.Errorf("mainErr(%q) stdout = %q, want OK", args, out)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("mainErr(%q) stderr = %q, want mention of %q", args, errOut, w)
				}
			}
			if tc.wantNot != "" && strings.Contains(errOut, tc.wantNot) {
				t.Errorf("mainErr(%q) stderr = %q, want no %q", args, errOut, tc.wantNot)
			}
			if strings.Contains(out+errOut, token) {
				t.Errorf("mainErr(%q) shows the token", args)
			}
		})
	}
}

// TestRunRefusesOpenAdmin: popgate run does not start with a
// non-loopback admin address and no token; it says which keys to set.
// The address is TEST-NET-1's, which no host has: should popgate try to
// bind it, it fails without listening beyond loopback.
func TestRunRefusesOpenAdmin(t *testing.T) {
	path := writeConfig(t, "[log]\nformat = \"json\"\n"+strings.Replace(minimal, "127.0.0.1:1100", "127.0.0.1:0", 1)+"[metrics]\naddress = \"192.0.2.1:9110\"\n")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // against a start that should not happen
	defer cancel()
	code, _, errOut := run(ctx, "run", "-config", path)
	if code != 1 {
		t.Errorf("popgate run = %d, want 1; stderr:\n%s", code, errOut)
	}
	for _, w := range []string{"metrics.address", "metrics.token_file", "metrics.insecure_open"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("popgate run stderr = %q, want mention of %q", errOut, w)
		}
	}
	if strings.Contains(errOut, "listening") {
		t.Errorf("popgate run listened before refusing:\n%s", errOut)
	}
}

// TestPrepareWarnsInsecureOpen: the start (prepare, before anything is
// bound) warns when insecure_open leaves the admin address open.
func TestPrepareWarnsInsecureOpen(t *testing.T) {
	for _, tc := range []struct {
		name, metrics string
		wantWarn      bool
	}{
		{"insecure_open", "address = \"0.0.0.0:9110\"\ninsecure_open = true\n", true},
		{"insecure_open on loopback", "address = \"127.0.0.1:9110\"\ninsecure_open = true\n", false},
		{"loopback without token", "address = \"127.0.0.1:9110\"\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.name, []byte(minimal+"[metrics]\n"+tc.metrics))
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			r, err := prepare(c, slog.New(slog.NewJSONHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			r.srv.Close()
			const msg = `"level":"WARN","msg":"ADMIN ENDPOINTS OPEN WITHOUT A TOKEN ON A NON-LOOPBACK ADDRESS (metrics.insecure_open): anyone who reaches it can list the sessions and end them; set metrics.token_file","address":"0.0.0.0:9110"`
			if got := strings.Count(logs.String(), msg); got != b2i(tc.wantWarn) {
				t.Errorf("%d× %s in the log, want %d; log:\n%s", got, msg, b2i(tc.wantWarn), &logs)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReloadAdminAccess: a reload re-reads the token file; one that
// would open a non-loopback address without a token, or whose token file
// does not load, is refused and the running token stays.
func TestReloadAdminAccess(t *testing.T) {
	backend := mailbox(t, messages(1)...)
	tokenFile, token := writeToken(t)
	config := func(metrics string) string {
		return fmt.Sprintf("[log]\nformat = \"json\"\n%s[[backend]]\nname = \"mbox\"\naddress = %q\ntls = \"none\"\n[route]\ndefault = \"mbox\"\n[metrics]\n%s",
			listenNone, backend, metrics)
	}
	withToken := fmt.Sprintf("address = \"127.0.0.1:0\"\ntoken_file = %q\n", tokenFile)
	path := writeConfig(t, config(withToken))
	r, logs := startRunner(t, path)
	addr := r.adminAddress()
	get := func(tok string) int {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+addr+"/sessions", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(token); code != 200 {
		t.Fatalf("GET /sessions with the token = %d, want 200", code)
	}
	if rec := logs.records(t, "admin endpoints listening"); len(rec) != 1 || rec[0]["token_required"] != true {
		t.Errorf("admin endpoints listening lines %v, want one with token_required=true", rec)
	}

	newToken := rand.Text()
	writeFile(t, tokenFile, []byte(newToken+"\n"))
	if err := r.reload(); err != nil {
		t.Fatalf("reload with a new token: %v", err)
	}
	if code := get(token); code != 401 {
		t.Errorf("GET /sessions with the old token after the reload = %d, want 401", code)
	}
	if code := get(newToken); code != 200 {
		t.Errorf("GET /sessions with the new token after the reload = %d, want 200", code)
	}

	for _, bad := range []struct {
		name, text string
		token      []byte // the token file's content, when not nil
		want       []string
	}{
		{"open on a non-loopback address", config("address = \"192.0.2.1:9110\"\n"), nil, []string{"metrics.address", "metrics.token_file"}},
		{"empty token file", config(withToken), []byte("\n"), []string{"metrics.token_file", "empty"}},
	} {
		t.Run(bad.name, func(t *testing.T) {
			live := r.current()
			if bad.token != nil {
				writeFile(t, tokenFile, bad.token)
				defer writeFile(t, tokenFile, []byte(newToken+"\n"))
			}
			writeFile(t, path, []byte(bad.text))
			err := r.reload()
			if err == nil {
				t.Fatal("reload = nil, want a refusal")
			}
			for _, w := range bad.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("reload = %v, want mention of %q", err, w)
				}
			}
			if r.current() != live || r.adminAddress() != addr {
				t.Error("the refused reload replaced the running configuration")
			}
			if code := get(newToken); code != 200 {
				t.Errorf("GET /sessions after the refused reload = %d, want 200 with the running token", code)
			}
		})
	}
	if strings.Contains(logs.String(), token) || strings.Contains(logs.String(), newToken) {
		t.Error("the log shows a token")
	}
}
