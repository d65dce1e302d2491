package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/popgate/popgate/internal/safefile"
)

// BackendConfig configures the TLS client side used to dial one backend.
type BackendConfig struct {
	// ServerName is the name checked on the backend's certificate (and sent
	// as SNI unless it is an IP literal). "" means the host part of Address.
	ServerName string
	// Address is the backend's host:port, for the default ServerName.
	Address string
	// CAFile is a PEM bundle trusted instead of the system roots, a
	// regular file of at most 1 MiB. "" means the system roots.
	CAFile string
	// InsecureSkipVerify disables all verification of the backend's
	// certificate. The caller should log this loudly.
	InsecureSkipVerify bool
	// MinVersion is the lowest TLS version offered: "1.0" .. "1.3".
	// "" means "1.2". Below 1.2 the legacy CBC suites are offered too.
	MinVersion string
}

// Backend builds the client-side *tls.Config for dialing a backend. A bad
// CAFile is an error naming the file. When the server name is an IP literal,
// no SNI is sent and the certificate's IP SANs are checked (crypto/tls does
// this for an IP ServerName). The config carries a session cache, so reuse
// it for every dial to the backend to resume sessions.
func Backend(cfg BackendConfig) (*tls.Config, error) {
	minVersion, err := ParseVersion(cfg.MinVersion)
	if err != nil {
		return nil, err
	}
	name := cfg.ServerName
	if name == "" && cfg.Address != "" {
		host, _, err := net.SplitHostPort(cfg.Address)
		if err != nil {
			host = cfg.Address // no port: the address is the host
		}
		name = host
	}
	if name == "" && !cfg.InsecureSkipVerify {
		return nil, errors.New("tlsconf: backend needs a server name or an address to verify")
	}
	var roots *x509.CertPool
	if cfg.CAFile != "" {
		pemData, err := safefile.ReadFile(cfg.CAFile, safefile.Options{})
		if err != nil {
			return nil, fmt.Errorf("tlsconf: read backend CA file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("tlsconf: backend CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	return &tls.Config{
		ServerName:         name,
		RootCAs:            roots,
		InsecureSkipVerify: cfg.InsecureSkipVerify,
		MinVersion:         minVersion,
		CipherSuites:       cipherSuites(minVersion),
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
	}, nil
}
