package interop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// envInterop is the switch: the interop tests run only when it is "1", which
// scripts/test sets. Anything else skips them, so `go test ./...` on a
// developer machine without Dovecot stays green and fast.
const envInterop = "POPGATE_INTEROP"

// buildDir holds the popgate binary built for this test run; TestMain owns it.
var buildDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Getenv(envInterop) == "1" {
			dir, err := os.MkdirTemp("", "popgate-interop-bin-")
			if err != nil {
				fmt.Fprintf(os.Stderr, "interop: %v\n", err)
				return 1
			}
			defer os.RemoveAll(dir)
			buildDir = dir
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireInterop skips t unless POPGATE_INTEROP=1. When it is set, a missing
// binary among bins is a failure, never a silent pass.
func requireInterop(t testing.TB, bins ...string) {
	t.Helper()
	if os.Getenv(envInterop) != "1" {
		t.Skip("set POPGATE_INTEROP=1 (scripts/test does)")
	}
	var missing []string
	for _, b := range bins {
		if _, err := lookBinary(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%s=1 but %s not installed (scripts/test installs them)", envInterop, strings.Join(missing, ", "))
	}
}

// lookBinary finds name in PATH or in the sbin directories.
func lookBinary(name string) (string, error) { return dovecotrun.LookBinary(name) }

// redact replaces every secret in s with "***", so failing commands can print
// their output without leaking a password into the test log.
func redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}

// runResult is what a finished client command left behind.
type runResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// runClient runs cmd with a deadline and returns its output. It fails t when
// the command cannot start or runs into the deadline; a non-zero exit is left
// to the caller. secrets are redacted from anything printed.
func runClient(t *testing.T, cmd *exec.Cmd, timeout time.Duration, secrets ...string) runResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill() // our own child, by PID
		<-done
		t.Fatalf("%s did not finish within %v\nargs: %s\nstdout:\n%s\nstderr:\n%s", filepath.Base(cmd.Path), timeout,
			redact(strings.Join(cmd.Args, " "), secrets...), redact(tail(stdout.String()), secrets...), redact(tail(stderr.String()), secrets...))
	}
	res := runResult{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
	default:
		t.Fatalf("run %s: %v", filepath.Base(cmd.Path), err)
	}
	t.Logf("%s exited %d after %v", filepath.Base(cmd.Path), res.ExitCode, time.Since(start).Round(time.Millisecond))
	return res
}

// failCommand fails t with the command line and its output, secrets redacted.
func failCommand(t *testing.T, cmd *exec.Cmd, res runResult, secrets []string, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s\nargs: %s\nexit code: %d\nstdout:\n%s\nstderr:\n%s", fmt.Sprintf(format, args...),
		redact(strings.Join(cmd.Args, " "), secrets...), res.ExitCode,
		redact(tail(string(res.Stdout)), secrets...), redact(tail(string(res.Stderr)), secrets...))
}

// tail keeps the last 8 KiB of s: enough to see an error, not a whole message.
func tail(s string) string {
	const max = 8 << 10
	if len(s) <= max {
		return s
	}
	return fmt.Sprintf("[... %d bytes cut ...]\n%s", len(s)-max, s[len(s)-max:])
}
