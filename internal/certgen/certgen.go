// Package certgen makes throwaway certificate authorities and server
// certificates for loopback benchmarks and test servers: an ECDSA P-256 or
// RSA-2048 CA, and leaf certificates it signs for a DNS name plus the IP
// SAN 127.0.0.1, written as PEM files that popgate, Dovecot and Go clients
// all read.
//
//	ca, err := certgen.NewCA("bench", certgen.ECDSA)
//	caFile := filepath.Join(dir, "ca.pem")
//	err = ca.WriteCert(caFile)
//	certFile, keyFile, err := ca.IssueFiles(dir, "server", "pop.test", certgen.ECDSA)
//	conf := &tls.Config{RootCAs: ca.Pool, ServerName: "pop.test"}
//
// The keys are fresh for every call and never meant to leave the machine.
package certgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyType is the kind of key a certificate carries.
type KeyType string

// The key types a benchmark compares.
const (
	ECDSA KeyType = "ecdsa" // ECDSA P-256
	RSA   KeyType = "rsa"   // RSA-2048
)

// ParseKeyType accepts "ecdsa" and "rsa"; "" means ECDSA.
func ParseKeyType(s string) (KeyType, error) {
	switch KeyType(s) {
	case "", ECDSA:
		return ECDSA, nil
	case RSA:
		return RSA, nil
	}
	return "", fmt.Errorf("certgen: key type %q is not ecdsa or rsa", s)
}

// String names the key the way a report would: "ECDSA P-256" or "RSA-2048".
func (k KeyType) String() string {
	if k == RSA {
		return "RSA-2048"
	}
	return "ECDSA P-256"
}

func newKey(kt KeyType) (crypto.Signer, error) {
	if kt == RSA {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// CA is a certificate authority that exists for one run.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Pool    *x509.CertPool // holds only Cert
	key     crypto.Signer
}

// NewCA creates a CA called name with a key of type kt, valid from an hour
// ago for a day.
func NewCA(name string, kt KeyType) (*CA, error) {
	key, err := newKey(kt)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name + " throwaway CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA certificate: %w", err)
	}
	ca := &CA{Cert: cert, key: key, Pool: x509.NewCertPool(),
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.Pool.AddCert(cert)
	return ca, nil
}

// WriteCert writes the CA certificate as PEM to path, mode 0644.
func (ca *CA) WriteCert(path string) error {
	return WriteFile(path, ca.CertPEM, 0o644)
}

// Issue signs a server certificate for dnsName and the IP SAN 127.0.0.1
// with a new key of type kt, and returns both as PEM (the key as PKCS #8).
func (ca *CA) Issue(dnsName string, kt KeyType) (certPEM, keyPEM []byte, err error) {
	key, err := newKey(kt)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: key: %w", err)
	}
	usage := x509.KeyUsageDigitalSignature
	if kt == RSA {
		usage |= x509.KeyUsageKeyEncipherment // for TLS 1.2 RSA key exchange clients
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     usage,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: certificate for %s: %w", dnsName, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// IssueFiles is Issue writing dir/name.crt (0644) and dir/name.key (0600);
// it returns their paths.
func (ca *CA) IssueFiles(dir, name, dnsName string, kt KeyType) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := ca.Issue(dnsName, kt)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// WriteFile writes data to name with exactly perm (os.WriteFile applies
// perm only when it creates the file, and through the umask).
func WriteFile(name string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(name, data, perm); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	if err := os.Chmod(name, perm); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	return nil
}
