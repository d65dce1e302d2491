package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Clients by the key types they can use.
var (
	// ecdsaClient is a current client: ECDSA and RSA.
	ecdsaClient = func(sni string) *tls.Config {
		return &tls.Config{ServerName: sni, InsecureSkipVerify: true}
	}
	// rsaClient offers TLS 1.2 with ECDHE-RSA suites only: RSA
	// certificates only.
	rsaClient = func(sni string) *tls.Config {
		return &tls.Config{ServerName: sni, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}}
	}
)

// served runs a handshake and returns the leaf served, or the error.
func served(t *testing.T, srv *Server, cli *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	st, err := handshake(t, srv.TLSConfig(), cli)
	if err != nil {
		return nil, err
	}
	return st.PeerCertificates[0], nil
}

func keyTypeOf(c *x509.Certificate) string {
	if c.PublicKeyAlgorithm == x509.RSA {
		return KeyRSA
	}
	return KeyECDSA
}

// orders returns how often the fake placed (or tried to place) an order
// for k: asked for a certificate it did not hold.
func (f *fakeACME) orders(k seenKey) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, o := range f.ordered {
		if o == k {
			n++
		}
	}
	return n
}

// records returns the log lines (text handler) with msg.
func records(logs *syncBuffer, msg string) []string {
	var out []string
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, "msg=\""+msg+"\"") || strings.Contains(l, "msg="+msg+" ") {
			out = append(out, l)
		}
	}
	return out
}

// TestFailedOrderKeepsCachedCertificate (issue item 1): an RSA-only client
// of an on-demand name that has only an ECDSA certificate starts an RSA
// order; when it fails (the CA is unreachable), that client gets a clear
// handshake failure, the ECDSA clients keep getting the cached
// certificate, and the back-off withholds only new RSA orders.
func TestFailedOrderKeepsCachedCertificate(t *testing.T) {
	var logs syncBuffer
	routes := &routedDomains{m: map[string]bool{"customer.test": true}}
	srv, f := newOnDemandServer(t, routes, time.Hour)
	srv.acme.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	srv.acme.limiter.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const name = "pop.customer.test"
	ecdsaKey, rsaKey := seenKey{name, false}, seenKey{name, true}

	first, err := served(t, srv, ecdsaClient(name))
	if err != nil || keyTypeOf(first) != KeyECDSA {
		t.Fatalf("first ECDSA handshake: %v, %v", first, err)
	}

	f.mu.Lock()
	f.fail = errors.New("dial tcp 127.0.0.1:14000: connect: connection refused")
	f.mu.Unlock()
	_, err = served(t, srv, rsaClient(name))
	if err == nil || !strings.Contains(err.Error(), "RSA certificate") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("RSA-only handshake while the CA is down: %v, want a failure naming the missing RSA certificate and the cause", err)
	}
	for i := range 3 {
		leaf, err := served(t, srv, ecdsaClient(name))
		if err != nil || !leaf.Equal(first) {
			t.Fatalf("ECDSA handshake %d after the failed RSA order: %v, %v; want the cached ECDSA certificate", i+1, leaf, err)
		}
	}
	if _, err := served(t, srv, rsaClient(name)); err == nil || !strings.Contains(err.Error(), "no new order before") {
		t.Errorf("second RSA-only handshake: %v, want the RSA order held back", err)
	}
	if n, m := f.orders(rsaKey), f.orders(ecdsaKey); n != 1 || m != 1 {
		t.Errorf("orders: %d RSA, %d ECDSA; want 1 each", n, m)
	}
	if recs := records(&logs, "acme order failed"); len(recs) != 1 || !strings.Contains(recs[0], "key_type=rsa") ||
		!strings.Contains(recs[0], "connection refused") {
		t.Errorf("ERROR lines for the failed order: %q, want one with key_type=rsa and the cause", recs)
	}

	// After the back-off, with the CA back, the RSA order is placed.
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	leaf, err := served(t, srv, rsaClient(name))
	if err != nil || keyTypeOf(leaf) != KeyRSA {
		t.Fatalf("RSA-only handshake after the back-off: %v, %v", leaf, err)
	}
	if leaf, err := served(t, srv, ecdsaClient(name)); err != nil || !leaf.Equal(first) {
		t.Errorf("ECDSA handshake once both exist: %v, %v; want the ECDSA certificate", leaf, err)
	}
}

// TestExistingCertificateSuitsClient: a client that can use either key
// type gets whichever certificate exists (here RSA, obtained for a legacy
// client) rather than waiting for an order; a certificate in the cache is
// served although the back-off holds new orders for it.
func TestExistingCertificateSuitsClient(t *testing.T) {
	routes := &routedDomains{m: map[string]bool{"customer.test": true}}
	srv, f := newOnDemandServer(t, routes, time.Hour)
	const name = "mail.customer.test"
	if leaf, err := served(t, srv, rsaClient(name)); err != nil || keyTypeOf(leaf) != KeyRSA {
		t.Fatalf("RSA-only handshake: %v, %v", leaf, err)
	}
	f.mu.Lock()
	f.fail = errors.New("CA unreachable")
	f.mu.Unlock()
	if leaf, err := served(t, srv, ecdsaClient(name)); err != nil || keyTypeOf(leaf) != KeyRSA {
		t.Errorf("current client while only an RSA certificate exists: %v, %v; want the RSA one", leaf, err)
	}
	if n := f.orders(seenKey{name, false}); n != 0 {
		t.Errorf("%d ECDSA orders, want none while a certificate the client can use exists", n)
	}

	// Another replica put a certificate in the shared cache; this one
	// remembers a failed order for it.
	const other = "pop.customer.test"
	srv.acme.limiter.fail(seenKey{other, false}, time.Hour)
	c := newCert(t, other)
	f.mu.Lock()
	f.certs[seenKey{other, false}] = &c
	f.mu.Unlock()
	if leaf, err := served(t, srv, ecdsaClient(other)); err != nil || !leaf.Equal(c.Leaf) {
		t.Errorf("handshake for a cached name held back from ordering: %v, %v; want the cached certificate", leaf, err)
	}
}

// TestConcurrentHandshakesShareOrder: handshakes that need the same new
// certificate at once place one order.
func TestConcurrentHandshakesShareOrder(t *testing.T) {
	routes := &routedDomains{m: map[string]bool{"customer.test": true}}
	srv, f := newOnDemandServer(t, routes, time.Hour)
	release := make(chan struct{})
	get := f.get
	srv.acme.get = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		<-release
		return get(h)
	}
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := srv.getCertificate(&tls.ClientHelloInfo{ServerName: "pop.customer.test"})
			errs <- err
		}()
	}
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := f.orders(seenKey{"pop.customer.test", false}); got != 1 {
		t.Errorf("%d concurrent handshakes placed %d orders, want 1", n, got)
	}
}

// TestWantsRSA: the key type ordered for a client follows what crypto/tls
// says it can use.
func TestWantsRSA(t *testing.T) {
	srv, _ := newACMEServer(t, ServerConfig{}, "mail.example.com")
	for _, tc := range []struct {
		name string
		cli  *tls.Config
		want bool
	}{
		{"current client", ecdsaClient("mail.example.com"), false},
		{"TLS 1.3 only", &tls.Config{ServerName: "mail.example.com", MinVersion: tls.VersionTLS13}, false},
		{"ECDHE-RSA suites only", rsaClient("mail.example.com"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got *bool
			cfg := srv.TLSConfig().Clone()
			cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				v := srv.acme.wantsRSA(h)
				got = &v
				return nil, errors.New("done")
			}
			_, _ = handshake(t, cfg, tc.cli)
			if got == nil || *got != tc.want {
				t.Errorf("wantsRSA = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestOneOrderPerName: while an order for a name is under way, an order
// for the same name and the other key type waits for it (autocert keeps
// TLS-ALPN-01 challenge certificates by name only, so the two would break
// each other's validation); a waiter gives up when its context is done,
// and goes ahead once the first order has ended.
func TestOneOrderPerName(t *testing.T) {
	srv, f := newACMEServer(t, ServerConfig{}, "mail.example.com")
	a := srv.acme
	inGet, release := make(chan struct{}), make(chan struct{})
	a.get = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if !slices.Contains(hello.CipherSuites, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) { // the ECDSA order
			close(inGet)
			<-release
		}
		return f.get(hello)
	}
	ecdsaKey, rsaKey := seenKey{"mail.example.com", false}, seenKey{"mail.example.com", true}
	first := make(chan error, 1)
	go func() {
		_, err := a.obtain(context.Background(), ecdsaKey, false)
		first <- err
	}()
	<-inGet
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.obtain(gone, rsaKey, false); !errors.Is(err, context.Canceled) {
		t.Errorf("RSA order while the ECDSA order is under way, its handshake gone: %v, want it to have waited", err)
	}
	if n := f.orders(rsaKey); n != 0 {
		t.Errorf("%d RSA orders placed while the ECDSA order was under way, want 0", n)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("ECDSA order: %v", err)
	}
	if _, err := a.obtain(context.Background(), rsaKey, false); err != nil || f.orders(rsaKey) != 1 {
		t.Errorf("RSA order after the ECDSA order: %v, %d orders; want one", err, f.orders(rsaKey))
	}
}

// TestRenewalHoldsBackOrders: a renewal that was allowed its order holds
// back popgate's orders for the name until it ends (a handshake's order
// fails at once, counted as withheld "busy"); a renewal's order is held
// back while an order of popgate's for the name is under way.
func TestRenewalHoldsBackOrders(t *testing.T) {
	rt, ca := newScriptedTransport("tls-alpn-01")
	obs := &recordingObserver{}
	rt.a.obs.Store(observerBox{obs})
	ordered := 0
	rt.a.get = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { ordered++; return nil, errors.New("no CA here") }
	_ = send(t, rt, context.Background(), "GET", caDir)

	renewal, endRenewal := context.WithCancel(context.Background())
	rt.a.cacheRead(renewal, "pop.x.test")
	if err := send(t, rt, renewal, "POST", caNewOrder); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	var busy *nameBusyError
	if _, err := rt.a.order(context.Background(), seenKey{"pop.x.test", true}, false); !errors.As(err, &busy) || ordered != 0 {
		t.Errorf("RSA order during the ECDSA renewal: %v (%d orders), want it held back", err, ordered)
	}
	if _, w := obs.counts(); w[WithheldBusy] != 1 {
		t.Errorf("withheld %v, want busy 1", w)
	}
	endRenewal()
	waitFor(t, "the renewal's end", func() bool {
		rt.a.attMu.Lock()
		defer rt.a.attMu.Unlock()
		return len(rt.a.renewing) == 0
	})

	releaseName, err := rt.a.lockName(context.Background(), seenKey{"pop.x.test", false})
	if err != nil {
		t.Fatal(err)
	}
	other, endOther := context.WithCancel(context.Background())
	defer endOther()
	rt.a.cacheRead(other, "pop.x.test+rsa")
	var held *renewalHeldError
	if err := send(t, rt, other, "POST", caNewOrder); !errors.As(err, &held) || held.Reason != "busy" {
		t.Errorf("RSA renewal during an ECDSA order: %v, want it held back", err)
	}
	releaseName()
	if n := ca.count("POST " + caNewOrder); n != 1 {
		t.Errorf("the CA got %d orders, want 1 (the first renewal's)", n)
	}
	if _, err := rt.a.order(context.Background(), seenKey{"pop.x.test", true}, false); errors.As(err, &busy) || ordered != 1 {
		t.Errorf("RSA order after the renewal ended: %v (%d orders), want it placed", err, ordered)
	}
}
