package tlsconf

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// writePair writes c as base.crt/base.key in dir.
func writePair(t *testing.T, dir, base string, c tls.Certificate) CertFile {
	t.Helper()
	certPEM, keyPEM, err := EncodePEM(c)
	if err != nil {
		t.Fatal(err)
	}
	f := CertFile{Cert: filepath.Join(dir, base+".crt"), Key: filepath.Join(dir, base+".key")}
	if err := os.WriteFile(f.Cert, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func newCert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	c, err := SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newRSACert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	c, err := selfSignedKey(key, names)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pool(certs ...tls.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c.Leaf)
	}
	return p
}

// handshake runs a TLS handshake over loopback TCP and returns the client's
// view, with the errors of both sides joined.
func handshake(t *testing.T, srv, cli *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		srvErr <- tls.Server(c, srv).Handshake()
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(deadline)
	c := tls.Client(raw, cli)
	cliErr := c.Handshake()
	if cliErr != nil {
		raw.Close() // unblock a server waiting for the client's next flight
	}
	return c.ConnectionState(), errors.Join(cliErr, <-srvErr)
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"", tls.VersionTLS12, false},
		{"1.0", tls.VersionTLS10, false},
		{"1.1", tls.VersionTLS11, false},
		{"1.2", tls.VersionTLS12, false},
		{"1.3", tls.VersionTLS13, false},
		{"1.4", 0, true},
		{"TLS1.2", 0, true},
		{" 1.2", 0, true},
	} {
		got, err := ParseVersion(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, err %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), "tlsconf: ") || !strings.Contains(err.Error(), tc.in)) {
			t.Errorf("ParseVersion(%q) error %q: want prefix and value", tc.in, err)
		}
		if err == nil && tc.in != "" && VersionName(got) != tc.in {
			t.Errorf("VersionName(%v) = %q, want %q", got, VersionName(got), tc.in)
		}
	}
}

func TestSNISelection(t *testing.T) {
	dir := t.TempDir()
	files := []CertFile{
		writePair(t, dir, "mail", newCert(t, "mail.example.com", "Pop.Example.ORG")),
		writePair(t, dir, "wild", newCert(t, "*.example.com")),
		writePair(t, dir, "other", newCert(t, "other.test")),
	}
	for _, tc := range []struct {
		name, def, sni string
		want           string // first DNS SAN of the chosen certificate
	}{
		{"exact", "other.test", "mail.example.com", "mail.example.com"},
		{"upper case sni", "other.test", "MAIL.Example.Com", "mail.example.com"},
		{"upper case san", "other.test", "pop.example.org", "mail.example.com"},
		{"trailing dot", "other.test", "mail.example.com.", "mail.example.com"},
		{"exact beats wildcard", "other.test", "mail.example.com", "mail.example.com"},
		{"wildcard", "other.test", "imap.example.com", "*.example.com"},
		{"wildcard upper case dot", "other.test", "IMAP.example.com.", "*.example.com"},
		{"wildcard one label only", "other.test", "a.b.example.com", "other.test"},
		{"wildcard not bare domain", "other.test", "example.com", "other.test"},
		{"no sni", "other.test", "", "other.test"},
		{"unknown sni", "other.test", "unknown.test", "other.test"},
		{"default via wildcard", "x.example.com", "", "*.example.com"},
		{"default empty is first", "", "unknown.test", "mail.example.com"},
		{"default case and dot", "OTHER.test.", "", "other.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := NewServer(ServerConfig{Certificates: files, DefaultServerName: tc.def})
			if err != nil {
				t.Fatal(err)
			}
			c, err := srv.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: tc.sni})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Leaf.DNSNames[0]; got != tc.want {
				t.Errorf("GetCertificate(%q) = %q, want %q", tc.sni, got, tc.want)
			}
		})
	}
	srv, err := NewServer(ServerConfig{Certificates: files})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"*.example.com", "mail.example.com", "other.test", "pop.example.org"}
	if got := srv.Names(); !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	if got := len(srv.Leaves()); got != 3 || srv.SelfSigned() {
		t.Errorf("Leaves() has %d, SelfSigned() = %v; want 3, false", got, srv.SelfSigned())
	}
}

func TestHandshake(t *testing.T) {
	dir := t.TempDir()
	mail, wild := newCert(t, "mail.example.com"), newCert(t, "*.example.com")
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{
		writePair(t, dir, "mail", mail), writePair(t, dir, "wild", wild),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, sni string
		alpn      []string
		want      *x509.Certificate
		wantErr   bool
	}{
		{"exact", "mail.example.com", nil, mail.Leaf, false},
		{"wildcard", "pop.example.com", nil, wild.Leaf, false},
		{"alpn pop3", "mail.example.com", []string{"imap", ALPN}, mail.Leaf, false},
		{"alpn other only", "mail.example.com", []string{"http/1.1"}, nil, true},
		{"name mismatch", "a.b.example.com", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := handshake(t, srv.TLSConfig(), &tls.Config{
				ServerName: tc.sni, RootCAs: pool(mail, wild), NextProtos: tc.alpn,
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("handshake(%q) error = %v, want error %v", tc.sni, err, tc.wantErr)
			}
			if err == nil && !st.PeerCertificates[0].Equal(tc.want) {
				t.Errorf("handshake(%q) got certificate %q", tc.sni, st.PeerCertificates[0].DNSNames)
			}
		})
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	f := writePair(t, dir, "mail", newCert(t, "old.example.com"))
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}})
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, dir, "mail", newCert(t, "new.example.com"))
	if err := srv.Reload(); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	if got := srv.Names(); !slices.Equal(got, []string{"new.example.com"}) {
		t.Fatalf("Names() after reload = %q", got)
	}
	// A broken file (here a key from another pair) keeps the old set.
	writePair(t, dir, "other", newCert(t, "other.example.com"))
	if err := os.Rename(filepath.Join(dir, "other.key"), f.Key); err != nil {
		t.Fatal(err)
	}
	err = srv.Reload()
	if err == nil || !strings.Contains(err.Error(), f.Key) {
		t.Fatalf("Reload() with mismatched key = %v, want error naming %s", err, f.Key)
	}
	if got := srv.Names(); !slices.Equal(got, []string{"new.example.com"}) {
		t.Errorf("Names() after failed reload = %q, want the old set", got)
	}
	if err := os.Remove(f.Cert); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), f.Cert) {
		t.Errorf("Reload() with missing cert = %v, want error naming %s", err, f.Cert)
	}
}

func TestNewServerErrors(t *testing.T) {
	dir := t.TempDir()
	good := writePair(t, dir, "good", newCert(t, "mail.example.com"))
	other := writePair(t, dir, "other", newCert(t, "other.example.com"))
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	for _, tc := range []struct {
		name string
		cfg  ServerConfig
		want string // in the error
	}{
		{"mismatched key", ServerConfig{Certificates: []CertFile{{good.Cert, other.Key}}}, other.Key},
		{"garbage cert", ServerConfig{Certificates: []CertFile{{garbage, good.Key}}}, garbage},
		{"missing cert", ServerConfig{Certificates: []CertFile{good, {missing, good.Key}}}, missing},
		{"missing key", ServerConfig{Certificates: []CertFile{{good.Cert, missing}}}, missing},
		{"default not covered", ServerConfig{Certificates: []CertFile{good}, DefaultServerName: "pop.example.com"}, "pop.example.com"},
		{"bad version", ServerConfig{Certificates: []CertFile{good}, MinVersion: "1.5"}, "1.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewServer(tc.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), "tlsconf: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewServer() = %v, want error naming %q", err, tc.want)
			}
		})
	}
}

func TestSelfSignedFallback(t *testing.T) {
	var logs bytes.Buffer
	srv, err := NewServer(ServerConfig{
		DefaultServerName: "Mail.Test",
		Logger:            slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !srv.SelfSigned() || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("SelfSigned() = %v, log %q; want true and a WARN", srv.SelfSigned(), logs.String())
	}
	if got, want := srv.Names(), []string{"localhost", "mail.test"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	if err := srv.Reload(); err != nil {
		t.Errorf("Reload() = %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(srv.Leaves()[0])
	for _, name := range []string{"mail.test", "localhost", "127.0.0.1", "::1"} {
		if _, err := handshake(t, srv.TLSConfig(), &tls.Config{ServerName: name, RootCAs: roots}); err != nil {
			t.Errorf("handshake(%q) = %v", name, err)
		}
	}
}

func TestBackend(t *testing.T) {
	dir := t.TempDir()
	backendCert := newCert(t, "pop.internal", "127.0.0.1")
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{writePair(t, dir, "backend", backendCert)}})
	if err != nil {
		t.Fatal(err)
	}
	ca := writePair(t, dir, "ca", backendCert).Cert // a self-signed leaf is its own CA
	for _, tc := range []struct {
		name    string
		cfg     BackendConfig
		wantErr string // "" = success
	}{
		{"name from address", BackendConfig{Address: "pop.internal:995", CAFile: ca}, ""},
		{"explicit name", BackendConfig{ServerName: "pop.internal", Address: "10.0.0.1:995", CAFile: ca}, ""},
		{"ip san", BackendConfig{Address: "127.0.0.1:995", CAFile: ca}, ""},
		{"wrong name", BackendConfig{ServerName: "wrong.internal", CAFile: ca}, "not wrong.internal"},
		{"wrong ip", BackendConfig{Address: "127.0.0.2:995", CAFile: ca}, "not 127.0.0.2"},
		{"system roots", BackendConfig{Address: "pop.internal:995"}, "unknown authority"},
		{"insecure", BackendConfig{ServerName: "wrong.internal", InsecureSkipVerify: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Backend(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = handshake(t, srv.TLSConfig(), cfg)
			if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("handshake with %+v = %v, want error %q", tc.cfg, err, tc.wantErr)
			}
		})
	}
	for _, tc := range []struct {
		name string
		cfg  BackendConfig
		want string
	}{
		{"missing ca", BackendConfig{Address: "a:1", CAFile: filepath.Join(dir, "nope.pem")}, "nope.pem"},
		{"ca without certs", BackendConfig{Address: "a:1", CAFile: filepath.Join(dir, "ca.key")}, "ca.key"},
		{"no name", BackendConfig{CAFile: ca}, "server name"},
		{"bad version", BackendConfig{Address: "a:1", MinVersion: "2"}, `"2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Backend(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Backend(%+v) = %v, want error containing %q", tc.cfg, err, tc.want)
			}
		})
	}
}

func TestMinVersion(t *testing.T) {
	dir := t.TempDir()
	ecdsaCert, rsaCert := newCert(t, "mail.example.com"), newRSACert(t, "mail.example.com")
	files := []CertFile{writePair(t, dir, "ecdsa", ecdsaCert), writePair(t, dir, "rsa", rsaCert)}
	tls10 := &tls.Config{ServerName: "mail.example.com", RootCAs: pool(ecdsaCert, rsaCert),
		MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}
	rsaOnly := tls10.Clone()
	rsaOnly.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}
	rsaOnly12 := rsaOnly.Clone()
	rsaOnly12.MaxVersion = tls.VersionTLS12
	modern := &tls.Config{ServerName: "mail.example.com", RootCAs: pool(ecdsaCert, rsaCert)}
	for _, tc := range []struct {
		name, min   string
		client      *tls.Config
		wantVersion uint16 // 0: handshake must fail
		wantSuite   uint16
		wantKey     string // or, on failure, part of the error
	}{
		{"1.0 server, 1.0 client", "1.0", tls10, tls.VersionTLS10, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, "ECDSA"},
		{"1.0 server, RSA-kex-only client", "1.0", rsaOnly, tls.VersionTLS10, tls.TLS_RSA_WITH_AES_128_CBC_SHA, "RSA"},
		{"1.0 server, modern client", "1.0", modern, tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, "ECDSA"},
		{"1.0 server, RSA-kex-only 1.2 client", "1.0", rsaOnly12, tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_CBC_SHA, "RSA"},
		{"default server, 1.0 client", "", tls10, 0, 0, "protocol version"},
		{"1.2 server, RSA-kex-only 1.2 client", "1.2", rsaOnly12, 0, 0, "no cipher suite"},
		{"1.3 server, modern client", "1.3", modern, tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, "ECDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := NewServer(ServerConfig{Certificates: files, MinVersion: tc.min})
			if err != nil {
				t.Fatal(err)
			}
			st, err := handshake(t, srv.TLSConfig(), tc.client)
			if tc.wantVersion == 0 {
				if err == nil || !strings.Contains(err.Error(), tc.wantKey) {
					t.Errorf("handshake = TLS %s, %v; want error containing %q", VersionName(st.Version), err, tc.wantKey)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake = %v", err)
			}
			key := st.PeerCertificates[0].PublicKeyAlgorithm.String()
			if st.Version != tc.wantVersion || st.CipherSuite != tc.wantSuite || key != tc.wantKey {
				t.Errorf("handshake = TLS %s, %s, %s; want TLS %s, %s, %s",
					VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), key,
					VersionName(tc.wantVersion), tls.CipherSuiteName(tc.wantSuite), tc.wantKey)
			}
		})
	}
}

func TestEncodePEM(t *testing.T) {
	c := newCert(t, "a.test", "192.0.2.1")
	certPEM, keyPEM, err := EncodePEM(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair(EncodePEM()) = %v", err)
	}
	if !back.Leaf.Equal(c.Leaf) || len(back.Leaf.IPAddresses) != 1 || back.Leaf.NotAfter.Before(time.Now().AddDate(0, 11, 0)) {
		t.Errorf("round trip: DNS %q IP %v until %v", back.Leaf.DNSNames, back.Leaf.IPAddresses, back.Leaf.NotAfter)
	}
	if _, _, err := EncodePEM(tls.Certificate{}); err == nil {
		t.Error("EncodePEM(empty) succeeded")
	}
}

// TestRSALast: with an RSA and an ECDSA certificate for a name, whatever
// their order in tls.certificates, a client that supports ECDSA gets the
// ECDSA one (an RSA signature costs many ECDSA ones) and a client that
// supports only RSA gets the RSA one. Names only RSA covers are named at
// load, with what it costs.
func TestRSALast(t *testing.T) {
	dir := t.TempDir()
	rsaMail, ecMail := newRSACert(t, "mail.example.com"), newCert(t, "mail.example.com")
	rsaOld := newRSACert(t, "old.example.com", "*.legacy.test")
	var logs bytes.Buffer
	srv, err := NewServer(ServerConfig{
		Certificates: []CertFile{
			writePair(t, dir, "rsa", rsaMail), writePair(t, dir, "ec", ecMail), writePair(t, dir, "old", rsaOld),
		},
		DefaultServerName: "mail.example.com",
		Logger:            slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ecdsaSchemes := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	rsaSchemes := []tls.SignatureScheme{tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	for _, tc := range []struct {
		name, sni string
		schemes   []tls.SignatureScheme
		want      *x509.Certificate
	}{
		{"ecdsa client", "mail.example.com", ecdsaSchemes, ecMail.Leaf},
		{"ecdsa client without sni", "", ecdsaSchemes, ecMail.Leaf},
		{"rsa-only client", "mail.example.com", rsaSchemes, rsaMail.Leaf},
		{"rsa-only name", "old.example.com", ecdsaSchemes, rsaOld.Leaf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hello := &tls.ClientHelloInfo{
				ServerName: tc.sni, SignatureSchemes: tc.schemes,
				SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
				SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
				CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
			}
			c, err := srv.TLSConfig().GetCertificate(hello)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Leaf.Equal(tc.want) {
				t.Errorf("GetCertificate(%q) = %v certificate %q, want the %v one",
					tc.sni, c.Leaf.PublicKeyAlgorithm, c.Leaf.DNSNames, tc.want.PublicKeyAlgorithm)
			}
		})
	}
	// A real handshake agrees.
	st, err := handshake(t, srv.TLSConfig(), &tls.Config{ServerName: "mail.example.com", RootCAs: pool(rsaMail, ecMail)})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.PeerCertificates[0].PublicKeyAlgorithm; got != x509.ECDSA {
		t.Errorf("handshake served a %v certificate, want ECDSA", got)
	}
	if !strings.Contains(logs.String(), "no ECDSA certificate beside it") ||
		!strings.Contains(logs.String(), "names=\"[*.legacy.test old.example.com]\"") {
		t.Errorf("log does not name the RSA-only names:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "mail.example.com]") {
		t.Errorf("log names mail.example.com as RSA-only:\n%s", logs.String())
	}
}
