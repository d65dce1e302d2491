package interop

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// floodBackend starts a pop3test backend with one mailbox for user.
func floodBackend(t *testing.T, user, pass string) string {
	t.Helper()
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		user: {Password: pass, Messages: [][]byte{[]byte("Subject: hi\r\n\r\nhello\r\n")}},
	}}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	return addr.String()
}

// loginAs logs in through popgate's POP3S listener with SNI name, trusting
// only Pebble's root for name, and reads the mailbox.
func loginAs(t *testing.T, pg *popgate, pb *pebble, name, user, pass string) {
	t.Helper()
	c := dialPOP3(t, pg.POP3SAddr, &tls.Config{ServerName: name, RootCAs: pb.Roots})
	leaf := c.c.(*tls.Conn).ConnectionState().PeerCertificates[0]
	c.login(user, pass)
	if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK 1 ") {
		t.Errorf("STAT through popgate (SNI %s) = %q", name, resp)
	}
	c.cmd("QUIT")
	t.Logf("SNI %s: certificate %q serial %x issued by %q", name, leaf.DNSNames, leaf.SerialNumber, leaf.Issuer.CommonName)
}

// TestACMEPebbleTLSALPNFlood: Pebble validates a new name through
// TLS-ALPN-01 while an attacker holds 1,000 silent connections to the
// answerer from one address and 64 from each of 16 others (opening them
// again when popgate closes them): first on the separate answerer
// (tls_alpn_challenge), then on a POP3S listener that is the answerer
// itself (both challenge addresses off, port 443 forwarded to POP3S),
// where the validation's connection is closed after its handshake
// without a greeting.
func TestACMEPebbleTLSALPNFlood(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)

	const user, pass = "dave@customer.test", "acme-Flood-90b1"
	mapFile := filepath.Join(t.TempDir(), "routes")
	writeFile(t, mapFile, []byte("@customer.test mem\n"), 0o600)
	cache := filepath.Join(t.TempDir(), "acme-flood")
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: floodBackend(t, user, pass), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME:           pb.acmeTOML(cache, fmt.Sprintf("http_challenge = \"\"\ntls_alpn_challenge = %q\ndomains_from_routes = true", pb.TLSAddr)),
	}
	// 1. The separate answerer.
	pg := startPopgate(t, cfg, pass)
	pg.waitRecord(t, "acme certificate obtained") // acmeName, before the attack
	one := startFlood(t, pb.TLSAddr, 1000, []string{"127.0.0.18"})
	many := startFlood(t, pb.TLSAddr, 64, loopbacks(2, 16))
	const name1 = "pop.customer.test"
	loginAs(t, pg, pb, name1, user, pass) // the order, and Pebble's validation, happen here
	t.Logf("answerer: one address: %s; 16 addresses: %s", one.stop(), many.stop())
	answered := false
	for _, rec := range pg.records("acme tls-alpn-01 challenge answered") {
		answered = answered || rec["sni"] == name1
	}
	if !answered {
		t.Errorf("popgate logged no answered TLS-ALPN-01 challenge for %s", name1)
	}
	pg.stop(t)

	// 2. A POP3S listener as the answerer, on the port Pebble validates.
	cfg.POP3SAddress = pb.TLSAddr
	cfg.ACME = pb.acmeTOML(cache, "http_challenge = \"\"\ntls_alpn_challenge = \"\"\ndomains_from_routes = true")
	pg = startPopgate(t, cfg, pass)
	pg.waitRecord(t, "acme certificate ready") // acmeName, from the cache
	one = startFlood(t, pg.POP3SAddr, 1000, []string{"127.0.0.18"})
	many = startFlood(t, pg.POP3SAddr, 64, loopbacks(2, 16))
	const name2 = "mail.customer.test"
	loginAs(t, pg, pb, name2, user, pass)
	t.Logf("POP3S: one address: %s; 16 addresses: %s", one.stop(), many.stop())
	var validations int
	for _, rec := range pg.records("session end") {
		if rec["sni"] == name2 && rec["result"] == "acme_tls_alpn" {
			validations++
		}
	}
	if validations == 0 {
		t.Errorf("no session end with result acme_tls_alpn for %s: Pebble's validation through POP3S was not closed after its handshake", name2)
	}
	t.Logf("Pebble orders: %d, issued: %d", pb.orders(), pb.count("Issued certificate"))
	pg.stop(t)
}

// TestACMEPebbleHTTPFlood: with a file descriptor limit of 1,024, 1,100
// idle connections to the HTTP-01 answerer (11 from each of 100
// addresses, opened again when popgate closes them) leave POP3S logins
// working and Pebble validates a new name through HTTP-01 meanwhile;
// popgate never runs out of descriptors. Errors of the answerer are bare
// 404s that name no path.
func TestACMEPebbleHTTPFlood(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)

	const user, pass = "erin@customer.test", "acme-Fds-3c77"
	mapFile := filepath.Join(t.TempDir(), "routes")
	writeFile(t, mapFile, []byte("@customer.test mem\n"), 0o600)
	cache := filepath.Join(t.TempDir(), "acme-fds")
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: floodBackend(t, user, pass), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME:           pb.acmeTOML(cache, fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"\ndomains_from_routes = true", pb.HTTPAddr)),
		NoFile:         1024,
	}
	pg := startPopgate(t, cfg, pass)
	pg.waitRecord(t, "acme certificate obtained")

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"/.well-known/acme-challenge/a%00b", "/.well-known/acme-challenge/" + strings.Repeat("a", 300), "/.well-known/acme-challenge/unknown", "/"} {
		req, err := http.NewRequest(http.MethodGet, "http://"+pb.HTTPAddr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = acmeName
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %.60s: %v", path, err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusNotFound || len(body) > 0 {
			t.Errorf("GET %.60s from the HTTP-01 answerer = %s %q, %v; want a bare 404", path, resp.Status, body, err)
		}
		if strings.Contains(string(body), cache) {
			t.Errorf("GET %.60s: the answer names the cache directory", path)
		}
	}

	f := startFlood(t, pb.HTTPAddr, 11, loopbacks(2, 100))
	for range 3 {
		loginAs(t, pg, pb, acmeName, user, pass)
	}
	const name = "pop.customer.test"
	validations := pb.count("validate w/ HTTP")
	loginAs(t, pg, pb, name, user, pass) // the order, and Pebble's validation, happen here
	t.Logf("flood: %s; HTTP-01 validations during it: %d", f.stop(), pb.count("validate w/ HTTP")-validations)

	for line := range strings.Lines(pg.log()) {
		// An accept failed (the POP3 listeners', the answerers' or
		// net/http's line); the start-up WARN about max_connections
		// names the error too.
		if strings.Contains(line, "too many open files") && !strings.Contains(line, `"msg":"limits.max_connections is more`) {
			t.Errorf("popgate ran out of file descriptors during the flood: %.300s", line)
			break
		}
	}
	budget := pg.records("file descriptor budget")
	if len(budget) != 1 || budget[0]["limit"] != 1024.0 || budget[0]["acme_challenges"] != 224.0 {
		t.Errorf("file descriptor budget lines %v, want one with limit 1024 and acme_challenges 224", budget)
	}
	pg.stop(t)
}
