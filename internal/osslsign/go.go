//go:build !openssl

package osslsign

import "crypto"

// Wrap returns key unchanged: this build signs with Go's crypto packages.
// With the "openssl" build tag it returns, for an *rsa.PrivateKey, a signer
// backed by libcrypto.
func Wrap(key crypto.Signer) crypto.Signer { return key }

// Implementation names what makes RSA signatures in this build: "go".
func Implementation() string { return "go" }
