package main

// Regression tests from the second attack review (admin endpoints, login
// path hardening, drain): each TestAttack2* test failed while the defect it
// names was present.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/proxy"
)

// TestAttack2BlockingTokenFileHoldsShutdown: readToken opens
// metrics.token_file with os.Open and reads it to the end. A token file
// that is a FIFO (or sits on a hung network mount, or is /dev/stdin by
// mistake) blocks the open forever, and a reload reads it in
// runner.apply with r.mu held. The drain then finishes (Server.Shutdown)
// but runner.shutdown waits for r.mu before it stops the listeners' loops
// and the admin endpoint: SIGTERM no longer ends popgate, whatever
// limits.shutdown_timeout says, until something writes to the FIFO (or
// systemd's SIGKILL). The same applies to every file a reload reads
// (config, certificates, ca_file, map file); the token file is the new
// one, and the one most likely to be a mounted secret.
func TestAttack2BlockingTokenFileHoldsShutdown(t *testing.T) {
	const grace = time.Second
	backend := mailbox(t, messages(1)...)
	tokenFile, _ := writeToken(t)
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"
[[listen]]
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
default = "mbox"
[limits]
shutdown_timeout = "1s"
[metrics]
address = "127.0.0.1:0"
token_file = %q
`, backend, tokenFile))
	r, cancel, done := startAttack2Runner(t, path, nil)
	defer cancel()

	// The secret's file is replaced by a FIFO nobody writes to.
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(tokenFile, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	unblock := func() {
		// A writer that comes and goes lets the blocked open return
		// and its read end (empty token: the reload is refused).
		if f, err := os.OpenFile(tokenFile, os.O_RDWR, 0); err == nil {
			f.Close()
		}
	}
	reloaded := make(chan error, 1)
	go func() { reloaded <- r.reload() }()
	time.Sleep(200 * time.Millisecond) // the reload is stuck in readToken

	cancel() // SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run = %v", err)
		}
	case <-time.After(grace + 5*time.Second):
		t.Errorf("SIGTERM with a reload stuck on a FIFO metrics.token_file: popgate still running %v after shutdown_timeout = %v", 5*time.Second, grace)
		unblock()
		<-done
	}
	unblock()
	select {
	case <-reloaded:
	case <-time.After(5 * time.Second):
		t.Error("reload still stuck")
	}
}

// startAttack2Runner serves the configuration file path as cmdRun does;
// tweak, when not nil, changes the proxy configuration first. cancel is
// SIGTERM; done delivers run's result.
func startAttack2Runner(t *testing.T, path string, tweak func(*proxy.Config)) (r *runner, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logSink{listening: make(chan [2]string, 16)}
	level := new(slog.LevelVar)
	log := newLoggerLevel(c.Log, level, logs)
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	metrics := admin.NewMetrics("test", "test")
	in.proxyConfig.Observer = metrics
	if tweak != nil {
		tweak(&in.proxyConfig)
	}
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		t.Fatal(err)
	}
	r = newRunner(in, log)
	r.path, r.level, r.metrics = path, level, metrics
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.run(ctx) }()
	for start := time.Now(); !r.serving.Load(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			cancel()
			t.Fatal("runner did not start")
		}
	}
	return r, cancel, errc
}
