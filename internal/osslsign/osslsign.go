// Package osslsign makes RSA signatures with OpenSSL's libcrypto when popgate
// is built with the "openssl" build tag (and cgo), and with Go's crypto/rsa
// otherwise.
//
// An RSA-2048 signature, made once per full TLS handshake with an RSA
// certificate, is most of popgate's CPU per login: on a 2-core test machine
// crypto/rsa takes about 0.9 ms for one, OpenSSL 3.0 about 0.3 ms. The
// default build stays pure Go (CGO_ENABLED=0, a static binary); an operator
// who serves RSA certificates and can ship libcrypto.so.3 builds with
// `go build -tags openssl`. See docs/performance.md.
//
// ECDSA keys are left to Go: on the same machine a P-256 signature costs
// about 45 µs in Go against 24 µs in OpenSSL, some 20 µs of a login that
// costs popgate about 0.55 ms with ECDSA, under 4 %: not worth a second
// key type across cgo.
package osslsign

import (
	"crypto"
	"crypto/tls"
)

// Certificate returns c with its private key passed through [Wrap]: c itself
// when Wrap keeps the key (always in the default build), else a shallow copy
// holding the wrapped key, so that a certificate shared with its loader
// (autocert's cache) is never modified. Call it once per loaded certificate,
// not per handshake: wrapping copies the key into libcrypto.
func Certificate(c *tls.Certificate) *tls.Certificate {
	key, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return c
	}
	w := Wrap(key)
	if w == key {
		return c
	}
	cp := *c
	cp.PrivateKey = w
	return &cp
}
