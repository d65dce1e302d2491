package tlsconf

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/acme/autocert"
)

// How popgate decides, for a handshake, between serving a certificate it
// has and ordering one (see [acmeState.serve]):
//
//  1. A certificate that exists (in autocert's memory or in the cache) and
//     that the client can use is served, whatever happened to any order:
//     the preferred key type first (ECDSA for clients that can use it),
//     then the other one.
//  2. Only when none exists is one ordered, for the preferred key type, and
//     only if nothing withholds the order: a recent failure for the same
//     name and key type (the back-off), the approval hook (on-demand names
//     only), the order budget.
//  3. Concurrent handshakes needing the same certificate share one order.
//  4. One order per name at a time, whatever the key type: autocert keeps
//     a TLS-ALPN-01 challenge certificate by name only, so concurrent
//     ECDSA and RSA orders for a name would break each other's
//     validation. A handshake needing the other key type waits for the
//     order under way; while a renewal of the name is under way, a new
//     order is held back (see lockName).
//  5. In a fleet (ACMEConfig.OrderLock), one order per name across the
//     replicas: see fleet.go.
//
// autocert's own GetCertificate would order as soon as the certificate of
// the key type the hello prefers is missing; it is called only with a
// hello made for one key type (helloFor), either when that certificate
// exists, or when an order for it has been decided.

// domainOrderRetry is the back-off after a failed order for a name of
// ACMEConfig.Domains: a handshake a minute later tries again, as autocert
// alone did.
const domainOrderRetry = time.Minute

// keyType names a certificate's key type in logs and metrics.
func (k seenKey) keyType() string {
	if k.rsa {
		return KeyRSA
	}
	return KeyECDSA
}

// cacheKey is autocert's cache key for k ("name" or "name+rsa").
func (k seenKey) cacheKey() string {
	if k.rsa {
		return k.name + "+rsa"
	}
	return k.name
}

// Key types, as they appear in logs and metric labels.
const (
	KeyECDSA = "ecdsa"
	KeyRSA   = "rsa"
)

// helloFor is a hello that makes autocert pick the certificate of k's key
// type: autocert looks at the signature schemes, curves and cipher suites
// only to choose between ECDSA and RSA.
func helloFor(k seenKey) *tls.ClientHelloInfo {
	if k.rsa {
		return &tls.ClientHelloInfo{
			ServerName:       k.name,
			SignatureSchemes: []tls.SignatureScheme{tls.PSSWithSHA256, tls.PKCS1WithSHA256},
			SupportedCurves:  []tls.CurveID{tls.CurveP256},
			CipherSuites:     []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		}
	}
	return &tls.ClientHelloInfo{
		ServerName:       k.name,
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
}

// newECDSAProbe returns a certificate with only a P-256 key, to ask a hello
// whether the client can use an ECDSA certificate at all.
func newECDSAProbe() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: acme: generate key: %w", err)
	}
	return &tls.Certificate{PrivateKey: key}, nil
}

// wantsRSA reports whether the client cannot use an ECDSA P-256
// certificate, so that only an RSA one serves it. Unlike autocert's own
// test it asks crypto/tls, so a TLS 1.3 client that lists no TLS 1.2 ECDSA
// suite still gets ECDSA. A hello that names no TLS versions (one not made
// by crypto/tls) is taken to be a current client.
func (a *acmeState) wantsRSA(hello *tls.ClientHelloInfo) bool {
	if len(hello.SupportedVersions) == 0 {
		return false
	}
	h := *hello
	h.ServerName = "" // the probe has no certificate to check the name against
	return h.SupportsCertificate(a.probe) != nil
}

// suits reports whether the client can use c for name.
func suits(hello *tls.ClientHelloInfo, name string, c *tls.Certificate) bool {
	if len(hello.SupportedVersions) == 0 {
		return true
	}
	h := *hello
	if h.ServerName != "" {
		h.ServerName = name
	}
	return h.SupportsCertificate(c) == nil
}

// serve returns the certificate for name (in the policy; onDemand when it
// is not one of the explicit domains) that suits hello; see the comment at
// the top of this file.
func (a *acmeState) serve(hello *tls.ClientHelloInfo, name string, onDemand bool) (*tls.Certificate, error) {
	ctx := hello.Context()
	if ctx == nil { // a hello not made by crypto/tls
		ctx = context.Background()
	}
	want := seenKey{name, a.wantsRSA(hello)}
	keys := []seenKey{want, {name, !want.rsa}}
	if want.rsa {
		keys = keys[:1] // the client cannot use ECDSA
	}
	for _, k := range keys {
		if c := a.existing(ctx, k); c != nil && suits(hello, name, c) {
			return c, nil
		}
	}
	c, err := a.obtain(ctx, want, onDemand)
	switch {
	case err == nil:
		return c, nil
	case want.rsa:
		return nil, fmt.Errorf("tlsconf: acme: %q has no RSA certificate, the only kind this client can use: %w", name, err)
	default:
		return nil, fmt.Errorf("tlsconf: acme certificate for %q: %w", name, err)
	}
}

// existing returns the certificate autocert holds for k, loaded from the
// cache if need be, without ever ordering one; nil when there is none.
// A certificate served before stays in autocert's memory (renewed there);
// otherwise the cache is read first, so that autocert, which orders on a
// cache miss, is only asked for what it will find.
func (a *acmeState) existing(ctx context.Context, k seenKey) *tls.Certificate {
	if _, ok := a.seen.Load(k); !ok && !a.stored(ctx, k) {
		return nil
	}
	c, err := a.get(helloFor(k))
	if err != nil {
		a.log.Debug("acme certificate not loaded", "name", k.name, "key_type", k.keyType(), "err", err)
		return nil
	}
	return a.note(k.name, c)
}

// flight is one order under way; handshakes that need the same
// certificate wait for it.
type flight struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// obtain returns k's certificate, ordering it if none exists, unless the
// order is withheld. Concurrent calls for the same k share one order; a
// waiter gives up when ctx is done.
func (a *acmeState) obtain(ctx context.Context, k seenKey, onDemand bool) (*tls.Certificate, error) {
	a.mu.Lock()
	if f := a.flights[k]; f != nil {
		a.mu.Unlock()
		select {
		case <-f.done:
			return f.cert, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	a.flights[k] = f
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.flights, k)
		a.mu.Unlock()
		close(f.done)
	}()
	// Another flight may have ended just before this one began.
	if c := a.existing(ctx, k); c != nil {
		f.cert = c
		return c, nil
	}
	f.cert, f.err = a.order(ctx, k, onDemand)
	return f.cert, f.err
}

// heldBackError is an order withheld after a recent failure.
type heldBackError struct {
	next time.Time
}

func (e *heldBackError) Error() string {
	return fmt.Sprintf("the last order failed; no new order before %s", e.next.UTC().Format(time.RFC3339))
}

// nameBusyError is an order withheld while a renewal of the same name is
// under way.
type nameBusyError struct{ name string }

func (e *nameBusyError) Error() string {
	return fmt.Sprintf("a renewal for %s is under way; no new order for it until it ends", e.name)
}

// errOrdersStopped refuses an order after Server.StopOrders.
var errOrdersStopped = errors.New("tlsconf: acme: no new orders in this process: it has handed over to a new one, which orders")

// StopOrders makes this process place no more ACME orders: neither new
// ones nor autocert's renewals reach the CA from now on, each held back
// with a DEBUG line; an order that already reached it ends as it would.
// Called when the process hands over to the new one of an upgrade and
// drains: the new one renews, and a renewal due in the drain would
// otherwise be ordered twice, against the CA's rate limits. The
// certificates held are served on. It applies to every Server that
// shares this one's ACME state (ShareACME).
func (s *Server) StopOrders() {
	if s.acme == nil || s.acme.stopped.Swap(true) {
		return
	}
	s.log.Debug("acme: orders and renewals stopped; the certificates held are served on")
}

// lockName makes k's the one order of popgate's under way for k.name (see
// the comment at the top of this file): it waits, until ctx is done, for
// one under way (for the other key type) to end, and refuses with a
// *nameBusyError while a renewal of the name is under way. Call release
// when the order has ended.
func (a *acmeState) lockName(ctx context.Context, k seenKey) (release func(), err error) {
	for {
		a.attMu.Lock()
		if a.renewing[k.name] > 0 {
			a.attMu.Unlock()
			return nil, &nameBusyError{k.name}
		}
		busy := a.ordering[k.name]
		if busy == nil {
			mine := make(chan struct{})
			a.ordering[k.name] = mine
			a.attMu.Unlock()
			return func() {
				a.attMu.Lock()
				delete(a.ordering, k.name)
				a.attMu.Unlock()
				close(mine)
			}, nil
		}
		a.attMu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// order orders k's certificate through autocert, unless something
// withholds the order: the back-off after a failure, the approval hook (for
// an on-demand name), a renewal of the name under way, or the budget. An
// order for the name of the other key type, or of another replica of the
// fleet, is waited for. It reports an order that reached the CA once (log,
// metric). ctx bounds only the waits for the hook and for the other order.
func (a *acmeState) order(ctx context.Context, k seenKey, onDemand bool) (*tls.Certificate, error) {
	if a.stopped.Load() {
		a.log.Debug("acme order held back: orders are stopped (this process has handed over to a new one, which orders)", "name", k.name, "key_type", k.keyType(),
			"on_demand", onDemand)
		return nil, errOrdersStopped
	}
	if err := a.backedOff(k, onDemand); err != nil {
		return nil, err
	}
	if onDemand && a.ask != nil {
		if err := a.ask.allowed(ctx, k.name); err != nil {
			var denied *askDeniedError
			if errors.As(err, &denied) {
				a.withheld(WithheldDenied)
			} else {
				a.withheld(WithheldAskFailed)
			}
			a.log.Debug("acme order held back by the approval hook", "name", k.name, "key_type", k.keyType(), "err", err)
			return nil, err
		}
	}
	release, err := a.lockName(ctx, k)
	if err != nil {
		var busy *nameBusyError
		if errors.As(err, &busy) {
			a.withheld(WithheldBusy)
		}
		a.log.Debug("acme order held back: another attempt for the name is under way", "name", k.name, "key_type", k.keyType(),
			"on_demand", onDemand, "err", err)
		return nil, err
	}
	defer release()
	// A renewal for the name may have failed while this order waited.
	if err := a.backedOff(k, onDemand); err != nil {
		return nil, err
	}
	// fleetBackoff is the back-off of a failed order, which the fleet's
	// lock keeps for the other replicas.
	var fleetBackoff time.Duration
	if a.fleet != nil {
		c, releaseFleet, err := a.fleetLock(ctx, k, onDemand)
		if err != nil || c != nil {
			return c, err
		}
		defer func() { releaseFleet(fleetBackoff) }()
	}
	class := classDomain
	if onDemand {
		class = classOnDemand
	}
	if ok, next, first := a.budget.take(class); !ok {
		a.withheld(WithheldBudget)
		if first {
			a.budgetExhausted(next)
		}
		a.log.Debug("acme order held back: the order budget is used up", "name", k.name, "key_type", k.keyType(),
			"on_demand", onDemand, "retry_after", next)
		return nil, &budgetError{next}
	}

	t := &ticket{class: class}
	a.attMu.Lock()
	a.tickets[k] = t
	a.attMu.Unlock()
	c, err := a.get(helloFor(k))
	a.attMu.Lock()
	delete(a.tickets, k)
	used, contacted := t.used, t.contacted
	a.attMu.Unlock()
	if !used {
		a.budget.give() // no order was placed
	}
	if !contacted {
		// autocert answered from its memory or the cache (written
		// meanwhile by someone else), or refused without asking the CA.
		if err != nil {
			a.log.Debug("acme certificate unavailable", "name", k.name, "key_type", k.keyType(), "err", err)
			return nil, err
		}
		return a.note(k.name, c), nil
	}
	if err != nil {
		// An order refused because it could only fail carries the
		// reason the one before failed; autocert's error then is
		// only the request that was refused.
		var refused *orderRefusedError
		var budget *budgetError
		switch {
		case errors.As(err, &refused):
			err = refused
		case errors.As(err, &budget):
			err = budget
		}
		retry := domainOrderRetry
		if onDemand {
			retry = a.limiter.retry
		}
		next := a.limiter.fail(k, retry)
		fleetBackoff = retry
		a.observe(k, OrderFailed, err.Error())
		a.log.Error("acme order failed", "name", k.name, "key_type", k.keyType(), "on_demand", onDemand,
			"err", err, "retry_after", next)
		return nil, err
	}
	a.limiter.ok(k)
	a.observe(k, OrderIssued, "")
	return a.note(k.name, c), nil
}

// backedOff returns a *heldBackError while the back-off after a failure
// holds k, counting and logging it.
func (a *acmeState) backedOff(k seenKey, onDemand bool) error {
	next, ok := a.limiter.blocked(k)
	if !ok {
		return nil
	}
	a.withheld(WithheldBackoff)
	a.log.Debug("acme order held back after a failure", "name", k.name, "key_type", k.keyType(),
		"on_demand", onDemand, "retry_after", next)
	return &heldBackError{next}
}

// budgetExhausted logs the first refusal since the budget last had room.
func (a *acmeState) budgetExhausted(next time.Time) {
	a.log.Warn("acme order budget used up; new orders wait until it refills", "budget", a.budget.size,
		"period", a.budget.period.String(), "reserve", a.budget.reserve, "next", next)
}

// OrderObserver is told of ACME orders, for metrics; admin.Metrics
// implements it. Its methods must be safe for concurrent use and not
// block.
type OrderObserver interface {
	// ACMEOrder: an attempt to obtain a certificate (a first order or a
	// renewal) that reached the CA ended; keyType is KeyECDSA or KeyRSA,
	// result OrderIssued or OrderFailed.
	ACMEOrder(keyType, result string)
	// ACMEOrderWithheld: a handshake needed a certificate that does not
	// exist, and no order was placed, for reason (WithheldBackoff,
	// WithheldBudget, WithheldDenied, WithheldAskFailed, WithheldBusy,
	// WithheldCluster).
	ACMEOrderWithheld(reason string)
}

// Order results and reasons to withhold one, as OrderObserver gets them.
const (
	OrderIssued = "issued"
	OrderFailed = "failed"

	WithheldBackoff   = "backoff"    // the last order of the certificate failed recently
	WithheldBudget    = "budget"     // the order budget is used up
	WithheldDenied    = "denied"     // the approval hook said no
	WithheldAskFailed = "ask_failed" // the approval hook did not answer, or was not asked at its cap (fail closed)
	WithheldBusy      = "busy"       // a renewal of the same name was under way, or another replica's order did not end in time
)

// observerBox lets acmeState.obs (an atomic.Value) hold an interface.
type observerBox struct{ o OrderObserver }

func (a *acmeState) observer() OrderObserver {
	if b, ok := a.obs.Load().(observerBox); ok {
		return b.o
	}
	return nil
}

// observe reports an order's result to the observer and keeps it, with
// cause (its error, "" if it issued), as the name's last order.
func (a *acmeState) observe(k seenKey, result, cause string) {
	a.lastOrders.Store(k.name, LastOrder{At: time.Now(), Err: clip(cause)})
	if o := a.observer(); o != nil {
		o.ACMEOrder(k.keyType(), result)
	}
}

func (a *acmeState) withheld(reason string) {
	if o := a.observer(); o != nil {
		o.ACMEOrderWithheld(reason)
	}
}

// ObserveOrders makes o the observer of the server's ACME orders (and of
// every server sharing its ACME client). It does nothing without ACME.
func (s *Server) ObserveOrders(o OrderObserver) {
	if s.acme != nil {
		s.acme.obs.Store(observerBox{o})
	}
}

// OrderBudgetLeft returns how many orders the ACME order budget has room
// for now; false without ACME.
func (s *Server) OrderBudgetLeft() (float64, bool) {
	if s.acme == nil {
		return 0, false
	}
	return s.acme.budget.left(), true
}

// cacheHolds reports whether the cache holds a certificate for k that
// autocert will load rather than order a new one: its checks
// (autocert.Manager.cacheGet and validCert), repeated.
func (a *acmeState) cacheHolds(ctx context.Context, k seenKey) bool {
	data, err := a.dir.Get(ctx, k.cacheKey())
	if err != nil {
		if !errors.Is(err, autocert.ErrCacheMiss) {
			a.log.Debug("acme cache read failed", "key", k.cacheKey(), "err", err)
		}
		return false
	}
	return validCached(data, k, a.limiter.now()) == nil
}

// ValidCacheEntry reports whether data, the autocert cache entry of key
// (the account key "acme_account+key", a certificate "<name>" or
// "<name>+rsa"), is one autocert would load at now rather than replace
// with a new account or order; a challenge answer never is. The fleet's
// cache (cluster.ACMECacheRestoring) uses it to put back a local copy of
// an entry missing from Redis.
func ValidCacheEntry(key string, data []byte, now time.Time) error {
	switch {
	case key == "acme_account+key":
		b, _ := pem.Decode(data)
		if b == nil || !strings.Contains(b.Type, "PRIVATE") {
			return errors.New("no private key")
		}
		_, err := parseCachedKey(b.Bytes)
		return err
	case strings.HasSuffix(key, "+token") || strings.HasSuffix(key, "+http-01"):
		return errors.New("a challenge answer")
	}
	k := seenKey{name: key}
	if n, ok := strings.CutSuffix(key, "+rsa"); ok {
		k = seenKey{name: n, rsa: true}
	}
	if k.name == "" || strings.ContainsAny(k.name, "+/") {
		return errors.New("not a certificate's cache key")
	}
	return validCached(data, k, now)
}

// validCached checks an autocert cache entry (a private key, then the
// chain, leaf first, all PEM) for k at now exactly as autocert does
// (golang.org/x/crypto v0.59.0, acme/autocert: Manager.cacheGet,
// parsePrivateKey, validCert): an entry it takes for a miss is one it
// orders a certificate for, so any entry this accepts and autocert does
// not is an order placed outside [acmeState.order]. Keep the two in step
// (TestValidCachedAgreesWithAutocert compares them).
func validCached(data []byte, k seenKey, now time.Time) error {
	priv, rest := pem.Decode(data)
	if priv == nil || !strings.Contains(priv.Type, "PRIVATE") {
		return errors.New("no private key")
	}
	key, err := parseCachedKey(priv.Bytes)
	if err != nil {
		return err
	}
	var der []byte
	for len(rest) > 0 {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		der = append(der, b.Bytes...)
	}
	if len(rest) > 0 {
		// Anything left over, white space included: autocert takes
		// the entry for corrupt.
		return errors.New("trailing data")
	}
	certs, err := x509.ParseCertificates(der)
	if err != nil || len(certs) == 0 {
		return errors.New("no certificate")
	}
	leaf := certs[0]
	switch {
	case now.Before(leaf.NotBefore):
		return errors.New("not valid yet")
	case now.After(leaf.NotAfter):
		return errors.New("expired")
	}
	if err := leaf.VerifyHostname(k.name); err != nil {
		return err
	}
	if revokedLetsEncrypt(leaf) {
		return errors.New("probably revoked by Let's Encrypt in January 2022")
	}
	switch pub := leaf.PublicKey.(type) {
	case *rsa.PublicKey:
		if prv, ok := key.(*rsa.PrivateKey); !ok || !k.rsa || pub.N.Cmp(prv.N) != 0 {
			return errors.New("key does not match")
		}
	case *ecdsa.PublicKey:
		// autocert compares X and Y; Equal compares the same point
		// (and the curve) without the coordinates Go 1.26 deprecated.
		if prv, ok := key.(*ecdsa.PrivateKey); !ok || k.rsa || !pub.Equal(&prv.PublicKey) {
			return errors.New("key does not match")
		}
	default:
		return errors.New("unknown key type")
	}
	return nil
}

// revokedLetsEncrypt is autocert's isRevokedLetsEncrypt: a Let's Encrypt
// certificate issued before its TLS-ALPN-01 fix of January 2022.
func revokedLetsEncrypt(leaf *x509.Certificate) bool {
	o := leaf.Issuer.Organization
	return len(o) == 1 && o[0] == "Let's Encrypt" &&
		leaf.NotBefore.Before(time.Date(2022, time.January, 26, 0, 48, 0, 0, time.UTC))
}

// parseCachedKey parses a private key as autocert writes (and reads) them:
// PKCS #1, PKCS #8 (RSA or ECDSA only) or SEC 1.
func parseCachedKey(der []byte) (crypto.Signer, error) {
	if key, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return key, nil
	}
	if key, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch key := key.(type) {
		case *rsa.PrivateKey:
			return key, nil
		case *ecdsa.PrivateKey:
			return key, nil
		}
		return nil, errors.New("unknown private key type")
	}
	if key, err := x509.ParseECPrivateKey(der); err == nil {
		return key, nil
	}
	return nil, errors.New("failed to parse private key")
}
