package main

// Regression tests from the attack review of upgrades: what a new process
// takes from its environment, the PID file popgate upgrade trusts, and
// signals around a handover.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

// TestAttack8StrayUpgradeVariable: POPGATE_UPGRADE left in an environment
// (exported in a shell, copied from /proc/PID/environ into a unit or a
// container spec) made a fresh popgate run take the descriptors it names
// for listening sockets, read "ticket keys" from one and later write
// "ready" into another, whatever they were in that process. As systemd's
// LISTEN_PID does, the variable now names the process it is meant for:
// only the parent that set it up, and a process that is not that parent's
// child ignores it.
func TestAttack8StrayUpgradeVariable(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	// Descriptors of this process's own that the variable names.
	ready, err := syscall.Dup(int(pw.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	for _, parent := range []int{os.Getpid(), 1, 0} {
		spec, _ := json.Marshal(upgradeSpec{Sockets: map[string]int{}, Ready: ready, Parent: parent})
		t.Setenv(upgradeEnv, string(spec))
		h, err := inheritSockets()
		if err != nil {
			t.Fatalf("parent %d: %v; want the variable ignored", parent, err)
		}
		if h != nil {
			t.Fatalf("parent %d (this process's parent is %d): a stray %s was taken: ready pipe on descriptor %d", parent, os.Getppid(), upgradeEnv, ready)
		}
		if _, ok := os.LookupEnv(upgradeEnv); ok {
			t.Errorf("parent %d: %s still set, for this process's own children", parent, upgradeEnv)
		}
	}
	syscall.Close(ready)
}

// TestAttack8UpgradeDuplicateDescriptors: a spec that names one
// descriptor twice (the ready pipe and a socket, the ticket pipe and the
// ready pipe) would have two owners close it, the second closing whatever
// took its number meanwhile. It is refused.
func TestAttack8UpgradeDuplicateDescriptors(t *testing.T) {
	// Numbers no descriptor of the test has: were the spec taken, no
	// descriptor of its own would be closed.
	for name, spec := range map[string]upgradeSpec{
		"ready and a socket":   {Sockets: map[string]int{"pop3 :110": 1007}, Ready: 1007},
		"tickets and ready":    {Sockets: map[string]int{}, Ready: 1008, Tickets: 1008},
		"two sockets, one fd":  {Sockets: map[string]int{"pop3 :110": 1009, "pop3 :995": 1009}, Ready: 1010},
		"tickets and a socket": {Sockets: map[string]int{"admin :9100": 1011}, Ready: 1012, Tickets: 1011},
	} {
		spec.Parent = os.Getppid()
		b, _ := json.Marshal(spec)
		t.Setenv(upgradeEnv, string(b))
		h, err := inheritSockets()
		if err == nil || !strings.Contains(err.Error(), "twice") {
			if h != nil {
				h.closeAll()
			}
			t.Errorf("%s: %v; want the spec refused", name, err)
		}
	}
}

// TestAttack8UpgradeSignalsOnlyPopgate: popgate upgrade sent SIGUSR2 to
// whatever PID the file held. A stale file (popgate gone, the PID reused)
// or one rewritten by whoever can write it (the popgate user, when root
// runs the upgrade) made it signal another process, and SIGUSR2's default
// action ends a process. It now signals only a "popgate run" with this
// PID file.
func TestAttack8UpgradeSignalsOnlyPopgate(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Skipf("no sleep to stand for another process: %v", err)
	}
	exited := make(chan struct{})
	go func() { sleep.Wait(); close(exited) }()
	defer func() { sleep.Process.Kill(); <-exited }()
	pidFile := filepath.Join(t.TempDir(), "popgate.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(sleep.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	err := cmdUpgrade([]string{"-pid-file", pidFile, "-timeout", "1s"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "not popgate run") {
		t.Errorf("upgrade with a PID file naming sleep: %v; want it refused", err)
	}
	select {
	case <-exited:
		t.Fatal("popgate upgrade ended another process (sleep) with SIGUSR2")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestAttack8PIDFileOfArgs: the check of the process a PID file
// names, on the command lines popgate run is started with.
func TestAttack8PIDFileOfArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"/usr/local/bin/popgate", "run", "-config", "/etc/p.toml", "-pid-file", "/run/popgate/popgate.pid"}, "/run/popgate/popgate.pid"},
		{[]string{"popgate", "run", "--pid-file=/run/p.pid"}, "/run/p.pid"},
		{[]string{"popgate", "run", "-pid-file=rel.pid"}, "rel.pid"},
		{[]string{"popgate", "run", "-config", "x.toml"}, ""},
		{[]string{"sleep", "30"}, ""},
		{[]string{"popgate", "check", "-pid-file", "/run/p.pid"}, ""},
		{[]string{"popgate", "run", "-pid-file"}, ""},
		{[]string{"popgate", "run", "-config", "-pid-file", "-pid-file", "/x"}, "/x"},
	} {
		if got := pidFileOfArgs(c.args); got != c.want {
			t.Errorf("%q: %q, want %q", c.args, got, c.want)
		}
	}
}

// lockedBuffer is a log destination the test reads while a goroutine
// writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAttack8SignalAfterHandover: once the new process serves, the old one
// clears its "upgrade under way" mark and then begins to drain; a SIGUSR2
// in between (a second popgate upgrade, a signal storm) started a second
// upgrade from the process that had handed over: a second new process,
// and the PID file rewritten with the old process's PID when it failed,
// so that the next popgate upgrade signalled a process about to exit. A
// process that has handed over ignores the signal.
func TestAttack8SignalAfterHandover(t *testing.T) {
	var logs lockedBuffer
	r := &runner{log: slog.New(slog.NewTextHandler(&logs, nil))}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	r.pidFile = filepath.Join(t.TempDir(), "popgate.pid")
	const newPID = "4194000\n" // the new process wrote it
	if err := os.WriteFile(r.pidFile, []byte(newPID), 0o644); err != nil {
		t.Fatal(err)
	}
	// Were an upgrade started, it would fail at once, harmlessly.
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return "", errors.New("no executable in this test") }
	r.handedOver.Store(true)
	sig := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.watchUpgrades(ctx, sig)
	sig <- syscall.SIGUSR2
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "upgrade") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a PID file rewrite follows the log line
	if s := logs.String(); !strings.Contains(s, "upgrade signal ignored") {
		t.Errorf("SIGUSR2 after the handover: log %q; want the signal ignored", s)
	}
	if b, _ := os.ReadFile(r.pidFile); string(b) != newPID {
		t.Errorf("PID file after a SIGUSR2 to the old process: %q; want the new process's %q", b, newPID)
	}
	// A second signal is told the same, not that an upgrade is under
	// way (none is).
	sig <- syscall.SIGUSR2
	for strings.Count(logs.String(), "upgrade signal ignored") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := logs.String(); strings.Count(s, "has handed over") != 2 {
		t.Errorf("two SIGUSR2 after the handover: log %q; want both ignored because this process has handed over", s)
	}
}

// TestAttack8ShutdownDuringUpgrade: a SIGTERM while the new process
// starts begins this process's drain (draining, with no handover: the
// listeners close). When the new process said it served a moment later,
// the upgrade carried on: the new process became the one that serves,
// although the operator had asked popgate to stop, and a plain (not
// systemd) setup was left with an orphan holding the ports, so that the
// next popgate run could not bind them. The upgrade now ends its new
// process when the drain has begun.
func TestAttack8ShutdownDuringUpgrade(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	pidOut := filepath.Join(dir, "child.pid")
	// No sockets and no ticket keys: the ready pipe is descriptor 3.
	script := "#!/bin/sh\necho $$ > " + pidOut + "\necho ready >&3\nexec sleep 30\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return exe, nil }
	t.Setenv("NOTIFY_SOCKET", "")
	var logs lockedBuffer
	r := &runner{log: slog.New(slog.NewTextHandler(&logs, nil)), srv: &proxy.Server{}}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	stopped := false
	r.stopRun = func() { stopped = true }
	r.draining.Store(true) // SIGTERM: shutdown has begun, without a handover
	err := r.upgrade(r.ctx)
	b, _ := os.ReadFile(pidOut)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if perr != nil {
		t.Fatalf("the stand-in new process did not start: %q", b)
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // the test's own child, if still there
	if err == nil || r.handedOver.Load() || stopped {
		t.Errorf("upgrade during the drain: err %v, handed over %v; want it failed", err, r.handedOver.Load())
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("the new process (pid %d) still runs after an upgrade that began as this one shut down", pid)
	}
}

// TestAttack8ReadyPipeGarbage: the old process read the ready pipe up to
// a newline, however much came: a new process (another build, a broken
// one) that wrote without end made it buffer all of it, and one that
// wrote something else and kept the pipe open held the upgrade until its
// two minutes were over. Anything but the ready line now fails the
// upgrade at once.
func TestAttack8ReadyPipeGarbage(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	pidOut := filepath.Join(dir, "child.pid")
	script := "#!/bin/sh\necho $$ > " + pidOut + "\nhead -c 1000000 /dev/zero >&3\nexec sleep 30\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return exe, nil }
	t.Setenv("NOTIFY_SOCKET", "")
	r := &runner{log: slog.New(slog.DiscardHandler), srv: &proxy.Server{}}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	r.stopRun = func() {}
	done := make(chan error, 1)
	go func() { done <- r.upgrade(r.ctx) }()
	defer func() {
		if b, err := os.ReadFile(pidOut); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL) // the test's own child, if still there
			}
		}
	}()
	select {
	case err := <-done:
		if err == nil || r.handedOver.Load() {
			t.Errorf("upgrade with a new process that wrote a megabyte of zeros: %v; want it failed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a new process that wrote garbage to the ready pipe held the upgrade for 20s")
	}
}

// TestAttack8UpgradeStalePIDFile: a PID file naming no process is refused
// with that reason, before any signal.
func TestAttack8UpgradeStalePIDFile(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "popgate.pid")
	// Above any PID the kernel hands out (pid_max is at most 2^22).
	if err := os.WriteFile(pidFile, []byte("99999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	err := cmdUpgrade([]string{"-pid-file", pidFile, "-timeout", "1s"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("upgrade with a stale PID file: %v; want it refused as not running", err)
	}
}

// TestAttack8ReloadDuringUpgrade: a SIGHUP (systemctl reload, which
// signals the main process: the old one until the handover) while the new
// process starts was applied by the old process only. When the new one
// had read the configuration file before it changed, the change was lost
// at the handover, although the reload had succeeded. The new process is
// sent the reload once it serves.
func TestAttack8ReloadDuringUpgrade(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	pidOut, hups, goAhead := filepath.Join(dir, "child.pid"), filepath.Join(dir, "hups"), filepath.Join(dir, "go")
	script := "#!/bin/sh\ntrap 'echo hup >> " + hups + "' HUP\necho $$ > " + pidOut + "\n" +
		"while [ ! -e " + goAhead + " ]; do sleep 0.02; done\necho ready >&3\n" +
		"i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return exe, nil }
	t.Setenv("NOTIFY_SOCKET", "")
	r := &runner{log: slog.New(slog.DiscardHandler), srv: &proxy.Server{}}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	r.stopRun = func() {}
	done := make(chan error, 1)
	go func() { done <- r.upgrade(r.ctx) }()
	var pid int
	deadline := time.Now().Add(10 * time.Second)
	for pid == 0 && time.Now().Before(deadline) {
		if b, err := os.ReadFile(pidOut); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid == 0 {
		t.Fatal("the stand-in new process did not start")
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // the test's own child
	// The new process has read the configuration; then a reload.
	r.reloads.Add(1)
	if err := os.WriteFile(goAhead, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	deadline = time.Now().Add(20 * time.Second) // against a hang on a loaded machine, not a timing check
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(hups); len(b) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Error("a reload during the upgrade did not reach the new process")
}

// TestAttack8StoppedChildSaysNothing: the new process of an upgrade that
// is told to stop (SIGTERM, SIGINT) while it loads its configuration still
// bound its listeners and told the old process it served, then drained at
// once: the old one handed over to a process on its way out, and drained
// too, and nothing served. A process that stops before it serves says so
// by closing the ready pipe without the ready line.
func TestAttack8StoppedChildSaysNothing(t *testing.T) {
	path := writeConfig(t, `
[[listen]]
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "b"
address = "127.0.0.1:1"
tls = "none"

[route]
default = "b"
`)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := prepare(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	r.inherit = &inherited{byKey: map[string]net.Listener{}, ready: pw}
	t.Setenv("NOTIFY_SOCKET", "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // SIGTERM before it serves
	if err := r.run(ctx); err != nil {
		t.Fatal(err)
	}
	pr.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(pr)
	if len(b) > 0 || err != nil {
		t.Errorf("ready pipe of a process stopped before it served: %q, %v; want it closed without a word", b, err)
	}
}

// TestAttack8UpgradeLeaksNoDescriptor: a descriptor popgate run got from
// whoever started it without close-on-exec (a shell's redirection, a
// supervisor's log pipe) was passed on to the new process of every
// upgrade, and from it to the next: each generation held it open, a log
// pipe never saw its end. Go marks its own descriptors close-on-exec; the
// ones inherited are marked too now.
func TestAttack8UpgradeLeaksNoDescriptor(t *testing.T) {
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "mail", "localhost")
	exe := filepath.Join(dir, "popgate")
	installBinary(t, popgateBinary(t), exe)
	pidFile := filepath.Join(dir, "popgate.pid")
	stray := filepath.Join(dir, "stray")
	// A shell's redirection: descriptor 9, not close-on-exec (a lower
	// one would be overwritten by the sockets an upgrade passes); exec
	// keeps the PID and popgate's command line.
	cmd := exec.Command("/bin/sh", "-c", `exec "$0" "$@" 9>>`+stray,
		exe, "run", "-config", upgradeConfig(t, cert, "127.0.0.1:1"), "-pid-file", pidFile)
	p := startPopgateCmd(t, cmd, nil, "pop3s")
	logOnFailure(t, p)
	old := p.cmd.Process.Pid
	if !holds(t, old, stray) {
		t.Fatal("popgate run does not hold the stray descriptor; the test no longer shows what it is about")
	}
	if out, err := exec.Command(exe, "upgrade", "-pid-file", pidFile).CombinedOutput(); err != nil {
		t.Fatalf("popgate upgrade: %v\n%s", err, out)
	}
	pid, err := readPIDFile(pidFile)
	if err != nil || pid == old {
		t.Fatalf("PID file after the upgrade: %d, %v", pid, err)
	}
	killLater(t, pid)
	if holds(t, pid, stray) {
		t.Error("the new process holds a descriptor the old one inherited from whoever started it")
	}
}

// holds reports whether process pid has a descriptor open on path.
func holds(t *testing.T, pid int, path string) bool {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == path {
			return true
		}
	}
	return false
}

// TestAttack8PIDFileAfterHandover: the new process wrote the PID file
// before it told the old one it served, and popgate upgrade reported
// "upgraded" as soon as it saw the new PID, although the old process could
// still turn the new one down (a shutdown under way, a ready pipe with
// something else on it) and serve on: a success reported for a failed
// upgrade, and a PID file naming a process that was ended. The old
// process now writes the new one's PID once it has handed over.
func TestAttack8PIDFileAfterHandover(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	pidOut := filepath.Join(dir, "child.pid")
	script := "#!/bin/sh\necho $$ > " + pidOut + "\necho ready >&3\nexec sleep 30\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return exe, nil }
	t.Setenv("NOTIFY_SOCKET", "")
	r := &runner{log: slog.New(slog.DiscardHandler), srv: &proxy.Server{}}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	r.stopRun = func() {}
	r.pidFile = filepath.Join(dir, "popgate.pid")
	if err := writePIDFile(r.pidFile, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	err := r.upgrade(r.ctx)
	b, _ := os.ReadFile(pidOut)
	child, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if perr != nil {
		t.Fatalf("the stand-in new process did not start: %q", b)
	}
	defer syscall.Kill(child, syscall.SIGKILL) // the test's own child
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if pid, err := readPIDFile(r.pidFile); err != nil || pid != child {
		t.Errorf("PID file after the handover: %d, %v; want the new process's %d", pid, err, child)
	}
}

// TestAttack8ChildDiesAfterReady: a new process that wrote the ready line
// and died at once (a crash in its first moments of serving) was handed
// over to: the old process drained and exited, and nothing served. The
// old process now sees it gone and serves on.
func TestAttack8ChildDiesAfterReady(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "popgate")
	script := "#!/bin/sh\necho ready >&3\nexit 3\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { upgradeExecutable = f }(upgradeExecutable)
	upgradeExecutable = func() (string, error) { return exe, nil }
	t.Setenv("NOTIFY_SOCKET", "")
	r := &runner{log: slog.New(slog.DiscardHandler), srv: &proxy.Server{}}
	r.cur.Store(&instance{})
	r.ctx = context.Background()
	stopped := false
	r.stopRun = func() { stopped = true }
	r.pidFile = filepath.Join(dir, "popgate.pid")
	if err := writePIDFile(r.pidFile, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	err := r.upgrade(r.ctx)
	if err == nil || r.handedOver.Load() || stopped {
		t.Errorf("upgrade to a process that died after its ready line: err %v, handed over %v, stopped %v; want it failed and this process serving", err, r.handedOver.Load(), stopped)
	}
	if pid, err := readPIDFile(r.pidFile); err != nil || pid != os.Getpid() {
		t.Errorf("PID file: %d, %v; want this process's %d", pid, err, os.Getpid())
	}
}

// TestAttack8UpgradeRoleChange: a configuration that moves an address
// from a POP3 listener to the admin endpoints (or spells it otherwise)
// made the new process of an upgrade bind a new socket there while the
// old one still listened on it: "address already in use", and the upgrade
// failed. The inherited socket at that address is taken, whatever it
// served before.
func TestAttack8UpgradeRoleChange(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	r := &runner{log: slog.New(slog.DiscardHandler)}
	r.inherit = &inherited{byKey: map[string]net.Listener{
		pop3Key(addr):                  ln,
		pop3Key(other.Addr().String()): other,
	}}
	got, err := r.listen(adminKey(addr), addr)
	if err != nil {
		t.Fatalf("admin endpoints at %s, which the old process served POP3 on: %v", addr, err)
	}
	if got != ln {
		got.Close()
		t.Fatalf("admin endpoints at %s: a new socket, not the inherited one", addr)
	}
	// Taken once: another listener at that address gets no second copy.
	if _, err := r.listen(pop3Key("localhost:"+port), "localhost:"+port); err == nil {
		t.Errorf("a second listener got %s too", addr)
	}
	if r.inherit.byKey[pop3Key(other.Addr().String())] != other {
		t.Error("the socket at another address was taken too")
	}
}

// TestAttack8ReloadAfterHandover: a reload in the old process after it
// handed over (a SIGHUP sent to it before systemd learnt the new main
// PID) built a new instance, and with a changed [tls.acme] a new ACME
// client, which renewed beside the new process's. It is refused: the new
// process gets the reload.
func TestAttack8ReloadAfterHandover(t *testing.T) {
	path := writeConfig(t, `
[[listen]]
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "b"
address = "127.0.0.1:1"
tls = "none"

[route]
default = "b"
`)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := prepare(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.path = path
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.ctx = ctx
	t.Setenv("NOTIFY_SOCKET", "")
	before := r.current()
	r.handedOver.Store(true)
	if err := r.apply(); err == nil || r.current() != before {
		t.Errorf("reload after the handover: %v; want it refused", err)
	}
}
