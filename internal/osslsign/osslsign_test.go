package osslsign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
)

var (
	keyOnce sync.Once
	testKey *rsa.PrivateKey
)

// rsaKey is one RSA-2048 key for the whole package (generating one takes a
// while under the race detector).
func rsaKey(t testing.TB) *rsa.PrivateKey {
	keyOnce.Do(func() {
		var err error
		if testKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	})
	if testKey == nil {
		t.Fatal("no test key")
	}
	return testKey
}

// signCase is one kind of signature crypto/tls asks for.
type signCase struct {
	name string
	hash crypto.Hash
	pss  bool
}

var signCases = []signCase{
	{"pss-sha256", crypto.SHA256, true},
	{"pss-sha384", crypto.SHA384, true},
	{"pss-sha512", crypto.SHA512, true},
	{"pkcs1-sha256", crypto.SHA256, false},
	{"pkcs1-sha384", crypto.SHA384, false},
	{"pkcs1-sha512", crypto.SHA512, false},
	{"pkcs1-sha1", crypto.SHA1, false},
	{"pkcs1-md5sha1", crypto.MD5SHA1, false},
}

func digestOf(h crypto.Hash, msg []byte) []byte {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		return d[:]
	case crypto.SHA512:
		d := sha512.Sum512(msg)
		return d[:]
	case crypto.SHA1:
		d := sha1.Sum(msg)
		return d[:]
	case crypto.MD5SHA1:
		m, s := md5.Sum(msg), sha1.Sum(msg)
		return append(m[:], s[:]...)
	}
	panic("digestOf: unexpected hash")
}

func (c signCase) opts() crypto.SignerOpts {
	if c.pss {
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: c.hash}
	}
	return c.hash
}

// verify checks sig with crypto/rsa, as a TLS client does: PSS with the
// salt as long as the hash.
func (c signCase) verify(pub *rsa.PublicKey, digest, sig []byte) error {
	if c.pss {
		return rsa.VerifyPSS(pub, c.hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	}
	return rsa.VerifyPKCS1v15(pub, c.hash, digest, sig)
}

func TestSignVerifies(t *testing.T) {
	key := rsaKey(t)
	s := Wrap(key)
	if _, ok := s.(crypto.Decrypter); !ok {
		t.Errorf("Wrap(rsa key) = %T, which does not decrypt (TLS's RSA key exchange needs it)", s)
	}
	if pub, ok := s.Public().(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Fatalf("Public() = %T, not the key's public key", s.Public())
	}
	for _, c := range signCases {
		t.Run(c.name, func(t *testing.T) {
			digest := digestOf(c.hash, []byte("popgate "+c.name))
			sig, err := s.Sign(rand.Reader, digest, c.opts())
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if err := c.verify(&key.PublicKey, digest, sig); err != nil {
				t.Fatalf("crypto/rsa refuses the signature: %v", err)
			}
			digest[0] ^= 1
			if err := c.verify(&key.PublicKey, digest, sig); err == nil {
				t.Fatal("the signature verifies for another digest too")
			}
		})
	}
}

func TestSignWrongDigestLength(t *testing.T) {
	s := Wrap(rsaKey(t))
	if _, err := s.Sign(rand.Reader, make([]byte, 31), crypto.SHA256); err == nil {
		t.Error("Sign of a 31-byte digest as SHA-256: no error")
	}
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	if _, err := s.Sign(rand.Reader, nil, pss); err == nil {
		t.Error("PSS Sign of an empty digest: no error")
	}
}

func TestSignConcurrent(t *testing.T) {
	key := rsaKey(t)
	s := Wrap(key)
	const workers, each = 16, 8
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				c := signCases[(w+i)%len(signCases)]
				digest := digestOf(c.hash, []byte{byte(w), byte(i)})
				sig, err := s.Sign(rand.Reader, digest, c.opts())
				if err == nil {
					err = c.verify(&key.PublicKey, digest, sig)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWrapLeavesOtherKeys(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got := Wrap(ec); got != crypto.Signer(ec) {
		t.Errorf("Wrap(ecdsa key) = %T, want the key itself", got)
	}
	c := &tls.Certificate{PrivateKey: ec}
	if got := Certificate(c); got != c {
		t.Error("Certificate of an ECDSA certificate is a copy, want the certificate itself")
	}
}

// selfSigned makes an RSA certificate for "mail.test" with key.
func selfSigned(t *testing.T, key *rsa.PrivateKey) (*tls.Certificate, *x509.CertPool) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mail.test"},
		DNSNames:     []string{"mail.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
}

// TestHandshake serves an RSA certificate through the wrapped key to Go
// clients: TLS 1.3 (PSS), TLS 1.2 with ECDHE (PSS, or PKCS #1 v1.5 for a
// client that offers only that), TLS 1.2 with the RSA key exchange
// (Decrypt) and TLS 1.0 (MD5+SHA-1).
func TestHandshake(t *testing.T) {
	key := rsaKey(t)
	plain, roots := selfSigned(t, key)
	cert := Certificate(plain)
	for _, tc := range []struct {
		name    string
		version uint16
		suites  []uint16
		schemes []tls.SignatureScheme
	}{
		{"tls1.3", tls.VersionTLS13, nil, nil},
		{"tls1.3-pss-sha512", tls.VersionTLS13, nil, []tls.SignatureScheme{tls.PSSWithSHA512}},
		{"tls1.2-ecdhe", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, nil},
		{"tls1.2-ecdhe-pkcs1", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
			[]tls.SignatureScheme{tls.PKCS1WithSHA384}},
		{"tls1.2-rsa-kex", tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}, nil},
		{"tls1.0", tls.VersionTLS10, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := fallbackCount()
			server := &tls.Config{
				Certificates: []tls.Certificate{*cert},
				MinVersion:   tls.VersionTLS10,
				CipherSuites: []uint16{
					tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
					tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
					tls.TLS_RSA_WITH_AES_128_CBC_SHA,
				},
				SessionTicketsDisabled: true,
			}
			client := &tls.Config{
				ServerName:             "mail.test",
				RootCAs:                roots,
				MinVersion:             tc.version,
				MaxVersion:             tc.version,
				CipherSuites:           tc.suites,
				SessionTicketsDisabled: true,
			}
			if tc.schemes != nil {
				// Only a signature_algorithms hook would let a Go
				// client restrict the schemes; the server's
				// certificate offers them instead.
				cert := *cert
				cert.SupportedSignatureAlgorithms = tc.schemes
				server.Certificates = []tls.Certificate{cert}
			}
			state := handshake(t, server, client)
			if state.Version != tc.version {
				t.Fatalf("negotiated %s, want %s", tls.VersionName(state.Version), tls.VersionName(tc.version))
			}
			if after := fallbackCount(); after != before {
				t.Errorf("crypto/rsa made %d of the signatures, want none", after-before)
			}
		})
	}
}

// handshake runs one TLS handshake over loopback TCP and returns the
// client's view of it.
func handshake(t *testing.T, server, client *tls.Config) tls.ConnectionState {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte("+OK\r\n"))
		done <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		t.Fatalf("client handshake: %v (server: %v)", err, <-done)
	}
	defer conn.Close()
	buf := make([]byte, 5)
	// io.ReadFull: TLS 1.0's CBC record splitting sends "+" alone first.
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "+OK\r\n" {
		t.Fatalf("read %q, %v; want +OK", buf, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
	return conn.ConnectionState()
}

// BenchmarkSign compares crypto/rsa with what Wrap returns (the same in
// the default build) for the signature a TLS 1.3 handshake makes.
func BenchmarkSign(b *testing.B) {
	key := rsaKey(b)
	digest := digestOf(crypto.SHA256, []byte("popgate"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	for _, bc := range []struct {
		name string
		s    crypto.Signer
	}{
		{"go", key},
		{"wrapped-" + Implementation(), Wrap(key)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := bc.s.Sign(rand.Reader, digest, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
