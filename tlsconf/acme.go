package tlsconf

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/internal/osslsign"
	"github.com/popgate/popgate/internal/safefile"
)

// LetsEncryptURL is the directory of Let's Encrypt's production CA, used
// when ACMEConfig.DirectoryURL is empty. LetsEncryptStagingURL is its
// staging CA, for trying a setup without hitting production rate limits.
const (
	LetsEncryptURL        = autocert.DefaultACMEDirectory
	LetsEncryptStagingURL = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// ACMEConfig configures certificates obtained with ACME (RFC 8555) through
// golang.org/x/crypto/acme/autocert.
type ACMEConfig struct {
	// Domains is the host policy: the only names popgate orders
	// certificates for. Required; no wildcards (autocert has no DNS-01).
	Domains []string
	// Email is the account's contact address; "" registers without one.
	Email string
	// CacheDir holds the account key and the certificates. Required; it
	// is created with mode 0700. A restart with a filled cache orders
	// nothing. It, the directories above it and every file read from it
	// must be safe from other users, as OpenSSH's StrictModes requires
	// of ~/.ssh (see cache.go): NewServer refuses a directory that is
	// not, and a file that is not is refused when read.
	CacheDir string
	// InsecureCachePermissions turns off the ownership and permission
	// checks of CacheDir and its files (a WARN at every start), for a
	// volume whose permissions cannot be fixed: anyone who can write
	// there can then make popgate serve a certificate of their choosing.
	InsecureCachePermissions bool
	// DirectoryURL is the CA's directory; "" means [LetsEncryptURL].
	DirectoryURL string
	// CAFile is a PEM file of roots trusted for the CA's HTTPS endpoint
	// (a private ACME server); "" means the system roots. Like a
	// [CertFile], a regular file of at most 1 MiB.
	CAFile string
	// HTTPChallenge is the address of the HTTP-01 answerer (RFC 8555
	// §8.3; the CA connects to port 80); "" disables HTTP-01.
	HTTPChallenge string
	// TLSALPNChallenge is the address of the TLS-ALPN-01 answerer
	// (RFC 8737; the CA connects to port 443); "" disables the separate
	// answerer. Then the TLS listeners answer TLS-ALPN-01 only when
	// HTTPChallenge is empty too (for a setup that forwards 443 to them).
	TLSALPNChallenge string
	// RenewBefore is how long before expiry a certificate is renewed; 0
	// means autocert's default (30 days).
	RenewBefore time.Duration
	// AllowHost, when set, extends the policy beyond Domains: a name that
	// is not one of Domains, is a valid DNS name and for which AllowHost
	// returns true gets a certificate ordered at its first handshake (on
	// demand; see [RouteNames]). It gets names lower-cased without a
	// trailing dot, is called on handshakes and HTTP-01 requests, and
	// must be fast and safe for concurrent use. Names it refuses never
	// cause an order. The SNI-less default stays DefaultServerName.
	AllowHost func(name string) bool
	// OrderBudget bounds the orders placed with the CA, first orders and
	// renewals of every name together, as a token bucket: at most
	// OrderBudget at once, refilled evenly by OrderBudget per
	// OrderBudgetPeriod. 0 means [DefaultOrderBudget]; a zero period
	// [DefaultOrderBudgetPeriod].
	OrderBudget       int
	OrderBudgetPeriod time.Duration
	// OrderBudgetReserve is how many of the budget's orders on-demand
	// names (AllowHost), first orders and renewals, leave to Domains and
	// their renewals: an on-demand order is placed only while more than
	// that many are left. 0 means a fifth of OrderBudget, rounded up;
	// negative means none.
	OrderBudgetReserve int
	// AskURL, when set, is the approval hook: before every new order for
	// an AllowHost name (not for Domains, not for renewals) popgate asks
	// GET AskURL with the query parameter domain=NAME added, as Caddy's
	// on-demand TLS asks its "ask" endpoint. A 2xx answer allows the
	// order; any other status (a redirect is not followed), a network
	// error or no answer within AskTimeout refuses it. Answers are cached
	// for a minute (failures for 10 s); concurrent handshakes for a name
	// share one request. popgate sends no credentials and nothing about
	// the client. "" means no hook: AllowHost alone decides.
	AskURL string
	// AskTimeout bounds one request to AskURL; 0 means
	// [DefaultAskTimeout].
	AskTimeout time.Duration
	// OrderRetry is how long after a failed order (or renewal) for an
	// AllowHost name no new order or renewal is placed for it and the
	// same key type (handshakes that need that certificate fail
	// meanwhile; a certificate that exists is still served); 0 means
	// [DefaultOrderRetry]. For Domains it is a minute.
	OrderRetry time.Duration
	// Cache, when set, makes the cache autocert uses out of the one over
	// CacheDir (dir): a fleet's shared cache, which may keep dir as a
	// local copy. Its Get must return autocert.ErrCacheMiss only for an
	// entry that does not exist: any other error is an entry popgate
	// neither serves nor replaces with a new order.
	Cache func(dir autocert.Cache) autocert.Cache
	// OrderLock, when set, is the fleet's lock per name: an order or a
	// renewal is placed only by the replica that holds it; the others
	// wait for the certificate to appear in Cache. An order that cannot
	// take it (the lock's store is unreachable) is withheld.
	OrderLock OrderLock
}

// OrderLock is a lock per name shared by the replicas of a fleet (see
// ACMEConfig.OrderLock). Its methods must be safe for concurrent use.
type OrderLock interface {
	// TryLock takes name's lock unless another replica holds it (held
	// false), or the back-off after the fleet's last failed order of the
	// name holds it (held false, until when it ends). err means it cannot
	// tell (the store is unreachable). A lock taken is kept until
	// release is called, and ends on its own should the process die;
	// release with backoff > 0 (the order failed) keeps the name from
	// being ordered by any replica for that long.
	TryLock(name string) (release func(backoff time.Duration), held bool, until time.Time, err error)
}

// tlsALPN reports whether TLS-ALPN-01 is answered at all.
func (a *ACMEConfig) tlsALPN() bool { return a.TLSALPNChallenge != "" || a.HTTPChallenge == "" }

// acmeState is the ACME side of a Server.
type acmeState struct {
	m       *autocert.Manager
	domains []string        // normalized, in configuration order
	allowed map[string]bool // the same, as a set
	log     *slog.Logger
	// allowHost is ACMEConfig.AllowHost.
	allowHost func(string) bool
	// limiter withholds new orders after a failure, per name and key
	// type.
	limiter *orderLimiter
	// get obtains the certificate for hello.ServerName (in policy); it is
	// m.GetCertificate, replaced by tests. It is only called with a hello
	// from helloFor.
	get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// stored reports whether the cache holds a valid certificate; it is
	// cacheHolds, replaced by tests.
	stored func(context.Context, seenKey) bool
	dir    autocert.Cache // strictCache over cache_dir, or ACMEConfig.Cache made of it
	// fleet is ACMEConfig.OrderLock; nil for a single node.
	fleet OrderLock
	// fleetPoll is how often an order waiting for another replica's
	// reads the cache (fleetPoll).
	fleetPoll time.Duration
	// probe is a certificate with only an ECDSA P-256 key (wantsRSA).
	probe *tls.Certificate
	// seen holds the certificates served, by seenKey: autocert keeps
	// those in memory.
	seen sync.Map
	// lastOrders holds each name's last order (first or renewal) that
	// reached the CA: a LastOrder by name.
	lastOrders sync.Map

	// budget bounds the orders placed with the CA.
	budget *orderBudget
	// ask is the approval hook for on-demand orders; nil without one.
	ask *approver
	// obs is told of orders; it holds an OrderObserver (see
	// Server.ObserveOrders), or nothing.
	obs atomic.Value
	// stopped: no order reaches the CA any more, neither popgate's nor
	// autocert's renewals (Server.StopOrders).
	stopped atomic.Bool

	mu      sync.Mutex
	flights map[seenKey]*flight // orders under way

	attMu    sync.Mutex
	attempts map[context.Context]*attempt // autocert's attempts under way, by their context
	tickets  map[seenKey]*ticket          // the orders popgate asked autocert for, under way
	// ordering holds the names an order of popgate's is under way for, at
	// most one per name whatever the key type (see lockName); the channel
	// is closed when it ends.
	ordering map[string]chan struct{}
	// renewing counts, by name, the renewals under way that were allowed
	// an order: no order of popgate's starts for the name meanwhile.
	renewing map[string]int
}

// seenKey names an ACME certificate: autocert keeps an ECDSA and, for
// clients that need it, an RSA certificate per name.
type seenKey struct {
	name string
	rsa  bool
}

type seenCert struct {
	cert     *tls.Certificate // as autocert returned it
	served   *tls.Certificate // cert with its key passed through osslsign
	notAfter time.Time
}

// note records c, which autocert returned for name, and returns the
// certificate to serve in its place: c, or with the openssl build tag a copy
// whose RSA key signs with libcrypto. It costs a map read per handshake; the
// leaf is parsed, and the key wrapped, only for a certificate not seen
// before (autocert returns the same *tls.Certificate until a renewal or a
// new order replaces it), so a renewed key is picked up as it comes.
func (a *acmeState) note(name string, c *tls.Certificate) *tls.Certificate {
	_, isRSA := c.PrivateKey.(*rsa.PrivateKey)
	k := seenKey{name, isRSA}
	if v, ok := a.seen.Load(k); ok && v.(seenCert).cert == c {
		return v.(seenCert).served
	}
	served := osslsign.Certificate(c)
	if leaf := leafOf(c); leaf != nil {
		a.seen.Store(k, seenCert{c, served, leaf.NotAfter})
	}
	return served
}

// expiry adds the ACME certificates seen so far to m (name → the earliest
// expiry among the name's certificates).
func (a *acmeState) expiry(m map[string]time.Time) {
	a.seen.Range(func(k, v any) bool {
		name, t := k.(seenKey).name, v.(seenCert).notAfter
		if old, ok := m[name]; !ok || t.Before(old) {
			m[name] = t
		}
		return true
	})
}

// newACME checks cfg, creates the cache directory and builds the manager.
// It contacts nobody.
func newACME(cfg *ACMEConfig, log *slog.Logger) (*acmeState, error) {
	a := &acmeState{
		allowed:   map[string]bool{},
		log:       log,
		allowHost: cfg.AllowHost,
		limiter:   newOrderLimiter(cfg.OrderRetry),
		dir:       &strictCache{dir: cfg.CacheDir, insecure: cfg.InsecureCachePermissions},
		fleet:     cfg.OrderLock,
		fleetPoll: fleetPoll,
		flights:   map[seenKey]*flight{},
		attempts:  map[context.Context]*attempt{},
		tickets:   map[seenKey]*ticket{},
		ordering:  map[string]chan struct{}{},
		renewing:  map[string]int{},
		budget:    newOrderBudget(cfg.OrderBudget, cfg.OrderBudgetPeriod, cfg.OrderBudgetReserve, time.Now),
	}
	a.stored = a.cacheHolds
	if cfg.Cache != nil {
		a.dir = cfg.Cache(a.dir)
	}
	var err error
	if cfg.AskURL != "" {
		if a.ask, err = newApprover(cfg.AskURL, cfg.AskTimeout, log); err != nil {
			return nil, err
		}
	}
	if a.probe, err = newECDSAProbe(); err != nil {
		return nil, err
	}
	if len(cfg.Domains) == 0 {
		return nil, errors.New("tlsconf: acme: no domains")
	}
	for _, d := range cfg.Domains {
		n := normalizeName(d)
		if err := checkACMEName(n); err != nil {
			return nil, fmt.Errorf("tlsconf: acme: domain %q: %w", d, err)
		}
		if !a.allowed[n] {
			a.allowed[n] = true
			a.domains = append(a.domains, n)
		}
	}
	if cfg.CacheDir == "" {
		return nil, errors.New("tlsconf: acme: no cache directory")
	}
	if err := checkCache(cfg.CacheDir, cfg.InsecureCachePermissions, log); err != nil {
		return nil, err
	}
	dirURL := cfg.DirectoryURL
	if dirURL == "" {
		dirURL = LetsEncryptURL
	}
	if u, err := url.Parse(dirURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("tlsconf: acme: directory URL %q is not an https:// URL", dirURL)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CAFile != "" {
		pool, err := loadPool(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: acme: %w", err)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var rt http.RoundTripper = transport
	if !cfg.tlsALPN() {
		// autocert always tries TLS-ALPN-01 first and HTTP-01 only after
		// that failed, in a new order. Without a TLS-ALPN-01 answerer that
		// is one failed validation per issuance (Let's Encrypt limits
		// those per hour), so the CA's offer is trimmed to HTTP-01.
		rt = &challengeFilter{next: transport, keep: "http-01"}
	}
	ct := &caTransport{a: a, next: rt, dirURL: dirURL}
	if cfg.tlsALPN() {
		ct.answered = append(ct.answered, "tls-alpn-01")
	}
	if cfg.HTTPChallenge != "" {
		ct.answered = append(ct.answered, "http-01")
	}
	a.m = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       &loggingCache{Cache: a.dir, log: log, read: a.cacheRead, wrote: a.cacheWrote},
		HostPolicy:  a.hostPolicy,
		RenewBefore: cfg.RenewBefore,
		Email:       cfg.Email,
		Client: &acme.Client{
			DirectoryURL: dirURL,
			HTTPClient:   &http.Client{Transport: ct}, // caTransport bounds each request
			UserAgent:    "popgate",
			RetryBackoff: retryBackoff,
		},
	}
	a.get = a.m.GetCertificate
	return a, nil
}

// retryBackoff is the ACME client's RetryBackoff: up to three quick
// retries of a request the CA failed (5xx) or refused for a bad nonce, none
// of a rate limit (429). The client's default honours Retry-After, which
// for a rate limit can be hours: a handshake would wait for autocert's
// 5 minutes and then fail anyway, while more handshakes pile up.
func retryBackoff(n int, _ *http.Request, resp *http.Response) time.Duration {
	if resp.StatusCode == http.StatusTooManyRequests || n > 3 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// hostPolicy is autocert's host policy: the explicit domains, then
// AllowHost. autocert consults it before an order and on HTTP-01 requests.
func (a *acmeState) hostPolicy(_ context.Context, host string) error {
	if !a.inPolicy(host) {
		return fmt.Errorf("tlsconf: acme: host %q is not in tls.acme.domains or the on-demand policy", host)
	}
	return nil
}

// checkACMEName refuses names an ACME CA cannot validate with HTTP-01 or
// TLS-ALPN-01.
func checkACMEName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case strings.Contains(n, "*"):
		return errors.New("wildcards need DNS-01, which autocert does not do; use a static certificate")
	case net.ParseIP(n) != nil:
		return errors.New("an IP address; ACME certificates here are for host names")
	case !strings.Contains(n, "."):
		return errors.New("not a fully qualified name")
	case strings.ContainsAny(n, " /:@[]"):
		return errors.New("not a host name")
	}
	return nil
}

// wantsChallenge reports whether hello is a TLS-ALPN-01 validation: it
// offers exactly the protocol "acme-tls/1" (RFC 8737 §3). Only such
// handshakes ever get a challenge certificate.
func wantsChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
}

// certificate returns the ACME certificate for name, one of the explicit
// domains (see [acmeState.serve]).
func (a *acmeState) certificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	return a.serve(hello, name, false)
}

// prefetch obtains (or loads from the cache) the ECDSA certificate of every
// domain, so that the first client does not wait for an order, and logs
// what it has. An RSA certificate is ordered when a client needs one.
func (a *acmeState) prefetch(ctx context.Context) {
	for _, d := range a.domains {
		if ctx.Err() != nil {
			return
		}
		c, err := a.obtain(ctx, seenKey{d, false}, false)
		if err != nil {
			continue // logged by order
		}
		if leaf := leafOf(c); leaf != nil {
			a.log.Info("acme certificate ready", "name", d, "not_after", leaf.NotAfter,
				"issuer", leaf.Issuer.String(), "serial", leaf.SerialNumber.Text(16))
		}
	}
}

func leafOf(c *tls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// loggingCache is autocert's cache with a log line for every certificate
// autocert stores: that is the moment one was obtained or renewed, which
// autocert itself does not report. It tells read (if set) of every read, so
// that autocert's attempts can be followed (see attempts.go).
type loggingCache struct {
	autocert.Cache
	log   *slog.Logger
	read  func(ctx context.Context, key string)
	wrote func(ctx context.Context, key string) // after a successful Put; may be nil
}

// Get reads key from the cache.
func (c *loggingCache) Get(ctx context.Context, key string) ([]byte, error) {
	if c.read != nil {
		c.read(ctx, key)
	}
	return c.Cache.Get(ctx, key)
}

// Put logs "acme certificate obtained" (nothing was cached under the key)
// or "acme certificate renewed", with the name, expiry and issuer.
func (c *loggingCache) Put(ctx context.Context, key string, data []byte) error {
	isCert := key != "acme_account+key" && !strings.HasSuffix(key, "+token") &&
		!strings.HasSuffix(key, "+http-01") && !strings.HasSuffix(key, ".key")
	var had bool
	if isCert {
		_, err := c.Cache.Get(ctx, key)
		had = err == nil
	}
	if err := c.Cache.Put(ctx, key, data); err != nil {
		c.log.Error("acme cache write failed", "key", key, "err", err)
		return err
	}
	if c.wrote != nil {
		c.wrote(ctx, key)
	}
	if !isCert {
		return nil
	}
	msg := "acme certificate obtained"
	if had {
		msg = "acme certificate renewed"
	}
	name, _, _ := strings.Cut(key, "+") // "mail.example.com+rsa"
	attrs := []any{"name", name, "key_type", "ecdsa"}
	if strings.HasSuffix(key, "+rsa") {
		attrs[3] = "rsa"
	}
	if leaf := firstCert(data); leaf != nil {
		attrs = append(attrs, "not_after", leaf.NotAfter, "issuer", leaf.Issuer.String(),
			"serial", leaf.SerialNumber.Text(16))
	}
	c.log.Info(msg, attrs...)
	return nil
}

// firstCert parses the first CERTIFICATE block of an autocert cache entry
// (the private key comes first).
func firstCert(data []byte) *x509.Certificate {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil
		}
		if b.Type == "CERTIFICATE" {
			leaf, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil
			}
			return leaf
		}
	}
}

// challengeFilter removes from the CA's authorization objects (RFC 8555
// §7.1.4) every challenge whose type is not keep, so that autocert picks
// only a challenge popgate answers.
type challengeFilter struct {
	next http.RoundTripper
	keep string
}

// maxACMEResponse bounds the responses the filter reads.
const maxACMEResponse = 1 << 20

func (f *challengeFilter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return resp, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxACMEResponse+1))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(body) <= maxACMEResponse {
		body = filterChallenges(body, f.keep)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
	return resp, nil
}

// filterChallenges returns body with only the challenges of type keep, if
// body is an authorization object; else body unchanged.
func filterChallenges(body []byte, keep string) []byte {
	var obj map[string]json.RawMessage
	if json.Unmarshal(body, &obj) != nil || obj["identifier"] == nil || obj["challenges"] == nil {
		return body
	}
	var chals []map[string]json.RawMessage
	if json.Unmarshal(obj["challenges"], &chals) != nil {
		return body
	}
	want, _ := json.Marshal(keep)
	chals = slices.DeleteFunc(chals, func(c map[string]json.RawMessage) bool {
		return !bytes.Equal(c["type"], want)
	})
	raw, err := json.Marshal(chals)
	if err != nil {
		return body
	}
	obj["challenges"] = raw
	out, err := json.Marshal(obj)
	if err != nil {
		return body
	}
	return out
}

// loadPool reads a PEM file of CA certificates.
func loadPool(file string) (*x509.CertPool, error) {
	data, err := safefile.ReadFile(file, safefile.Options{})
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}
