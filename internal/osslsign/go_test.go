//go:build !openssl

package osslsign

import (
	"crypto/tls"
	"testing"
)

// fallbackCount: in this build crypto/rsa makes every signature, and
// there is nothing to fall back from.
func fallbackCount() uint64 { return 0 }

func TestDefaultBuildKeepsKeys(t *testing.T) {
	key := rsaKey(t)
	if got := Wrap(key); got != key {
		t.Errorf("Wrap(rsa key) = %T, want the key itself in the default build", got)
	}
	c := &tls.Certificate{PrivateKey: key}
	if got := Certificate(c); got != c {
		t.Error("Certificate made a copy in the default build, want the certificate itself")
	}
	if got := Implementation(); got != "go" {
		t.Errorf("Implementation() = %q, want go", got)
	}
}
