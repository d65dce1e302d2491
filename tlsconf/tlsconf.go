// Package tlsconf builds the *tls.Config values popgate uses: the server side
// that clients reach (static certificates chosen by SNI and reloaded when
// their files change, certificates obtained with ACME through
// golang.org/x/crypto/acme/autocert with HTTP-01 and TLS-ALPN-01 answerers,
// or a generated self-signed certificate), and the client side used to dial
// backends.
//
// A typical server setup:
//
//	srv, err := tlsconf.NewServer(tlsconf.ServerConfig{
//		Certificates:      []tlsconf.CertFile{{Cert: "mail.crt", Key: "mail.key"}},
//		DefaultServerName: "mail.example.com",
//		Logger:            log,
//	})
//	ln := tls.NewListener(tcpLn, srv.TLSConfig())
//
// and on SIGHUP srv.Reload(); srv.Watch(ctx, 5*time.Second, nil) reloads when the
// files change. With ServerConfig.ACME set, srv.ListenChallenges binds the
// challenge answerers and Challenges.Serve runs them and obtains the
// certificates.
//
// Version policy: TLS 1.2 is the default minimum. Setting "1.0" or "1.1"
// also enables the CBC suites old clients need (see [LegacyCipherSuites]).
package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/popgate/popgate/internal/tlsversion"
)

// ParseVersion maps "1.0", "1.1", "1.2" and "1.3" to tls.VersionTLS10 ..
// tls.VersionTLS13. The empty string means "1.2".
func ParseVersion(s string) (uint16, error) {
	if s == "" {
		return tls.VersionTLS12, nil
	}
	if v, ok := tlsversion.Parse(s); ok {
		return v, nil
	}
	return 0, fmt.Errorf("tlsconf: unknown TLS version %q (want 1.0, 1.1, 1.2 or 1.3)", s)
}

// VersionName returns the short name of a TLS version ("1.3"), the form
// [ParseVersion] reads. Unknown values print as hex.
func VersionName(v uint16) string {
	if name := tlsversion.Name(v); name != "" {
		return name
	}
	return fmt.Sprintf("0x%04x", v)
}

// LegacyCipherSuites returns the TLS 1.0–1.2 cipher suites enabled when the
// minimum version is below 1.2: Go's default list (the ECDHE AEAD and
// ECDHE-*-CBC-SHA suites, as reported by [tls.CipherSuites]) plus
// TLS_RSA_WITH_AES_128_CBC_SHA and TLS_RSA_WITH_AES_256_CBC_SHA, which
// clients without ECDHE (old Outlook, embedded devices) need. Go removed the
// RSA key exchange suites from its defaults in Go 1.22; an explicit list
// re-enables them without GODEBUG=tlsrsakex=1.
func LegacyCipherSuites() []uint16 {
	var ids []uint16
	for _, cs := range tls.CipherSuites() {
		for _, v := range cs.SupportedVersions {
			if v <= tls.VersionTLS12 {
				ids = append(ids, cs.ID)
				break
			}
		}
	}
	return append(ids, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA)
}

// cipherSuites is the CipherSuites value for a minimum version: nil (Go's
// defaults) from TLS 1.2 up.
func cipherSuites(minVersion uint16) []uint16 {
	if minVersion >= tls.VersionTLS12 {
		return nil
	}
	return LegacyCipherSuites()
}

// SelfSigned makes a self-signed ECDSA P-256 certificate valid for one year
// for names, each a DNS name or an IP literal; the first name is also the
// subject's common name. Like `openssl req -x509`, the certificate is its own
// CA, so a client can trust it by loading it as a CA file (curl --cacert).
func SelfSigned(names ...string) (tls.Certificate, error) {
	if len(names) == 0 {
		return tls.Certificate{}, errors.New("tlsconf: self-signed certificate needs at least one name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: generate key: %w", err)
	}
	return selfSignedKey(key, names)
}

// selfSignedKey is SelfSigned for a given key (tests use RSA keys).
func selfSignedKey(key crypto.Signer, names []string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: generate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"popgate self-signed"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clients whose clock is a little behind
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// EncodePEM returns the PEM encoding of c's certificate chain (leaf first)
// and of its private key (PKCS #8), e.g. for `popgate demo` to write a CA
// file for curl.
func EncodePEM(c tls.Certificate) (certPEM, keyPEM []byte, err error) {
	if len(c.Certificate) == 0 {
		return nil, nil, errors.New("tlsconf: encode PEM: no certificate")
	}
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: encode PEM: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// normalizeName lowercases a host name and drops one trailing dot, so that
// "Mail.Example.COM." and "mail.example.com" select the same certificate.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
