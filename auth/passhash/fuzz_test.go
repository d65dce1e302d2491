package passhash

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary hashes and passwords to Check and Verify under
// limits low enough that every accepted hash is cheap to verify. It checks
// that nothing panics, that Check and Verify agree, that a hash Check
// accepts only ever matches or mismatches, and that an error's text does
// not depend on the password and does not quote the hash.
func FuzzParse(f *testing.F) {
	for _, h := range []string{
		hBcrypt, hSHA512C, hSHA256C, hArgon2ID, hSSHA512, hSSHA256,
		"{PLAIN}secret", "{PLAIN.B64}c2VjcmV0", "{SSHA256.HEX}6fa7de79cc5ac4d0995343c749590f4abe86a1d845c017fef8f531269b445e08641d6838",
		"{SHA256}LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE=",
		"{CRYPT}$2y$04$HJBRG3YhE/XNFLRgFQ2LZexhoXmK.UdmjYueGGy3m1PHHoPVvCKc.",
		"{SHA512-CRYPT}$6$rounds=1000$NDhAHzZb.iAOaJIL$DTgs8V.9AkUT.NW9NyNbDgx3wuvgGk1pg6XMQAniz0GsaYgqH2qSJglFj/WzCUgpjlBlxHSf9M1tbS5wrqIKV0",
		"{ARGON2I}$argon2i$v=19$m=64,t=1,p=1$5f6CqQcZrKFoGgqeo+43NQ$g2c2e+bWDz/IeGEGLwxiZlc8uOV6Eh+rQwK4qDTne/Q",
		"{MD5-CRYPT}$1$abcdefgh$0123456789012345678901", "{}", "{", "secret", "",
	} {
		f.Add(h, "secret")
	}
	v, err := New(Config{
		Concurrency: 1,
		Limits:      Limits{BcryptCost: 4, SHACryptRounds: 1000, Argon2Memory: 64, Argon2Time: 1, Argon2Threads: 2},
	})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, hash, password string) {
		cerr := v.Check(hash)
		verr := v.Verify(ctx, hash, password)
		if cerr == nil {
			if verr != nil && !errors.Is(verr, ErrMismatch) {
				t.Fatalf("Check accepted the hash, Verify = %v", verr)
			}
			return
		}
		var e *Error
		if !errors.As(cerr, &e) {
			t.Fatalf("Check = %v (%T), want an *Error", cerr, cerr)
		}
		if verr == nil || verr.Error() != cerr.Error() {
			t.Fatalf("Check = %v, Verify = %v: they disagree", cerr, verr)
		}
		if other := v.Verify(ctx, hash, password+"other"); other == nil || other.Error() != verr.Error() {
			t.Fatalf("error text depends on the password: %v, then %v", verr, other)
		}
		msg := cerr.Error()
		if len(msg) > 300 {
			t.Fatalf("error of %d bytes", len(msg))
		}
		for i := 0; i < len(msg); i++ {
			if msg[i] < ' ' || msg[i] > '~' {
				t.Fatalf("error %q holds a byte outside printable ASCII", msg)
			}
		}
		// Longer than any fixed phrase of the messages, so that a match
		// is the hash's data quoted back.
		if _, data, ok := strings.Cut(hash, "}"); ok && len(data) >= 64 && strings.Contains(msg, data) {
			t.Fatalf("error %q quotes the hash", msg)
		}
	})
}
