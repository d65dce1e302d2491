package tlsconf

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"testing"

	"github.com/popgate/popgate/internal/osslsign"
)

// checkSigner checks that c's key is key's, held as this build holds it:
// the *rsa.PrivateKey itself in the default build, a libcrypto signer with
// the openssl build tag.
func checkSigner(t *testing.T, c *tls.Certificate, key *rsa.PrivateKey) {
	t.Helper()
	s, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		t.Fatalf("served key %T is no crypto.Signer", c.PrivateKey)
	}
	if pub, ok := s.Public().(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Fatal("served key is not the loaded one")
	}
	_, isGo := s.(*rsa.PrivateKey)
	if wantGo := osslsign.Implementation() == "go"; isGo != wantGo {
		t.Errorf("served key is %T with the %s signer", s, osslsign.Implementation())
	}
}

// TestStaticRSASigner: an RSA key from files is wrapped once per load, and
// a reload serves the new key.
func TestStaticRSASigner(t *testing.T) {
	dir := t.TempDir()
	old := newRSACert(t, "mail.example.com")
	f := writePair(t, dir, "mail", old)
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}})
	if err != nil {
		t.Fatal(err)
	}
	hello := &tls.ClientHelloInfo{ServerName: "mail.example.com"}
	c1, _ := srv.getCertificate(hello)
	c2, _ := srv.getCertificate(hello)
	if c1 != c2 {
		t.Error("two handshakes got two certificates: the key is wrapped per handshake")
	}
	checkSigner(t, c1, old.PrivateKey.(*rsa.PrivateKey))
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cli := &tls.Config{ServerName: "mail.example.com", RootCAs: pool(old), MinVersion: v, MaxVersion: v}
		if _, err := handshake(t, srv.TLSConfig(), cli); err != nil {
			t.Errorf("%s handshake: %v", tls.VersionName(v), err)
		}
	}

	renewed := newRSACert(t, "mail.example.com")
	writePair(t, dir, "mail", renewed)
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	c3, _ := srv.getCertificate(hello)
	checkSigner(t, c3, renewed.PrivateKey.(*rsa.PrivateKey))
	cli := &tls.Config{ServerName: "mail.example.com", RootCAs: pool(renewed)}
	if _, err := handshake(t, srv.TLSConfig(), cli); err != nil {
		t.Errorf("handshake after reload: %v", err)
	}
}

// TestACMERSASigner: an ACME RSA certificate is wrapped the first time
// autocert returns it, the wrapped copy is served after that, and a renewed
// certificate (another *tls.Certificate from autocert) is wrapped anew.
func TestACMERSASigner(t *testing.T) {
	srv, _ := newACMEServer(t, ServerConfig{}, "mail.example.com")
	a := srv.acme
	first := newRSACert(t, "mail.example.com")
	s1 := a.note("mail.example.com", &first)
	if s2 := a.note("mail.example.com", &first); s2 != s1 {
		t.Error("the same ACME certificate was wrapped twice")
	}
	checkSigner(t, s1, first.PrivateKey.(*rsa.PrivateKey))
	if _, ok := first.PrivateKey.(*rsa.PrivateKey); !ok {
		t.Error("autocert's certificate was modified")
	}
	renewed := newRSACert(t, "mail.example.com")
	s3 := a.note("mail.example.com", &renewed)
	if s3 == s1 {
		t.Fatal("a renewed certificate is served as the old one")
	}
	checkSigner(t, s3, renewed.PrivateKey.(*rsa.PrivateKey))

	// A TLS 1.2 client without ECDSA gets the fake's RSA certificate.
	cli := &tls.Config{ServerName: "mail.example.com", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}
	st, err := handshake(t, srv.TLSConfig(), cli)
	if err != nil {
		t.Fatalf("RSA handshake: %v", err)
	}
	if _, ok := st.PeerCertificates[0].PublicKey.(*rsa.PublicKey); !ok {
		t.Errorf("RSA-only client got a %T certificate", st.PeerCertificates[0].PublicKey)
	}
	v, ok := a.seen.Load(seenKey{"mail.example.com", true})
	if !ok {
		t.Fatal("the RSA certificate served is not recorded")
	}
	checkSigner(t, v.(seenCert).served, v.(seenCert).cert.PrivateKey.(*rsa.PrivateKey))
}
