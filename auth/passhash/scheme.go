package passhash

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/go-crypt/crypt/algorithm"
	"github.com/go-crypt/crypt/algorithm/shacrypt"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// encoding is how a scheme's data is written after "{SCHEME}", as in
// Dovecot's password-scheme.c.
type encoding int

const (
	encNone encoding = iota
	encBase64
	encHex
)

// family groups the schemes that verify the same way.
type family int

const (
	famPlain  family = iota
	famDigest        // unsalted digest: data is the digest
	famSalted        // salted digest: data is digest || salt
	famCrypt         // a crypt(3) string: $2y$, $5$, $6$
	famBcrypt        // bcrypt only
	famArgon2        // a PHC string $argon2id$ or $argon2i$
)

type scheme struct {
	name    string // canonical name, upper case
	family  family
	enc     encoding         // default encoding of the data
	newHash func() hash.Hash // famDigest, famSalted
}

// lookup returns the scheme called name (upper case, without the encoding
// suffix). Dovecot's aliases are kept: {SHA} and {SHA1}, {CLEAR} and
// {CLEARTEXT} for {PLAIN}, {ARGON2} (argon2id).
func lookup(name string) (scheme, error) {
	s := scheme{name: name}
	switch name {
	case "PLAIN", "CLEAR", "CLEARTEXT":
		s.family, s.enc = famPlain, encNone
	case "SHA", "SHA1":
		s.family, s.enc, s.newHash = famDigest, encBase64, sha1.New
	case "SHA256":
		s.family, s.enc, s.newHash = famDigest, encBase64, sha256.New
	case "SHA512":
		s.family, s.enc, s.newHash = famDigest, encBase64, sha512.New
	case "SSHA":
		s.family, s.enc, s.newHash = famSalted, encBase64, sha1.New
	case "SSHA256":
		s.family, s.enc, s.newHash = famSalted, encBase64, sha256.New
	case "SSHA512":
		s.family, s.enc, s.newHash = famSalted, encBase64, sha512.New
	case "CRYPT", "SHA256-CRYPT", "SHA512-CRYPT":
		s.family, s.enc = famCrypt, encNone
	case "BLF-CRYPT", "BCRYPT":
		s.family, s.enc = famBcrypt, encNone
	case "ARGON2ID", "ARGON2I", "ARGON2":
		s.family, s.enc = famArgon2, encNone
	case "MD5", "MD5-CRYPT", "DES-CRYPT", "SMD5", "PLAIN-MD4", "PLAIN-MD5",
		"LDAP-MD5", "HMAC-MD5":
		return s, &Error{Scheme: name, Kind: ErrUnsupported, Detail: "weak scheme, refused as Dovecot refuses it by default"}
	default:
		return s, &Error{Scheme: name, Kind: ErrUnsupported}
	}
	return s, nil
}

// splitScheme splits "NAME.ENC" into the upper-case name and the encoding
// its suffix asks for (-1 when there is none).
func splitScheme(full string) (string, encoding, error) {
	name, suffix, hasSuffix := strings.Cut(strings.ToUpper(full), ".")
	name = printable(name)
	if name == "" {
		return "", 0, &Error{Kind: ErrUnsupported, Detail: "empty scheme name"}
	}
	if !hasSuffix {
		return name, -1, nil
	}
	switch suffix {
	case "B64", "BASE64":
		return name, encBase64, nil
	case "HEX":
		return name, encHex, nil
	}
	return name, 0, &Error{Scheme: name, Kind: ErrUnsupported, Detail: fmt.Sprintf("unknown encoding suffix %q", printable(suffix))}
}

// printable returns s when it is a plausible scheme name, short printable
// ASCII, so that an error can name it; else a placeholder.
func printable(s string) string {
	if len(s) > 32 {
		return "(name too long)"
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return "(unprintable name)"
		}
	}
	return s
}

// parsed is a hash ready to be verified.
type parsed struct {
	scheme string
	family family
	data   []byte // plain: the password; digest: the digest; crypt, argon2: the string

	newHash func() hash.Hash
	salt    []byte // famSalted, famArgon2

	// famCrypt after dispatch: which crypt(3) algorithm.
	crypt cryptKind
	sha   algorithm.Digest // cryptSHA256, cryptSHA512

	argon2id              bool
	time, memory, threads uint32
}

type cryptKind int

const (
	cryptBcrypt cryptKind = iota + 1
	cryptSHA256
	cryptSHA512
)

func (h *parsed) expensive() bool {
	return h.family == famCrypt || h.family == famBcrypt || h.family == famArgon2
}

// parse splits "{SCHEME[.ENC]}data", decodes data and checks it against
// the scheme's format and the limits.
func (v *Verifier) parse(stored string) (*parsed, error) {
	if len(stored) > MaxHashLen {
		return nil, &Error{Kind: ErrMalformed, Detail: fmt.Sprintf("longer than %d bytes", MaxHashLen)}
	}
	var full, data string
	if rest, ok := strings.CutPrefix(stored, "{"); ok {
		i := strings.IndexByte(rest, '}')
		if i < 0 {
			return nil, &Error{Kind: ErrMalformed, Detail: "no '}' after the scheme name"}
		}
		full, data = rest[:i], rest[i+1:]
	} else {
		if v.defaultScheme == "" {
			return nil, &Error{Kind: ErrUnsupported, Detail: "no {SCHEME} prefix and no default scheme"}
		}
		full, data = v.defaultScheme, stored
	}
	name, enc, err := splitScheme(full)
	if err != nil {
		return nil, err
	}
	s, err := lookup(name)
	if err != nil {
		return nil, err
	}
	guessed := false
	if enc < 0 {
		enc = s.enc
		if s.family == famDigest && len(data) == 2*s.newHash().Size() {
			// Dovecot guesses for fixed-size digests: hex when the length
			// fits, else base64 (password_decode).
			enc, guessed = encHex, true
		}
	}
	raw, err := decode(data, enc)
	if err != nil && guessed {
		raw, err = decode(data, encBase64)
	}
	if err != nil {
		return nil, &Error{Scheme: name, Kind: ErrMalformed, Detail: err.Error()}
	}
	h := &parsed{scheme: name, family: s.family, newHash: s.newHash}
	switch s.family {
	case famPlain:
		h.data = raw
	case famDigest:
		if len(raw) != s.newHash().Size() {
			return nil, &Error{Scheme: name, Kind: ErrMalformed, Detail: fmt.Sprintf("digest of %d bytes, want %d", len(raw), s.newHash().Size())}
		}
		h.data = raw
	case famSalted:
		// Dovecot's ssha*_verify: the digest, then a salt of any length.
		n := s.newHash().Size()
		if len(raw) <= n {
			return nil, &Error{Scheme: name, Kind: ErrMalformed, Detail: fmt.Sprintf("%d bytes, want a %d-byte digest and a salt", len(raw), n)}
		}
		h.data, h.salt = raw[:n], raw[n:]
	case famCrypt, famBcrypt:
		err = v.parseCrypt(h, string(raw), s.family == famBcrypt)
	case famArgon2:
		err = v.parseArgon2(h, string(raw))
	}
	if err != nil {
		return nil, err
	}
	return h, nil
}

func decode(data string, enc encoding) ([]byte, error) {
	switch enc {
	case encBase64:
		// With its padding: Dovecot refuses base64 without.
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("invalid base64")
		}
		return b, nil
	case encHex:
		b, err := hex.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("invalid hex")
		}
		return b, nil
	}
	return []byte(data), nil
}

const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func inAlphabet(s, alphabet string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// parseCrypt checks a crypt(3) string. Dovecot hands every crypt scheme's
// string to crypt(), which picks the algorithm from the prefix; bcrypt
// only accepts bcrypt.
func (v *Verifier) parseCrypt(h *parsed, s string, bcryptOnly bool) error {
	h.data = []byte(s)
	switch {
	case strings.HasPrefix(s, "$2"):
		h.crypt = cryptBcrypt
		return v.parseBcrypt(h, s)
	case bcryptOnly:
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: "not a bcrypt string ($2y$...)"}
	case strings.HasPrefix(s, "$5$"):
		h.crypt = cryptSHA256
		return v.parseSHACrypt(h, s, shacrypt.VariantSHA256, 43)
	case strings.HasPrefix(s, "$6$"):
		h.crypt = cryptSHA512
		return v.parseSHACrypt(h, s, shacrypt.VariantSHA512, 86)
	case strings.HasPrefix(s, "$1$"):
		return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "MD5-crypt string, a weak scheme Dovecot refuses by default"}
	case s == "":
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: "empty"}
	case !strings.HasPrefix(s, "$"):
		return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "DES-crypt string, a weak scheme Dovecot refuses by default"}
	}
	return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "unknown crypt(3) algorithm"}
}

// parseBcrypt checks "$2y$NN$" + 22 characters of salt + 31 of hash.
// $2x$ is refused: it asks to reproduce an old crypt_blowfish bug with
// 8-bit passwords that golang.org/x/crypto/bcrypt does not implement, and
// Dovecot never writes it.
func (v *Verifier) parseBcrypt(h *parsed, s string) error {
	const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	if len(s) != 60 || s[0] != '$' || s[1] != '2' || s[3] != '$' || s[6] != '$' {
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: "not a bcrypt string of 60 characters ($2y$NN$...)"}
	}
	switch s[2] {
	case 'a', 'b', 'y':
	case 'x':
		return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "bcrypt $2x$ (crypt_blowfish's bug-compatible variant)"}
	default:
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: "unknown bcrypt version"}
	}
	if s[4] < '0' || s[4] > '9' || s[5] < '0' || s[5] > '9' || !inAlphabet(s[7:], bcryptAlphabet) {
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: "not a bcrypt string of 60 characters ($2y$NN$...)"}
	}
	cost := int(s[4]-'0')*10 + int(s[5]-'0')
	if cost < bcrypt.MinCost || cost > maxBcryptCost {
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: fmt.Sprintf("bcrypt cost %d outside %d..%d", cost, bcrypt.MinCost, maxBcryptCost)}
	}
	if cost > v.limits.BcryptCost {
		return &Error{Scheme: h.scheme, Kind: ErrTooCostly, Detail: fmt.Sprintf("bcrypt cost %d above the limit %d", cost, v.limits.BcryptCost)}
	}
	return nil
}

// parseSHACrypt checks the part of a SHA-crypt string after "$5$" or
// "$6$": an optional "rounds=N$", a salt of at most 16 characters, "$" and
// the hash of keyLen characters. glibc's crypt() writes exactly this
// (clamping rounds to 1000..999999999 and cutting the salt at 16), so
// anything else would never match in Dovecot either.
func (v *Verifier) parseSHACrypt(h *parsed, full string, variant shacrypt.Variant, keyLen int) error {
	bad := func(detail string) error {
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: detail}
	}
	s := full[3:]
	rounds := 5000 // when rounds= is left out
	if rest, ok := strings.CutPrefix(s, "rounds="); ok {
		digits, after, ok := strings.Cut(rest, "$")
		if !ok || digits == "" || len(digits) > 9 || digits[0] == '0' || !inAlphabet(digits, "0123456789") {
			return bad("rounds= is not a number of 1000..999999999")
		}
		rounds, _ = strconv.Atoi(digits) // 9 digits at most: cannot fail
		if rounds < 1000 {
			return bad(fmt.Sprintf("rounds=%d below 1000", rounds))
		}
		s = after
	}
	if rounds > v.limits.SHACryptRounds {
		return &Error{Scheme: h.scheme, Kind: ErrTooCostly, Detail: fmt.Sprintf("%d rounds above the limit %d", rounds, v.limits.SHACryptRounds)}
	}
	salt, key, ok := strings.Cut(s, "$")
	if !ok || len(salt) > 16 || len(key) != keyLen || !inAlphabet(key, cryptAlphabet) {
		return bad(fmt.Sprintf("not a SHA-crypt string (salt of up to 16 characters, then %d characters)", keyLen))
	}
	// The library parses again what was checked above; its errors quote
	// parts of the hash, so only the fact of one is reported.
	d, err := shacrypt.DecodeVariant(variant)(full)
	if err != nil {
		return bad("not a SHA-crypt string")
	}
	h.sha = d
	return nil
}

// parseArgon2 checks a PHC string as libsodium writes it:
// $argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>, salt and hash in base64
// without padding. Dovecot verifies with crypto_pwhash_str_verify, which
// takes argon2i and argon2id under any of the ARGON2* names; only version
// 19 (0x13) exists there and in golang.org/x/crypto/argon2.
func (v *Verifier) parseArgon2(h *parsed, s string) error {
	bad := func(detail string) error {
		return &Error{Scheme: h.scheme, Kind: ErrMalformed, Detail: detail}
	}
	h.data = nil
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" {
		return bad("not an Argon2 PHC string")
	}
	switch parts[1] {
	case "argon2id":
		h.argon2id = true
	case "argon2i":
	case "argon2d":
		return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "argon2d (libsodium verifies argon2i and argon2id only)"}
	default:
		return bad("not an Argon2 PHC string")
	}
	if parts[2] != "v=19" {
		return &Error{Scheme: h.scheme, Kind: ErrUnsupported, Detail: "Argon2 version other than v=19"}
	}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return bad("Argon2 parameters are not m=...,t=...,p=...")
	}
	var vals [3]uint32
	for i, key := range []string{"m=", "t=", "p="} {
		digits, ok := strings.CutPrefix(params[i], key)
		n, err := strconv.ParseUint(digits, 10, 32)
		if !ok || err != nil || digits[0] == '+' || (len(digits) > 1 && digits[0] == '0') {
			return bad("Argon2 parameters are not m=...,t=...,p=...")
		}
		vals[i] = uint32(n)
	}
	h.memory, h.time, h.threads = vals[0], vals[1], vals[2]
	// The minima of the Argon2 reference implementation (argon2.h), which
	// libsodium enforces.
	if h.threads < 1 || h.time < 1 || uint64(h.memory) < 8*uint64(h.threads) {
		return bad(fmt.Sprintf("Argon2 memory %d KiB, %d passes, %d lanes: below the minima (1 lane, 1 pass, 8 KiB a lane)", h.memory, h.time, h.threads))
	}
	switch l := v.limits; {
	case h.memory > l.Argon2Memory:
		return &Error{Scheme: h.scheme, Kind: ErrTooCostly, Detail: fmt.Sprintf("Argon2 memory %d KiB above the limit %d", h.memory, l.Argon2Memory)}
	case h.time > l.Argon2Time:
		return &Error{Scheme: h.scheme, Kind: ErrTooCostly, Detail: fmt.Sprintf("Argon2 %d passes above the limit %d", h.time, l.Argon2Time)}
	case h.threads > l.Argon2Threads:
		return &Error{Scheme: h.scheme, Kind: ErrTooCostly, Detail: fmt.Sprintf("Argon2 %d lanes above the limit %d", h.threads, l.Argon2Threads)}
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil {
		return bad("Argon2 salt or hash is not base64 without padding")
	}
	if len(salt) < 8 || len(key) < 4 {
		return bad(fmt.Sprintf("Argon2 salt of %d bytes or hash of %d bytes below the minima (8, 4)", len(salt), len(key)))
	}
	h.salt, h.data = salt, key
	return nil
}

// verify computes the password's hash and compares it in constant time.
func (h *parsed) verify(password []byte) bool {
	switch h.family {
	case famPlain:
		return subtle.ConstantTimeCompare(password, h.data) == 1
	case famDigest:
		d := h.newHash()
		d.Write(password)
		return subtle.ConstantTimeCompare(d.Sum(nil), h.data) == 1
	case famSalted:
		d := h.newHash()
		d.Write(password)
		d.Write(h.salt)
		return subtle.ConstantTimeCompare(d.Sum(nil), h.data) == 1
	case famCrypt, famBcrypt:
		switch h.crypt {
		case cryptBcrypt:
			// Compares in constant time. Like crypt_blowfish, it uses the
			// first 72 bytes of a longer password.
			return bcrypt.CompareHashAndPassword(h.data, password) == nil
		case cryptSHA256, cryptSHA512:
			ok, err := h.sha.MatchBytesAdvanced(password) // compares in constant time
			return err == nil && ok
		}
	case famArgon2:
		var key []byte
		if h.argon2id {
			key = argon2.IDKey(password, h.salt, h.time, h.memory, uint8(h.threads), uint32(len(h.data)))
		} else {
			key = argon2.Key(password, h.salt, h.time, h.memory, uint8(h.threads), uint32(len(h.data)))
		}
		return subtle.ConstantTimeCompare(key, h.data) == 1
	}
	return false
}
