package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// run calls mainContext and returns its exit code, stdout and stderr.
func run(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = mainContext(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestMainSubcommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int    // -1: any failure
		wantOut  string // in stdout
		wantErr  string // in stderr
	}{
		{"version", []string{"version"}, 0, "popgate ", ""},
		{"--version", []string{"--version"}, 0, "popgate ", ""},
		{"help", []string{"help"}, 0, "Usage:", ""},
		{"no arguments", nil, 2, "", "Usage:"},
		{"unknown subcommand", []string{"serve"}, 2, "", `unknown command "serve"`},
		{"unknown flag", []string{"check", "-bogus"}, -1, "", "-bogus"},
		{"route without user", []string{"route", "-config", "x.toml"}, 1, "", "exactly one user name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t.Context(), tc.args...)
			if code != tc.wantCode && (tc.wantCode != -1 || code == 0) {
				t.Errorf("mainErr(%q) = %d, want %d (stderr: %s)", tc.args, code, tc.wantCode, errOut)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("mainErr(%q) stdout = %q, want mention of %q", tc.args, out, tc.wantOut)
			}
			if !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("mainErr(%q) stderr = %q, want mention of %q", tc.args, errOut, tc.wantErr)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "mail.example.com")
	other := writeTestCert(t, dir, "other", "mail.example.com")
	full := fullConfig(cert)
	missingCert := filepath.Join(dir, "absent.crt")

	tests := []struct {
		name     string
		config   string
		wantCode int
		wantOut  string
		wantErr  []string
	}{
		{"valid", full, 0, "OK (2 listeners, 3 backends)", nil},
		{"unknown key", strings.Replace(full, "[limits]\n", "[limits]\nmax_conection = 1\n", 1), 1, "",
			[]string{`unknown key "limits.max_conection"`}},
		{"bad duration", strings.Replace(full, `login_timeout = "30s"`, `login_timeout = "5 minutes"`, 1), 1, "",
			[]string{"limits.login_timeout", `invalid duration "5 minutes"`}},
		{"unreadable certificate", strings.Replace(full, fmt.Sprintf("cert = %q", cert.certFile), fmt.Sprintf("cert = %q", missingCert), 1), 1, "",
			[]string{missingCert}},
		{"unreadable key", strings.Replace(full, fmt.Sprintf("key = %q", cert.keyFile), fmt.Sprintf("key = %q", other.keyFile+".gone"), 1), 1, "",
			[]string{other.keyFile + ".gone"}},
		{"mismatched certificate and key", strings.Replace(full, fmt.Sprintf("key = %q", cert.keyFile), fmt.Sprintf("key = %q", other.keyFile), 1), 1, "",
			[]string{cert.certFile, other.keyFile}},
		{"unreadable backend ca_file", strings.Replace(full, fmt.Sprintf("ca_file = %q", cert.certFile), fmt.Sprintf("ca_file = %q", missingCert), 1), 1, "",
			[]string{`backend "modern"`, missingCert}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.config)
			args := []string{"check", "-config", path}
			code, out, errOut := run(t.Context(), args...)
			if code != tc.wantCode {
				t.Errorf("mainErr(%q) = %d, want %d (stderr: %s)", args, code, tc.wantCode, errOut)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("mainErr(%q) stdout = %q, want mention of %q", args, out, tc.wantOut)
			}
			if tc.wantCode == 0 && !strings.Contains(out, path) {
				t.Errorf("mainErr(%q) stdout = %q, want mention of %q", args, out, path)
			}
			if tc.wantCode != 0 && out != "" {
				t.Errorf("mainErr(%q) stdout = %q, want nothing on failure", args, out)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("mainErr(%q) stderr = %q, want mention of %q", args, errOut, w)
				}
			}
		})
	}
}

func TestCheckMissingConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.toml")
	args := []string{"check", "-config", path}
	code, _, errOut := run(t.Context(), args...)
	if code != 1 || !strings.Contains(errOut, path) {
		t.Errorf("mainErr(%q) = %d, stderr %q; want 1 and mention of %q", args, code, errOut, path)
	}
}

func TestRoute(t *testing.T) {
	cert := writeTestCert(t, t.TempDir(), "mail", "mail.example.com")
	withDefault := writeConfig(t, fullConfig(cert))
	noDefault := writeConfig(t, strings.Replace(fullConfig(cert), "default = \"legacy\"\n", "", 1))

	tests := []struct {
		name   string
		config string
		user   string
		want   string
	}{
		{"exact user", withDefault, "alice@example.com", "alice@example.com -> modern (127.0.0.1:1111, tls=starttls)"},
		{"exact user, other case", withDefault, "ALICE@example.com", "ALICE@example.com -> modern "},
		{"mixed-case user key", withDefault, "carol@example.com", "carol@example.com -> pop3s (127.0.0.1:1112, tls=implicit)"},
		{"domain", withDefault, "bob@example.org", "bob@example.org -> pop3s "},
		{"domain, other case", withDefault, "Bob@EXAMPLE.ORG", "Bob@EXAMPLE.ORG -> pop3s "},
		{"domain key with @", withDefault, "dave@example.net", "dave@example.net -> modern "},
		{"subdomain is not the domain", withDefault, "eve@mx.example.org", "eve@mx.example.org -> legacy "},
		{"default", withDefault, "nobody@elsewhere.test", "nobody@elsewhere.test -> legacy (127.0.0.1:1110, tls=none)"},
		{"user without domain", withDefault, "frank", "frank -> legacy "},
		{"no route without default", noDefault, "nobody@elsewhere.test", "nobody@elsewhere.test: no route"},
		{"tables still apply without default", noDefault, "bob@example.org", "bob@example.org -> pop3s "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"route", "-config", tc.config, tc.user}
			code, out, errOut := run(t.Context(), args...)
			if code != 0 {
				t.Fatalf("mainErr(%q) = %d, want 0 (stderr: %s)", args, code, errOut)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("mainErr(%q) stdout = %q, want mention of %q", args, out, tc.want)
			}
		})
	}

	bad := writeConfig(t, "colour = 1\n"+minimal)
	args := []string{"route", "-config", bad, "alice@example.com"}
	if code, _, errOut := run(t.Context(), args...); code != 1 || !strings.Contains(errOut, "colour") {
		t.Errorf("mainErr(%q) = %d, stderr %q; want 1 and mention of %q", args, code, errOut, "colour")
	}
}

// serve runs an instance built by build until ctx is done, without
// metrics or configuration file, with grace as limits.shutdown_timeout.
func serve(ctx context.Context, in *instance, log *slog.Logger, grace time.Duration) error {
	in.cfg.Limits.ShutdownTimeout = grace
	return newRunner(in, log).run(ctx)
}

// TestServeCancelled: when ctx is done every accept loop returns
// proxy.ErrServerClosed; serve must report a normal stop, not pass that on
// as a listener failure, whichever of the two it sees first.
func TestServeCancelled(t *testing.T) {
	c := &Config{
		Backend: []BackendConfig{{Name: "b", Address: "127.0.0.1:1", TLS: "none"}},
		Route:   RouteConfig{Default: "b"},
	}
	for i := range 4 {
		c.Listen = append(c.Listen, ListenConfig{Name: fmt.Sprint("l", i), Address: "127.0.0.1:0", TLS: "none"})
	}
	s, err := c.check("t")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for i := range 50 {
		in, err := build(s, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := serve(ctx, in, log, time.Second); err != nil {
			t.Fatalf("serve(cancelled ctx) #%d = %v, want nil", i, err)
		}
	}
}

// logSink is the stderr of a running popgate: it keeps everything and
// hands each "listening" line's listener and address to a channel.
type logSink struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	partial   []byte
	listening chan [2]string
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		var rec struct{ Msg, Listener, Address string }
		if json.Unmarshal(s.partial[:i], &rec) == nil && rec.Msg == "listening" {
			select {
			case s.listening <- [2]string{rec.Listener, rec.Address}:
			default:
			}
		}
		s.partial = s.partial[i+1:]
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// records returns the JSON log lines whose msg is msg, and fails t for
// every line that is not JSON.
func (s *logSink) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	recs, plain := s.jsonRecords(msg)
	for _, line := range plain {
		t.Errorf("log line %q is not JSON", line)
	}
	return recs
}

// jsonRecords returns the JSON log lines whose msg is msg, and the lines
// that are not JSON.
func (s *logSink) jsonRecords(msg string) (recs []map[string]any, plain []string) {
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			plain = append(plain, line)
			continue
		}
		if rec["msg"] == msg {
			recs = append(recs, rec)
		}
	}
	return recs, plain
}

// popClient is a minimal POP3 client.
type popClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func newPOPClient(t *testing.T, c net.Conn) *popClient {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	// A guard against a hang, not a timing assertion.
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	p := &popClient{t: t, c: c, r: bufio.NewReader(c)}
	if line := p.line(); !strings.HasPrefix(line, "+OK") {
		t.Fatalf("greeting = %q, want +OK", line)
	}
	return p
}

func (p *popClient) line() string {
	p.t.Helper()
	line, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (after %q)", err, line)
	}
	return line
}

// cmd sends a command and returns its +OK status line.
func (p *popClient) cmd(command string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, command+"\r\n"); err != nil {
		p.t.Fatalf("write %q: %v", strings.Fields(command)[0], err)
	}
	line := p.line()
	if !strings.HasPrefix(line, "+OK") {
		p.t.Fatalf("%s: got %q, want +OK", strings.Fields(command)[0], line)
	}
	return line
}

// multi sends a command with a multi-line answer and returns the answer as
// received: status line, dot-stuffed body and the terminating ".".
func (p *popClient) multi(command string) []byte {
	p.t.Helper()
	var b bytes.Buffer
	b.WriteString(p.cmd(command))
	for {
		line := p.line()
		b.WriteString(line)
		if line == ".\r\n" {
			return b.Bytes()
		}
	}
}

// unstuff returns the message a RETR answer carries.
func unstuff(t *testing.T, answer []byte) []byte {
	t.Helper()
	_, body, ok := bytes.Cut(answer, []byte("\r\n"))
	if !ok || !bytes.HasSuffix(body, []byte(".\r\n")) {
		t.Fatalf("malformed RETR answer %q", answer)
	}
	body = body[:len(body)-3]
	var msg []byte
	for line := range bytes.Lines(body) {
		msg = append(msg, bytes.TrimPrefix(line, []byte("."))...)
	}
	return msg
}

// fetch logs in as user over c and returns the STAT line and the RETR
// answers for messages 1 and 2, then QUITs.
func fetch(t *testing.T, c net.Conn, user, pass string) (stat string, retr [2][]byte) {
	t.Helper()
	p := newPOPClient(t, c)
	p.cmd("USER " + user)
	p.cmd("PASS " + pass)
	stat = p.cmd("STAT")
	retr[0] = p.multi("RETR 1")
	retr[1] = p.multi("RETR 2")
	p.cmd("QUIT")
	if _, err := p.r.ReadByte(); err != io.EOF {
		t.Errorf("after QUIT: read = %v, want EOF", err)
	}
	return stat, retr
}

func TestRunEndToEnd(t *testing.T) {
	const (
		user = "alice"
		pass = "s3cret-PASSWORD-never-logged"
	)
	sample := pop3test.SampleMailbox()
	mbox := &pop3test.Mailbox{
		Password: pass,
		Messages: [][]byte{pop3test.GenerateMessage(200_000), sample.Messages[1]},
	}
	_, baddr := mailboxesServer(t, map[string]*pop3test.Mailbox{user: mbox})

	cert := writeTestCert(t, t.TempDir(), "mail", "mail.example.com")
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"

[tls]
default_server_name = "mail.example.com"
certificates = [{ cert = %q, key = %q }]

[[backend]]
name = "mbox"
address = %q
tls = "none"

[route]
default = "mbox"

[limits]
failure_delay = "0s"
shutdown_timeout = "10s"

[metrics]
address = "127.0.0.1:0"
`, cert.certFile, cert.keyFile, baddr))

	logs := &logSink{listening: make(chan [2]string, 4)}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- mainContext(ctx, []string{"run", "-config", path}, io.Discard, logs)
	}()

	addrs := map[string]string{}
	guard := time.After(30 * time.Second)
	for len(addrs) < 2 {
		select {
		case l := <-logs.listening:
			addrs[l[0]] = l[1]
		case code := <-done:
			t.Fatalf("run exited early with %d; log:\n%s", code, logs)
		case <-guard:
			t.Fatalf("no listening lines for both listeners; log:\n%s", logs)
		}
	}
	for _, name := range []string{"plain", "pop3s"} {
		if a := addrs[name]; !strings.HasPrefix(a, "127.0.0.1:") || strings.HasSuffix(a, ":0") {
			t.Fatalf("listener %s address = %q, want a loopback port", name, a)
		}
	}

	// What the backend itself answers, to compare byte for byte.
	direct, err := net.Dial("tcp", baddr)
	if err != nil {
		t.Fatal(err)
	}
	wantStat, wantRetr := fetch(t, direct, user, pass)
	for i, r := range wantRetr {
		if got := unstuff(t, r); !bytes.Equal(got, mbox.Messages[i]) {
			t.Fatalf("direct RETR %d: message differs from the mailbox (%d vs %d octets)", i+1, len(got), len(mbox.Messages[i]))
		}
	}

	t.Run("plain", func(t *testing.T) {
		c, err := net.Dial("tcp", addrs["plain"])
		if err != nil {
			t.Fatal(err)
		}
		stat, retr := fetch(t, c, user, pass)
		checkSame(t, stat, retr, wantStat, wantRetr)
	})
	t.Run("pop3s", func(t *testing.T) {
		c, err := tls.Dial("tcp", addrs["pop3s"], &tls.Config{
			RootCAs:    cert.pool(),
			ServerName: "mail.example.com",
			NextProtos: []string{"pop3"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if p := c.ConnectionState().NegotiatedProtocol; p != "pop3" {
			t.Errorf("ALPN = %q, want pop3", p)
		}
		stat, retr := fetch(t, c, user, pass)
		checkSame(t, stat, retr, wantStat, wantRetr)
	})

	t.Run("metrics", func(t *testing.T) {
		// One failed login as well.
		c, err := net.Dial("tcp", addrs["plain"])
		if err != nil {
			t.Fatal(err)
		}
		p := newPOPClient(t, c)
		p.cmd("USER " + user)
		io.WriteString(c, "PASS wrong\r\n")
		if l := p.line(); !strings.HasPrefix(l, "-ERR") {
			t.Fatalf("wrong password: %q", l)
		}
		p.cmd("QUIT")
		for len(logs.records(t, "session end")) < 3 {
			time.Sleep(5 * time.Millisecond) // the sessions end just after QUIT
		}
		var inSum, outSum float64
		for _, e := range logs.records(t, "session end") {
			in, _ := e["bytes_in"].(float64)
			out, _ := e["bytes_out"].(float64)
			inSum, outSum = inSum+in, outSum+out
		}
		admin := logs.records(t, "admin endpoints listening")[0]["address"].(string)
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := parseMetrics(t, string(body))
		for series, want := range map[string]float64{
			`popgate_connections_total{listener="plain"}`:                                                     2,
			`popgate_connections_total{listener="pop3s"}`:                                                     1,
			`popgate_connections_active{listener="plain"}`:                                                    0,
			`popgate_sessions_active`:                                                                         0,
			`popgate_logins_total{result="ok"}`:                                                               2,
			`popgate_logins_total{result="auth_failed"}`:                                                      1,
			`popgate_logins_total{result="no_route"}`:                                                         0,
			`popgate_tls_handshakes_total{cipher="TLS_AES_128_GCM_SHA256",resumed="false",version="TLS 1.3"}`: 1,
			`popgate_bytes_total{direction="client_to_backend"}`:                                              inSum,
			`popgate_bytes_total{direction="backend_to_client"}`:                                              outSum,
			`popgate_backend_logins_total{backend="mbox",result="ok"}`:                                        2,
			`popgate_backend_logins_total{backend="mbox",result="rejected"}`:                                  1,
			`popgate_backend_login_seconds_count{backend="mbox"}`:                                             3,
			`popgate_backend_connect_seconds_count{backend="mbox"}`:                                           3,
			`popgate_session_duration_seconds_count{listener="plain"}`:                                        1,
			`popgate_session_duration_seconds_count{listener="pop3s"}`:                                        1,
			`popgate_certificate_expiry_timestamp_seconds{name="mail.example.com"}`:                           float64(cert.leaf.NotAfter.Unix()),
			`popgate_config_last_reload_successful`:                                                           1,
		} {
			if got, ok := m[series]; !ok || got != want {
				t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
			}
		}
		if outSum < float64(len(mbox.Messages[0])*2) {
			t.Errorf("backend_to_client = %v, want at least both RETRs of message 1", outSum)
		}
		if !strings.Contains(string(body), `popgate_build_info{`) {
			t.Error("no popgate_build_info")
		}
	})

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("run after cancel = %d, want 0; log:\n%s", code, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("run did not return after cancel; log:\n%s", logs)
	}

	log := logs.String()
	if strings.Contains(log, pass) {
		t.Errorf("log contains the password:\n%s", log)
	}
	if len(logs.records(t, "stopped")) != 1 {
		t.Errorf("log has no \"stopped\" line:\n%s", log)
	}
	ends := logs.records(t, "session end")
	if len(ends) != 3 {
		t.Fatalf("log has %d \"session end\" lines, want 3:\n%s", len(ends), log)
	}
	seen := map[any]bool{}
	for _, e := range ends {
		if e["result"] == "quit" && e["failures"] == float64(1) {
			continue // the failed login of the metrics subtest
		}
		seen[e["listener"]] = true
		for key, want := range map[string]any{"result": "ok", "user": user, "backend": "mbox"} {
			if e[key] != want {
				t.Errorf("session end %v: %s = %v, want %v", e, key, e[key], want)
			}
		}
		in, _ := e["bytes_in"].(float64)
		out, _ := e["bytes_out"].(float64)
		if in <= 0 || out < float64(len(mbox.Messages[0])+len(mbox.Messages[1])) {
			t.Errorf("session end %v: bytes_in = %v, bytes_out = %v, want > 0 and >= both messages", e, e["bytes_in"], e["bytes_out"])
		}
		if e["listener"] == "pop3s" && e["tls_version"] == nil {
			t.Errorf("session end %v: no tls_version on the TLS listener", e)
		}
	}
	if !seen["plain"] || !seen["pop3s"] {
		t.Errorf("session end lines for listeners %v, want plain and pop3s", seen)
	}
}

func checkSame(t *testing.T, stat string, retr [2][]byte, wantStat string, wantRetr [2][]byte) {
	t.Helper()
	if stat != wantStat {
		t.Errorf("STAT = %q, want %q as the backend answers", stat, wantStat)
	}
	for i := range retr {
		if !bytes.Equal(retr[i], wantRetr[i]) {
			t.Errorf("RETR %d through popgate differs from the backend's answer (%d vs %d octets)", i+1, len(retr[i]), len(wantRetr[i]))
		}
	}
}
