// Package dirrun starts real directory servers on loopback for popgate's
// routing tests and benchmarks: PostgreSQL, MariaDB and OpenLDAP's slapd,
// and Redis for a fleet's shared state, each a private instance with its
// own data directory, port and socket, started as a child process and
// stopped by its PID. Nothing under /etc
// is read or written and no system service is touched.
//
//	pg, err := dirrun.StartPostgres()
//	if err != nil { ... }
//	defer pg.Stop()
//	err = pg.Exec("CREATE TABLE users (...)")
//	// connect with pg.DSN()
//
// The servers refuse to run as root (PostgreSQL) or drop privileges to
// their packages' users (postgres, mysql), so the data lives in a
// directory of its own under the system's temporary directory that those
// users can reach; Stop removes it. Each instance is started as a child
// with Pdeathsig, so one left by a test binary that died is stopped by the
// kernel. Restart stops the server and starts it again on the same ports
// and data: the directory outage of a test, then its recovery.
//
// Statements run through the servers' own command-line clients (psql,
// mariadb, ldapadd), so the package depends on no driver.
//
// In a test, PostgresFor, MariaDBFor, SlapdFor and RedisFor do the
// above: they fail the test when the server is missing and stop it when
// the test ends.
package dirrun

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Password is the password of every account the package creates. The
// instances listen on loopback only and exist for one run.
const Password = "dirrun-secret"

// startTimeout bounds how long a server may take to accept queries.
const startTimeout = 60 * time.Second

// proc is one running server process.
type proc struct {
	name    string // "postgres", "mariadb", "slapd"
	argv    []string
	cred    *syscall.Credential // nil: as the caller
	dir     string              // working directory
	logFile string
	// stopSig ends the server; 0 means SIGTERM.
	stopSig syscall.Signal

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // cmd.Wait's result, once exited is closed
}

// start runs the process and waits until ready reports nil, the process
// exits, or startTimeout passes. On error the process is gone.
func (p *proc) start(ready func() error) error {
	out, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("dirrun: %s log: %w", p.name, err)
	}
	defer out.Close()
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = childProcAttr(p.cred)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dirrun: start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(exited)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("dirrun: %s exited while starting (%v); its log:\n%s", p.name, p.exitErr(), tail(p.logFile))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = p.stop()
			return fmt.Errorf("dirrun: %s not ready after %v: %v; its log:\n%s", p.name, startTimeout, err, tail(p.logFile))
		}
	}
}

func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// PID returns the server's process ID, or 0 when it is not running.
func (p *proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	select {
	case <-p.exited:
		return 0
	default:
		return p.cmd.Process.Pid
	}
}

// stop sends stopSig (SIGTERM) to the process (by its PID) and waits for
// it to exit; SIGKILL after 15 s. Stopping a stopped process does nothing.
func (p *proc) stop() error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	sig := p.stopSig
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
		return nil
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("dirrun: %s (pid %d) ignored %v for 15s; killed", p.name, cmd.Process.Pid, sig)
	}
}

// serviceUser returns the credential of the system user a package runs its
// server as ("postgres", "mysql").
func serviceUser(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("dirrun: user %s (created by the server's Debian package): %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// workDir makes a directory under the system's temporary directory that
// cred's user owns and others can search (the server's user must reach
// its data, and the caller its log and socket). A short path keeps UNIX
// socket names within sun_path's 107 bytes.
func workDir(prefix string, cred *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", fmt.Errorf("dirrun: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("dirrun: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("dirrun: %w (needs root)", err)
		}
	}
	return dir, nil
}

// run runs a command-line client to completion with stdin, as cred's user
// when cred is set, and returns its output; an error carries the output.
func run(cred *syscall.Credential, env []string, stdin string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("dirrun: %s: %w", filepath.Base(argv[0]), err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("dirrun: %s: %w: %s", filepath.Base(argv[0]), err, strings.TrimSpace(out.String()))
		}
		return out.String(), nil
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("dirrun: %s did not finish in 2 minutes", filepath.Base(argv[0]))
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dirrun: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// dialable reports whether a TCP connect to addr succeeds.
func dialable(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// tail returns the last 4 KiB of a log file, for error messages.
func tail(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// lookPath finds a server binary in PATH or the directories Debian puts
// servers in (a non-login shell's PATH may lack /usr/sbin).
func lookPath(name string, dirs ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range append(dirs, "/usr/sbin", "/sbin") {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("dirrun: %s not found: %w", name, exec.ErrNotFound)
}

// lookPaths finds each of a server's binaries with lookPath, in order.
func lookPaths(names ...string) ([]string, error) {
	paths := make([]string, len(names))
	for i, name := range names {
		var err error
		if paths[i], err = lookPath(name); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// errNotRoot is returned when the package cannot drop to a server's user.
var errNotRoot = errors.New("dirrun: needs root to run the server as its own user")

func needRoot() error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	return nil
}
