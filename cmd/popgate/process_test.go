package main

// Tests of the popgate binary as an operator runs it: its own process,
// real signals (SIGHUP, SIGTERM), the admin endpoints over HTTP.

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/promtext"
	"github.com/popgate/popgate/proxy/pop3test"
)

// binary is popgate built once for the process tests, with a version and
// commit set the way release builds set them.
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	// Under a service manager the tests must not speak for the service.
	os.Unsetenv("NOTIFY_SOCKET")
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

func popgateBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "popgate-bin-")
		if binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "popgate")
		cmd := exec.Command("go", "build", "-race", "-o", binary.path,
			"-ldflags", "-X main.buildVersion=v9.8.7-test -X main.buildCommit=0123456789abcdef", ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

// process is a running popgate.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *logSink
	// exited is closed when the process has exited; done when, besides,
	// its log has reached EOF: when every process that inherited its
	// stderr (the new process of an upgrade) has exited too.
	exited chan struct{}
	done   chan struct{}
	err    error // Wait's, once exited is closed
	addrs  map[string]string
	admin  string // the admin endpoints' address
}

// startPopgate runs popgate with the configuration file path and waits
// until it listens on listeners names and on the admin address.
func startPopgate(t *testing.T, path string, names ...string) *process {
	t.Helper()
	return startPopgateEnv(t, path, nil, names...)
}

// startPopgateEnv is startPopgate with env added to the environment.
func startPopgateEnv(t *testing.T, path string, env []string, names ...string) *process {
	t.Helper()
	return startPopgateCmd(t, exec.Command(popgateBinary(t), "run", "-config", path), env, names...)
}

// startPopgateCmd is startPopgateEnv for a command of the caller's.
func startPopgateCmd(t *testing.T, cmd *exec.Cmd, env []string, names ...string) *process {
	t.Helper()
	p := &process{
		t:      t,
		cmd:    cmd,
		logs:   &logSink{listening: make(chan [2]string, 16)},
		exited: make(chan struct{}),
		done:   make(chan struct{}),
		addrs:  map[string]string{},
	}
	p.cmd.Env = append(os.Environ(), env...)
	// A pipe of its own, not os/exec's: Wait returns when popgate exits,
	// also when the new process of an upgrade still holds the pipe.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = pw
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	logged := make(chan struct{})
	go func() {
		io.Copy(p.logs, pr)
		pr.Close()
		close(logged)
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
		<-logged
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill() // only this test's own process
		}
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Errorf("popgate's log still open a minute after it exited")
		}
	})
	p.waitListening(names...)
	p.admin = p.waitLog("admin endpoints listening")["address"].(string)
	return p
}

// waitListening waits for the "listening" lines of names.
func (p *process) waitListening(names ...string) {
	p.t.Helper()
	guard := time.After(60 * time.Second) // against a hang, not a timing check
	for _, n := range names {
		for p.addrs[n] == "" {
			select {
			case l := <-p.logs.listening:
				p.addrs[l[0]] = l[1]
			case <-p.done:
				p.t.Fatalf("popgate exited (%v); log:\n%s", p.err, p.logs)
			case <-guard:
				p.t.Fatalf("no listening line for %s; log:\n%s", n, p.logs)
			}
		}
	}
}

// waitLog waits for the n-th log line whose msg is msg (n = 1 when
// omitted) and returns it.
func (p *process) waitLog(msg string, n ...int) map[string]any {
	p.t.Helper()
	return p.waitRecord(msg, n, func() []map[string]any { return p.logs.records(p.t, msg) })
}

// waitPlainLog is waitLog for a log where lines that are not JSON (what
// a process that failed to start wrote) are skipped.
func (p *process) waitPlainLog(msg string, n int) map[string]any {
	p.t.Helper()
	return p.waitRecord(msg, []int{n}, func() []map[string]any {
		recs, _ := p.logs.jsonRecords(msg)
		return recs
	})
}

func (p *process) waitRecord(msg string, n []int, records func() []map[string]any) map[string]any {
	p.t.Helper()
	want := 1
	if len(n) > 0 {
		want = n[0]
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if recs := records(); len(recs) >= want {
			return recs[want-1]
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %d× %q in the log:\n%s", want, msg, p.logs)
		}
		select {
		case <-p.done:
			if recs := records(); len(recs) >= want {
				return recs[want-1]
			}
			p.t.Fatalf("popgate exited (%v) before logging %q; log:\n%s", p.err, msg, p.logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (p *process) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits for the process to exit, and every process that inherited
// its log (the new ones of its upgrades), and returns its exit code.
func (p *process) wait() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("popgate did not exit; log:\n%s", p.logs)
	}
	return p.cmd.ProcessState.ExitCode()
}

// dial connects to listener name and reads the greeting.
func (p *process) dial(name string) *popClient {
	p.t.Helper()
	c, err := net.Dial("tcp", p.addrs[name])
	if err != nil {
		p.t.Fatal(err)
	}
	return newPOPClient(p.t, c)
}

// get fetches an admin path and returns the status code and body.
func (p *process) get(path string) (int, string) {
	p.t.Helper()
	resp := p.request(http.MethodGet, path, "", "")
	return resp.StatusCode, resp.body
}

// adminResponse is an admin endpoint's answer, its body read.
type adminResponse struct {
	*http.Response
	body string
}

// request sends method path to the admin address with token as the
// bearer token ("": none) and host as the Host header ("": the address).
func (p *process) request(method, path, host, token string) adminResponse {
	p.t.Helper()
	req, err := http.NewRequest(method, "http://"+p.admin+path, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return adminResponse{resp, string(b)}
}

// metrics scrapes /metrics into series ("name{labels}") and values.
func (p *process) metrics() map[string]float64 {
	p.t.Helper()
	code, body := p.get("/metrics")
	if code != http.StatusOK {
		p.t.Fatalf("GET /metrics = %d", code)
	}
	return parseMetrics(p.t, body)
}

func parseMetrics(t *testing.T, body string) map[string]float64 {
	t.Helper()
	m, err := promtext.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// readSlowly reads what c is sent into answer, 64 KiB at a time with a
// pause after each, until answer holds upTo octets: a slow client, whose
// session outlasts whatever happens meanwhile.
func (c *popClient) readSlowly(answer *bytes.Buffer, upTo int, pause time.Duration) {
	c.t.Helper()
	buf := make([]byte, 64<<10)
	for answer.Len() < upTo {
		c.c.SetDeadline(time.Now().Add(30 * time.Second)) // against a hang
		n, err := io.ReadFull(c.r, buf[:min(len(buf), upTo-answer.Len())])
		answer.Write(buf[:n])
		if err != nil {
			c.t.Fatalf("RETR: %v after %d octets", err, answer.Len())
		}
		time.Sleep(pause)
	}
}

// login logs in as user and returns the STAT answer.
func (c *popClient) login(user, pass string) string {
	c.t.Helper()
	c.cmd("USER " + user)
	c.cmd("PASS " + pass)
	return c.cmd("STAT")
}

const (
	procUser = "alice"
	procPass = "s3cret-PASSWORD-never-logged"
)

// mailbox starts a pop3test backend holding msgs for procUser and
// returns its address.
func mailbox(t *testing.T, msgs ...[]byte) string {
	t.Helper()
	_, addr := mailboxServer(t, msgs...)
	return addr
}

// mailboxServer is mailbox, with the server, for what it saw.
func mailboxServer(t *testing.T, msgs ...[]byte) (*pop3test.Server, string) {
	t.Helper()
	return mailboxesServer(t, map[string]*pop3test.Mailbox{procUser: {Password: procPass, Messages: msgs}})
}

// mailboxesServer starts a pop3test backend holding boxes on loopback,
// closed when the test ends, and returns it and its address.
func mailboxesServer(t *testing.T, boxes map[string]*pop3test.Mailbox) (*pop3test.Server, string) {
	t.Helper()
	b := &pop3test.Server{Mailboxes: boxes}
	addr, err := b.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, addr.String()
}

// oneBackend is a configuration with a plaintext listener "plain" in
// front of the backend at addr, JSON logs and the admin endpoints on a
// free port; limits is the [limits] section's body.
func oneBackend(addr, limits string) string {
	return fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "mbox"
address = %q
tls = "none"

[route]
default = "mbox"

[limits]
%s
[metrics]
address = "127.0.0.1:0"
`, addr, limits)
}

// oneTLSBackend is oneBackend with a POP3S listener "pop3s" serving
// cert for localhost instead of the plaintext one.
func oneTLSBackend(cert testCert, addr, limits string) string {
	return fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"

[tls]
default_server_name = "localhost"
certificates = [{ cert = %q, key = %q }]

[[backend]]
name = "mbox"
address = %q
tls = "none"

[route]
default = "mbox"

[limits]
%s
[metrics]
address = "127.0.0.1:0"
`, cert.certFile, cert.keyFile, addr, limits)
}

func messages(n int) [][]byte {
	var m [][]byte
	for i := range n {
		m = append(m, fmt.Appendf(nil, "Subject: %d\r\n\r\nmessage %d\r\n", i+1, i+1))
	}
	return m
}

// checkLogs fails unless every line is JSON and none holds the password.
func checkLogs(t *testing.T, logs *logSink) {
	t.Helper()
	s := logs.String()
	if strings.Contains(s, procPass) {
		t.Errorf("the log contains the password:\n%s", s)
	}
	for line := range strings.Lines(strings.TrimSpace(s)) {
		if !json.Valid([]byte(line)) {
			t.Errorf("log line is not JSON: %q", line)
		}
	}
}

// TestProcessReload: SIGHUP re-reads the file. A changed route moves the
// next login to the new backend while the session opened before goes on
// with the old one; a new listener is bound; a broken file, or one naming
// an unknown backend, is refused and the running configuration keeps
// serving.
func TestProcessReload(t *testing.T) {
	a := mailbox(t, messages(2)...)
	b := mailbox(t, messages(3)...)
	config := func(route, extra string) string {
		return fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
%s
[[backend]]
name = "a"
address = %q
tls = "none"

[[backend]]
name = "b"
address = %q
tls = "none"

[route]
users = { %q = %q }

[limits]
failure_delay = "0s"
shutdown_timeout = "5s"

[metrics]
address = "127.0.0.1:0"
`, extra, a, b, procUser, route)
	}
	path := writeConfig(t, config("a", ""))
	p := startPopgate(t, path, "plain")

	before := p.dial("plain")
	if stat := before.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 2 ") {
		t.Fatalf("before the reload: STAT = %q, want backend a's 2 messages", stat)
	}

	writeFile(t, path, []byte(config("b", `
[[listen]]
name = "extra"
address = "127.0.0.1:0"
tls = "none"
`)))
	p.signal(syscall.SIGHUP)
	rec := p.waitLog("configuration reloaded; new sessions use it, running ones keep theirs")
	if added := fmt.Sprint(rec["listeners_added"]); added != "[extra]" {
		t.Errorf("reload line listeners_added = %s, want [extra]", added)
	}
	p.waitListening("extra")

	after := p.dial("plain")
	if stat := after.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 3 ") {
		t.Errorf("after the reload: STAT = %q, want backend b's 3 messages", stat)
	}
	after.cmd("QUIT")
	// The session from before still talks to backend a.
	if stat := before.cmd("STAT"); !strings.HasPrefix(stat, "+OK 2 ") {
		t.Errorf("session from before the reload: STAT = %q, want backend a's 2 messages", stat)
	}
	if got := unstuff(t, before.multi("RETR 2")); !bytes.Equal(got, messages(2)[1]) {
		t.Errorf("session from before the reload: RETR 2 = %q", got)
	}
	extra := p.dial("extra")
	if stat := extra.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 3 ") {
		t.Errorf("new listener: STAT = %q, want backend b's 3 messages", stat)
	}
	extra.cmd("QUIT")

	// Refused reloads: a syntax error, then a route to a backend that
	// does not exist. Each names its reason; b keeps serving.
	for i, bad := range []struct{ text, reason string }{
		{"[[listen]\n", "config"},
		{config("nowhere", ""), `backend "nowhere" is not defined`},
	} {
		writeFile(t, path, []byte(bad.text))
		p.signal(syscall.SIGHUP)
		rec := p.waitLog("configuration reload failed; keeping the running configuration", i+1)
		if err, _ := rec["err"].(string); !strings.Contains(err, bad.reason) {
			t.Errorf("reload failure %d: err = %q, want mention of %q", i+1, err, bad.reason)
		}
		c := p.dial("plain")
		if stat := c.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 3 ") {
			t.Errorf("after refused reload %d: STAT = %q, want backend b's 3 messages", i+1, stat)
		}
		c.cmd("QUIT")
	}
	// The sessions that QUIT end a moment after their +OK.
	var m map[string]float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if m = p.metrics(); m["popgate_sessions_active"] == 1 || time.Now().After(deadline) {
			break
		}
	}
	for series, want := range map[string]float64{
		`popgate_config_reloads_total{result="ok"}`:     1,
		`popgate_config_reloads_total{result="failed"}`: 2,
		`popgate_config_last_reload_successful`:         0,
		`popgate_logins_total{result="ok"}`:             5,
		`popgate_connections_total{listener="plain"}`:   4,
		`popgate_connections_total{listener="extra"}`:   1,
		`popgate_connections_active{listener="plain"}`:  1,
		`popgate_sessions_active`:                       1,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	before.cmd("QUIT")
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0; log:\n%s", code, p.logs)
	}
	checkLogs(t, p.logs)
}

// TestProcessDrain: during the drain that SIGTERM starts, new connections
// are refused and /readyz says draining, but logged-in sessions go on as
// before. Over POP3S, a client reading a large RETR slowly (64 KiB every
// 50 ms) gets all of it, then DELE and QUIT answered, and the QUIT reaches
// the backend, which commits the DELE; an idle session wakes up for its
// commands; a client still logging in (in the failed-login delay) is
// closed at once and does not hold the drain up. popgate exits 0 once the
// last session has ended, long before shutdown_timeout.
func TestProcessDrain(t *testing.T) {
	const bob, bobPass = "bob", "b0b-PASSWORD-never-logged"
	big := pop3test.GenerateMessage(4 << 20)
	small := messages(1)[0]
	b, baddr := mailboxesServer(t, map[string]*pop3test.Mailbox{
		procUser: {Password: procPass, Messages: [][]byte{big, small}},
		bob:      {Password: bobPass, Messages: messages(2)},
	})
	cert := writeTestCert(t, t.TempDir(), "mail", "localhost")
	// shutdown_timeout, login_timeout and failure_delay all outlast the
	// test's own patience (60 s): only the sessions ending can end the
	// drain in time.
	path := writeConfig(t, oneTLSBackend(cert, baddr, `shutdown_timeout = "10m"
login_timeout = "10m"
failure_delay = "10m"
`))
	p := startPopgate(t, path, "pop3s")
	dial := func() *popClient {
		t.Helper()
		nc, err := net.Dial("tcp", p.addrs["pop3s"])
		if err != nil {
			t.Fatal(err)
		}
		return newPOPClient(t, tls.Client(nc, &tls.Config{RootCAs: cert.pool(), ServerName: "localhost"}))
	}
	if code, body := p.get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the drain = %d %q", code, body)
	}
	idle := dial()
	idle.login(bob, bobPass)
	pending := dial()
	pending.cmd("USER " + procUser)
	io.WriteString(pending.c, "PASS wrong\r\n")
	p.waitLog("login failed")
	c := dial()
	c.login(procUser, procPass)

	// The RETR, read slowly; the signal comes after its first MiB.
	c.cmd("RETR 1")
	want := append(dotStuff(big), ".\r\n"...)
	var answer bytes.Buffer
	c.readSlowly(&answer, 1<<20, 50*time.Millisecond)
	p.signal(syscall.SIGTERM)
	p.waitLog("shutting down")

	if code, body := p.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("/readyz during the drain = %d %q, want 503 draining", code, body)
	}
	if nc, err := net.Dial("tcp", p.addrs["pop3s"]); err == nil {
		// Connected after all: it must be closed without a greeting.
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if b, _ := tls.Client(nc, &tls.Config{RootCAs: cert.pool(), ServerName: "localhost"}).Read(make([]byte, 1)); b > 0 {
			t.Errorf("new connection during the drain was served")
		}
		nc.Close()
	}
	// The client still logging in is closed at once.
	if line, err := pending.r.ReadString('\n'); err == nil {
		t.Errorf("client in the failed-login delay got %q during the drain, want EOF", line)
	}
	// The rest of the message arrives, all of it, then the commands
	// after it are relayed as ever.
	c.readSlowly(&answer, len(want), 50*time.Millisecond)
	if !bytes.Equal(answer.Bytes(), want) {
		t.Fatalf("RETR through the drain: %d octets, want the %d-octet message unchanged", answer.Len(), len(want))
	}
	c.cmd("DELE 1")
	c.cmd("QUIT")
	if stat := idle.cmd("STAT"); !strings.HasPrefix(stat, "+OK 2 ") {
		t.Errorf("idle session's STAT during the drain = %q", stat)
	}
	idle.cmd("QUIT")
	if code := p.wait(); code != 0 {
		t.Errorf("exit code = %d, want 0; log:\n%s", code, p.logs)
	}
	if q := b.Quits(); q != 2 {
		t.Errorf("backend saw %d QUITs, want both clients'", q)
	}
	if msgs := b.Messages(procUser); len(msgs) != 1 || !bytes.Equal(msgs[0], small) {
		t.Errorf("mailbox after the QUIT holds %d messages, want the DELE committed", len(msgs))
	}
	checkLogs(t, p.logs)
	if strings.Contains(p.logs.String(), bobPass) {
		t.Errorf("the log contains a password:\n%s", p.logs)
	}
	if over := p.logs.records(t, "shutdown grace period over; closed remaining sessions"); len(over) > 0 {
		t.Errorf("the drain ran into shutdown_timeout; log:\n%s", p.logs)
	}
	results := map[string]int{}
	for _, end := range p.logs.records(t, "session end") {
		results[fmt.Sprint(end["result"], " ", end["end"])]++
		if end["user"] == procUser && end["result"] == "ok" && end["bytes_out"].(float64) < float64(len(big)) {
			t.Errorf("session end %v, want the whole message out", end)
		}
	}
	if want := map[string]int{"ok backend closed": 2, "shutdown <nil>": 1}; !maps.Equal(results, want) {
		t.Errorf("session ends (result, end) %v, want %v; log:\n%s", results, want, p.logs)
	}
}

// dotStuff returns msg as a RETR answer carries it (RFC 1939 §3), without
// the terminating line.
func dotStuff(msg []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(msg) {
		if line[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	return b.Bytes()
}

// TestProcessDrainTimeout: a session still open when shutdown_timeout has
// passed is closed, without a QUIT to the backend, its last log line says
// the drain ended it, and popgate exits 0.
func TestProcessDrainTimeout(t *testing.T) {
	b, addr := mailboxServer(t, messages(1)...)
	path := writeConfig(t, oneBackend(addr, `shutdown_timeout = "1s"`))
	p := startPopgate(t, path, "plain")
	c := p.dial("plain")
	c.login(procUser, procPass)
	c.cmd("DELE 1")
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Errorf("exit code = %d, want 0; log:\n%s", code, p.logs)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Error("the session is still open after popgate exited")
	}
	if b.Quits() != 0 || len(b.Messages(procUser)) != 1 {
		t.Errorf("backend saw %d QUITs and keeps %d messages; closing at the deadline must send no QUIT", b.Quits(), len(b.Messages(procUser)))
	}
	p.waitLog("shutdown grace period over; closed remaining sessions")
	if end := p.waitLog("session end"); end["result"] != "ok" || end["ended_by"] != "shutdown" {
		t.Errorf("session end line %v, want result=ok, ended_by=shutdown", end)
	}
	checkLogs(t, p.logs)
}

// TestProcessAdminSessions: /sessions needs the token of
// metrics.token_file in every method, and refuses a Host that is not the
// loopback address (DNS rebinding) even with it; GET /sessions lists the
// live session, DELETE ends the user's sessions without QUIT; /metrics
// stays open; and `popgate version` says what -ldflags set.
func TestProcessAdminSessions(t *testing.T) {
	b, addr := mailboxServer(t, messages(2)...)
	tokenFile, token := writeToken(t)
	path := writeConfig(t, oneBackend(addr, "")+fmt.Sprintf("token_file = %q\n", tokenFile))
	p := startPopgate(t, path, "plain")
	if rec := p.waitLog("admin endpoints listening"); rec["token_required"] != true || rec["host_check"] != true {
		t.Errorf("admin endpoints listening line %v, want token_required and host_check true", rec)
	}
	c := p.dial("plain")
	c.login(procUser, procPass)
	c.cmd("DELE 1")

	end := "/sessions?user=" + procUser
	for _, tc := range []struct {
		name, method, path, host, token string
		wantCode                        int
	}{
		{"list without token", http.MethodGet, "/sessions", "", "", http.StatusUnauthorized},
		{"end without token", http.MethodDelete, end, "", "", http.StatusUnauthorized},
		{"list with a wrong token", http.MethodGet, "/sessions", "", rand.Text(), http.StatusUnauthorized},
		{"end with a wrong token", http.MethodDelete, end, "", rand.Text(), http.StatusUnauthorized},
		{"end from a rebound name", http.MethodDelete, end, "attacker.example", token, http.StatusMisdirectedRequest},
		{"list from a rebound name", http.MethodGet, "/sessions", "attacker.example:9110", token, http.StatusMisdirectedRequest},
		{"metrics without token", http.MethodGet, "/metrics", "", "", http.StatusOK},
		{"healthz without token", http.MethodGet, "/healthz", "", "", http.StatusOK},
		{"metrics as localhost", http.MethodGet, "/metrics", "localhost", "", http.StatusOK},
	} {
		resp := p.request(tc.method, tc.path, tc.host, tc.token)
		if resp.StatusCode != tc.wantCode {
			t.Errorf("%s: %s %s = %d %q, want %d", tc.name, tc.method, tc.path, resp.StatusCode, resp.body, tc.wantCode)
		}
		if resp.StatusCode == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
	}

	resp := p.request(http.MethodGet, "/sessions", "", token)
	var list []map[string]any
	if err := json.Unmarshal([]byte(resp.body), &list); resp.StatusCode != http.StatusOK || err != nil || len(list) != 1 {
		t.Fatalf("GET /sessions = %d %q (%v), want one session: the refused DELETEs ended none", resp.StatusCode, resp.body, err)
	}
	for k, want := range map[string]any{"user": procUser, "backend": "mbox", "listener": "plain", "state": "relaying", "bytes_in": float64(len("STAT\r\nDELE 1\r\n"))} {
		if list[0][k] != want {
			t.Errorf("session %s = %v, want %v", k, list[0][k], want)
		}
	}
	resp = p.request(http.MethodDelete, end, "", token)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(resp.body) != `{"ended":1}` {
		t.Errorf("DELETE /sessions?user= = %d %q, want 200 {\"ended\":1}", resp.StatusCode, resp.body)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Error("the session is still open after DELETE")
	}
	if end := p.waitLog("session end"); end["ended_by"] != "admin" {
		t.Errorf("session end line %v, want ended_by=admin", end)
	}
	if b.Quits() != 0 || len(b.Messages(procUser)) != 2 {
		t.Errorf("backend saw %d QUITs and keeps %d messages, want 0 and 2", b.Quits(), len(b.Messages(procUser)))
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Errorf("exit code = %d", code)
	}
	checkLogs(t, p.logs)
	if strings.Contains(p.logs.String(), token) {
		t.Error("the log shows the admin token")
	}

	v, err := exec.Command(popgateBinary(t), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"popgate v9.8.7-test", "commit 0123456789abcdef", "go1.", "rsa signer go"} {
		if !strings.Contains(string(v), want) {
			t.Errorf("popgate version = %q, want mention of %q", v, want)
		}
	}
}

// notifySocket collects what popgate sends to NOTIFY_SOCKET.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
	read int // how many next has returned
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// next waits for the message after the last one next returned.
func (n *notifySocket) next(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second) // against a hang
	for {
		n.mu.Lock()
		if n.read < len(n.msgs) {
			msg := n.msgs[n.read]
			n.read++
			n.mu.Unlock()
			return msg
		}
		n.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no notification after %q", n.all())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProcessSystemdNotify: under Type=notify, popgate says READY=1 once it
// listens, RELOADING=1 then READY=1 around a reload (with the
// MONOTONIC_USEC that Type=notify-reload wants), STOPPING=1 at the drain.
func TestProcessSystemdNotify(t *testing.T) {
	notes := listenNotify(t)
	path := writeConfig(t, oneBackend(mailbox(t, messages(1)...), ""))
	p := startPopgateEnv(t, path, []string{"NOTIFY_SOCKET=" + notes.path}, "plain")
	if got := notes.next(t); !strings.HasPrefix(got, "READY=1\n") {
		t.Errorf("first notification %q, want READY=1", got)
	}
	p.signal(syscall.SIGHUP)
	if got := notes.next(t); !regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[1-9][0-9]*$`).MatchString(got) {
		t.Errorf("notification at a reload %q, want RELOADING=1 with MONOTONIC_USEC", got)
	}
	if got := notes.next(t); got != "READY=1\nSTATUS=serving; configuration reloaded" {
		t.Errorf("notification after the reload %q", got)
	}
	p.signal(syscall.SIGTERM)
	if got := notes.next(t); !strings.HasPrefix(got, "STOPPING=1\n") {
		t.Errorf("notification at SIGTERM %q, want STOPPING=1", got)
	}
	if code := p.wait(); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestProcessCertificateNotAFile: a certificate file swapped for a named
// pipe, or for a link to /dev/zero, makes a SIGHUP reload fail at once
// with an error naming the file, instead of blocking it (and SIGTERM
// behind it) or filling the memory; the previous certificate stays, and
// SIGTERM, with the pipe still in place, ends popgate.
func TestProcessCertificateNotAFile(t *testing.T) {
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "mail.example.com")
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"

[tls]
certificates = [{ cert = %q, key = %q }]

[[backend]]
name = "mbox"
address = %q
tls = "none"

[route]
default = "mbox"

[limits]
shutdown_timeout = "5s"

[metrics]
address = "127.0.0.1:0"
`, cert.certFile, cert.keyFile, mailbox(t)))
	p := startPopgate(t, path, "pop3s")
	want := cert.leaf.SerialNumber.String()

	for i, swap := range []struct {
		kind   string
		make   func(string) error
		detail string
	}{
		{"named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "a named pipe"},
		{"link to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "a character device"},
		{"named pipe again", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "a named pipe"},
	} {
		if err := os.Remove(cert.certFile); err != nil {
			t.Fatal(err)
		}
		if err := swap.make(cert.certFile); err != nil {
			t.Fatal(err)
		}
		p.signal(syscall.SIGHUP)
		rec := p.waitLog("configuration reload failed; keeping the running configuration", i+1)
		if err, _ := rec["err"].(string); !strings.Contains(err, cert.certFile) || !strings.Contains(err, swap.detail) {
			t.Errorf("%s: reload error %q, want it to name %s and say %q", swap.kind, err, cert.certFile, swap.detail)
		}
		if got := serial(t, p.addrs["pop3s"], "mail.example.com"); got != want {
			t.Errorf("%s: serving serial %s after the refused reload, want the previous %s", swap.kind, got, want)
		}
	}
	// Three refused SIGHUPs, and maybe the file watch's refusals too.
	if n := p.metrics()[`popgate_certificate_reload_errors_total{reason="unreadable"}`]; n < 3 {
		t.Errorf(`popgate_certificate_reload_errors_total{reason="unreadable"} = %v, want at least 3`, n)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0; log:\n%s", code, p.logs)
	}
	checkLogs(t, p.logs)
}
