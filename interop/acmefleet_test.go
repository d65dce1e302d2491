package interop

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/proxy/pop3test"
)

// acmeFleet is three (or more) popgate processes sharing one private
// Redis ([cluster]) and one Pebble.
type acmeFleet struct {
	pb      *pebble
	redis   *dirrun.Redis
	pwFile  string
	keyFile string
	mapFile string
	backend string
}

func newACMEFleet(t *testing.T) *acmeFleet {
	t.Helper()
	f := &acmeFleet{pb: startPebble(t), redis: dirrun.RedisFor(t)}
	dir := t.TempDir()
	f.pwFile, f.keyFile = filepath.Join(dir, "redis-password"), f.newKey(t)
	writeFile(t, f.pwFile, []byte(dirrun.Password+"\n"), 0o600)
	// Six routed domains: pop.<domain> and mail.<domain> are on-demand
	// names (domains_from_routes) a test orders by a handshake.
	f.mapFile = filepath.Join(dir, "routes")
	var routes strings.Builder
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&routes, "@d%d.test mem\n", i)
	}
	writeFile(t, f.mapFile, []byte(routes.String()), 0o600)
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{}}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	f.backend = addr.String()
	return f
}

// newKey writes a new cluster.key_file.
func (f *acmeFleet) newKey(t *testing.T) string {
	k := make([]byte, 32)
	rand.Read(k)
	name := filepath.Join(t.TempDir(), "cluster.key")
	writeFile(t, name, []byte(hex.EncodeToString(k)+"\n"), 0o600)
	return name
}

// start runs replica i with its own cache directory (cacheDir; "" for a
// new one) and challenges (the [tls.acme] lines of the answerers).
func (f *acmeFleet) start(t *testing.T, i int, cacheDir, challenges, keyFile string) *popgate {
	t.Helper()
	if cacheDir == "" {
		cacheDir = filepath.Join(t.TempDir(), "acme")
	}
	return startPopgate(t, popgateConfig{
		Backends:       []popgateBackend{{Name: "mem", Address: f.backend, TLS: "none"}},
		MapFile:        f.mapFile,
		ACMEServerName: acmeName,
		ACME:           f.pb.acmeTOML(cacheDir, challenges+"\ndomains_from_routes = true"),
		// [cluster] needs an admin token while the admin endpoints are on.
		AdminToken: "fleet-admin-token-0123456789abcdef",
		Extra: fmt.Sprintf("\n[cluster]\nredis = \"redis://%s/0\"\nuser = \"popgate\"\npassword_file = %q\nkey_file = %q\nnode_name = \"node%d\"\n",
			f.redis.Addr(), f.pwFile, keyFile, i),
	})
}

// served returns the serial of the certificate pg serves for name,
// verified against Pebble's root.
func (f *acmeFleet) served(pg *popgate, name string) (string, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", pg.POP3SAddr, &tls.Config{ServerName: name, RootCAs: f.pb.Roots})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

// mustServe is served, failing t on an error.
func (f *acmeFleet) mustServe(t *testing.T, pg *popgate, i int, name string) string {
	t.Helper()
	s, err := f.served(pg, name)
	if err != nil {
		t.Fatalf("replica %d, %s: %v\n%s", i, name, err, tail(pg.log()))
	}
	return s
}

// sameEverywhere checks that every replica serves one certificate for name
// and returns its serial.
func (f *acmeFleet) sameEverywhere(t *testing.T, ps []*popgate, name string) string {
	t.Helper()
	first := f.mustServe(t, ps[0], 0, name)
	for i, pg := range ps[1:] {
		if s := f.mustServe(t, pg, i+1, name); s != first {
			t.Errorf("%s: replica %d serves serial %s, replica 0 %s: want one certificate for the fleet", name, i+1, s, first)
		}
	}
	return first
}

// orderedBy returns the indexes of the replicas that logged "acme
// certificate obtained" for name, waiting a while for one to (a log line
// reaches the test after the handshake it follows).
func orderedBy(ps []*popgate, name string) []int {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var out []int
		for i, pg := range ps {
			for _, rec := range pg.records("acme certificate obtained") {
				if rec["name"] == name {
					out = append(out, i)
				}
			}
		}
		if len(out) > 0 || time.Now().After(deadline) {
			return out
		}
	}
}

// logged returns how many of pg's log lines with msg match (nil matches
// all), waiting a while for one to.
func logged(pg *popgate, msg string, match func(map[string]any) bool) int {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n := 0
		for _, rec := range pg.records(msg) {
			if match == nil || match(rec) {
				n++
			}
		}
		if n > 0 || time.Now().After(deadline) {
			return n
		}
	}
}

// TestACMEFleetPebble: three popgate processes sharing one Redis act as
// one ACME client of Pebble (real validation, on one fixed port per
// challenge type, which only replica 1 answers):
//   - started together, they place one order for tls.acme.domains and all
//     serve its certificate;
//   - asked for a new name at the same moment, Pebble sees one order, and
//     all three serve the same certificate (same serial);
//   - an order placed by replica 0 (then 2) is validated through replica
//     1's HTTP-01 (then TLS-ALPN-01) answerer, which did not place it;
//   - a fleet restarted on the same Redis orders nothing;
//   - a corrupted entry in Redis, and a replica with another key_file,
//     are refused (an ERROR naming the key), never served, and place no
//     order;
//   - with Redis killed, the certificates keep being served (by a replica
//     restarted meanwhile too, from its cache_dir), and a new name is not
//     ordered.
func TestACMEFleetPebble(t *testing.T) {
	requireInterop(t, "pebble", "pebble-challtestsrv", "redis-server")
	t.Parallel()
	f := newACMEFleet(t)
	pb := f.pb

	// 1. HTTP-01: only replica 1 listens where Pebble validates. It
	// starts first, so that it answers the others' first order.
	httpOnly := func(i int) string {
		addr := pb.HTTPAddr
		if i != 1 {
			addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		}
		return fmt.Sprintf("http_challenge = %q\ntls_alpn_challenge = \"\"", addr)
	}
	caches := make([]string, 3)
	for i := range caches {
		caches[i] = filepath.Join(t.TempDir(), "acme")
	}
	ps := make([]*popgate, 3)
	for _, i := range []int{1, 0, 2} {
		ps[i] = f.start(t, i, caches[i], httpOnly(i), f.keyFile)
	}
	for i, pg := range ps {
		pg.waitRecord(t, "acme certificate ready")
		_ = i
	}
	if n := pb.orders(); n != 1 {
		t.Errorf("three replicas started together: Pebble has %d orders, want 1 (%s)", n, acmeName)
	}
	defSerial := f.sameEverywhere(t, ps, acmeName)
	t.Logf("%s: serial %s ordered by replica %v", acmeName, defSerial, orderedBy(ps, acmeName))

	// The same new name on the three replicas at the same moment.
	const together = "pop.d1.test"
	before := pb.orders()
	var wg sync.WaitGroup
	start := make(chan struct{})
	serials := make([]string, 3)
	errs := make([]error, 3)
	for i, pg := range ps {
		wg.Go(func() {
			<-start
			serials[i], errs[i] = f.served(pg, together)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s at once: replica %d: %v", together, i, err)
		}
	}
	if n := pb.orders() - before; n != 1 {
		t.Errorf("%s asked of three replicas at once: Pebble got %d orders, want 1", together, n)
	}
	if serials[0] != serials[1] || serials[1] != serials[2] {
		t.Errorf("%s asked at once: serials %v, want one certificate", together, serials)
	}
	f.sameEverywhere(t, ps, together)
	if by := orderedBy(ps, together); len(by) != 1 {
		t.Errorf("%s: obtained by replicas %v, want one", together, by)
	}

	// An order placed by replica 0, validated by replica 1.
	const byZero = "pop.d2.test"
	validations := pb.count("validate w/ HTTP")
	f.mustServe(t, ps[0], 0, byZero)
	if by := orderedBy(ps, byZero); len(by) != 1 || by[0] != 0 {
		t.Errorf("%s: obtained by replicas %v, want 0", byZero, by)
	}
	if pb.count("validate w/ HTTP") == validations {
		t.Errorf("%s: Pebble logged no HTTP-01 validation", byZero)
	}
	f.sameEverywhere(t, ps, byZero)
	if n := pb.orders(); n != 3 {
		t.Errorf("after %s, %s and %s: Pebble has %d orders, want 3", acmeName, together, byZero, n)
	}
	for _, pg := range ps {
		pg.stop(t)
	}

	// 2. The fleet restarted on the same Redis, TLS-ALPN-01 only: no
	// order for what Redis holds; an order by replica 2 validated by
	// replica 1.
	alpnOnly := func(i int) string {
		addr := pb.TLSAddr
		if i != 1 {
			addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		}
		return fmt.Sprintf("http_challenge = \"\"\ntls_alpn_challenge = %q", addr)
	}
	for _, i := range []int{1, 0, 2} {
		ps[i] = f.start(t, i, caches[i], alpnOnly(i), f.keyFile)
	}
	for _, pg := range ps {
		pg.waitRecord(t, "acme certificate ready")
	}
	if s := f.sameEverywhere(t, ps, acmeName); s != defSerial {
		t.Errorf("restarted fleet serves %s for %s, want the stored %s", s, acmeName, defSerial)
	}
	if n := pb.orders(); n != 3 {
		t.Errorf("restarted fleet: Pebble has %d orders, want still 3", n)
	}
	const byTwo = "mail.d3.test"
	f.mustServe(t, ps[2], 2, byTwo)
	if by := orderedBy(ps, byTwo); len(by) != 1 || by[0] != 2 {
		t.Errorf("%s: obtained by replicas %v, want 2", byTwo, by)
	}
	if logged(ps[1], "acme tls-alpn-01 challenge answered", nil) == 0 {
		t.Errorf("%s: replica 1 answered no TLS-ALPN-01 challenge", byTwo)
	}
	if n := len(ps[2].records("acme tls-alpn-01 challenge answered")); n != 0 {
		t.Errorf("%s: replica 2, which Pebble cannot reach, answered %d challenges", byTwo, n)
	}
	f.sameEverywhere(t, ps, byTwo)

	// 3. A corrupted entry: refused, logged once with its key, not
	// served, and no order. Replica 0 has not loaded pop.d2.test since
	// its restart.
	orders := pb.count("Added order")
	redisKey := "popgate:acme:" + byZero
	if _, err := f.redis.Do("SETRANGE", redisKey, "40", "corrupted"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if s, err := f.served(ps[0], byZero); err == nil {
			t.Errorf("a corrupted entry: replica 0 served serial %s for %s", s, byZero)
		}
	}
	const refusedMsg = "cluster: an ACME cache entry in Redis is refused: it is neither served nor replaced by a new order " +
		"(check that every replica has the same cluster.key_file; delete the key in Redis to have the certificate ordered anew)"
	if refusals := logged(ps[0], refusedMsg, func(rec map[string]any) bool {
		return rec["key"] == redisKey && rec["level"] == "ERROR"
	}); refusals != 1 {
		t.Errorf("a corrupted entry: %d ERROR lines naming %s, want 1", refusals, redisKey)
	}

	// A fourth replica with another key_file: it opens nothing, serves
	// nothing of the fleet's, orders nothing, overwrites nothing.
	fleetEntry, err := f.redis.Do("GET", "popgate:acme:"+acmeName)
	if err != nil {
		t.Fatal(err)
	}
	wrong := f.start(t, 3, "", alpnOnly(3), f.newKey(t))
	for range 2 {
		if s, err := f.served(wrong, acmeName); err == nil {
			t.Errorf("a replica with another key_file served serial %s for %s", s, acmeName)
		}
	}
	if logged(wrong, refusedMsg, func(rec map[string]any) bool { return rec["key"] == "popgate:acme:"+acmeName }) == 0 {
		t.Errorf("the replica with another key_file logged no refusal naming popgate:acme:%s", acmeName)
	}
	if again, _ := f.redis.Do("GET", "popgate:acme:"+acmeName); again != fleetEntry {
		t.Errorf("the replica with another key_file changed the fleet's entry for %s", acmeName)
	}
	if s := f.mustServe(t, ps[1], 1, acmeName); s != defSerial {
		t.Errorf("after the wrong key: replica 1 serves %s, want %s", s, defSerial)
	}
	if n := pb.count("Added order"); n != orders {
		t.Errorf("a corrupted entry and a wrong key_file: Pebble got %d new orders, want none", n-orders)
	}
	wrong.stop(t)

	// 4. Redis killed: what is loaded keeps being served, a replica
	// restarted meanwhile serves from its cache_dir, a new name is not
	// ordered.
	if err := f.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for i, pg := range ps {
		for _, name := range []string{acmeName, together} {
			if _, err := f.served(pg, name); err != nil {
				t.Errorf("Redis down: replica %d, %s: %v", i, name, err)
			}
		}
	}
	ps[2].stop(t)
	ps[2] = f.start(t, 2, caches[2], alpnOnly(2), f.keyFile)
	ready := ps[2].waitRecord(t, "acme certificate ready")
	if ready["serial"] != defSerial {
		t.Errorf("restarted with Redis down: replica 2 has serial %v for %s, want %s", ready["serial"], acmeName, defSerial)
	}
	if s := f.mustServe(t, ps[2], 2, together); s != serials[0] {
		t.Errorf("restarted with Redis down: replica 2 serves %s for %s, want %s", s, together, serials[0])
	}
	if _, err := f.served(ps[0], "pop.d4.test"); err == nil {
		t.Errorf("Redis down: a new name got a certificate")
	}
	if n := pb.count("Added order"); n != orders {
		t.Errorf("Redis down: Pebble got %d new orders, want none", n-orders)
	}
	if n := logged(ps[0], "cluster: Redis is unreachable: no ACME certificate is ordered or renewed until it is back; the certificates already loaded are served", nil); n != 1 {
		t.Errorf("Redis down: replica 0 logged %d times that orders wait, want once\n%s", n, tail(ps[0].log()))
	}
	// Redis back (empty): orders resume.
	if err := f.redis.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := f.served(ps[0], "pop.d5.test"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis back: pop.d5.test not obtained\n%s", tail(ps[0].log()))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("Pebble orders: %d, issued: %d", pb.orders(), pb.count("Issued certificate"))
}
