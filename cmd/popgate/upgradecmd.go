package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The PID file (popgate run -pid-file) names the process that serves: the
// one that started, and after an upgrade the new one, whose PID the old
// one writes once it has handed over. popgate upgrade reads it to know whom to signal, and sees the
// upgrade succeed when it names a new process, and fail when the old one
// writes it anew.

// writePIDFile writes pid to path, replacing the file in one step (a
// reader never sees it half written).
func writePIDFile(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".popgate-pid-*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	_, err = fmt.Fprintf(tmp, "%d\n", pid)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// readPIDFile returns the PID path names.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a process ID", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// removePIDFile removes path if it still names this process: after an
// upgrade it names the new one, and stays.
func removePIDFile(path string) {
	if pid, err := readPIDFile(path); err == nil && pid == os.Getpid() {
		os.Remove(path)
	}
}

// upgradePoll is how often popgate upgrade looks at the PID file.
const upgradePoll = 100 * time.Millisecond

// cmdUpgrade signals the process the PID file names (SIGUSR2) and waits
// for the outcome: the PID file naming a new process (success), or the new
// process rewriting it with its own PID (failure: it serves on, and its
// log says why).
func cmdUpgrade(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("popgate upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pidFile := fs.String("pid-file", "/run/popgate/popgate.pid", "the `file` popgate run -pid-file writes")
	wait := fs.Duration("timeout", upgradeTimeout+15*time.Second, "how long to wait for the new process to serve")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return errors.New("upgrade: no arguments besides the flags")
	}
	old, err := readPIDFile(*pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: is popgate running, started as popgate run -pid-file %s? Without a PID file, send SIGUSR2 to its process (docs/operations.md, Upgrading)", err, *pidFile)
	}
	if err != nil {
		return err
	}
	// The file as it is now: the old process writes it anew when the
	// upgrade fails, the new one when it serves.
	before, err := os.Stat(*pidFile)
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if err := checkPopgateRun(old, *pidFile); err != nil {
		return err
	}
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("signalling popgate (pid %d from %s): %w", old, *pidFile, err)
	}
	fmt.Fprintf(stdout, "popgate (pid %d) is starting the new binary...\n", old)
	deadline := time.Now().Add(*wait)
	for time.Now().Before(deadline) {
		time.Sleep(upgradePoll)
		fi, err := os.Stat(*pidFile)
		if err != nil {
			continue // between the old process's removal and a rewrite
		}
		pid, err := readPIDFile(*pidFile)
		switch {
		case err != nil:
			continue
		case pid != old:
			fmt.Fprintf(stdout, "upgraded: pid %d serves; pid %d finishes its sessions (limits.shutdown_timeout at most)\n", pid, old)
			return nil
		case !os.SameFile(fi, before):
			// Rewritten by the old process: its upgrade failed.
			return fmt.Errorf("the upgrade failed; pid %d serves on, and its log says why", old)
		}
		if syscall.Kill(old, 0) == syscall.ESRCH {
			return fmt.Errorf("popgate (pid %d) exited, and %s names no new process: see the log", old, *pidFile)
		}
	}
	return fmt.Errorf("no new process serves after %v; pid %d serves on: see the log", *wait, old)
}

// checkPopgateRun makes sure pid is a "popgate run" that writes pidFile
// before it gets SIGUSR2, whose default action ends a process: a stale
// PID file (popgate gone, its PID reused) or one rewritten by whoever may
// write it (the popgate user, when root upgrades) must not make popgate
// upgrade end another process. Where there is no /proc, it cannot tell,
// and trusts the file.
func checkPopgateRun(pid int, pidFile string) error {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		return nil
	}
	proc := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(proc + "/cmdline")
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pid file %s names pid %d, which is not running (a stale file?)", pidFile, pid)
	}
	if err != nil {
		return fmt.Errorf("pid %d (from %s) cannot be checked (%w): run popgate upgrade as root or as popgate's user", pid, pidFile, err)
	}
	theirs := pidFileOfArgs(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"))
	if theirs != "" && !filepath.IsAbs(theirs) {
		// Relative to that process's working directory.
		cwd, err := os.Readlink(proc + "/cwd")
		if err != nil {
			return fmt.Errorf("pid %d (from %s) writes its PID file relative to its working directory, which cannot be read here (%w): run popgate upgrade as its user or root", pid, pidFile, err)
		}
		theirs = filepath.Join(cwd, theirs)
	}
	ours, err := filepath.Abs(pidFile)
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if theirs == "" || filepath.Clean(theirs) != ours {
		return fmt.Errorf("pid file %s names pid %d, which is not popgate run -pid-file %s (a stale file, or one rewritten): not signalled; see which process serves (systemctl status popgate) and write its PID there", pidFile, pid, pidFile)
	}
	return nil
}

// pidFileOfArgs returns the -pid-file of a "popgate run" command line
// (argv), or "" when argv is not one or sets none.
func pidFileOfArgs(argv []string) string {
	if len(argv) < 2 || argv[1] != "run" {
		return ""
	}
	file := ""
	for i := 2; i < len(argv); i++ {
		a := argv[i]
		if a == "--" || a == "-" || !strings.HasPrefix(a, "-") {
			break // the flags end here, as for package flag
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		switch {
		case name == "pid-file" && hasValue:
			file = value
		case name == "pid-file" && i+1 < len(argv):
			file = argv[i+1]
			i++
		case name == "pid-file":
			return ""
		case !hasValue && name != "watch-config" && i+1 < len(argv):
			i++ // a flag's value, such as -config's
		}
	}
	return file
}
