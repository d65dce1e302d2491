package main

// Upgrades (SIGUSR2) and socket activation, with the real binary: clients
// keep connecting throughout, and none may be refused or reset.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
	"github.com/popgate/popgate/tlsconf"
	"golang.org/x/sys/unix"
)

// upgradeVersion is the version of the binary an upgrade test moves to.
const upgradeVersion = "v9.9.0-upgraded"

var upgradeBinary struct {
	once sync.Once
	path string
	err  error
}

// newerBinary is popgate built as popgateBinary is, with upgradeVersion.
func newerBinary(t *testing.T) string {
	t.Helper()
	old := popgateBinary(t)
	upgradeBinary.once.Do(func() {
		upgradeBinary.path = filepath.Join(filepath.Dir(old), "popgate-upgraded")
		cmd := exec.Command("go", "build", "-race", "-o", upgradeBinary.path,
			"-ldflags", "-X main.buildVersion="+upgradeVersion+" -X main.buildCommit=fedcba9876543210", ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			upgradeBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if upgradeBinary.err != nil {
		t.Fatal(upgradeBinary.err)
	}
	return upgradeBinary.path
}

// installBinary copies src to dst the way a package manager replaces a
// binary: a new file renamed over the old path.
func installBinary(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// clientLoop opens POP3S sessions one after another in a few clients
// (login, RETR, QUIT) until stop is called or it has run max sessions, and counts the ones
// that failed in any way: refused, reset, closed, a wrong answer.
type clientLoop struct {
	addr string
	cfg  *tls.Config
	user string
	pass string
	want []byte // message 1 as RETR sends it, with the final ".\r\n"

	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stopc      chan struct{}
	stopOnce   sync.Once
	done       chan struct{}
}

// loopClients is how many clients a clientLoop runs at once; client i
// logs in as its user with i appended (loopMailboxes).
const loopClients = 4

// loopMailboxes adds the mailboxes of a clientLoop's users, each holding
// msg, to boxes.
func loopMailboxes(boxes map[string]*pop3test.Mailbox, user, pass string, msg []byte) map[string]*pop3test.Mailbox {
	for i := range loopClients {
		boxes[fmt.Sprintf("%s%d", user, i)] = &pop3test.Mailbox{Password: pass, Messages: [][]byte{msg}}
	}
	return boxes
}

// loopBackend starts a pop3test backend with loopMailboxes for user.
func loopBackend(t *testing.T, user, pass string, msg []byte) string {
	t.Helper()
	_, addr := mailboxesServer(t, loopMailboxes(map[string]*pop3test.Mailbox{}, user, pass, msg))
	return addr
}

func startClientLoop(addr string, cfg *tls.Config, user, pass string, msg []byte, max int) *clientLoop {
	l := &clientLoop{addr: addr, cfg: cfg, user: user, pass: pass,
		want: append(dotStuff(msg), ".\r\n"...), stopc: make(chan struct{}), done: make(chan struct{})}
	// A few clients at once, so that some always connect while the
	// sockets change hands.
	var wg sync.WaitGroup
	for i := range loopClients {
		user := fmt.Sprintf("%s%d", l.user, i)
		wg.Go(func() {
			for range max / loopClients {
				select {
				case <-l.stopc:
					return
				default:
				}
				if err := l.session(user); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					l.errs = append(l.errs, err.Error())
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(l.done)
	}()
	return l
}

// waitFor waits until the loop has completed n more sessions than now.
func (l *clientLoop) waitFor(t *testing.T, n int64) {
	t.Helper()
	goal := l.ok.Load() + l.failed.Load() + n
	deadline := time.Now().Add(60 * time.Second) // against a hang
	for l.ok.Load()+l.failed.Load() < goal {
		if time.Now().After(deadline) {
			t.Fatalf("client loop: fewer than %d sessions in a minute", n)
		}
		select {
		case <-l.done:
			t.Fatalf("client loop ended early (%d ok, %d failed)", l.ok.Load(), l.failed.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// stop ends the loop and fails t if any session failed; again, it does
// nothing.
func (l *clientLoop) stop(t *testing.T) {
	t.Helper()
	stopped := false
	l.stopOnce.Do(func() { stopped = true })
	if !stopped {
		return
	}
	close(l.stopc)
	<-l.done
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d of %d client sessions failed: %s", n, n+l.ok.Load(), strings.Join(l.errs[:min(len(l.errs), 5)], "; "))
	}
	t.Logf("client loop: %d sessions", l.ok.Load())
}

func (l *clientLoop) session(user string) error {
	nc, err := net.DialTimeout("tcp", l.addr, 30*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	// Long enough for a process that is starting to accept what the
	// kernel queued meanwhile; a guard against a hang otherwise.
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := tls.Client(nc, l.cfg)
	r := bufio.NewReader(c)
	expect := func(cmd string) error {
		if cmd != "" {
			if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
				return fmt.Errorf("%s: %w", strings.Fields(cmd)[0], err)
			}
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after %q: %w", strings.Fields(cmd + " greeting")[0], err)
		}
		if !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("after %q: %q", strings.Fields(cmd + " greeting")[0], line)
		}
		return nil
	}
	for _, cmd := range []string{"", "USER " + user, "PASS " + l.pass, "RETR 1"} {
		if err := expect(cmd); err != nil {
			return err
		}
	}
	got := make([]byte, len(l.want))
	if _, err := io.ReadFull(r, got); err != nil {
		return fmt.Errorf("RETR: %w", err)
	}
	if !bytes.Equal(got, l.want) {
		return errors.New("RETR: the message differs")
	}
	return expect("QUIT")
}

// upgradeConfig is a POP3S listener and the admin address in front of
// backend, with a drain long enough that only the sessions ending can end
// it within the test.
func upgradeConfig(t *testing.T, cert testCert, backend string) string {
	return writeConfig(t, oneTLSBackend(cert, backend, `shutdown_timeout = "10m"
failure_delay = "0s"
max_failures_per_ip = 0
max_failures_per_user = 0
`))
}

// servingVersion is the version popgate_build_info of the admin address
// names: the version of the process that answered.
func servingVersion(t *testing.T, admin string) string {
	t.Helper()
	// A connection of its own: a kept-alive one may lead to a process
	// that no longer accepts.
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "popgate_build_info{"); ok {
			for kv := range strings.SplitSeq(rest[:strings.IndexByte(rest, '}')], ",") {
				if v, ok := strings.CutPrefix(kv, `version="`); ok {
					return strings.TrimSuffix(v, `"`)
				}
			}
		}
	}
	t.Fatalf("no popgate_build_info in /metrics:\n%s", b)
	return ""
}

// logOnFailure prints p's log (and its children's) when t has failed.
func logOnFailure(t *testing.T, p *process) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", p.logs)
		}
	})
}

// resumed connects to addr with cfg (its ClientSessionCache keeps the
// ticket), reads the greeting, which brings the TLS 1.3 session ticket
// along, quits, and reports whether the handshake resumed a session.
func resumed(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(nc, cfg)
	p := newPOPClient(t, c)
	p.cmd("QUIT")
	return c.ConnectionState().DidResume
}

// killLater ends pid (a process this test started, through popgate) when
// the test ends, if it still runs.
func killLater(t *testing.T, pid int) {
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
}

// handedOver waits for the n-th handover of an upgrade in p's log (n = 1
// when omitted) and returns the PID of the new process, which is ended
// when the test ends if it still runs.
func (p *process) handedOver(n ...int) int {
	p.t.Helper()
	rec := p.waitLog("upgrade: the new process serves; this one stops accepting and drains", n...)
	pid := int(rec["new_pid"].(float64))
	killLater(p.t, pid)
	return pid
}

// waitExited is wait for the process itself: it does not wait for the
// new processes of its upgrades, which hold its log open.
func (p *process) waitExited() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("popgate (pid %d) did not exit; log:\n%s", p.cmd.Process.Pid, p.logs)
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestProcessUpgrade: SIGUSR2 with a new binary installed over the old
// one. A client loop logs in and RETRs throughout: no session is refused,
// reset or fails. A session in the middle of a slow RETR on the old
// process finishes it and QUITs after the handover, and the old process
// exits 0 once it has. The admin address then answers with the new
// version. A second upgrade, of the new process while the old one still
// drains, works the same way; a signal to the draining one is ignored.
func TestProcessUpgrade(t *testing.T) {
	big := pop3test.GenerateMessage(4 << 20)
	small := messages(1)[0]
	const slowUser, slowPass = "bob", "b0b-PASSWORD-never-logged"
	_, baddr := mailboxesServer(t, loopMailboxes(map[string]*pop3test.Mailbox{
		slowUser: {Password: slowPass, Messages: [][]byte{big}},
	}, procUser, procPass, small))
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "localhost")
	exe := filepath.Join(dir, "popgate")
	installBinary(t, popgateBinary(t), exe)
	newer := newerBinary(t)
	pidFile := filepath.Join(dir, "popgate.pid")
	// What systemd would hear, from every process.
	notes := listenNotify(t)
	p := startPopgateCmd(t, exec.Command(exe, "run", "-config", upgradeConfig(t, cert, baddr), "-pid-file", pidFile),
		[]string{"NOTIFY_SOCKET=" + notes.path}, "pop3s")
	logOnFailure(t, p)
	tcfg := &tls.Config{RootCAs: cert.pool(), ServerName: "localhost"}
	if v := servingVersion(t, p.admin); v != "v9.8.7-test" {
		t.Fatalf("version before the upgrade %q", v)
	}

	// The slow session: the signal comes after the first MiB of its RETR.
	nc, err := net.Dial("tcp", p.addrs["pop3s"])
	if err != nil {
		t.Fatal(err)
	}
	slow := newPOPClient(t, tls.Client(nc, tcfg))
	slow.login(slowUser, slowPass)
	slow.cmd("RETR 1")
	want := append(dotStuff(big), ".\r\n"...)
	var answer bytes.Buffer
	slow.readSlowly(&answer, 1<<20, 20*time.Millisecond)

	// A client with a session ticket from the old process.
	resumer := &tls.Config{RootCAs: cert.pool(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	resumed(t, p.addrs["pop3s"], resumer)
	if !resumed(t, p.addrs["pop3s"], resumer) {
		t.Fatal("no TLS session resumption before the upgrade")
	}

	loop := startClientLoop(p.addrs["pop3s"], tcfg, procUser, procPass, small, 5000)
	defer loop.stop(t)
	loop.waitFor(t, 5)
	installBinary(t, newer, exe)
	// The operator's command: it returns once the new process serves.
	out, err := exec.Command(exe, "upgrade", "-pid-file", pidFile).CombinedOutput()
	pid2 := p.handedOver()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("upgraded: pid %d serves; pid %d finishes", pid2, p.cmd.Process.Pid)) {
		t.Errorf("popgate upgrade: %v\n%s", err, out)
	}
	if pid, err := readPIDFile(pidFile); pid != pid2 {
		t.Errorf("pid file after the upgrade names %d (%v), want %d", pid, err, pid2)
	}
	p.waitLog("shutting down")
	loop.waitFor(t, 5)
	if v := servingVersion(t, p.admin); v != upgradeVersion {
		t.Errorf("version after the upgrade %q, want %q", v, upgradeVersion)
	}
	// The new process took the ticket keys over: the old ticket resumes.
	if !resumed(t, p.addrs["pop3s"], resumer) {
		t.Error("a session ticket of the old process does not resume on the new one")
	}
	// The old process drains: a signal to it starts nothing.
	p.signal(syscall.SIGUSR2)
	p.waitLog("upgrade signal ignored")

	// A second upgrade, of the new process, while the old one drains.
	if err := syscall.Kill(pid2, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	pid3 := p.handedOver(2)
	loop.waitFor(t, 5)

	// The old process still holds the slow session: all of the message
	// arrives, and the QUIT after it.
	select {
	case <-p.exited:
		t.Fatalf("the old process exited with a session open (%v)", p.err)
	default:
	}
	slow.readSlowly(&answer, len(want), 20*time.Millisecond)
	if !bytes.Equal(answer.Bytes(), want) {
		t.Fatalf("RETR through the upgrade: %d octets, want the %d-octet message unchanged", answer.Len(), len(want))
	}
	if line := slow.cmd("QUIT"); !strings.HasPrefix(line, "+OK") {
		t.Errorf("QUIT after the upgrade: %q", line)
	}
	if code := p.waitExited(); code != 0 {
		t.Errorf("old process exit code %d, want 0", code)
	}
	loop.waitFor(t, 5)
	loop.stop(t)

	if over := p.logs.records(t, "shutdown grace period over; closed remaining sessions"); len(over) > 0 {
		t.Errorf("a drain ran into shutdown_timeout")
	}
	if v := servingVersion(t, p.admin); v != upgradeVersion {
		t.Errorf("version after the second upgrade %q", v)
	}
	// The second process drains and exits, then the third stops.
	for _, pid := range []int{pid2, pid3} {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && pid == pid3 {
			t.Fatal(err)
		}
	}
	p.wait() // the new processes too: they hold its log
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left behind after the last process exited: %v", err)
	}
	// systemd follows the new main process at each upgrade, hears
	// nothing from the ones that drain, and STOPPING=1 only from the last.
	// The last datagrams may still be on their way to the reader.
	for deadline := time.Now().Add(10 * time.Second); len(notes.all()) < 4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	var kinds []string
	for _, n := range notes.all() {
		kind, _, _ := strings.Cut(n, "\n")
		kinds = append(kinds, kind)
	}
	wantKinds := []string{"READY=1", fmt.Sprintf("MAINPID=%d", pid2), fmt.Sprintf("MAINPID=%d", pid3), "STOPPING=1"}
	if !slices.Equal(kinds, wantKinds) {
		t.Errorf("notifications (first lines) %q, want %q; all: %q", kinds, wantKinds, notes.all())
	}
	checkLogs(t, p.logs)
	if strings.Contains(p.logs.String(), slowPass) || strings.Contains(p.logs.String(), procPass) {
		t.Errorf("the log contains a password")
	}
}

// TestProcessUpgradeFails: an upgrade whose new process cannot load its
// configuration is abandoned; the old process serves on, refuses nobody,
// and the log says why. The same for a new binary that is not popgate at
// all (it exits at once).
func TestProcessUpgradeFails(t *testing.T) {
	small := messages(1)[0]
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "localhost")
	exe := filepath.Join(dir, "popgate")
	installBinary(t, popgateBinary(t), exe)
	path := upgradeConfig(t, cert, loopBackend(t, procUser, procPass, small))
	pidFile := filepath.Join(dir, "popgate.pid")
	p := startPopgateCmd(t, exec.Command(exe, "run", "-config", path, "-pid-file", pidFile), nil, "pop3s")
	logOnFailure(t, p)
	tcfg := &tls.Config{RootCAs: cert.pool(), ServerName: "localhost"}
	loop := startClientLoop(p.addrs["pop3s"], tcfg, procUser, procPass, small, 5000)
	defer loop.stop(t)
	loop.waitFor(t, 5)

	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(good), `shutdown_timeout = "10m"`, `shutdown_timeout = "ten minutes"`, 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(exe, "upgrade", "-pid-file", pidFile).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "the upgrade failed") {
		t.Errorf("popgate upgrade with a broken configuration: %v\n%s", err, out)
	}
	fail := p.waitPlainLog("upgrade failed; this process keeps serving", 1)
	if err, _ := fail["err"].(string); !strings.Contains(err, "exited before it served") {
		t.Errorf("upgrade failure %q", err)
	}
	if !strings.Contains(p.logs.String(), "shutdown_timeout") {
		t.Errorf("the new process's reason (shutdown_timeout) is not in the log:\n%s", p.logs)
	}
	loop.waitFor(t, 5)

	// A new binary that exits at once.
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe+".new", []byte("#!/bin/sh\necho 'not popgate' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(exe+".new", exe); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGUSR2)
	fail = p.waitPlainLog("upgrade failed; this process keeps serving", 2)
	if err, _ := fail["err"].(string); !strings.Contains(err, "exit status 3") {
		t.Errorf("upgrade failure %q, want the exit status", err)
	}
	loop.waitFor(t, 5)
	select {
	case <-p.exited:
		t.Fatalf("popgate exited (%v)", p.err)
	default:
	}
	if v := servingVersion(t, p.admin); v != "v9.8.7-test" {
		t.Errorf("version after failed upgrades %q", v)
	}
	loop.stop(t)
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	// Not checkLogs: the failed starts wrote their reasons as plain text.
	if strings.Contains(p.logs.String(), procPass) {
		t.Errorf("the log contains the password")
	}
}

// TestProcessSocketActivation: with the POP3S socket passed as systemd
// passes it (LISTEN_FDS, LISTEN_PID), a restart (SIGTERM, then a new
// process with the same socket) refuses no client: the kernel queues
// them while no process accepts.
func TestProcessSocketActivation(t *testing.T) {
	small := messages(1)[0]
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "localhost")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sock, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	addr := ln.Addr().String()
	cfg := upgradeConfig(t, cert, loopBackend(t, procUser, procPass, small))
	text, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(text), `address = "127.0.0.1:0"`, "address = "+strconv.Quote(addr), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() *process {
		t.Helper()
		// As systemd: LISTEN_PID is the PID of the process that serves;
		// sh's exec keeps it.
		cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=pop3s; exec "$0" run -config "$1"`, popgateBinary(t), cfg)
		cmd.ExtraFiles = []*os.File{sock}
		p := startPopgateCmd(t, cmd, nil, "pop3s")
		logOnFailure(t, p)
		if got := p.waitLog("serving an inherited socket"); got["address"] != addr {
			t.Errorf("inherited socket %v, want %s", got, addr)
		}
		return p
	}
	p := start()
	tcfg := &tls.Config{RootCAs: cert.pool(), ServerName: "localhost"}
	loop := startClientLoop(addr, tcfg, procUser, procPass, small, 5000)
	defer loop.stop(t)
	loop.waitFor(t, 5)
	for range 2 { // systemctl restart, twice
		p.signal(syscall.SIGTERM)
		if code := p.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
		p = start()
		loop.waitFor(t, 5)
	}
	loop.stop(t)
	p.signal(syscall.SIGTERM)
	p.wait()
	checkLogs(t, p.logs)
}

// fdCount is the number of descriptors process pid holds.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("descriptors of pid %d: %v", pid, err)
	}
	return len(fds)
}

// TestProcessUpgradeIdleSessions: an upgrade while 2,000 logged-in
// sessions sit idle on the old process. The new process inherits the
// listening sockets and nothing else (not the sessions' descriptors);
// the old one holds its sessions until shutdown_timeout, then closes them
// and exits 0, which releases its descriptors and memory.
func TestProcessUpgradeIdleSessions(t *testing.T) {
	const idle = 2000
	boxes := map[string]*pop3test.Mailbox{}
	for i := range idle {
		boxes[fmt.Sprintf("idle%d", i)] = &pop3test.Mailbox{Password: procPass, Messages: messages(1)}
	}
	_, baddr := mailboxesServer(t, boxes)
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	installBinary(t, popgateBinary(t), exe)
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "mbox"
address = %q
tls = "none"
health_interval = "0s"

[route]
default = "mbox"

[limits]
shutdown_timeout = "3s"
max_connections_per_ip = 0

[metrics]
address = "127.0.0.1:0"
`, baddr))
	p := startPopgateCmd(t, exec.Command(exe, "run", "-config", path), nil, "plain")
	logOnFailure(t, p)
	old := p.cmd.Process.Pid
	before := fdCount(t, old)

	conns := make([]*bufio.Reader, 0, idle)
	for i := range idle {
		nc, err := net.Dial("tcp", p.addrs["plain"])
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetDeadline(time.Now().Add(60 * time.Second)) // against a hang
		r := bufio.NewReader(nc)
		fmt.Fprintf(nc, "USER idle%d\r\nPASS %s\r\n", i, procPass)
		for range 3 { // greeting, USER, PASS
			if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
				t.Fatalf("session %d: %q %v", i, line, err)
			}
		}
		conns = append(conns, r)
	}
	if n := fdCount(t, old); n < before+2*idle {
		t.Fatalf("old process holds %d descriptors with %d sessions, %d before: the sessions are not where the test thinks", n, idle, before)
	}

	p.signal(syscall.SIGUSR2)
	pid := p.handedOver()
	// The new process: about what the old one had before its sessions.
	if n := fdCount(t, pid); n > before+20 {
		t.Errorf("new process holds %d descriptors, the old one %d before its %d sessions: it inherited more than the listeners", n, before, idle)
	}
	if code := p.waitExited(); code != 0 {
		t.Errorf("old process exit code %d", code)
	}
	p.waitLog("shutdown grace period over; closed remaining sessions")
	for i, r := range conns {
		if line, err := r.ReadString('\n'); err == nil {
			t.Fatalf("idle session %d got %q after the old process exited, want EOF", i, line)
		}
	}
	// The new process serves.
	nc, err := net.Dial("tcp", p.addrs["plain"])
	if err != nil {
		t.Fatal(err)
	}
	c := newPOPClient(t, nc)
	c.login("idle0", procPass)
	c.cmd("QUIT")
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait() // the new processes too: they hold its log
	checkLogs(t, p.logs)
}

// TestProcessUpgradeEveryListener: every kind of listening socket changes
// hands: a plain POP3 listener, one with PROXY protocol, the admin address
// and both ACME answerers. The new process could bind none of them itself
// (the old one holds them), so its start says they were inherited, and
// each one answers after the upgrade.
func TestProcessUpgradeEveryListener(t *testing.T) {
	dir := t.TempDir()
	httpAddr, alpnAddr := freeAddr(t), freeAddr(t)
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[listen]]
name = "pp"
address = "127.0.0.1:0"
tls = "none"
proxy_protocol = true

[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"

[tls]
default_server_name = "mail.example.com"

[tls.acme]
domains = ["mail.example.com"]
cache_dir = %q
directory_url = "http://127.0.0.1:1/directory"
http_challenge = %q
tls_alpn_challenge = %q

[[backend]]
name = "mbox"
address = %q
tls = "none"

[route]
default = "mbox"

[limits]
trusted_proxies = ["127.0.0.0/8"]

[metrics]
address = "127.0.0.1:0"
`, filepath.Join(dir, "acme"), httpAddr, alpnAddr, mailbox(t, messages(1)...)))
	p := startPopgate(t, path, "plain", "pp", "pop3s")
	logOnFailure(t, p)
	p.signal(syscall.SIGUSR2)
	pid := p.handedOver()
	var got []string
	for _, rec := range p.logs.records(t, "serving an inherited socket") {
		got = append(got, rec["socket"].(string))
	}
	slices.Sort(got)
	want := []string{"acme " + alpnAddr, "acme " + httpAddr, "admin 127.0.0.1:0",
		"pop3 127.0.0.1:0 plain", "pop3 127.0.0.1:0 pop3s", "pop3 127.0.0.1:0 pp"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("inherited sockets %q, want %q", got, want)
	}
	if code := p.waitExited(); code != 0 { // the old process, without sessions
		t.Errorf("old process exit code %d", code)
	}

	c := p.dial("plain")
	c.login(procUser, procPass)
	c.cmd("QUIT")
	nc, err := net.Dial("tcp", p.addrs["pp"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(nc, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n")
	newPOPClient(t, nc).cmd("QUIT")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + httpAddr + "/index.html")
	if err != nil {
		t.Fatalf("HTTP-01 answerer after the upgrade: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("HTTP-01 answerer after the upgrade: %s, want 404", resp.Status)
	}
	if servingVersion(t, p.admin) == "" {
		t.Error("no version on the admin address after the upgrade")
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestUpgradeTicketKeysNotKept: the session ticket keys a process gets
// from the one it replaces seed its first key source only. They stayed in
// a package variable for the life of the process, and a reload that built
// a key source anew (the first TLS listener of a configuration that had
// none) took them again as if just handed over.
func TestUpgradeTicketKeysNotKept(t *testing.T) {
	dup := func(f *os.File) int {
		t.Helper()
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	keysR, keysW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	key := tlsconf.TicketKey{Made: time.Now().Add(-time.Minute)}
	key.Key[0] = 1
	keysW.Write(encodeTicketKeys([]tlsconf.TicketKey{key}))
	keysW.Close()
	// As the parent of an upgrade hands them over; the process that runs
	// popgate here is this test's, whose parent is os.Getppid().
	spec, err := json.Marshal(upgradeSpec{Ready: dup(readyW), Tickets: dup(keysR), Parent: os.Getppid()})
	// popgate run owns the duplicates now: should it fail before it
	// serves, the ready pipe ends and says so.
	readyW.Close()
	keysR.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(upgradeEnv, string(spec))
	// No TLS listener: the keys have no key source to go to.
	path := writeConfig(t, oneBackend(mailbox(t, messages(1)...), ""))
	logs := &logSink{listening: make(chan [2]string, 4)}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- mainContext(ctx, []string{"run", "-config", path}, io.Discard, logs) }()
	if line, err := bufio.NewReader(readyR).ReadString('\n'); line != readyLine {
		t.Fatalf("ready pipe: %q %v; log:\n%s", line, err, logs)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("run after cancel = %d, want 0; log:\n%s", code, logs)
	}
	if len(inheritedTicketKeys) != 0 {
		t.Errorf("%d inherited session ticket keys kept after the first instance was built", len(inheritedTicketKeys))
	}
}

// TestUpgradeWithoutPIDFile: popgate upgrade with no PID file at the path
// says what it needs and how to upgrade without one, not only that a file
// is missing.
func TestUpgradeWithoutPIDFile(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "popgate.pid")
	var out, errb bytes.Buffer
	err := cmdUpgrade([]string{"-pid-file", pidFile}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "popgate run -pid-file "+pidFile) || !strings.Contains(err.Error(), "SIGUSR2") {
		t.Errorf("popgate upgrade without a PID file: %v; want the -pid-file popgate run needs and SIGUSR2", err)
	}
}
