package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/popgate/popgate/internal/filewatch"
	"github.com/popgate/popgate/internal/osslsign"
	"github.com/popgate/popgate/internal/safefile"
)

// ALPN is the application protocol the server config offers (RFC 7301 ID
// "pop3"). A client that offers ALPN without it is refused, so a TLS
// connection meant for another protocol cannot be redirected to POP3 (the
// ALPACA attack); clients that send no ALPN at all are served.
const ALPN = "pop3"

// CertFile names a certificate and its private key, both PEM files. Cert may
// hold the full chain, leaf first. Each must be a regular file (symbolic
// links are followed) of at most 1 MiB: a named pipe, a device or a larger
// file is refused without blocking or reading it whole.
type CertFile struct {
	Cert string
	Key  string
}

// ServerConfig configures a [Server].
type ServerConfig struct {
	// Certificates are the static certificates, chosen by SNI. None (and
	// no ACME) means a generated self-signed certificate (and a WARN).
	Certificates []CertFile
	// ACME, when set, obtains certificates for ACME.Domains. A name a
	// static certificate covers uses that certificate; other names in
	// ACME.Domains (or allowed by ACME.AllowHost) get the ACME one; names
	// outside all of these get the default certificate and never cause an
	// order.
	ACME *ACMEConfig
	// DefaultServerName picks the certificate for clients that send no SNI
	// or a name no certificate covers. It must be covered by one of
	// Certificates or be one of ACME.Domains. "" means the first
	// certificate, or without static certificates the first ACME domain.
	DefaultServerName string
	// MinVersion is the lowest TLS version accepted: "1.0" .. "1.3".
	// "" means "1.2".
	MinVersion string
	// Logger receives load warnings and reload notices. nil discards.
	Logger *slog.Logger
	// Previous, when set, is the Server this one replaces (a
	// configuration reload that changed [tls]): a certificate that is
	// not valid now is refused in place of a valid one read from the
	// same files there, as [Server.Reload] refuses it. The new Server
	// does not keep a reference to it.
	Previous *Server
	// ShareACME, when set, makes the new Server use ShareACME's ACME
	// client (its manager, renewals, challenge answerers and the
	// expiries seen) instead of starting one from ACME, which is then
	// ignored. A configuration reload that keeps [tls.acme] as it was
	// uses it: two ACME clients for the same names would each renew them.
	ShareACME *Server
	// SessionTickets, when set, seals and opens the session tickets of
	// the config with its keys, which outlive the Server: a reload that
	// builds a new Server keeps the tickets issued before it resuming.
	// nil leaves crypto/tls's own keys, made for this config alone.
	SessionTickets *Tickets
	// NoSessionTickets issues no session tickets and resumes none: every
	// connection makes a full handshake. SessionTickets is then ignored.
	NoSessionTickets bool
}

// Server is the server-side certificate store. Its GetCertificate reads the
// current set without locking; [Server.Reload] swaps in a new set only when
// every file loaded. It is safe for concurrent use.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	config *tls.Config
	set    atomic.Pointer[certSet]
	acme   *acmeState       // nil without ACME
	now    func() time.Time // time.Now; tests set another clock

	// mu orders reloads; it is never held while files are read, so that
	// a read that takes long holds up nothing else.
	mu     sync.Mutex
	begun  uint64 // reloads begun
	stored uint64 // the reload whose set is in use (0: NewServer's)
	// read is the certificate files (certificate, key, in configuration
	// order) as the latest reload to read them found them, loaded or
	// refused; readBy is that reload. Watch compares the files with it.
	read   filewatch.Snapshot
	readBy uint64
}

// certSet is one immutable generation of loaded certificates.
type certSet struct {
	certs    []*tls.Certificate
	files    []CertFile                    // where certs were read from, for static sets
	exact    map[string][]*tls.Certificate // "mail.example.com"
	wildcard map[string][]*tls.Certificate // "example.com" for "*.example.com"
	defaults []*tls.Certificate            // nil: the default is acmeDefault's ACME certificate
	// acmeDefault is the ACME name that stands in for a missing SNI (and
	// for names nothing covers) when no static certificate is the
	// default; "" otherwise.
	acmeDefault string
	names       []string
	selfSigned  bool
}

// NewServer loads and checks every certificate/key pair in cfg. An
// unreadable or mismatched file is an error naming it. A certificate that
// is not valid now loads with an ERROR in the log (unless it would replace
// a valid one of cfg.Previous): at start nothing better is at hand.
// Without Certificates it generates a self-signed certificate for
// DefaultServerName (or "localhost") plus localhost, 127.0.0.1 and ::1,
// and logs a WARN.
func NewServer(cfg ServerConfig) (*Server, error) {
	minVersion, err := ParseVersion(cfg.MinVersion)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, now: time.Now}
	s.cfg.Certificates = slices.Clone(cfg.Certificates)
	// What is shared is taken below; keeping the Server itself would chain
	// each reload's store to the one before, none ever freed.
	s.cfg.ShareACME = nil
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	nextProtos := []string{ALPN}
	if cfg.ShareACME != nil && cfg.ShareACME.acme != nil {
		s.acme = cfg.ShareACME.acme
		s.cfg.ACME = cfg.ShareACME.cfg.ACME
		if s.cfg.ACME.tlsALPN() {
			nextProtos = append(nextProtos, acme.ALPNProto)
		}
	} else if cfg.ACME != nil {
		acmeCfg := *cfg.ACME
		s.cfg.ACME = &acmeCfg
		if s.acme, err = newACME(&acmeCfg, s.log); err != nil {
			return nil, err
		}
		if acmeCfg.tlsALPN() {
			// Server preference decides ALPN, so a client offering both
			// gets "pop3"; only a hello offering nothing but acme-tls/1
			// gets a challenge certificate (wantsChallenge).
			nextProtos = append(nextProtos, acme.ALPNProto)
		}
	}
	var set *certSet
	switch {
	case len(cfg.Certificates) > 0:
		var prev *certSet
		if cfg.Previous != nil {
			prev = cfg.Previous.set.Load()
		}
		set, s.read, err = s.load(prev)
	case s.acme != nil:
		set, err = s.index(nil, false)
	default:
		set, err = s.selfSigned()
	}
	if err != nil {
		return nil, err
	}
	s.cfg.Previous = nil // kept, it would chain every store to the one before
	s.set.Store(set)
	// One config for every listener (or its Clone, which keeps the
	// ticket hooks), so that all share session tickets.
	s.config = &tls.Config{
		MinVersion:             minVersion,
		CipherSuites:           cipherSuites(minVersion),
		GetCertificate:         s.getCertificate,
		NextProtos:             nextProtos,
		SessionTicketsDisabled: cfg.NoSessionTickets,
	}
	if cfg.SessionTickets != nil && !cfg.NoSessionTickets {
		cfg.SessionTickets.Apply(s.config)
	}
	s.cfg.SessionTickets = nil // the caller's; nothing here needs it again
	return s, nil
}

// TLSConfig returns the server config. Every call returns the same value so
// that listeners share session ticket keys; do not modify it. A Clone keeps
// the keys of ServerConfig.SessionTickets (without them, a Clone made before
// first use gets its own ticket keys).
//
// GetCertificate picks, for the client's SNI: the certificate with that exact
// name (case-insensitive, trailing dot ignored), else one with a wildcard for
// the left-most label ("*.example.com" covers "a.example.com", not
// "a.b.example.com", RFC 6125 §6.4.3), else the ACME certificate when the
// name is an ACME domain, else DefaultServerName's certificate (static or
// ACME), else the first. A TLS-ALPN-01 validation (ALPN "acme-tls/1" alone)
// gets autocert's challenge certificate. Among several certificates for a name (say ECDSA and RSA),
// the first the client supports wins.
func (s *Server) TLSConfig() *tls.Config { return s.config }

// SelfSigned reports whether the server serves its generated certificate.
func (s *Server) SelfSigned() bool { return s.set.Load().selfSigned }

// Names returns the DNS names the loaded certificates cover (from their
// SANs), lowercased, sorted, wildcards included as "*.example.com".
func (s *Server) Names() []string { return slices.Clone(s.set.Load().names) }

// Leaves returns the parsed leaf certificates, in configuration order.
func (s *Server) Leaves() []*x509.Certificate {
	set := s.set.Load()
	leaves := make([]*x509.Certificate, len(set.certs))
	for i, c := range set.certs {
		leaves[i] = c.Leaf
	}
	return leaves
}

// Reload re-reads every certificate file. On any error it keeps serving the
// previous set and returns the error, which names the file; for a file
// refused, a [*CertificateError]. A certificate that is not valid now
// (expired, or not yet valid) is refused in place of one from the same
// files that is: the error names both dates. One that replaces a
// certificate no better loads, with an ERROR in the log. With no
// configured certificates it does nothing. Reloads may run concurrently
// (the file watch and SIGHUP): no lock is held while the files are read,
// and a reload that finishes after one begun later discards what it read.
func (s *Server) Reload() error {
	if len(s.cfg.Certificates) == 0 {
		return nil
	}
	s.mu.Lock()
	s.begun++
	n := s.begun
	s.mu.Unlock()
	set, read, err := s.load(s.set.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > s.readBy {
		s.read, s.readBy = read, n
	}
	if err != nil {
		return err
	}
	if n < s.stored {
		return nil // a later reload read the files after this one did
	}
	s.stored = n
	s.set.Store(set)
	s.log.Info("tls certificates reloaded", "names", set.names)
	return nil
}

// ACME reports whether the server obtains certificates with ACME.
func (s *Server) ACME() bool { return s.acme != nil }

// Expiry returns, for every name the server holds a certificate for, when
// the certificate expires (the earliest, when a name has several): static
// certificates by the DNS names of their leaves, ACME certificates by the
// name they were served for, once served (or fetched at start-up).
func (s *Server) Expiry() map[string]time.Time {
	m := make(map[string]time.Time)
	for _, c := range s.set.Load().certs {
		if c.Leaf == nil {
			continue
		}
		for _, n := range c.Leaf.DNSNames {
			n = strings.ToLower(n)
			if old, ok := m[n]; !ok || c.Leaf.NotAfter.Before(old) {
				m[n] = c.Leaf.NotAfter
			}
		}
	}
	if s.acme != nil {
		s.acme.expiry(m)
	}
	return m
}

// MissingACME returns the tls.acme.domains the server has no certificate
// for yet (the order is under way or failed); nil when all are there.
func (s *Server) MissingACME() []string {
	if s.acme == nil {
		return nil
	}
	var missing []string
	for _, d := range s.acme.domains {
		if _, ok := s.acme.seen.Load(seenKey{d, false}); ok {
			continue
		}
		if _, ok := s.acme.seen.Load(seenKey{d, true}); ok {
			continue
		}
		missing = append(missing, d)
	}
	return missing
}

// getCertificate: a TLS-ALPN-01 validation gets autocert's challenge
// certificate; else a static certificate covering the SNI; else the ACME
// certificate when the SNI is an ACME domain, or an on-demand name
// (ACMEConfig.AllowHost, rate-limited after failures); else the default: the
// default name's static certificate, or its ACME certificate. No SNI is the
// default name (autocert alone refuses an empty SNI; old clients send none).
func (s *Server) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil && wantsChallenge(hello) {
		return s.acme.m.GetCertificate(hello)
	}
	set := s.set.Load()
	if hello.ServerName != "" {
		if certs := set.lookup(hello.ServerName); certs != nil {
			return pick(hello, certs), nil
		}
		if name := normalizeName(hello.ServerName); s.acme != nil && s.acme.allowed[name] {
			return s.acme.certificate(hello, name)
		} else if s.acme != nil && s.acme.onDemand(name) {
			return s.acme.onDemandCertificate(hello, name)
		}
		s.log.Debug("tls sni not covered, using default certificate", "sni", hello.ServerName)
	}
	if set.defaults == nil {
		return s.acme.certificate(hello, set.acmeDefault)
	}
	return pick(hello, set.defaults), nil
}

// lookup returns the certificates covering name: exact first, then a
// wildcard for the left-most label only.
func (set *certSet) lookup(name string) []*tls.Certificate {
	name = normalizeName(name)
	if certs, ok := set.exact[name]; ok {
		return certs
	}
	if i := strings.IndexByte(name, '.'); i > 0 && i < len(name)-1 {
		return set.wildcard[name[i+1:]]
	}
	return nil
}

// pick returns the first of certs the client can use, or the first one when
// it can use none (the handshake then fails with a clear alert).
func pick(hello *tls.ClientHelloInfo, certs []*tls.Certificate) *tls.Certificate {
	if len(certs) > 1 {
		for _, c := range certs {
			if hello.SupportsCertificate(c) == nil {
				return c
			}
		}
	}
	return certs[0]
}

// load reads every configured pair into a new certSet. prev is the set it
// replaces (nil at start). A certificate that is not valid now is refused
// in place of a valid one read from the same files in prev; without one
// (at start, or when that one is no better) it loads with an ERROR, as
// nginx and Caddy serve it: one expired name must not keep popgate from
// serving all the others.
//
// It returns, loaded or refused, what it read of each file, in the order
// of [Server.paths], for Watch; a file it did not get to is stamped as
// stat sees it after the refusal.
func (s *Server) load(prev *certSet) (*certSet, filewatch.Snapshot, error) {
	now := s.now()
	read := make(filewatch.Snapshot, 0, 2*len(s.cfg.Certificates))
	refuse := func(err error) (*certSet, filewatch.Snapshot, error) {
		return nil, append(read, filewatch.StatAll(s.paths()[len(read):])...), err
	}
	var certs []*tls.Certificate
	for _, f := range s.cfg.Certificates {
		c, stamps, err := loadPair(f)
		read = append(read, stamps...)
		if err != nil {
			return refuse(err)
		}
		if !validAt(c.Leaf, now) {
			if old := prev.loaded(f); old != nil && validAt(old.Leaf, now) {
				return refuse(notValidError(f, c.Leaf, old.Leaf, now))
			}
			s.log.Error("tls certificate is not valid now; clients will refuse it", "cert", f.Cert,
				"not_before", c.Leaf.NotBefore, "not_after", c.Leaf.NotAfter)
		}
		if len(c.Leaf.DNSNames) == 0 {
			s.log.Warn("tls certificate has no DNS names; SNI never selects it", "cert", f.Cert)
		}
		certs = append(certs, c)
	}
	set, err := s.index(certs, false)
	if err != nil {
		return nil, read, err
	}
	set.files = s.cfg.Certificates
	if names := set.rsaOnly(); len(names) > 0 {
		s.log.Info("tls certificate has an RSA key and no ECDSA certificate beside it: every full handshake for these names "+
			"signs with RSA, several times the CPU of an ECDSA P-256 signature (docs/performance.md); add an ECDSA P-256 "+
			"certificate for the same names to tls.certificates, which the clients that support it get",
			"names", names)
	}
	return set, read, nil
}

// rsaLast orders a name's certificates so that pick offers a client an
// RSA certificate only when it can use none of the others: an RSA-2048
// signature costs about twenty ECDSA P-256 ones in Go. Otherwise the
// configured order stands.
func rsaLast(a, b *tls.Certificate) int {
	ra, rb := a.Leaf.PublicKeyAlgorithm == x509.RSA, b.Leaf.PublicKeyAlgorithm == x509.RSA
	switch {
	case ra == rb:
		return 0
	case ra:
		return 1
	default:
		return -1
	}
}

// rsaOnly returns the names (as the certificates list them, wildcards
// too) that only RSA certificates cover. One RSA-2048 signature costs
// about twenty ECDSA P-256 ones in Go, and nearly every client supports
// ECDSA: with both certificates for a name, pick serves the ECDSA one to
// every client that can use it.
func (set *certSet) rsaOnly() []string {
	var names []string
	for _, n := range set.names {
		var certs []*tls.Certificate
		if base, ok := strings.CutPrefix(n, "*."); ok {
			certs = set.wildcard[base]
		} else {
			certs = set.exact[n]
		}
		rsaOnly := len(certs) > 0
		for _, c := range certs {
			if c.Leaf.PublicKeyAlgorithm != x509.RSA {
				rsaOnly = false
			}
		}
		if rsaOnly {
			names = append(names, n)
		}
	}
	return names
}

// loaded returns the certificate of set read from f, or nil.
func (set *certSet) loaded(f CertFile) *tls.Certificate {
	if set == nil {
		return nil
	}
	for i, g := range set.files {
		if g == f {
			return set.certs[i]
		}
	}
	return nil
}

// loadPair reads and parses one pair. It returns the stamps of the files it
// read (certificate, key), as many as it read.
func loadPair(f CertFile) (*tls.Certificate, filewatch.Snapshot, error) {
	certPEM, certRead, err := readFile(f.Cert)
	if err != nil {
		return nil, nil, pairError(f, ReasonUnreadable, fmt.Errorf("tlsconf: read certificate: %w", err))
	}
	read := filewatch.Snapshot{certRead}
	keyPEM, keyRead, err := readFile(f.Key)
	if err != nil {
		return nil, read, pairError(f, ReasonUnreadable, fmt.Errorf("tlsconf: read key: %w", err))
	}
	read = append(read, keyRead)
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, read, pairError(f, ReasonInvalid, fmt.Errorf("tlsconf: certificate %s with key %s: %w", f.Cert, f.Key, err))
	}
	if c.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, read, pairError(f, ReasonInvalid, fmt.Errorf("tlsconf: certificate %s: %w", f.Cert, err))
		}
	}
	// Once per load, not per handshake: with the openssl build tag this
	// copies an RSA key into libcrypto (a reload makes a new copy).
	return osslsign.Certificate(&c), read, nil
}

// readFile reads name through safefile, as safefile.ReadFile does, and
// stamps the very file it read (the fstat of its descriptor).
func readFile(name string) ([]byte, filewatch.Stamp, error) {
	f, err := safefile.Open(name, safefile.Options{})
	if err != nil {
		return nil, filewatch.Stamp{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	return data, filewatch.Of(f.Stat()), err
}

// selfSigned builds the fallback set.
func (s *Server) selfSigned() (*certSet, error) {
	names := []string{"localhost"}
	if s.cfg.DefaultServerName != "" {
		names[0] = normalizeName(s.cfg.DefaultServerName)
	}
	for _, n := range []string{"localhost", "127.0.0.1", "::1"} {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	c, err := SelfSigned(names...)
	if err != nil {
		return nil, err
	}
	s.log.Warn("no tls certificate configured: serving a self-signed certificate that clients will not trust",
		"names", names)
	return s.index([]*tls.Certificate{&c}, true)
}

// index builds the lookup maps and the default for certs.
func (s *Server) index(certs []*tls.Certificate, selfSigned bool) (*certSet, error) {
	set := &certSet{
		certs:      certs,
		exact:      make(map[string][]*tls.Certificate),
		wildcard:   make(map[string][]*tls.Certificate),
		selfSigned: selfSigned,
	}
	for _, c := range certs {
		for _, n := range c.Leaf.DNSNames {
			n = normalizeName(n)
			if !slices.Contains(set.names, n) {
				set.names = append(set.names, n)
			}
			if base, ok := strings.CutPrefix(n, "*."); ok {
				set.wildcard[base] = append(set.wildcard[base], c)
			} else {
				set.exact[n] = append(set.exact[n], c)
			}
		}
	}
	slices.Sort(set.names)
	for _, m := range []map[string][]*tls.Certificate{set.exact, set.wildcard} {
		for _, certs := range m {
			slices.SortStableFunc(certs, rsaLast)
		}
	}
	name := normalizeName(s.cfg.DefaultServerName)
	switch {
	case selfSigned:
		set.defaults = certs[:1]
	case name != "":
		if set.defaults = set.lookup(name); set.defaults == nil {
			if s.acme == nil || !s.acme.allowed[name] {
				return nil, fmt.Errorf("tlsconf: default server name %q is not covered by any certificate or acme domain", s.cfg.DefaultServerName)
			}
			set.acmeDefault = name
		}
	case len(certs) > 0:
		set.defaults = certs[:1]
	default: // ACME alone
		set.acmeDefault = s.acme.domains[0]
	}
	return set, nil
}

// Watch re-reads the static certificate files whenever one of them differs
// from the file the latest reload read (identity, size, modification time,
// or a file appearing or vanishing, as stat sees it through symlinks, so a
// Kubernetes secret's swapped link counts; see internal/filewatch),
// checking every interval, until ctx is done. A failed reload keeps the
// previous certificates, logs an ERROR (with the refused certificate's
// dates when its validity was the reason) and calls refused, when not nil,
// with the error; it is tried again when a file changes again, or, for a
// certificate refused as not yet valid, once it is. Without static
// certificates Watch returns at once.
func (s *Server) Watch(ctx context.Context, every time.Duration, refused func(error)) {
	if len(s.cfg.Certificates) == 0 {
		return
	}
	var retry time.Time // when a certificate refused as not yet valid becomes valid
	last := func() filewatch.Snapshot {
		if !retry.IsZero() && !s.now().Before(retry) {
			return nil // read the files again, changed or not
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.read
	}
	filewatch.Watch(ctx, every, s.paths(), last, func(filewatch.Snapshot) {
		retry = time.Time{}
		err := s.Reload()
		if err == nil {
			return
		}
		attrs := []any{"err", err}
		if ce, ok := asCertificateError(err); ok && !ce.NotAfter.IsZero() {
			attrs = append(attrs, "cert", ce.Cert, "reason", ce.Reason,
				"not_before", ce.NotBefore, "not_after", ce.NotAfter, "kept_not_after", ce.Kept)
			if ce.Reason == ReasonNotYetValid {
				retry = ce.NotBefore
			}
		}
		s.log.Error("tls certificate files changed but do not load; keeping the previous certificates", attrs...)
		if refused != nil {
			refused(err)
		}
	})
}

// paths lists the static certificate files in the order the stamps of
// Server.read follow: each pair's certificate, then its key.
func (s *Server) paths() []string {
	paths := make([]string, 0, 2*len(s.cfg.Certificates))
	for _, f := range s.cfg.Certificates {
		paths = append(paths, f.Cert, f.Key)
	}
	return paths
}

// LastOrder is the last ACME order of a name that reached the CA.
type LastOrder struct {
	At  time.Time
	Err string // "" if it issued a certificate
}

// CertInfo describes a certificate the server holds.
type CertInfo struct {
	Names    []string
	Issuer   string
	NotAfter time.Time
	// Source is "file", "self-signed" or "acme".
	Source string
	// LastOrder is the name's last ACME order, for an ACME certificate
	// (zero if none since start).
	LastOrder LastOrder
}

// Certificates describes the loaded certificates and the ACME
// certificates served so far (one per name and key type), and the ACME
// domains without a certificate yet (with only their last order).
func (s *Server) Certificates() []CertInfo {
	set := s.set.Load()
	var out []CertInfo
	for _, c := range set.certs {
		if c.Leaf == nil {
			continue
		}
		src := "file"
		if set.selfSigned {
			src = "self-signed"
		}
		out = append(out, CertInfo{Names: c.Leaf.DNSNames, Issuer: c.Leaf.Issuer.String(), NotAfter: c.Leaf.NotAfter, Source: src})
	}
	if s.acme == nil {
		return out
	}
	has := map[string]bool{}
	s.acme.seen.Range(func(k, v any) bool {
		name := k.(seenKey).name
		ci := CertInfo{Names: []string{name}, NotAfter: v.(seenCert).notAfter, Source: "acme"}
		if c := v.(seenCert).cert; c != nil && c.Leaf != nil {
			ci.Issuer = c.Leaf.Issuer.String()
		}
		if o, ok := s.acme.lastOrders.Load(name); ok {
			ci.LastOrder = o.(LastOrder)
		}
		has[name] = true
		out = append(out, ci)
		return true
	})
	for _, d := range s.acme.domains {
		if has[d] {
			continue
		}
		ci := CertInfo{Names: []string{d}, Source: "acme"}
		if o, ok := s.acme.lastOrders.Load(d); ok {
			ci.LastOrder = o.(LastOrder)
		}
		out = append(out, ci)
	}
	return out
}
