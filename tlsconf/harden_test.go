package tlsconf

import (
	"testing"
	"time"
)

// TestAttack7ValidCacheEntry: the fleet's cache puts back a local copy of
// an entry missing from Redis only when autocert would load it: a valid
// certificate under its own cache key (ECDSA "<name>", RSA "<name>+rsa"),
// or an account key; never an expired one, one of another name or key
// type, or a challenge answer.
func TestAttack7ValidCacheEntry(t *testing.T) {
	const name = "mail.example.com"
	ecdsaEntry := cacheEntry(t, name)
	rsaCert := newRSACert(t, name)
	certPEM, keyPEM, err := EncodePEM(rsaCert)
	if err != nil {
		t.Fatal(err)
	}
	rsaEntry := append(keyPEM, certPEM...)
	expired := certValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), name)
	certPEM, keyPEM, err = EncodePEM(expired)
	if err != nil {
		t.Fatal(err)
	}
	expiredEntry := append(keyPEM, certPEM...)
	for _, tc := range []struct {
		key   string
		entry []byte
		ok    bool
	}{
		{name, ecdsaEntry, true},
		{name + "+rsa", rsaEntry, true},
		{name + "+rsa", ecdsaEntry, false},
		{name, rsaEntry, false},
		{name, expiredEntry, false},
		{"other.example.com", ecdsaEntry, false},
		{"acme_account+key", keyPEM, true},
		{"acme_account+key", certPEM, false},
		{name + "+token", ecdsaEntry, false},
		{"tok+http-01", ecdsaEntry, false},
	} {
		if err := ValidCacheEntry(tc.key, tc.entry, time.Now()); (err == nil) != tc.ok {
			t.Errorf("ValidCacheEntry(%q) = %v, want valid %v", tc.key, err, tc.ok)
		}
	}
}
