package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/proxy"
)

// startRunner serves the configuration file path in this process, as
// cmdRun does, and returns once every listener is served. Reloads are
// driven by calling r.reload, not by signals.
func startRunner(t *testing.T, path string) (*runner, *logSink) {
	t.Helper()
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logSink{listening: make(chan [2]string, 16)}
	level := new(slog.LevelVar)
	level.Set(c.Log.Level)
	log := newLoggerLevel(c.Log, level, logs)
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	metrics := admin.NewMetrics("test", "test")
	in.proxyConfig.Observer = metrics
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		t.Fatal(err)
	}
	r := newRunner(in, log)
	r.path, r.level, r.metrics = path, level, metrics
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run = %v", err)
		}
	})
	for !r.serving.Load() {
		select {
		case err := <-done:
			t.Fatalf("run = %v; log:\n%s", err, logs)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return r, logs
}

// addrOf returns the bound address of the listener named name.
func (r *runner) addrOf(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.current()
	for i, l := range in.listeners {
		if l.Name == name {
			if b := r.lns[in.keys[i]]; b != nil {
				return b.ln.Addr().String()
			}
		}
	}
	return ""
}

// adminAddress is the address the admin endpoints are bound to; "" when
// they are off.
func (r *runner) adminAddress() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.adminLn == nil {
		return ""
	}
	return r.adminLn.ln.Addr().String()
}

// serial returns the serial of the certificate served at addr for sni.
func serial(t *testing.T, addr, sni string) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: sni})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestReloadCases: what a reload changes in place, and what it refuses.
func TestReloadCases(t *testing.T) {
	dir := t.TempDir()
	one := writeTestCert(t, dir, "one", "mail.example.com")
	two := writeTestCert(t, dir, "two", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	config := func(tlsSection, listeners, level, metrics string) string {
		return fmt.Sprintf(`[log]
format = "json"
level = %q
[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"
%s
%s
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
default = "mbox"
[metrics]
address = %q
`, level, listeners, tlsSection, backend, metrics)
	}
	tlsOne := fmt.Sprintf("[tls]\ncertificates = [{ cert = %q, key = %q }]\n", one.certFile, one.keyFile)
	tlsTwo := fmt.Sprintf("[tls]\ncertificates = [{ cert = %q, key = %q }]\n", two.certFile, two.keyFile)
	plain := "[[listen]]\nname = \"plain\"\naddress = \"127.0.0.1:0\"\ntls = \"none\"\n"
	path := writeConfig(t, config(tlsOne, plain, "info", "127.0.0.1:0"))
	r, logs := startRunner(t, path)
	pop3s := r.addrOf("pop3s")
	serialOne, serialTwo := one.leaf.SerialNumber.String(), two.leaf.SerialNumber.String()
	if got := serial(t, pop3s, "mail.example.com"); got != serialOne {
		t.Fatalf("serial = %s, want %s", got, serialOne)
	}

	reload := func(text string) error {
		t.Helper()
		writeFile(t, path, []byte(text))
		return r.reload()
	}

	t.Run("certificate files replaced, [tls] unchanged", func(t *testing.T) {
		old := r.current().certs
		copyFile(t, two.certFile, one.certFile)
		copyFile(t, two.keyFile, one.keyFile)
		if err := reload(config(tlsOne, plain, "info", "127.0.0.1:0")); err != nil {
			t.Fatal(err)
		}
		if r.current().certs != old {
			t.Error("a new certificate store for an unchanged [tls]")
		}
		if got := serial(t, pop3s, "mail.example.com"); got != serialTwo {
			t.Errorf("serial after the reload = %s, want the replaced file's %s", got, serialTwo)
		}
	})

	t.Run("broken certificate file", func(t *testing.T) {
		writeFile(t, one.keyFile, []byte("not a key"))
		err := reload(config(tlsOne, plain, "info", "127.0.0.1:0"))
		if err == nil || !strings.Contains(err.Error(), one.keyFile) {
			t.Errorf("reload with a broken key = %v, want an error naming %s", err, one.keyFile)
		}
		if got := serial(t, pop3s, "mail.example.com"); got != serialTwo {
			t.Errorf("serial after the refused reload = %s, want the previous %s", got, serialTwo)
		}
	})

	t.Run("[tls] changed, level, listener removed, metrics moved", func(t *testing.T) {
		c, err := net.Dial("tcp", r.addrOf("plain"))
		if err != nil {
			t.Fatal(err)
		}
		before := newPOPClient(t, c)
		oldPlain, oldAdmin := r.addrOf("plain"), r.adminAddress()
		if err := reload(config(tlsTwo, "", "debug", "127.0.0.1:0")); err != nil {
			t.Fatal(err)
		}
		if got := serial(t, pop3s, "mail.example.com"); got != serialTwo {
			t.Errorf("serial = %s, want %s", got, serialTwo)
		}
		if r.level.Level() != slog.LevelDebug {
			t.Errorf("log level after the reload = %v, want DEBUG", r.level.Level())
		}
		if c, err := net.Dial("tcp", oldPlain); err == nil {
			c.Close()
			t.Errorf("the removed listener %s still accepts", oldPlain)
		}
		// Its session goes on.
		if stat := before.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 1 ") {
			t.Errorf("session of the removed listener: STAT = %q", stat)
		}
		before.cmd("QUIT")
		// metrics.address "127.0.0.1:0" both times: the same key, so the
		// admin socket stays.
		if r.adminAddress() != oldAdmin {
			t.Errorf("admin address moved from %s to %s without a change", oldAdmin, r.adminAddress())
		}
		newAdmin := freeAddr(t)
		if err := reload(config(tlsTwo, "", "debug", newAdmin)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + newAdmin + "/healthz")
		if err != nil {
			t.Fatalf("new admin address: %v", err)
		}
		resp.Body.Close()
		waitUntil(t, "the old admin address to close", func() bool {
			c, err := net.Dial("tcp", oldAdmin)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
	})

	t.Run("admin endpoints off, then on again", func(t *testing.T) {
		old := r.adminAddress()
		if err := reload(config(tlsTwo, "", "debug", "")); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the admin address to close", func() bool {
			c, err := net.Dial("tcp", old)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		addr := freeAddr(t)
		if err := reload(config(tlsTwo, "", "debug", addr)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/metrics after turning the endpoints on = %s", resp.Status)
		}
	})

	t.Run("tls.acme added is refused", func(t *testing.T) {
		acme := tlsTwo + fmt.Sprintf("[tls.acme]\ndomains = [\"mail.example.com\"]\ncache_dir = %q\ndirectory_url = \"http://127.0.0.1:1/directory\"\nhttp_challenge = \"\"\n", filepath.Join(dir, "acme"))
		live := r.current()
		err := reload(config(acme, "", "debug", r.adminAddress()))
		if err == nil || !strings.Contains(err.Error(), "tls.acme") || !strings.Contains(err.Error(), "restart") {
			t.Errorf("reload adding [tls.acme] = %v, want a refusal naming tls.acme and restart", err)
		}
		if r.current() != live {
			t.Error("the refused reload replaced the running configuration")
		}
	})

	t.Run("address in use is refused", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		listener := fmt.Sprintf("[[listen]]\nname = \"taken\"\naddress = %q\ntls = \"none\"\n", taken.Addr())
		live := r.current()
		if err := reload(config(tlsTwo, listener, "debug", r.adminAddress())); err == nil || !strings.Contains(err.Error(), "taken") {
			t.Errorf("reload with an address in use = %v, want an error naming the listener", err)
		}
		if r.current() != live {
			t.Error("the refused reload replaced the running configuration")
		}
	})
	if n := len(logs.records(t, "configuration reload failed; keeping the running configuration")); n != 3 {
		t.Errorf("%d reload failures logged, want 3", n)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, b)
}

// waitUntil polls cond for state that settles asynchronously.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestListenerFailure: a listener that fails stops popgate with an error,
// ACME answerers included, rather than hanging in the drain.
func TestListenerFailure(t *testing.T) {
	dir := t.TempDir()
	c, err := ParseConfig("acme", []byte(fmt.Sprintf(`%s%s%s[tls.acme]
domains = ["mail.example.com"]
cache_dir = %q
directory_url = "http://127.0.0.1:1/directory"
http_challenge = %q
[metrics]
address = "127.0.0.1:0"
`, listenTLS, backendB, routeB, filepath.Join(dir, "acme"), freeAddr(t))))
	if err != nil {
		t.Fatal(err)
	}
	r, err := prepare(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.run(t.Context()) }()
	waitUntil(t, "serving", r.serving.Load)
	r.mu.Lock()
	for _, b := range r.lns {
		b.ln.Close() // as if the socket broke
	}
	r.mu.Unlock()
	select {
	case err := <-done:
		if err == nil {
			t.Error("run after a listener failed = nil, want the failure")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after a listener failed")
	}
}

// TestWatchConfig: with -watch-config a changed file is reloaded without
// a signal, a broken one refused, the next good one applied, also when
// stat cannot tell it from the one before.
func TestWatchConfig(t *testing.T) {
	backend := mailbox(t, messages(1)...)
	config := func(level string) string {
		return fmt.Sprintf("[log]\nformat = \"json\"\nlevel = %q\n%s[[backend]]\nname = \"mbox\"\naddress = %q\ntls = \"none\"\n[route]\ndefault = \"mbox\"\n[metrics]\naddress = \"127.0.0.1:0\"\n",
			level, listenNone, backend)
	}
	path := writeConfig(t, config("info"))
	r, logs := startRunner(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r.watchConfig(ctx, 10*time.Millisecond)
	const ok, failed = "configuration reloaded; new sessions use it, running ones keep theirs", "configuration reload failed; keeping the running configuration"

	writeFile(t, path, []byte(config("debug")))
	waitUntil(t, "the reload", func() bool { return len(logs.records(t, ok)) == 1 })
	if r.level.Level() != slog.LevelDebug {
		t.Errorf("level after the watched reload = %v", r.level.Level())
	}
	writeFile(t, path, []byte(config("loud")))
	waitUntil(t, "the refusal", func() bool { return len(logs.records(t, failed)) == 1 })
	if r.level.Level() != slog.LevelDebug {
		t.Errorf("level after a refused reload = %v, want DEBUG still", r.level.Level())
	}
	// At WARN the reload's own INFO line is not logged: the level shows it.
	writeFile(t, path, []byte(config("warn")))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second reload", func() bool { return r.level.Level() == slog.LevelWarn })

	// Rewritten in place with the same size and modification time, as two
	// writes within one tick of a coarse clock leave it: a file modified
	// moments ago is read again, so the change is still seen.
	writeFile(t, path, []byte(config("info")))
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the reload of a file with the same stamp", func() bool { return r.level.Level() == slog.LevelInfo })
}

// TestReloadLeaksNothing: a hundred reloads, half of them refused at
// different stages, leave goroutines and heap where they were. What a
// replaced configuration or a refused candidate owns (lookup cache,
// connections to the lookup service, certificate store and its watch, map
// file watch) is released; a session that started before all of them
// still logs in through its own configuration's lookup at the end.
func TestReloadLeaksNothing(t *testing.T) {
	dir := t.TempDir()
	certs := []testCert{
		writeTestCert(t, dir, "one", "mail.example.com"),
		writeTestCert(t, dir, "two", "mail.example.com"),
	}
	backend := mailbox(t, messages(1)...)
	var lookups atomic.Int32
	service := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lookups.Add(1)
		if r.Header.Get("Auth-User") == procUser && r.Header.Get("Auth-Pass") == procPass {
			w.Header().Set("Auth-Status", "OK")
			w.Header().Set("Auth-Backend", "mbox")
			return
		}
		w.Header().Set("Auth-Status", "Invalid login")
	}))
	t.Cleanup(service.Close)
	routes := filepath.Join(dir, "routes")
	writeFile(t, routes, []byte("bob@example.com mbox\n"))
	brokenRoutes := filepath.Join(dir, "broken-routes")
	writeFile(t, brokenRoutes, []byte("carol@example.com nosuchbackend\n"))
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	config := func(cert testCert, mapFile, listeners string) string {
		return fmt.Sprintf(`[log]
format = "json"
level = "warn"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"
%s
[tls]
certificates = [{ cert = %q, key = %q }]
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
map_file = %q
[route.http]
url = %q
backend = "mbox"
[metrics]
address = "127.0.0.1:0"
`, listeners, cert.certFile, cert.keyFile, backend, mapFile, service.URL)
	}
	path := writeConfig(t, config(certs[0], routes, ""))
	r, logs := startRunner(t, path)
	plain := r.addrOf("plain")
	login := func() {
		t.Helper()
		c, err := net.Dial("tcp", plain)
		if err != nil {
			t.Fatal(err)
		}
		p := newPOPClient(t, c)
		if stat := p.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 1 ") {
			t.Errorf("STAT = %q", stat)
		}
		p.cmd("QUIT")
		c.Close()
	}

	refused := []struct {
		name, text string
	}{
		{"unknown key", config(certs[0], routes, "") + "bogus = 1\n"},
		{"broken map file", config(certs[1], brokenRoutes, "")},
		{"address in use", config(certs[1], routes, fmt.Sprintf("[[listen]]\nname = \"taken\"\naddress = %q\ntls = \"none\"\n", taken.Addr()))},
	}
	// reload i is good for even i, refused for odd i; a good one changes
	// [tls], so builds a certificate store and restarts its watch.
	reload := func(i int) {
		t.Helper()
		text, want := config(certs[i/2%2], routes, ""), ""
		if i%2 == 1 {
			text, want = refused[i/2%len(refused)].text, refused[i/2%len(refused)].name
		}
		writeFile(t, path, []byte(text))
		err := r.reload()
		if (err != nil) != (want != "") {
			t.Fatalf("reload %d (%s) = %v", i, cmp.Or(want, "good"), err)
		}
		if i%10 == 0 {
			login() // a lookup through the new configuration
		}
	}

	// The baseline, after a few reloads of each kind (what is allocated
	// once is in it), and a login: the running configuration has asked
	// the service once and keeps that connection.
	for i := range 10 {
		reload(i)
	}
	login()
	// Measured with no session left: one that is still ending holds its
	// copy buffers (128 KiB from the backend), which no reload leaked.
	noSessions := func() {
		for deadline := time.Now().Add(10 * time.Second); r.srv.Sessions() > 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	noSessions()
	goroutines, heap := settled()

	// On the TLS listener: the answer cached for the baseline's login was
	// for the plaintext one.
	c, err := tls.Dial("tcp", r.addrOf("pop3s"), &tls.Config{InsecureSkipVerify: true, ServerName: "mail.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	early := newPOPClient(t, c)
	early.cmd("USER " + procUser)

	const reloads = 100
	for i := range reloads {
		reload(i)
	}
	if n := len(logs.records(t, "configuration reload failed; keeping the running configuration")); n != (10+reloads)/2 {
		t.Errorf("%d reloads refused, want %d", n, (10+reloads)/2)
	}

	// The early session logs in through the first configuration's
	// lookup, replaced fifty times since.
	before := lookups.Load()
	early.cmd("PASS " + procPass)
	if stat := early.cmd("STAT"); !strings.HasPrefix(stat, "+OK 1 ") {
		t.Errorf("early session: STAT = %q", stat)
	}
	early.cmd("QUIT")
	early.c.Close()
	if lookups.Load() != before+1 {
		t.Errorf("the early session's login made %d lookups, want 1", lookups.Load()-before)
	}
	// As at the baseline: one login through the running configuration.
	login()

	// The same parts run as at the baseline. A small fixed slack for
	// goroutines still on their way out; a lookup connection left open
	// holds three, each reload leaking one would add a hundred.
	const slack = 2
	var now int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= goroutines+slack || time.Now().After(deadline) {
			break
		}
	}
	if now > goroutines+slack {
		t.Errorf("goroutines: %d before %d reloads, %d after\n%s", goroutines, reloads, now, goroutineDump())
	}
	// The log lines this test keeps grow the heap by some 60 KiB; the
	// good reloads keeping their certificate stores would add 300.
	const heapSlack = 128 << 10
	noSessions()
	_, heapAfter := settled()
	if heapAfter > heap+heapSlack {
		t.Errorf("heap: %d bytes before %d reloads, %d after", heap, reloads, heapAfter)
	}
}

// settled returns the number of goroutines and the live heap after
// garbage collection: two, the first moves sync.Pools to their victim
// caches, the second frees those.
func settled() (goroutines int, heap uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapAlloc
}

// goroutineDump returns every goroutine's stack, for a failure message.
func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
