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
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

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
	// OrderRetry is how long after a failed order for an AllowHost name
	// no new order is placed for it (handshakes for it fail meanwhile);
	// 0 means [DefaultOrderRetry].
	OrderRetry time.Duration
}

// tlsALPN reports whether TLS-ALPN-01 is answered at all.
func (a *ACMEConfig) tlsALPN() bool { return a.TLSALPNChallenge != "" || a.HTTPChallenge == "" }

// acmeState is the ACME side of a Server.
type acmeState struct {
	m       *autocert.Manager
	domains []string        // normalized, in configuration order
	allowed map[string]bool // the same, as a set
	log     *slog.Logger
	// allowHost is ACMEConfig.AllowHost; limiter rate-limits orders for
	// the names it allows.
	allowHost func(string) bool
	limiter   *orderLimiter
	// get obtains the certificate for hello.ServerName (in policy); it is
	// m.GetCertificate, replaced by tests.
	get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// seen holds the expiry of the certificates served, by seenKey.
	seen sync.Map
}

// seenKey names an ACME certificate: autocert keeps an ECDSA and, for
// clients that need it, an RSA certificate per name.
type seenKey struct {
	name string
	rsa  bool
}

type seenCert struct {
	cert     *tls.Certificate
	notAfter time.Time
}

// note records c as the certificate served for name. It costs a map read
// per handshake; the leaf is parsed only for a certificate not seen before.
func (a *acmeState) note(name string, c *tls.Certificate) {
	_, isRSA := c.PrivateKey.(*rsa.PrivateKey)
	k := seenKey{name, isRSA}
	if v, ok := a.seen.Load(k); ok && v.(seenCert).cert == c {
		return
	}
	if leaf := leafOf(c); leaf != nil {
		a.seen.Store(k, seenCert{c, leaf.NotAfter})
	}
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
	a := &acmeState{allowed: map[string]bool{}, log: log, allowHost: cfg.AllowHost, limiter: newOrderLimiter(cfg.OrderRetry)}
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
	a.m = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       &loggingCache{Cache: &strictCache{dir: cfg.CacheDir, insecure: cfg.InsecureCachePermissions}, log: log},
		HostPolicy:  a.hostPolicy,
		RenewBefore: cfg.RenewBefore,
		Email:       cfg.Email,
		Client: &acme.Client{
			DirectoryURL: dirURL,
			HTTPClient:   &http.Client{Transport: rt, Timeout: 2 * time.Minute},
			UserAgent:    "popgate",
		},
	}
	a.get = a.m.GetCertificate
	return a, nil
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

// certificate returns the ACME certificate for name, which must be in
// the policy, and logs a failure.
func (a *acmeState) certificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	h := *hello
	h.ServerName = name // autocert refuses an empty SNI, so the default name stands in
	c, err := a.get(&h)
	if err != nil {
		a.log.Error("acme certificate unavailable", "name", name, "err", err)
		return nil, fmt.Errorf("tlsconf: acme certificate for %q: %w", name, err)
	}
	a.note(name, c)
	return c, nil
}

// prefetch obtains (or loads from the cache) the certificate of every
// domain, so that the first client does not wait for an order, and logs
// what it has.
func (a *acmeState) prefetch(ctx context.Context) {
	for _, d := range a.domains {
		if ctx.Err() != nil {
			return
		}
		// A hello as a current client sends it, so that the ECDSA
		// certificate is the one obtained (autocert orders an RSA one
		// on demand for clients that need it).
		c, err := a.get(&tls.ClientHelloInfo{
			ServerName:       d,
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			SupportedCurves:  []tls.CurveID{tls.CurveP256},
			CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		})
		if err != nil {
			a.log.Error("acme certificate unavailable", "name", d, "err", err)
			continue
		}
		a.note(d, c)
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
// autocert itself does not report.
type loggingCache struct {
	autocert.Cache
	log *slog.Logger
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
