package interop

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// plantedUID stands for another local user: it owns nothing on the test
// machine.
const plantedUID = 54321

// plantCertificate writes, as autocert caches it (key, then chain), a
// certificate for name from a CA of the "attacker"'s own into cache/name,
// owned by plantedUID with mode 0644.
func plantCertificate(t *testing.T, cache, name string) string {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := newTestCA(t, dir, "planted").issue(t, dir, "planted", name)
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cache, name)
	writeFile(t, path, append(key, chain...), 0o644)
	if err := os.Chown(path, plantedUID, plantedUID); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestACMEPebbleCachePermissions: certificates another user plants in
// tls.acme.cache_dir are never served. A world-writable cache directory
// (holding a planted certificate for a routed name) makes popgate check and
// popgate run refuse to start, naming tls.acme.cache_dir and the fix, with
// no order placed. With the directory fixed, popgate obtains its
// certificate from Pebble; a certificate planted afterwards for a routed
// name fails that name's handshakes (naming the file) instead of being
// served, while another routed name gets Pebble's certificate. After a
// restart, a planted replacement of an already cached certificate makes
// popgate refuse to start.
func TestACMEPebbleCachePermissions(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user (scripts/test runs the interop tests as root)")
	}
	t.Parallel()
	pb := startPebble(t)

	const user, pass = "dave@customer.test", "acme-Cache-9d41"
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
	cache := filepath.Join(t.TempDir(), "acme")
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: addr.String(), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME: pb.acmeTOML(cache,
			fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"\ndomains_from_routes = true", pb.HTTPAddr)),
	}
	conf := filepath.Join(t.TempDir(), "popgate.toml")
	writeFile(t, conf, []byte(popgateTOML(cfg, "", "", "")), 0o600)

	// refused runs `popgate CMD` and wants it to fail at once, naming
	// tls.acme.cache_dir and each of want.
	refused := func(cmd string, want ...string) {
		t.Helper()
		// A guard only: run would serve until then if it did not refuse.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		c := exec.CommandContext(ctx, popgateBinary(t), cmd, "-config", conf)
		c.SysProcAttr = childProcAttr()
		out, err := c.CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("popgate %s: %v, want a refusal to start; output:\n%s", cmd, err, tail(string(out)))
		}
		for _, w := range append([]string{"tls.acme.cache_dir: "}, want...) {
			if !strings.Contains(string(out), w) {
				t.Errorf("popgate %s output does not mention %q:\n%s", cmd, w, tail(string(out)))
			}
		}
	}

	// 1. A world-writable cache directory, a certificate for a routed
	// name planted in it.
	if err := os.Mkdir(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cache, 0o777); err != nil {
		t.Fatal(err)
	}
	planted := plantCertificate(t, cache, customerName)
	for _, cmd := range []string{"check", "run"} {
		refused(cmd, "writable by its group or others (mode 0777)", "fix: chmod go-w "+cache, "insecure_cache_permissions")
	}
	// The directory fixed, the planted file still there.
	if err := os.Chmod(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	refused("run", planted, fmt.Sprintf("owned by uid %d", plantedUID), "fix: chown 0 "+planted)
	if n := pb.orders(); n != 0 {
		t.Errorf("Pebble got %d orders from a popgate that refused to start", n)
	}

	// 2. A clean cache: popgate starts and obtains acmeName's certificate.
	if err := os.Remove(planted); err != nil {
		t.Fatal(err)
	}
	pg := startPopgate(t, cfg, pass)
	pg.waitRecord(t, "acme certificate obtained")
	if n := pb.orders(); n != 1 {
		t.Fatalf("after start: Pebble has %d orders, want 1 (%s)", n, acmeName)
	}

	// A certificate planted after start for the routed name: the
	// handshake fails, the planted certificate is not served, nothing is
	// ordered.
	planted = plantCertificate(t, cache, customerName)
	conn, err := tls.Dial("tcp", pg.POP3SAddr, &tls.Config{ServerName: customerName, InsecureSkipVerify: true})
	if err == nil {
		leaf := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		t.Fatalf("handshake for %s with a planted cache entry served %q issued by %q, want a failed handshake",
			customerName, leaf.DNSNames, leaf.Issuer.CommonName)
	}
	logged := func() bool {
		for _, rec := range pg.records("acme certificate unavailable") {
			e, _ := rec["err"].(string)
			if rec["name"] == customerName && strings.Contains(e, planted) && strings.Contains(e, "not private") {
				return true
			}
		}
		return false
	}
	// The log is read from popgate's stderr as it comes.
	for deadline := time.Now().Add(30 * time.Second); !logged(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"acme certificate unavailable\" line for %s naming %s:\n%s", customerName, planted, tail(pg.log()))
		}
	}
	if n := pb.orders(); n != 1 {
		t.Errorf("after the refused handshake: Pebble has %d orders, want still 1", n)
	}

	// The other routed name, with nothing planted, gets Pebble's
	// certificate through the same cache. (The planted name itself waits
	// out the on-demand back-off after its failure, 10 minutes.)
	const otherName = "mail.customer.test"
	c := dialPOP3(t, pg.POP3SAddr, &tls.Config{ServerName: otherName, RootCAs: pb.Roots})
	leaf := c.c.(*tls.Conn).ConnectionState().PeerCertificates[0]
	c.login(user, pass)
	if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK 1 ") {
		t.Errorf("STAT = %q", resp)
	}
	c.cmd("QUIT")
	if n := pb.orders(); n != 2 {
		t.Errorf("after a handshake for %s: Pebble has %d orders, want 2", otherName, n)
	}
	t.Logf("%s: serial %x issued by %q; Pebble orders: %d", otherName, leaf.SerialNumber, leaf.Issuer.CommonName, pb.orders())
	pg.stop(t)
	if err := os.Remove(planted); err != nil {
		t.Fatal(err)
	}

	// 3. After a restart: a planted replacement for the cached acmeName
	// certificate.
	planted = plantCertificate(t, cache, acmeName)
	refused("run", planted, fmt.Sprintf("owned by uid %d", plantedUID))
	refused("check", planted)
}
