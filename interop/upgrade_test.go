package interop

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// upgradedVersion is the version of the binary TestProxyUpgrade moves to.
const upgradedVersion = "v0.0.0-upgraded"

// upgradedBinary builds cmd/popgate as popgateBinary does, with version
// upgradedVersion, next to it.
func upgradedBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(filepath.Dir(popgateBinary(t)), "popgate-upgraded")
	args := []string{"build", "-o", path, "-ldflags", "-X main.buildVersion=" + upgradedVersion}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/popgate/popgate/cmd/popgate")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return path
}

// copyExecutable puts src at dst as a package manager does: a new file
// renamed over the path.
func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst+".new", b, 0o755)
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

// adminVersion is popgate_build_info's version on the admin address: the
// version of the process serving it.
func adminVersion(t *testing.T, admin string) string {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := regexp.MustCompile(`(?m)^popgate_build_info\{(?:.*,)?version="([^"]*)"`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	t.Fatalf("no popgate_build_info in /metrics")
	return ""
}

// TestProxyUpgrade: popgate upgrade to a freshly built binary (another
// version) while clients keep logging in to real Dovecot through POP3S
// and RETR a message: not one session is refused, reset or fails. A slow
// RETR begun on the old process finishes there, and its QUIT after it;
// the admin address then answers with the new version.
func TestProxyUpgrade(t *testing.T) {
	requireInterop(t, "dovecot")
	const loopers = 4
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		for i := range loopers {
			o.Users[fmt.Sprintf("loop%d@example.com", i)] = fmt.Sprintf("Loop-pw-%d-Zr8q", i)
		}
	})
	small := testMessage(4<<10, "upgrade-small")
	big := testMessage(8<<20, "upgrade-big")
	var secrets []string
	users := map[string]string{}
	for i := range loopers {
		user := fmt.Sprintf("loop%d@example.com", i)
		d.addMessage(t, user, small)
		secrets = append(secrets, d.Users[user])
		users[user] = d.Users[user]
	}
	d.addMessage(t, userBob, big)
	secrets = append(secrets, d.Users[userBob])

	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	copyExecutable(t, popgateBinary(t), exe)
	newer := upgradedBinary(t)
	pidFile := filepath.Join(dir, "popgate.pid")
	pg := startPopgate(t, popgateConfig{Backends: dovecotBackends(d), Default: "plain", Binary: exe, PIDFile: pidFile, LogLevel: "info",
		ShutdownTimeout: "2m"}, secrets...)
	pids := []int{pg.process.Pid}
	// Popgates the upgrade started, which this test ends (by PID) before
	// startPopgate's cleanup waits for the log to close.
	t.Cleanup(func() {
		for _, pid := range pids[1:] {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	})
	admin := pg.waitRecord(t, "admin endpoints listening")["address"].(string)
	if v := adminVersion(t, admin); v == upgradedVersion {
		t.Fatalf("version before the upgrade %q", v)
	}
	conf := pg.ca.clientConfig(pg.ServerName)

	// The slow session: the upgrade comes after its first MiB.
	slow := dialPOP3(t, pg.POP3SAddr, conf)
	slow.login(userBob, d.Users[userBob])
	if resp := slow.cmd("RETR 1"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("RETR: %q", resp)
	}
	var got bytes.Buffer
	slowRead := func(upTo int) bool {
		for got.Len() < upTo {
			slow.c.SetDeadline(time.Now().Add(30 * time.Second))
			line, err := slow.r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("RETR: %v after %d octets", err, got.Len())
			}
			if string(line) == ".\r\n" {
				return true
			}
			got.Write(bytes.TrimPrefix(line, []byte(".")))
			if got.Len()%(64<<10) < len(line) {
				time.Sleep(20 * time.Millisecond)
			}
		}
		return false
	}
	slowRead(1 << 20)

	loop := startSessionLoop(t, pg.POP3SAddr, conf, users, small)
	defer loop.stop(t)
	loop.wait(t, 10)

	copyExecutable(t, newer, exe)
	out, err := exec.Command(exe, "upgrade", "-pid-file", pidFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "upgraded: pid ") {
		t.Fatalf("popgate upgrade: %v\n%s", err, out)
	}
	rec := pg.waitRecord(t, "upgrade: the new process serves; this one stops accepting and drains")
	pids = append(pids, int(rec["new_pid"].(float64)))
	loop.wait(t, 10)
	if v := adminVersion(t, admin); v != upgradedVersion {
		t.Errorf("version after the upgrade %q, want %q", v, upgradedVersion)
	}

	// The slow session is still on the old process; all of it arrives.
	select {
	case <-pg.exited:
		t.Fatal("the old process exited with a session open")
	default:
	}
	if !slowRead(len(big) + 1) {
		t.Fatalf("RETR: no end after %d octets", got.Len())
	}
	if !bytes.Equal(got.Bytes(), big) {
		t.Fatalf("RETR through the upgrade: %d octets, want the %d-octet message unchanged", got.Len(), len(big))
	}
	if resp := slow.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
		t.Errorf("QUIT after the upgrade: %q", resp)
	}
	select {
	case <-pg.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the old process did not exit after its last session")
	}
	loop.wait(t, 10)
	loop.stop(t)
}

// sessionLoop runs one client per user, each opening sessions one after
// another (upgradeSession) until stop, at most 2,000 each, and counts
// those that failed in any way.
type sessionLoop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stopc      chan struct{}
	wg         sync.WaitGroup
	once       sync.Once
}

func startSessionLoop(t *testing.T, addr string, conf *tls.Config, users map[string]string, msg []byte) *sessionLoop {
	l := &sessionLoop{stopc: make(chan struct{})}
	for user, pass := range users {
		l.wg.Go(func() {
			for range 2000 { // bounded: at most this many sessions each
				select {
				case <-l.stopc:
					return
				default:
				}
				if err := upgradeSession(addr, conf, user, pass, msg); err != nil {
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
	return l
}

// wait waits until n more sessions have ended.
func (l *sessionLoop) wait(t *testing.T, n int64) {
	t.Helper()
	goal := l.ok.Load() + l.failed.Load() + n
	deadline := time.Now().Add(60 * time.Second) // against a hang
	for l.ok.Load()+l.failed.Load() < goal {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d client sessions in a minute", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends the loop and fails t if a session failed; again, it does
// nothing.
func (l *sessionLoop) stop(t *testing.T) {
	t.Helper()
	l.once.Do(func() {
		close(l.stopc)
		l.wg.Wait()
		if n := l.failed.Load(); n > 0 {
			t.Errorf("%d of %d client sessions failed: %s", n, n+l.ok.Load(), strings.Join(l.errs[:min(len(l.errs), 5)], "; "))
		}
		t.Logf("%d client sessions", l.ok.Load())
	})
}

// upgradeSession logs in as user over POP3S, RETRs message 1, which must
// be msg, and QUITs.
func upgradeSession(addr string, conf *tls.Config, user, pass string, msg []byte) error {
	nc, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second)) // against a hang
	c := tls.Client(nc, conf)
	r := bufio.NewReader(c)
	for _, cmd := range []string{"", "USER " + user, "PASS " + pass, "RETR 1"} {
		if cmd != "" {
			if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
				return fmt.Errorf("%s: %w", commandName(cmd), err)
			}
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("after %q: %q %v", commandName(cmd), line, err)
		}
	}
	var got []byte
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("RETR: %w", err)
		}
		if string(line) == ".\r\n" {
			break
		}
		got = append(got, bytes.TrimPrefix(line, []byte("."))...)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("RETR: %d octets, want %d", len(got), len(msg))
	}
	if _, err := io.WriteString(c, "QUIT\r\n"); err != nil {
		return err
	}
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("QUIT: %q %v", line, err)
	}
	return nil
}

// TestProxySocketActivation: with the POP3S socket held outside popgate
// and passed as systemd passes it (LISTEN_FDS, LISTEN_PID), a restart
// (SIGTERM, the drain, then a new popgate on the same socket), as
// "systemctl restart" with popgate.socket does, refuses no client logging
// in to real Dovecot: the kernel queues them until the new process
// accepts.
func TestProxySocketActivation(t *testing.T) {
	requireInterop(t, "dovecot")
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		for i := range 4 {
			o.Users[fmt.Sprintf("loop%d@example.com", i)] = fmt.Sprintf("Loop-pw-%d-Zr8q", i)
		}
	})
	small := testMessage(4<<10, "activation-small")
	users := map[string]string{}
	var secrets []string
	for i := range 4 {
		user := fmt.Sprintf("loop%d@example.com", i)
		d.addMessage(t, user, small)
		users[user] = d.Users[user]
		secrets = append(secrets, d.Users[user])
	}
	// The socket systemd would hold.
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

	dir := t.TempDir()
	ca := newTestCA(t, dir, "popgate")
	certFile, keyFile := ca.issue(t, dir, "popgate", popgateServerName)
	conf := filepath.Join(dir, "popgate.toml")
	writeFile(t, conf, []byte(popgateTOML(popgateConfig{Backends: dovecotBackends(d), Default: "plain", LogLevel: "info",
		POP3SAddress: addr, ShutdownTimeout: "1m"}, certFile, keyFile, "")), 0o600)
	bin := popgateBinary(t)

	// start runs popgate as systemd does with the socket, and waits until
	// it serves it.
	start := func() (*exec.Cmd, <-chan struct{}) {
		t.Helper()
		// LISTEN_PID is the PID of the process that serves; sh's exec
		// keeps it.
		cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" run -config "$1"`, bin, conf)
		cmd.ExtraFiles = []*os.File{sock}
		cmd.SysProcAttr = childProcAttr()
		var logs syncBuffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM) // this test's own process
			<-exited
			if t.Failed() {
				t.Logf("popgate (pid %d) output:\n%s", cmd.Process.Pid, tail(redact(logs.String(), secrets...)))
			}
			for _, s := range secrets {
				if strings.Contains(logs.String(), s) {
					t.Errorf("popgate logged a password")
				}
			}
		})
		deadline := time.Now().Add(60 * time.Second) // against a hang
		for !strings.Contains(logs.String(), `"msg":"listening","listener":"pop3s"`) {
			select {
			case <-exited:
				t.Fatalf("popgate exited:\n%s", tail(redact(logs.String(), secrets...)))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("popgate does not serve:\n%s", tail(redact(logs.String(), secrets...)))
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(logs.String(), `"msg":"serving an inherited socket","socket":"pop3 `+addr+`"`) {
			t.Fatalf("popgate did not take the socket it was passed:\n%s", tail(redact(logs.String(), secrets...)))
		}
		return cmd, exited
	}
	cmd, exited := start()
	loop := startSessionLoop(t, addr, ca.clientConfig(popgateServerName), users, small)
	defer loop.stop(t)
	loop.wait(t, 10)
	for range 2 { // systemctl restart, twice
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			t.Fatal("popgate did not exit after SIGTERM")
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit code %d after SIGTERM", code)
		}
		cmd, exited = start()
		loop.wait(t, 10)
	}
	loop.stop(t)
}

// syncBuffer collects a process's output for a test that reads it at the
// same time. Not an embedded bytes.Buffer: os/exec would copy into it with
// the buffer's own ReadFrom, around the lock.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
