//go:build openssl

package osslsign

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"regexp"
	"runtime"
	"testing"
	"time"
)

func fallbackCount() uint64 { return fallbacks.Load() }

func TestImplementation(t *testing.T) {
	if got := Implementation(); !regexp.MustCompile(`^openssl [0-9]+\.[0-9]+\.[0-9]+`).MatchString(got) {
		t.Errorf("Implementation() = %q, want openssl and libcrypto's version", got)
	}
}

// TestOpenSSLSigns checks that libcrypto itself (not the fallback) makes
// every kind of signature crypto/tls asks for.
func TestOpenSSLSigns(t *testing.T) {
	key := rsaKey(t)
	s, ok := Wrap(key).(*signer)
	if !ok {
		t.Fatalf("Wrap(rsa key) = %T, want the libcrypto signer", Wrap(key))
	}
	for _, c := range signCases {
		digest := digestOf(c.hash, []byte(c.name))
		sig := s.signOpenSSL(digest, c.opts())
		if sig == nil {
			t.Errorf("%s: libcrypto made no signature", c.name)
			continue
		}
		if err := c.verify(&key.PublicKey, digest, sig); err != nil {
			t.Errorf("%s: crypto/rsa refuses libcrypto's signature: %v", c.name, err)
		}
	}
	// An explicit salt length, as a non-TLS caller may ask.
	digest := digestOf(crypto.SHA256, []byte("salt"))
	sig := s.signOpenSSL(digest, &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256})
	if sig == nil {
		t.Fatal("PSS with a 20-byte salt: libcrypto made no signature")
	}
	if err := rsa.VerifyPSS(&key.PublicKey, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: 20}); err != nil {
		t.Errorf("PSS with a 20-byte salt: %v", err)
	}
}

// TestFallback: what libcrypto is not asked to do, crypto/rsa does.
func TestFallback(t *testing.T) {
	key := rsaKey(t)
	s := Wrap(key)
	for _, tc := range []struct {
		name   string
		hash   crypto.Hash
		opts   crypto.SignerOpts
		verify func(digest, sig []byte) error
	}{
		{"pss-auto-salt", crypto.SHA256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256},
			func(digest, sig []byte) error {
				return rsa.VerifyPSS(&key.PublicKey, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
			}},
		{"pkcs1-sha224", crypto.SHA224, crypto.SHA224,
			func(digest, sig []byte) error { return rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA224, digest, sig) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			digest := make([]byte, tc.hash.Size())
			digest[0] = 7
			before := fallbacks.Load()
			sig, err := s.Sign(rand.Reader, digest, tc.opts)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if err := tc.verify(digest, sig); err != nil {
				t.Fatalf("crypto/rsa refuses the signature: %v", err)
			}
			if fallbacks.Load() != before+1 {
				t.Error("crypto/rsa did not make the signature")
			}
		})
	}
}

func TestCertificateCopies(t *testing.T) {
	key := rsaKey(t)
	c := &tls.Certificate{Certificate: [][]byte{{1}}, PrivateKey: key}
	w := Certificate(c)
	if w == c || c.PrivateKey != crypto.PrivateKey(key) {
		t.Fatal("Certificate modified the certificate, want a copy")
	}
	if _, ok := w.PrivateKey.(*signer); !ok || &w.Certificate[0][0] != &c.Certificate[0][0] {
		t.Errorf("Certificate's copy holds %T, want the libcrypto signer and the same chain", w.PrivateKey)
	}
	if Wrap(w.PrivateKey.(crypto.Signer)) != w.PrivateKey {
		t.Error("Wrap of a wrapped key wrapped it again")
	}
}

// TestKeyFreed checks that the EVP_PKEY of an unreachable signer is freed.
func TestKeyFreed(t *testing.T) {
	freed := make(chan struct{})
	func() {
		s := Wrap(rsaKey(t)).(*signer)
		runtime.AddCleanup(s, func(c chan struct{}) { close(c) }, freed)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		select {
		case <-freed:
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the signer was not collected within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
