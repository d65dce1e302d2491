package interop

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// acmeName is the name popgate obtains certificates for from Pebble;
// pebble-challtestsrv, Pebble's DNS, resolves every name to 127.0.0.1.
const acmeName = "pop.acme.test"

// pebble is a running Pebble ACME server with pebble-challtestsrv as its DNS.
type pebble struct {
	DirectoryURL string         // the ACME directory
	CAFile       string         // trust for Pebble's HTTPS endpoints (our own CA)
	Roots        *x509.CertPool // Pebble's issuing root, from its management API
	HTTPAddr     string         // where Pebble validates HTTP-01 (127.0.0.1:httpPort)
	TLSAddr      string         // where Pebble validates TLS-ALPN-01 (127.0.0.1:tlsPort)
	// DNSAddr is pebble-challtestsrv's management address (mock DNS
	// records: /add-a).
	DNSAddr string

	log  *procLog
	stop func() // stops Pebble (not its DNS), by PID; t's cleanup does it too
}

// procLog collects a child process's output.
type procLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startDaemon starts bin with args and env, waits until its output contains
// ready, and stops it (SIGTERM, then SIGKILL, by PID) when t ends or when
// the returned function is called, whichever comes first.
func startDaemon(t *testing.T, bin string, args, env []string, ready string) (*procLog, func()) {
	t.Helper()
	path, err := lookBinary(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := &procLog{}
	cmd := exec.Command(path, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = childProcAttr()
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := sync.OnceFunc(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", bin, tail(out.String()))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), ready) {
		select {
		case <-exited:
			t.Fatalf("%s exited before it was ready:\n%s", bin, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready (%q) within 30s:\n%s", bin, ready, out.String())
		}
	}
	return out, stop
}

// startPebble starts pebble-challtestsrv (DNS only, every name is
// 127.0.0.1, no AAAA) and Pebble with real validation: no always-valid
// shortcut, no authorization reuse, no random sleeps or bad nonces.
func startPebble(t *testing.T) *pebble {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "pebble-https")
	certFile, keyFile := ca.issue(t, dir, "pebble", "localhost")
	dnsAddr, dnsMgmt := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startDaemon(t, "pebble-challtestsrv", []string{
		"-dns01", dnsAddr, "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", dnsMgmt, "-defaultIPv6", "",
	}, nil, "Starting management server")

	acmePort, mgmtPort, httpPort, tlsPort := freePort(t), freePort(t), freePort(t), freePort(t)
	conf, err := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}})
	if err != nil {
		t.Fatal(err)
	}
	confFile := filepath.Join(dir, "pebble-config.json")
	writeFile(t, confFile, conf, 0o600)
	log, stop := startDaemon(t, "pebble", []string{"-config", confFile, "-dnsserver", dnsAddr},
		[]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		"ACME directory available")
	pb := &pebble{
		DirectoryURL: fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort),
		CAFile:       ca.CAFile,
		HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", httpPort),
		TLSAddr:      fmt.Sprintf("127.0.0.1:%d", tlsPort),
		DNSAddr:      dnsMgmt,
		log:          log,
		stop:         stop,
	}

	// The root is made afresh at every start; only its management API has it.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	// Pebble logs its readiness before the management listener has
	// bound (they start in their own goroutines): retry for a while.
	var resp *http.Response
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err = client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("fetch Pebble's root: %v", err)
	}
	defer resp.Body.Close()
	rootPEM, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch Pebble's root: %s, %v", resp.Status, err)
	}
	pb.Roots = x509.NewCertPool()
	if !pb.Roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("Pebble's /roots/0 holds no certificate:\n%s", rootPEM)
	}
	if b, _ := pem.Decode(rootPEM); b != nil {
		if root, err := x509.ParseCertificate(b.Bytes); err == nil {
			t.Logf("Pebble root: %s", root.Subject)
		}
	}
	return pb
}

// count returns how many lines of Pebble's log contain s.
func (pb *pebble) count(s string) int { return strings.Count(pb.log.String(), s) }

// orders is the number of orders placed with Pebble so far.
func (pb *pebble) orders() int { return pb.count("Added order") }

// acmeTOML is the body of [tls.acme] for Pebble.
func (pb *pebble) acmeTOML(cacheDir, challenges string) string {
	return fmt.Sprintf("domains = [%q]\nemail = \"postmaster@acme.test\"\ncache_dir = %q\ndirectory_url = %q\nca_file = %q\n%s",
		acmeName, cacheDir, pb.DirectoryURL, pb.CAFile, challenges)
}

// stop ends popgate with SIGTERM (by PID) and waits for it.
func (p *popgate) stop(t *testing.T) {
	t.Helper()
	if err := p.process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("popgate: SIGTERM: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("popgate did not stop within 15s of SIGTERM\n%s", p.log())
	}
}

// waitRecord waits for popgate to log a JSON line with msg and returns it.
func (p *popgate) waitRecord(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if recs := p.records(msg); len(recs) > 0 {
			return recs[0]
		}
		if strings.Contains(p.log(), `"msg":"acme order failed"`) || time.Now().After(deadline) {
			t.Fatalf("popgate did not log %q\n%s", msg, tail(p.log()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// records returns popgate's JSON log lines whose msg is msg.
func (p *popgate) records(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.log()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// verifyPebble returns a client config that trusts only Pebble's root and
// checks the certificate for acmeName even when sni is "" (no SNI sent).
func verifyPebble(pb *pebble, sni string) *tls.Config {
	return &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // verified below, for acmeName whatever the SNI
		VerifyConnection: func(cs tls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: acmeName, Roots: pb.Roots, Intermediates: inter,
			})
			return err
		},
	}
}

// loginThroughACME logs in through popgate's POP3S listener (with SNI and
// without) and its STLS listener, each trusting only Pebble's root, and
// returns the leaf popgate served; all three must be the same.
func loginThroughACME(t *testing.T, pg *popgate, pb *pebble, user, pass string) *x509.Certificate {
	t.Helper()
	var leaves []*x509.Certificate
	for _, how := range []string{"pop3s", "pop3s without SNI", "pop3 STLS"} {
		var c *popConn
		switch how {
		case "pop3s":
			c = dialPOP3(t, pg.POP3SAddr, verifyPebble(pb, acmeName))
		case "pop3s without SNI":
			c = dialPOP3(t, pg.POP3SAddr, verifyPebble(pb, ""))
		case "pop3 STLS":
			c = dialPOP3(t, pg.POP3Addr, nil)
			c.stls(verifyPebble(pb, acmeName))
		}
		st := c.c.(*tls.Conn).ConnectionState()
		c.login(user, pass)
		if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK 1 ") {
			t.Errorf("%s: STAT after login through popgate = %q", how, resp)
		}
		if resp := c.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
			t.Errorf("%s: QUIT = %q", how, resp)
		}
		leaf := st.PeerCertificates[0]
		t.Logf("%s: TLS %x, certificate %q serial %x issued by %q", how, st.Version, leaf.DNSNames, leaf.SerialNumber, leaf.Issuer.CommonName)
		if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
			t.Errorf("%s: certificate issued by %q, want Pebble", how, leaf.Issuer)
		}
		leaves = append(leaves, leaf)
	}
	for i, l := range leaves[1:] {
		if !l.Equal(leaves[0]) {
			t.Errorf("listener/handshake %d served serial %x, pop3s served %x: want the same certificate", i+1, l.SerialNumber, leaves[0].SerialNumber)
		}
	}
	return leaves[0]
}

// TestACMEPebble: popgate obtains its certificate from Pebble through
// HTTP-01, serves it on POP3S and STLS (and without SNI), reuses the cache
// after a restart without a new order, and in a second setup obtains one
// through TLS-ALPN-01. Validation is real: Pebble resolves acmeName through
// pebble-challtestsrv to 127.0.0.1 and connects to popgate's answerers.
func TestACMEPebble(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)

	const user, pass = "alice", "acme-Pass-71e3"
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		user: {Password: pass, Messages: [][]byte{[]byte("Subject: hi\r\n\r\nhello\r\n")}},
	}}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: addr.String(), TLS: "none"}},
		Default:        "mem",
		ACMEServerName: acmeName,
	}
	serial := func(rec map[string]any) string { s, _ := rec["serial"].(string); return s }

	// 1. HTTP-01 only.
	cache := filepath.Join(t.TempDir(), "acme-http")
	cfg.ACME = pb.acmeTOML(cache, fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"", pb.HTTPAddr))
	pg := startPopgate(t, cfg, pass)
	obtained := pg.waitRecord(t, "acme certificate obtained")
	leaf := loginThroughACME(t, pg, pb, user, pass)
	if got := leaf.SerialNumber.Text(16); got != serial(obtained) {
		t.Errorf("served serial %s, logged %s", got, serial(obtained))
	}
	if n := pb.orders(); n != 1 {
		t.Errorf("HTTP-01 run: Pebble got %d orders, want 1", n)
	}
	if pb.count("validate w/ HTTP") == 0 || pb.count("TLS-ALPN") > 0 || pb.count("tls-alpn") > 0 {
		t.Errorf("HTTP-01 run: want HTTP-01 validations only in Pebble's log")
	}
	if fi, err := os.Stat(cache); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache_dir: %v, %v; want mode 0700", fi, err)
	}
	t.Logf("HTTP-01: obtained serial %s from %v; Pebble orders: %d, issued: %d", serial(obtained), obtained["issuer"], pb.orders(), pb.count("Issued certificate"))
	pg.stop(t)

	// 2. Restart with the same cache: the same certificate, no new order.
	pg = startPopgate(t, cfg, pass)
	ready := pg.waitRecord(t, "acme certificate ready")
	if serial(ready) != serial(obtained) {
		t.Errorf("after restart popgate has serial %s, want the cached %s", serial(ready), serial(obtained))
	}
	if again := loginThroughACME(t, pg, pb, user, pass); !again.Equal(leaf) {
		t.Errorf("after restart popgate serves serial %x, want the cached %x", again.SerialNumber, leaf.SerialNumber)
	}
	if n := pb.orders(); n != 1 {
		t.Errorf("restart with a filled cache: Pebble has %d orders, want still 1", n)
	}
	if recs := pg.records("acme certificate obtained"); len(recs) != 0 {
		t.Errorf("restart with a filled cache logged %d obtained certificates", len(recs))
	}
	pg.stop(t)

	// 3. TLS-ALPN-01 only, a fresh cache (a new account, a new order).
	validationsHTTP := pb.count("validate w/ HTTP")
	cfg.ACME = pb.acmeTOML(filepath.Join(t.TempDir(), "acme-alpn"), fmt.Sprintf("http_challenge = \"\"\ntls_alpn_challenge = %q", pb.TLSAddr))
	pg = startPopgate(t, cfg, pass)
	obtained2 := pg.waitRecord(t, "acme certificate obtained")
	leaf2 := loginThroughACME(t, pg, pb, user, pass)
	if leaf2.Equal(leaf) || serial(obtained2) != leaf2.SerialNumber.Text(16) {
		t.Errorf("TLS-ALPN-01 run served serial %x (logged %s), want a new certificate", leaf2.SerialNumber, serial(obtained2))
	}
	if n := pb.orders(); n != 2 {
		t.Errorf("TLS-ALPN-01 run: Pebble has %d orders, want 2", n)
	}
	// Pebble logs HTTP-01 attempts but not TLS-ALPN-01 ones; popgate's
	// answerer logs each challenge handshake it completed (at debug).
	answered := pg.records("acme tls-alpn-01 challenge answered")
	if pb.count("validate w/ HTTP") != validationsHTTP || len(answered) == 0 {
		t.Errorf("TLS-ALPN-01 run: %d new HTTP-01 validations in Pebble's log, %d TLS-ALPN-01 challenges answered by popgate; want 0 and some",
			pb.count("validate w/ HTTP")-validationsHTTP, len(answered))
	}
	t.Logf("TLS-ALPN-01: obtained serial %s from %v (%d challenge handshakes answered); Pebble orders: %d, issued: %d",
		serial(obtained2), obtained2["issuer"], len(answered), pb.orders(), pb.count("Issued certificate"))
	pg.stop(t)
}

// TestACMEPebbleRoutes: with tls.acme.domains_from_routes, a name made of a
// domain found only in the map file (pop.customer.test) gets a certificate
// from Pebble (real HTTP-01 validation) on the first handshake with that
// SNI, with no per-name configuration; later handshakes reuse it, and a
// name under an unrouted domain gets the default certificate and places no
// order.
func TestACMEPebbleRoutes(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)

	const user, pass = "carol@customer.test", "acme-Routes-5c2a"
	const customerName = "pop.customer.test"
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		user: {Password: pass, Messages: [][]byte{[]byte("Subject: hi\r\n\r\nhello\r\n")}},
	}}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	mapFile := filepath.Join(t.TempDir(), "routes")
	writeFile(t, mapFile, []byte("@customer.test mem\n"), 0o600)
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: addr.String(), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME: pb.acmeTOML(filepath.Join(t.TempDir(), "acme-routes"),
			fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"\ndomains_from_routes = true", pb.HTTPAddr)),
	}
	pg := startPopgate(t, cfg, pass)
	pg.waitRecord(t, "acme certificate obtained") // acmeName, prefetched
	if n := pb.orders(); n != 1 {
		t.Fatalf("after start: Pebble has %d orders, want 1 (%s)", n, acmeName)
	}

	verify := func(name string) *tls.Config {
		return &tls.Config{ServerName: name, RootCAs: pb.Roots}
	}
	var serials []string
	for i := range 2 {
		c := dialPOP3(t, pg.POP3SAddr, verify(customerName)) // verifies for customerName against Pebble's root
		leaf := c.c.(*tls.Conn).ConnectionState().PeerCertificates[0]
		c.login(user, pass)
		if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK 1 ") {
			t.Errorf("handshake %d: STAT = %q", i+1, resp)
		}
		c.cmd("QUIT")
		t.Logf("handshake %d with SNI %s: certificate %q serial %x issued by %q", i+1, customerName, leaf.DNSNames, leaf.SerialNumber, leaf.Issuer.CommonName)
		serials = append(serials, leaf.SerialNumber.Text(16))
	}
	if serials[0] != serials[1] {
		t.Errorf("second handshake served serial %s, first %s: want the same certificate", serials[1], serials[0])
	}
	if n := pb.orders(); n != 2 {
		t.Errorf("after two handshakes for %s: Pebble has %d orders, want 2", customerName, n)
	}
	obtained := pg.records("acme certificate obtained")
	if len(obtained) != 2 || obtained[1]["name"] != customerName {
		t.Errorf("popgate logged %d obtained certificates (%v), want the second for %s", len(obtained), obtained, customerName)
	}

	// A name under a domain the routing table does not have: the default
	// certificate, no order.
	conn, err := tls.Dial("tcp", pg.POP3SAddr, &tls.Config{ServerName: "pop.unrouted.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("handshake for pop.unrouted.test: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeName {
		t.Errorf("pop.unrouted.test served %q, want the default %s", leaf.DNSNames, acmeName)
	}
	if n := pb.orders(); n != 2 {
		t.Errorf("after a handshake for an unrouted name: Pebble has %d orders, want still 2", n)
	}
	t.Logf("routes: Pebble orders: %d, issued: %d, HTTP-01 validations: %d", pb.orders(), pb.count("Issued certificate"), pb.count("validate w/ HTTP"))
	pg.stop(t)
}
