package interop

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// On-demand names of these tests live under customer.test, routed by a map
// file; pebble-challtestsrv resolves them to 127.0.0.1 unless a test says
// otherwise.
const (
	orderUser = "dave@customer.test"
	orderPass = "acme-Orders-9d41"
)

// startOnDemand starts popgate with acmeName (prefetched at start) and
// domains_from_routes over a map file that routes customer.test and
// domains to an in-memory backend; extra is appended to [tls.acme]. It
// waits for acmeName's certificate.
func startOnDemand(t *testing.T, pb *pebble, extra string, domains ...string) *popgate {
	t.Helper()
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{
		orderUser: {Password: orderPass, Messages: [][]byte{[]byte("Subject: hi\r\n\r\nhello\r\n")}},
	}}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	routes := "@customer.test mem\n"
	for _, d := range domains {
		routes += "@" + d + " mem\n"
	}
	mapFile := filepath.Join(t.TempDir(), "routes")
	writeFile(t, mapFile, []byte(routes), 0o600)
	cfg := popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: addr.String(), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME: pb.acmeTOML(filepath.Join(t.TempDir(), "acme-orders"),
			fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"\ndomains_from_routes = true\n%s", pb.HTTPAddr, extra)),
	}
	pg := startPopgate(t, cfg, orderPass)
	pg.waitRecord(t, "acme certificate ready")
	return pg
}

// rsaOnly is a client that can use only an RSA certificate: TLS 1.2 with
// ECDHE-RSA suites, as the reproduction.
func rsaOnly(pb *pebble, sni string) *tls.Config {
	return &tls.Config{ServerName: sni, RootCAs: pb.Roots, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}}
}

// tlsLeaf completes a handshake with popgate's POP3S listener and returns
// the leaf it served.
func tlsLeaf(pg *popgate, cfg *tls.Config) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", pg.POP3SAddr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// waitRecords waits until popgate has logged n lines with msg and returns
// them.
func (p *popgate) waitRecords(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		recs := p.records(msg)
		if len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("popgate logged %d %q lines, want %d\n%s", len(recs), msg, n, tail(p.log()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestACMEPebbleFailedRSAOrder (issue item 1): an on-demand name has an
// ECDSA certificate from Pebble; Pebble stops; an RSA-only client starts an
// RSA order, which fails. That client gets a handshake failure, every
// ECDSA client keeps getting (and logging in with) the cached certificate,
// the RSA order is not retried within the back-off, and the failure is
// logged once, with the key type.
func TestACMEPebbleFailedRSAOrder(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	pg := startOnDemand(t, pb, "")
	const name = "pop.customer.test"
	ecdsa := &tls.Config{ServerName: name, RootCAs: pb.Roots}

	first, err := tlsLeaf(pg, ecdsa)
	if err != nil {
		t.Fatalf("first handshake for %s: %v", name, err)
	}
	if first.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("%s: first certificate has a %v key, want ECDSA", name, first.PublicKeyAlgorithm)
	}
	orders := pb.orders()
	pb.stop()

	if _, err := tlsLeaf(pg, rsaOnly(pb, name)); err == nil {
		t.Fatal("RSA-only handshake succeeded with the CA stopped")
	} else {
		t.Logf("RSA-only client with the CA stopped: %v", err)
	}
	for i := range 3 {
		c := dialPOP3(t, pg.POP3SAddr, ecdsa)
		leaf := c.c.(*tls.Conn).ConnectionState().PeerCertificates[0]
		c.login(orderUser, orderPass)
		c.cmd("QUIT")
		if !leaf.Equal(first) {
			t.Errorf("ECDSA client %d after the failed RSA order got serial %x, want the cached %x", i+1, leaf.SerialNumber, first.SerialNumber)
		}
	}
	if _, err := tlsLeaf(pg, rsaOnly(pb, name)); err == nil {
		t.Error("second RSA-only handshake succeeded")
	}
	// Six connections; once their session end lines are there, every
	// line logged before them is too.
	var tlsErrors int
	for _, e := range pg.waitRecords(t, "session end", 6) {
		if e["result"] != "tls_error" {
			continue
		}
		tlsErrors++
		if msg, _ := e["err"].(string); !strings.Contains(msg, "RSA certificate") {
			t.Errorf("RSA-only session ended with %q, want an error naming the missing RSA certificate", msg)
		}
	}
	if tlsErrors != 2 {
		t.Errorf("%d sessions ended in a TLS error, want the 2 RSA-only ones", tlsErrors)
	}
	failed := pg.records("acme order failed")
	if len(failed) != 1 || failed[0]["key_type"] != "rsa" || failed[0]["name"] != name {
		t.Fatalf("acme order failed lines: %v, want one for %s with key_type rsa", failed, name)
	}
	t.Logf("failed RSA order: %v", failed[0]["err"])
	m := pg.scrape(t)
	for series, want := range map[string]float64{
		`popgate_acme_orders_total{key_type="rsa",result="failed"}`:   1,
		`popgate_acme_orders_total{key_type="ecdsa",result="issued"}`: 2, // acmeName and name
		`popgate_acme_orders_withheld_total{reason="backoff"}`:        1,
	} {
		if got := m[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if n := pb.orders(); n != orders {
		t.Errorf("Pebble has %d orders, want %d (it was stopped)", n, orders)
	}
}

// pointName makes pebble-challtestsrv answer A queries for name with ip,
// so that Pebble validates it there.
func (pb *pebble) pointName(t *testing.T, name, ip string) {
	t.Helper()
	body := fmt.Sprintf(`{"host":%q,"addresses":[%q]}`, name, ip)
	resp, err := http.Post("http://"+pb.DNSAddr+"/add-a", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble-challtestsrv /add-a %s: %s", name, resp.Status)
	}
}

// TestACMEPebbleFailedValidation (issue item 7): a routed name whose DNS
// does not point at popgate (Pebble's HTTP-01 validation finds nothing at
// 127.0.0.2) costs one order, not two, however many handshakes wait for
// it; popgate logs one ERROR with the CA's reason (not "no viable
// challenge type found"), and the handshakes fail with it.
func TestACMEPebbleFailedValidation(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	const name = "pop.broken.test"
	pb.pointName(t, name, "127.0.0.2")
	pg := startOnDemand(t, pb, "", "broken.test")
	orders, validations := pb.orders(), pb.count("validate w/ HTTP")

	const clients = 4
	errs := make(chan error, clients)
	for range clients {
		go func() {
			_, err := tlsLeaf(pg, &tls.Config{ServerName: name, RootCAs: pb.Roots})
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err == nil {
			t.Error("a handshake succeeded although the validation fails")
		}
	}
	if n := pb.orders() - orders; n != 1 {
		t.Errorf("Pebble got %d orders for %s, want 1", n, name)
	}
	ends := pg.waitRecords(t, "session end", clients)
	failed := pg.records("acme order failed")
	if len(failed) != 1 {
		t.Fatalf("%d acme order failed lines, want 1: %v", len(failed), failed)
	}
	msg, _ := failed[0]["err"].(string)
	if failed[0]["key_type"] != "ecdsa" || !strings.Contains(msg, "validation failed: http-01") || strings.Contains(msg, "no viable challenge") {
		t.Errorf("acme order failed: %v, want key_type ecdsa and the validation error", failed[0])
	}
	for _, e := range ends {
		if m, _ := e["err"].(string); !strings.Contains(m, "validation failed") && !strings.Contains(m, "no new order before") {
			t.Errorf("session end err %q, want the validation failure", m)
		}
	}
	t.Logf("failed order: %s (Pebble: %d new HTTP-01 validations)", msg, pb.count("validate w/ HTTP")-validations)
}

// TestACMEPebbleOrderBudget (issue item 3): a client sending ClientHellos
// for 20 routed names at once places no more orders than the budget leaves
// to on-demand names; the other handshakes fail without an order, the
// exhaustion is logged once, and the reserve still serves a configured
// domain (here its RSA certificate, for an RSA-only client).
func TestACMEPebbleOrderBudget(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	var domains []string
	for i := range 20 {
		domains = append(domains, fmt.Sprintf("d%d.test", i))
	}
	// 6 orders; acmeName takes one at start; on-demand names leave 2.
	pg := startOnDemand(t, pb, "order_budget = 6\norder_budget_reserve = 2\n", domains...)
	if n := pb.orders(); n != 1 {
		t.Fatalf("Pebble has %d orders after start, want 1", n)
	}

	errs := make(chan error, len(domains))
	for _, d := range domains {
		go func() {
			_, err := tlsLeaf(pg, &tls.Config{ServerName: "pop." + d, RootCAs: pb.Roots})
			errs <- err
		}()
	}
	var ok int
	for range domains {
		if err := <-errs; err == nil {
			ok++
		}
	}
	if n := pb.orders(); ok != 3 || n != 4 {
		t.Errorf("20 on-demand names: %d handshakes served, Pebble has %d orders; want 3 and 4", ok, n)
	}
	ends := pg.waitRecords(t, "session end", len(domains))
	var refused int
	for _, e := range ends {
		if m, _ := e["err"].(string); strings.Contains(m, "order budget is used up") {
			refused++
		}
	}
	if refused != 17 {
		t.Errorf("%d handshakes refused for the budget, want 17", refused)
	}
	if n := len(pg.records("acme order budget used up; new orders wait until it refills")); n != 1 {
		t.Errorf("budget exhaustion logged %d times, want once", n)
	}

	// The reserve: a configured domain's RSA certificate.
	leaf, err := tlsLeaf(pg, rsaOnly(pb, acmeName))
	if err != nil || leaf.PublicKeyAlgorithm != x509.RSA {
		t.Fatalf("RSA-only client of %s with only the reserve left: %v, %v", acmeName, leaf, err)
	}
	if n := pb.orders(); n != 5 {
		t.Errorf("Pebble has %d orders, want 5", n)
	}
	t.Logf("orders: %d; served %d of 20 on-demand names", pb.orders(), ok)

	m := pg.scrape(t)
	for series, want := range map[string]float64{
		`popgate_acme_orders_total{key_type="ecdsa",result="issued"}`: 4,
		`popgate_acme_orders_total{key_type="rsa",result="issued"}`:   1,
		`popgate_acme_orders_total{key_type="ecdsa",result="failed"}`: 0,
		`popgate_acme_orders_withheld_total{reason="budget"}`:         17,
		`popgate_acme_order_budget_remaining`:                         1,
	} {
		if got, present := m[series]; !present || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, present, want)
		}
	}
}

// TestACMEPebbleApprovalHook (issue item 3): with tls.acme.ask_url,
// popgate asks the provider's system before each on-demand order; only
// the names it allows are ordered from Pebble, the others' handshakes fail
// without an order, and a hook that stops answering refuses (fail closed).
// Certificates popgate has are served without asking.
func TestACMEPebbleApprovalHook(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	var mu sync.Mutex
	var asked []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("domain")
		mu.Lock()
		asked = append(asked, name)
		mu.Unlock()
		if r.URL.Query().Get("key") != "hook-token-7c1e" || r.Header.Get("Authorization") != "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if name == "pop.allowed.test" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, "not a customer", http.StatusNotFound)
	}))
	defer hook.Close()
	pg := startOnDemand(t, pb, fmt.Sprintf("ask_url = %q\n", hook.URL+"/may-order?key=hook-token-7c1e"), "allowed.test", "denied.test", "other.test", "new.test")
	orders := pb.orders()

	for _, name := range []string{"pop.denied.test", "pop.other.test", "pop.denied.test"} {
		if _, err := tlsLeaf(pg, &tls.Config{ServerName: name, RootCAs: pb.Roots}); err == nil {
			t.Errorf("%s: handshake succeeded although the hook refuses it", name)
		}
	}
	leaf, err := tlsLeaf(pg, &tls.Config{ServerName: "pop.allowed.test", RootCAs: pb.Roots})
	if err != nil {
		t.Fatalf("pop.allowed.test: %v", err)
	}
	if n := pb.orders() - orders; n != 1 {
		t.Errorf("Pebble got %d orders, want 1 (the allowed name)", n)
	}
	mu.Lock()
	got := slices.Clone(asked)
	mu.Unlock()
	if !slices.Equal(got, []string{"pop.denied.test", "pop.other.test", "pop.allowed.test"}) {
		t.Errorf("hook asked about %q, want each on-demand name once (answers cached)", got)
	}

	// The hook goes away: names popgate has are served, new ones refused.
	hook.Close()
	if again, err := tlsLeaf(pg, &tls.Config{ServerName: "pop.allowed.test", RootCAs: pb.Roots}); err != nil || !again.Equal(leaf) {
		t.Errorf("pop.allowed.test with the hook down: %v, want its certificate", err)
	}
	if _, err := tlsLeaf(pg, &tls.Config{ServerName: "pop.new.test", RootCAs: pb.Roots}); err == nil {
		t.Error("pop.new.test: handshake succeeded with the hook down")
	}
	ends := pg.waitRecords(t, "session end", 6)
	var denied int
	for _, e := range ends {
		if m, _ := e["err"].(string); strings.Contains(m, "approval hook refused the order (HTTP 404)") {
			denied++
		}
	}
	if denied != 3 {
		t.Errorf("%d handshakes refused by the hook, want 3", denied)
	}
	m := pg.scrape(t)
	if got := m[`popgate_acme_orders_withheld_total{reason="denied"}`]; got != 3 {
		t.Errorf("withheld denied = %v, want 3", got)
	}
	if got := m[`popgate_acme_orders_withheld_total{reason="ask_failed"}`]; got != 1 {
		t.Errorf("withheld ask_failed = %v, want 1 (pop.new.test)", got)
	}
	if n := len(pg.records("acme approval hook failed; orders for on-demand names are refused until it answers")); n != 1 {
		t.Errorf("hook failure logged %d times, want once", n)
	}
	if strings.Contains(pg.log(), "hook-token-7c1e") {
		t.Error("popgate logged the hook URL's query")
	}
}
