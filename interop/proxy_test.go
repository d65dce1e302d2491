package interop

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/conffile"
)

// These tests run the real clients through a real popgate (the binary, as
// operators run it) in front of a real Dovecot, and hold popgate to what the
// direct tests (dovecot_direct_test.go) showed the clients get from Dovecot
// alone: the bytes in the Maildir, unchanged.

// popgateServerName is the name in popgate's test certificate (which has the
// IP SAN 127.0.0.1 too) and its tls.default_server_name.
const popgateServerName = "localhost"

// The three ways popgate can reach Dovecot, named as the backends in the
// generated config.
var backendModes = []string{"plain", "stls", "tls"}

var popgateBuild struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// popgateBinary builds cmd/popgate once per test run (into TestMain's
// directory; with -race when the tests run with -race) and returns its path.
// A failed build fails every test that needs the binary, with the compiler
// output.
func popgateBinary(t testing.TB) string {
	t.Helper()
	b := &popgateBuild
	b.once.Do(func() {
		if buildDir == "" {
			b.err = errors.New("TestMain did not prepare a build directory")
			return
		}
		b.path = filepath.Join(buildDir, "popgate")
		args := []string{"build", "-o", b.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/popgate/popgate/cmd/popgate")
		cmd := exec.Command("go", args...) // go test puts its own go first in PATH
		b.out, b.err = cmd.CombinedOutput()
	})
	if b.err != nil {
		t.Fatalf("go build github.com/popgate/popgate/cmd/popgate: %v\n%s", b.err, b.out)
	}
	return b.path
}

// popgateBackend is one [[backend]] of the generated config.
type popgateBackend = conffile.Backend

// popgateConfig is what a test chooses of popgate's config; the rest is
// fixed by startPopgate.
type popgateConfig struct {
	Backends []popgateBackend
	Default  string            // route.default; "" leaves it out
	Users    map[string]string // route.users: user → backend name
	MapFile  string            // route.map_file; "" leaves it out
	HTTPURL  string            // route.http.url; "" leaves [route.http] out
	SQL      *conffile.SQL     // [route.sql]; nil leaves it out
	LDAP     *conffile.LDAP    // [route.ldap]; nil leaves it out
	LogLevel string            // log.level; "" is debug (info at least: startPopgate reads the "listening" lines)
	// ACME is the body of [tls.acme]; with it popgate has no static
	// certificate and ACMEServerName is its tls.default_server_name.
	ACME           string
	ACMEServerName string
	// ProxyListener adds listener "pp": plaintext, proxy_protocol = true,
	// with limits.trusted_proxies = 127.0.0.0/8.
	ProxyListener bool
	// NoFailureLimits sets failure_delay = "0s" and switches the failure
	// throttle off (max_failures_per_ip and _per_user = 0), for tests
	// that are refused many times on purpose.
	NoFailureLimits bool
	// PlainListener adds listener "plain": plaintext POP3, no TLS.
	PlainListener bool
	// ExtraLimits are lines added to [limits] (attack review).
	ExtraLimits []string
	// POP3SAddress and POP3Address are listener "pop3s"'s and "pop3"'s
	// addresses; "" means a free loopback port.
	POP3SAddress, POP3Address string
	// NoFile, when set, is popgate's file descriptor limit (soft and
	// hard, so that Go cannot raise it).
	NoFile int
	// AdminToken, when set, goes into a file named by metrics.token_file:
	// the console and /sessions ask for it. It must never be logged.
	AdminToken string
	// OAuth are the lines of [oauth]; set, listeners pop3s and pop3
	// offer bearer-token logins (oauth = true).
	OAuth []string
	// Extra is appended to the file as it is (a [cluster] section).
	Extra string
	// Binary, when set, is the popgate executable to run instead of the
	// one popgateBinary builds (an upgrade replaces it).
	Binary string
	// PIDFile, when set, is popgate run's -pid-file.
	PIDFile string
	// ShutdownTimeout is limits.shutdown_timeout; "" is 2s.
	ShutdownTimeout string
}

// dovecotBackends returns the three backends for d, named after backendModes:
// plaintext, STLS and implicit TLS, the last two checking Dovecot's
// certificate against d's CA for d.ServerName.
func dovecotBackends(d *dovecot) []popgateBackend {
	return []popgateBackend{
		{Name: "plain", Address: d.PlainAddr, TLS: "none"},
		{Name: "stls", Address: d.PlainAddr, TLS: "starttls", ServerName: d.ServerName, CAFile: d.CAFile},
		{Name: "tls", Address: d.TLSAddr, TLS: "implicit", ServerName: d.ServerName, CAFile: d.CAFile},
	}
}

// popgate is a running popgate binary.
type popgate struct {
	POP3SAddr  string // listener "pop3s": implicit TLS
	POP3Addr   string // listener "pop3": STLS
	PPAddr     string // listener "pp": PROXY header, then plaintext; "" unless ProxyListener
	PlainAddr  string // listener "plain": plaintext; "" unless PlainListener
	CAFile     string // CA of popgate's certificate
	ServerName string // popgateServerName
	ca         *testCA

	secrets []string // passwords that must never show up in popgate's log

	exited  chan struct{} // closed when the process has exited
	process *os.Process

	mu     sync.Mutex
	stderr bytes.Buffer // everything popgate wrote to stderr (and stdout)
}

// listenEvent is the part of popgate's "listening" log line the tests use.
type listenEvent struct {
	Msg      string `json:"msg"`
	Listener string `json:"listener"`
	Address  string `json:"address"`
}

// startPopgate runs `popgate run -config FILE` with cfg's backends and
// routes behind two listeners on free loopback ports, learns the ports from
// the "listening" log lines, and stops popgate (SIGTERM, by PID) when t ends.
// secrets (the test users' passwords) must never appear in popgate's log.
func startPopgate(t testing.TB, cfg popgateConfig, secrets ...string) *popgate {
	t.Helper()
	requireInterop(t)
	bin := cmp.Or(cfg.Binary, popgateBinary(t))
	dir := t.TempDir()
	ca := newTestCA(t, dir, "popgate")
	certFile, keyFile := ca.issue(t, dir, "popgate", popgateServerName)
	p := &popgate{CAFile: ca.CAFile, ServerName: popgateServerName, ca: ca, secrets: secrets}
	tokenFile := ""
	if cfg.AdminToken != "" {
		tokenFile = filepath.Join(dir, "admin-token")
		writeFile(t, tokenFile, []byte(cfg.AdminToken+"\n"), 0o600)
		p.secrets = append(slices.Clip(p.secrets), cfg.AdminToken)
	}

	conf := filepath.Join(dir, "popgate.toml")
	writeFile(t, conf, []byte(popgateTOML(cfg, certFile, keyFile, tokenFile)), 0o600)

	args := []string{"run", "-config", conf}
	if cfg.PIDFile != "" {
		args = append(args, "-pid-file", cfg.PIDFile)
	}
	cmd := exec.Command(bin, args...)
	if cfg.NoFile > 0 {
		// sh's ulimit -n sets both limits; exec keeps the PID, so
		// signals still reach popgate.
		cmd = exec.Command("/bin/sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, strconv.Itoa(cfg.NoFile), bin}, args...)...)
	}
	cmd.Dir = dir
	cmd.SysProcAttr = childProcAttr()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatalf("start popgate: %v", err)
	}
	pw.Close()
	exited := make(chan struct{})
	p.exited, p.process = exited, cmd.Process
	var exitErr error
	go func() {
		exitErr = cmd.Wait()
		close(exited)
	}()
	events := make(chan listenEvent, 16)
	logDone := make(chan struct{})
	go p.readLog(pr, events, logDone)

	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Errorf("popgate: SIGTERM: %v", err)
			}
			select {
			case <-exited:
				if exitErr != nil {
					t.Errorf("popgate exited with %v after SIGTERM, want a clean exit", exitErr)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("popgate (pid %d) still running 15s after SIGTERM (shutdown_timeout is 2s); killing it", cmd.Process.Pid)
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		<-logDone
		p.checkLog(t)
	})

	want := map[string]*string{"pop3s": &p.POP3SAddr, "pop3": &p.POP3Addr}
	if cfg.ProxyListener {
		want["pp"] = &p.PPAddr
	}
	if cfg.PlainListener {
		want["plain"] = &p.PlainAddr
	}
	deadline := time.After(30 * time.Second)
	for p.POP3SAddr == "" || p.POP3Addr == "" || cfg.ProxyListener && p.PPAddr == "" || cfg.PlainListener && p.PlainAddr == "" {
		select {
		case ev := <-events:
			if dst, ok := want[ev.Listener]; ok {
				if _, _, err := net.SplitHostPort(ev.Address); err != nil {
					t.Fatalf("popgate logged listener %q at address %q: %v\n%s", ev.Listener, ev.Address, err, p.log())
				}
				*dst = ev.Address
			}
		case <-exited:
			<-logDone
			t.Fatalf("popgate exited before listening: %v\nconfig:\n%s\noutput:\n%s", exitErr, readOr(conf), p.log())
		case <-deadline:
			t.Fatalf("popgate did not log both listeners as listening within 30s\noutput:\n%s", p.log())
		}
	}
	return p
}

// readLog copies popgate's output into p.stderr and reports every
// "listening" line on events, until EOF.
func (p *popgate) readLog(r io.ReadCloser, events chan<- listenEvent, done chan<- struct{}) {
	defer close(done)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		p.mu.Lock()
		p.stderr.Write(line)
		p.mu.Unlock()
		var ev listenEvent
		if json.Unmarshal(line, &ev) == nil && ev.Msg == "listening" {
			select {
			case events <- ev:
			default: // nobody waits any more
			}
		}
		if err != nil {
			return
		}
	}
}

// log returns what popgate has written so far, passwords redacted.
func (p *popgate) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return redact(p.stderr.String(), p.secrets...)
}

// checkLog fails t if popgate logged a password or (built with -race) a
// data race, and prints popgate's log when t failed.
func (p *popgate) checkLog(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	raw := p.stderr.String()
	p.mu.Unlock()
	for _, s := range p.secrets {
		if s != "" && strings.Contains(raw, s) {
			t.Errorf("popgate logged a password; no log line may carry one")
		}
	}
	if strings.Contains(raw, "WARNING: DATA RACE") {
		t.Errorf("popgate reported a data race")
	}
	if t.Failed() {
		t.Logf("popgate output:\n%s", tail(redact(raw, p.secrets...)))
	}
}

// popgateTOML renders the config file, keys as config.example.toml
// documents them.
func popgateTOML(cfg popgateConfig, certFile, keyFile, tokenFile string) string {
	f := conffile.File{
		Comment: "Generated by popgate's interop tests (interop/proxy_test.go).",
		Log:     conffile.Log{Level: cmp.Or(cfg.LogLevel, "debug"), Format: "json"},
		Listeners: []conffile.Listener{
			{Name: "pop3s", Address: cmp.Or(cfg.POP3SAddress, "127.0.0.1:0"), TLS: "implicit", OAuth: cfg.OAuth != nil},
			{Name: "pop3", Address: cmp.Or(cfg.POP3Address, "127.0.0.1:0"), TLS: "starttls", OAuth: cfg.OAuth != nil},
		},
		OAuth:    cfg.OAuth,
		Backends: cfg.Backends,
		Route:    conffile.Route{Default: cfg.Default, Users: cfg.Users, MapFile: cfg.MapFile, HTTPURL: cfg.HTTPURL, SQL: cfg.SQL, LDAP: cfg.LDAP},
		Limits:   []string{fmt.Sprintf("shutdown_timeout = %q", cmp.Or(cfg.ShutdownTimeout, "2s"))},
		// Several popgates run at once; none may take 127.0.0.1:9110.
		MetricsAddress:   new("127.0.0.1:0"),
		MetricsTokenFile: tokenFile,
	}
	if cfg.ProxyListener {
		f.Listeners = append(f.Listeners, conffile.Listener{Name: "pp", Address: "127.0.0.1:0", TLS: "none", ProxyProtocol: true})
		f.Limits = append(f.Limits, `trusted_proxies = ["127.0.0.0/8"]`)
	}
	if cfg.PlainListener {
		f.Listeners = append(f.Listeners, conffile.Listener{Name: "plain", Address: "127.0.0.1:0", TLS: "none"})
	}
	if cfg.ACME != "" {
		f.TLS = conffile.TLS{DefaultServerName: cfg.ACMEServerName, ACME: cfg.ACME}
	} else {
		f.TLS = conffile.TLS{DefaultServerName: popgateServerName, Certificates: []conffile.Certificate{{Cert: certFile, Key: keyFile}}}
	}
	if cfg.NoFailureLimits {
		f.Limits = append(f.Limits, `failure_delay = "0s"`, "max_failures_per_ip = 0", "max_failures_per_user = 0")
	}
	f.Limits = append(f.Limits, cfg.ExtraLimits...)
	return f.String() + cfg.Extra
}

// TestProxyFetch: curl, poplib and fetchmail, over implicit TLS and STLS to
// popgate, fetch byte for byte what Dovecot holds, whichever way popgate
// reaches Dovecot, including a 10 MiB message full of dot-stuffed lines.
func TestProxyFetch(t *testing.T) {
	requireInterop(t, "dovecot", "curl", "python3", "fetchmail")
	t.Parallel()
	d := startDovecot(t)
	want := [][]byte{
		testMessage(3<<10, "proxy-small"),
		testMessage(10<<20, "proxy-10MiB"),
	}
	for _, m := range want {
		d.addMessage(t, userAlice, m)
	}
	pass := d.Users[userAlice]
	for _, mode := range backendModes {
		t.Run(mode, func(t *testing.T) {
			pg := startPopgate(t, popgateConfig{Backends: dovecotBackends(d), Default: mode}, pass)
			_, sPort := splitHostPort(t, pg.POP3SAddr)
			_, pPort := splitHostPort(t, pg.POP3Addr)
			clients := []struct {
				name  string
				fetch func(t *testing.T) [][]byte
			}{
				{"go-raw-tls", func(t *testing.T) [][]byte {
					c := dialPOP3(t, pg.POP3SAddr, pg.ca.clientConfig(pg.ServerName))
					c.login(userAlice, pass)
					got := [][]byte{c.retr(1), c.retr(2)}
					if resp := c.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
						t.Errorf("QUIT: %q", resp)
					}
					return got
				}},
				{"curl-pop3s", func(t *testing.T) [][]byte {
					var got [][]byte
					for n := 1; n <= len(want); n++ {
						got = append(got, curlRetr(t, fmt.Sprintf("pop3s://%s:%s@%s:%d/%d", userAlice, pass, pg.ServerName, sPort, n),
							"--cacert", pg.CAFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", pg.ServerName, sPort)))
					}
					return got
				}},
				{"curl-pop3-ssl-reqd", func(t *testing.T) [][]byte {
					// An IP address in the URL: curl sends no SNI, popgate
					// answers with default_server_name's certificate, which
					// carries the IP SAN.
					var got [][]byte
					for n := 1; n <= len(want); n++ {
						got = append(got, curlRetr(t, fmt.Sprintf("pop3://%s:%s@127.0.0.1:%d/%d", userAlice, pass, pPort, n),
							"--ssl-reqd", "--cacert", pg.CAFile))
					}
					return got
				}},
				{"poplib-ssl", func(t *testing.T) [][]byte {
					return pythonPoplib(t, "ssl", pg.POP3SAddr, pg.CAFile, pg.ServerName, userAlice, pass)
				}},
				{"poplib-stls", func(t *testing.T) [][]byte {
					return pythonPoplib(t, "stls", pg.POP3Addr, pg.CAFile, pg.ServerName, userAlice, pass)
				}},
				{"fetchmail-ssl", func(t *testing.T) [][]byte {
					return fetchmailAll(t, "ssl", pg.POP3SAddr, pg.CAFile, pg.ServerName, userAlice, pass)
				}},
				{"fetchmail-stls", func(t *testing.T) [][]byte {
					return fetchmailAll(t, "stls", pg.POP3Addr, pg.CAFile, pg.ServerName, userAlice, pass)
				}},
			}
			t.Run("clients", func(t *testing.T) {
				for _, c := range clients {
					t.Run(c.name, func(t *testing.T) {
						t.Parallel()
						compareMessages(t, c.fetch(t), want)
					})
				}
			})
			checkMetrics(t, pg, mode)
		})
	}
	compareMessages(t, d.messages(t, userAlice), want)
}

// TestProxyDeleWithoutQuit: a client that sends DELE and vanishes without
// QUIT leaves the mailbox untouched; popgate must not QUIT on its behalf
// (RFC 1939 §6: only QUIT enters the UPDATE state).
func TestProxyDeleWithoutQuit(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	msg := testMessage(5<<10, "proxy-dele")
	d.addMessage(t, userBob, msg)
	pass := d.Users[userBob]
	for _, mode := range backendModes {
		t.Run(mode, func(t *testing.T) {
			pg := startPopgate(t, popgateConfig{Backends: dovecotBackends(d), Default: mode}, pass)
			before := sessionEnds(d.mainLog(t), userBob)
			c := dialPOP3(t, pg.POP3SAddr, pg.ca.clientConfig(pg.ServerName))
			c.login(userBob, pass)
			if got := c.retr(1); !bytes.Equal(got, msg) {
				t.Errorf("RETR 1 returned %d bytes, not the message (%d bytes)", len(got), len(msg))
			}
			if resp := c.cmd("DELE 1"); !strings.HasPrefix(resp, "+OK") {
				t.Fatalf("DELE 1: %q", resp)
			}
			c.drop()
			waitSessionEnd(t, d, d.mainLog, userBob, before)
			compareMessages(t, d.messages(t, userBob), [][]byte{msg})
		})
	}
}

// TestProxyBackendDown: a backend with nothing listening, reached in each of
// the three ways, gets the client "-ERR [SYS/TEMP]" (RFC 3206) for its login.
func TestProxyBackendDown(t *testing.T) {
	requireInterop(t)
	t.Parallel()
	users := testUsers()
	// Ports that were free a moment ago: nothing listens there.
	// The CA file only has to exist; no handshake gets that far.
	ca := newTestCA(t, t.TempDir(), "unused")
	down := func(name, tlsMode string) popgateBackend {
		b := popgateBackend{Name: name, Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), TLS: tlsMode}
		if tlsMode != "none" {
			b.ServerName, b.CAFile = dovecotServerName, ca.CAFile
		}
		return b
	}
	backends := []popgateBackend{down("down-plain", "none"), down("down-stls", "starttls"), down("down-tls", "implicit")}
	route := map[string]string{userAlice: "down-plain", userBob: "down-stls", userCarol: "down-tls"}
	var secrets []string
	for _, pw := range users {
		secrets = append(secrets, pw)
	}
	pg := startPopgate(t, popgateConfig{Backends: backends, Users: route}, secrets...)
	for _, user := range slices.Sorted(maps.Keys(route)) {
		for _, listener := range []string{"pop3s", "pop3"} {
			t.Run(route[user]+"/"+listener, func(t *testing.T) {
				t.Parallel() // each refusal waits out popgate's failure_delay
				c := dialPopgate(t, pg, listener)
				if resp := c.cmd("USER " + user); !strings.HasPrefix(resp, "+OK") {
					t.Fatalf("USER: %q", resp)
				}
				resp := c.cmd("PASS " + users[user])
				if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
					t.Errorf("PASS with backend %s down = %q, want -ERR [SYS/TEMP] ...", route[user], redact(resp, users[user]))
				}
				c.drop()
			})
		}
	}
}

// TestProxyBackendWithoutSTLS: a backend configured for STLS that does not
// offer it gets no login at all, neither USER/PASS nor AUTH, and no password
// in clear text: the client gets "-ERR [SYS/TEMP]" (a starttls backend gets
// STLS or no login; popgate never falls back to plaintext). A recording relay in front of Dovecot sees every byte
// popgate sends, and Dovecot's log shows no login for the user.
func TestProxyBackendWithoutSTLS(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	d.addMessage(t, userAlice, testMessage(1<<10, "notls"))
	pass := d.Users[userAlice]
	relay := startRecordingRelay(t, d.NoTLSAddr)
	pg := startPopgate(t, popgateConfig{
		Backends: []popgateBackend{{Name: "notls", Address: relay.Addr, TLS: "starttls", ServerName: d.ServerName, CAFile: d.CAFile}},
		Users:    map[string]string{userAlice: "notls"},
	}, pass)

	loginLine := regexp.MustCompile(`Login: user=<` + regexp.QuoteMeta(userAlice) + `>`)
	ends := func(log string) int { return strings.Count(log, "pop3-login: Info: Disconnected") }
	for _, listener := range []string{"pop3s", "pop3"} {
		t.Run(listener, func(t *testing.T) {
			before := ends(d.noTLSLog(t))
			c := dialPopgate(t, pg, listener)
			if resp := c.cmd("USER " + userAlice); !strings.HasPrefix(resp, "+OK") {
				t.Fatalf("USER: %q", resp)
			}
			resp := c.cmd("PASS " + pass)
			if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
				t.Errorf("PASS with a backend lacking STLS = %q, want -ERR [SYS/TEMP] ...", redact(resp, pass))
			}
			c.drop()
			// popgate reached Dovecot (CAPA or STLS) and hung up: wait for
			// Dovecot to log that connection's end before reading its log.
			d.waitLog(t, d.noTLSLog, "the end of popgate's connection", func(log string) bool { return ends(log) > before })
			if log := d.noTLSLog(t); loginLine.MatchString(log) {
				t.Errorf("Dovecot logged a plaintext login for %s:\n%s", userAlice, log)
			}
		})
	}
	sent := relay.sent()
	if bytes.Contains(sent, []byte(pass)) {
		t.Errorf("popgate sent the password to a backend without TLS")
	}
	for _, cmd := range []string{"USER", "PASS", "AUTH", "APOP"} {
		if regexp.MustCompile(`(?im)^` + cmd + `\b`).Match(sent) {
			t.Errorf("popgate sent %s to a backend that refused STLS; it sent:\n%s", cmd, redact(string(sent), pass))
		}
	}
}

// dialPopgate connects to popgate's listener "pop3s" (implicit TLS) or
// "pop3" (then STLS), verifying popgate's certificate.
func dialPopgate(t *testing.T, pg *popgate, listener string) *popConn {
	t.Helper()
	conf := pg.ca.clientConfig(pg.ServerName)
	switch listener {
	case "pop3s":
		return dialPOP3(t, pg.POP3SAddr, conf)
	case "pop3":
		c := dialPOP3(t, pg.POP3Addr, nil)
		c.stls(conf)
		return c
	}
	t.Fatalf("no listener %q", listener)
	return nil
}

// recordingRelay forwards TCP connections to a target and records the bytes
// its clients sent, to see exactly what popgate put on the wire.
type recordingRelay struct {
	Addr string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func startRecordingRelay(t *testing.T, target string) *recordingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingRelay{Addr: ln.Addr().String()}
	var (
		wg      sync.WaitGroup
		connsMu sync.Mutex
		conns   []net.Conn
		closed  bool
	)
	// track registers c for closing at cleanup; after cleanup it closes c
	// at once and says so.
	track := func(cs ...net.Conn) bool {
		connsMu.Lock()
		defer connsMu.Unlock()
		if closed {
			for _, c := range cs {
				c.Close()
			}
			return false
		}
		conns = append(conns, cs...)
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !track(c, up) {
				return
			}
			wg.Add(2)
			go func() { // client → target, recorded
				defer wg.Done()
				_, _ = io.Copy(io.MultiWriter(up, r), c)
				up.Close()
			}()
			go func() { // target → client
				defer wg.Done()
				_, _ = io.Copy(c, up)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return r
}

func (r *recordingRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

// sent returns a copy of everything the relay's clients have sent so far.
func (r *recordingRelay) sent() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}
