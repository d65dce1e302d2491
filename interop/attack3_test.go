package interop

// Regression tests from the third attack review (certificates: the
// challenge answerers, orders and renewals, the approval hook, the cache
// and the files popgate reads): each TestAttack3* test failed while the
// defect it names was present.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// startOnDemandWith is startOnDemand with the challenge lines of
// [tls.acme] given by the test.
func startOnDemandWith(t *testing.T, pb *pebble, challenges string, domains ...string) *popgate {
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
	pg := startPopgate(t, popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: addr.String(), TLS: "none"}},
		MapFile:        mapFile,
		ACMEServerName: acmeName,
		ACME:           pb.acmeTOML(filepath.Join(t.TempDir(), "acme-attack3"), challenges+"\ndomains_from_routes = true\n"),
	}, orderPass)
	pg.waitRecord(t, "acme certificate ready")
	return pg
}

// TestAttack3PebbleKeyTypesCollide: with TLS-ALPN-01 (tls_alpn_challenge,
// no http_challenge), an ECDSA client and an RSA-only client of a new
// on-demand name at the same moment need two orders for the same name
// (one per key type, as designed). autocert keeps TLS-ALPN-01 challenge
// certificates by name alone (Manager.certTokens[name], and the cache key
// "name+token"), so concurrent orders broke each other: the second one's
// challenge certificate replaced the first's, and the first one's cleanup
// deleted the second's; Pebble validated against the wrong key
// authorization, or found none, and the back-off then withheld that key
// type for 10 minutes (at Let's Encrypt every such failure also counts
// against the 5 failed authorizations per name per hour). Any client could
// do this to any on-demand name by sending an RSA-only hello next to a
// normal one. popgate now places one order per name at a time: the second
// handshake waits for the first order, then orders its own.
func TestAttack3PebbleKeyTypesCollide(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	pg := startOnDemandWith(t, pb, fmt.Sprintf("http_challenge = \"\"\ntls_alpn_challenge = %q", pb.TLSAddr), "race0.test", "race1.test", "race2.test", "race3.test")
	failures := 0
	for i := range 4 {
		name := fmt.Sprintf("pop.race%d.test", i)
		pb.pointName(t, name, "127.0.0.1")
		type result struct {
			kind string
			leaf *x509.Certificate
			err  error
		}
		res := make(chan result, 2)
		go func() {
			l, err := tlsLeaf(pg, &tls.Config{ServerName: name, RootCAs: pb.Roots})
			res <- result{"ecdsa", l, err}
		}()
		go func() {
			l, err := tlsLeaf(pg, rsaOnly(pb, name))
			res <- result{"rsa", l, err}
		}()
		for range 2 {
			r := <-res
			if r.err != nil {
				failures++
				t.Errorf("%s: %s client, concurrent with the other key type: %v", name, r.kind, r.err)
			}
		}
	}
	for _, rec := range pg.records("acme order failed") {
		t.Logf("acme order failed: %v %v: %v", rec["name"], rec["key_type"], rec["err"])
	}
	t.Logf("%d of 8 handshakes failed", failures)
}

// TestAttack3AdminPortExhaustsFDs: the admin endpoint (metrics.address)
// must not let whoever reaches it (any local user with the default
// loopback address; anyone where it listens on a network address with
// token_file set) hold as many descriptors as they like, beyond the fixed
// reserve of 128 that the file descriptor budget keeps for it and
// everything else: POP3S accepts would then fail with "too many open
// files" although the POP3 sessions are far below their share. The admin
// address caps its connections (admin/limit.go), so 700 held connections
// leave POP3S serving.
func TestAttack3AdminPortExhaustsFDs(t *testing.T) {
	requireInterop(t)
	t.Parallel()
	pg := startPopgate(t, popgateConfig{
		Backends: []popgateBackend{{Name: "mem", Address: floodBackend(t, "frank@example.test", "attack3-Fd-9911"), TLS: "none"}},
		Default:  "mem",
		NoFile:   512,
	}, "attack3-Fd-9911")
	addr, _ := pg.waitRecords(t, "admin endpoints listening", 1)[0]["address"].(string)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 700 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Logf("admin connection %d: %v", i, err)
			break
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	t.Logf("%d connections to the admin endpoint held", len(conns))
	conf := pg.ca.clientConfig(pg.ServerName)
	served := 0
	for range 3 {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", pg.POP3SAddr, conf)
		if err != nil {
			t.Logf("POP3S: %v", err)
			continue
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		g, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err == nil && strings.HasPrefix(g, "+OK") {
			served++
		}
	}
	if served != 3 {
		t.Errorf("POP3S served %d of 3 clients while the admin endpoint holds %d connections", served, len(conns))
	}
	for line := range strings.Lines(pg.log()) {
		// An accept failed; the start-up WARN about max_connections
		// (the default 10,000 is more than a limit of 512 holds) names
		// the error too.
		if strings.Contains(line, "too many open files") && !strings.Contains(line, `"msg":"limits.max_connections is more`) {
			t.Errorf("popgate ran out of file descriptors: %.300s", line)
			break
		}
	}
}

// busyHolder tries to keep one connection to an HTTP-01 answerer looking
// busy: it sends a request header announcing a body it never sends (the
// answerer's gate once never displaced such a connection, and net/http
// held it up to ReadTimeout to discard the body), and opens another as
// soon as the answerer closes it. It stops after maxRedials or when stop
// is closed.
func busyHolder(target, src string, stop <-chan struct{}, wg *sync.WaitGroup, first *sync.WaitGroup) {
	defer wg.Done()
	signal := sync.OnceFunc(first.Done)
	defer signal()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	const maxRedials = 20
	for range maxRedials {
		select {
		case <-stop:
			return
		default:
		}
		c, err := d.Dial("tcp", target)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		_, _ = c.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"))
		signal()
		done := make(chan struct{})
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					break
				}
			}
			close(done)
		}()
		select {
		case <-done:
		case <-stop:
		}
		c.Close()
		<-done
	}
}

// TestAttack3PebbleBusyHoldBlocksValidation: 256 connections from 16
// addresses (16 each: the default max_challenge_connections and
// max_challenge_connections_per_ip) that each send a request header with
// an announced body, re-opened whenever popgate closes them, kept Pebble's
// HTTP-01 validation connection out of the answerer: the gate counted them
// busy, so it neither displaced them nor admitted the CA, and a new name's
// order failed (and was held back for 10 minutes; the same went for
// renewals). Now such a request is closed at once, unread, and never makes
// its connection busy: the name is ordered. TestACMEPebbleHTTPFlood holds
// silent connections.
func TestAttack3PebbleBusyHoldBlocksValidation(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv")
	t.Parallel()
	pb := startPebble(t)
	pg := startOnDemandWith(t, pb, fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"", pb.HTTPAddr), "busy.test")
	stop := make(chan struct{})
	var wg, first sync.WaitGroup
	for _, src := range loopbacks(2, 16) {
		for range 16 {
			wg.Add(1)
			first.Add(1)
			go busyHolder(pb.HTTPAddr, src, stop, &wg, &first)
		}
	}
	defer func() { close(stop); wg.Wait() }()
	first.Wait()
	time.Sleep(300 * time.Millisecond)
	const name = "pop.busy.test"
	leaf, err := tlsLeaf(pg, &tls.Config{ServerName: name, RootCAs: pb.Roots})
	if err != nil {
		t.Errorf("%s ordered while 256 busy-looking connections hold the HTTP-01 answerer: %v", name, err)
	} else {
		t.Logf("%s: certificate serial %x", name, leaf.SerialNumber)
	}
	if err != nil {
		for _, rec := range pg.waitRecords(t, "acme order failed", 1) {
			t.Logf("acme order failed: %v: %v", rec["name"], rec["err"])
		}
	}
}
