// Package passhash verifies a password against a stored hash in the formats
// Dovecot writes: "{SCHEME}data", as `doveadm pw` prints it and as
// directories (SQL tables, LDAP userPassword) hold it.
//
//	v, err := passhash.New(passhash.Config{}) // at start
//	...
//	err := v.Verify(ctx, row.PasswordHash, password)
//	switch {
//	case err == nil:
//		// the password is right
//	case errors.Is(err, passhash.ErrMismatch):
//		// a wrong password: [AUTH]
//	default:
//		// not checked (ErrBusy, or an *Error for the hash): [SYS/TEMP]
//	}
//
// Supported schemes (names are case-insensitive, as in Dovecot):
//
//   - BLF-CRYPT, and BCRYPT (OpenLDAP's pw-bcrypt name): bcrypt $2a$, $2b$, $2y$.
//   - SHA512-CRYPT, SHA256-CRYPT, CRYPT: crypt(3) strings, dispatched on
//     their prefix as Dovecot's crypt() does: $6$, $5$, or bcrypt.
//   - ARGON2ID, ARGON2I, ARGON2: a PHC string $argon2id$ or $argon2i$
//     (Dovecot's libsodium check accepts either under every name).
//   - SSHA512, SSHA256, SSHA: base64(digest || salt), any salt length.
//   - SHA512, SHA256, SHA, SHA1: the unsalted digest, base64 or hex.
//   - PLAIN, CLEAR, CLEARTEXT: the password itself.
//
// As in Dovecot, a ".B64", ".BASE64" or ".HEX" suffix on the scheme name
// ("{SSHA512.HEX}") says how the data is encoded instead of the scheme's
// default. Weak schemes Dovecot refuses by default (MD5-CRYPT, DES-CRYPT,
// PLAIN-MD5, SMD5, LDAP-MD5, ...) are not supported, nor are PBKDF2 and
// SCRAM.
//
// A [Verifier] bounds the work a hash can cause. The expensive schemes
// (bcrypt, SHA-crypt, Argon2) run at most Config.Concurrency at a time; a
// verification that cannot get a slot before its context ends fails with
// [ErrBusy]. And a hash whose cost parameters exceed [Limits] is refused
// before any work, so that a hostile or mistaken directory row cannot make
// one login cost minutes of CPU or gigabytes of memory.
//
// No error of this package contains the password or the hash: an [*Error]
// names the scheme and what is wrong with the hash, nothing of its data.
package passhash

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
)

// MaxHashLen is the longest stored hash accepted, in bytes. Dovecot's
// longest defaults (SHA512-CRYPT, SSHA512, Argon2) are under 130 bytes;
// a longer one is refused as malformed rather than hashed.
const MaxHashLen = 1024

// MaxPasswordLen is the longest password Verify computes with, in bytes.
// SHA-crypt's work grows with the password's length times the rounds, so a
// longer password is reported as [ErrMismatch] without any hashing. POP3
// bounds a PASS line to 255 octets (RFC 2449 §4) anyway.
const MaxPasswordLen = 1024

var (
	// ErrMismatch is the outcome of a wrong password.
	ErrMismatch = errors.New("passhash: password does not match")

	// ErrBusy means that every verification slot stayed taken until the
	// context ended. The password was not checked: answer as for a
	// temporary failure, not as for a wrong password.
	ErrBusy = errors.New("passhash: all verification slots busy")

	// ErrUnsupported is the kind of an [*Error] for a scheme this package
	// does not verify, or a hash without a scheme prefix.
	ErrUnsupported = errors.New("unsupported scheme")

	// ErrMalformed is the kind of an [*Error] for a hash its scheme cannot
	// parse.
	ErrMalformed = errors.New("malformed hash")

	// ErrTooCostly is the kind of an [*Error] for a hash whose cost
	// parameters exceed the Verifier's [Limits].
	ErrTooCostly = errors.New("hash cost above the limit")
)

// Error describes a hash that cannot be verified. It never holds the hash's
// data nor the password.
type Error struct {
	// Scheme is the scheme named in the hash's prefix, upper case, without
	// the encoding suffix; empty when the hash has no readable prefix.
	Scheme string
	// Kind is ErrUnsupported, ErrMalformed or ErrTooCostly.
	Kind error
	// Detail says what is wrong, e.g. "bcrypt cost 20 above the limit 14".
	Detail string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("passhash: ")
	if e.Scheme != "" {
		b.WriteString("{" + e.Scheme + "}: ")
	}
	b.WriteString(e.Kind.Error())
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

// Unwrap returns e.Kind, so that errors.Is(err, ErrTooCostly) works.
func (e *Error) Unwrap() error { return e.Kind }

// Limits caps the cost parameters a stored hash may ask for. A hash above
// one of them is refused with ErrTooCostly before any hashing. The defaults
// ([DefaultLimits]) leave room above what Dovecot and the common tools
// write; see each field.
type Limits struct {
	// BcryptCost is the highest bcrypt cost (log2 of the rounds).
	// Default 14: Dovecot writes 5 unless told otherwise, PHP's
	// password_hash 10; each step doubles the work, and 14 takes about a
	// second of one core.
	BcryptCost int
	// SHACryptRounds is the highest rounds= of SHA256-CRYPT and
	// SHA512-CRYPT. Default 1,000,000: Dovecot and glibc write 5,000,
	// passlib 535,000 (SHA-256) and 656,000 (SHA-512), Authelia up to
	// 1,000,000. The format allows 999,999,999.
	SHACryptRounds int
	// Argon2Memory is the highest Argon2 m=, in KiB; each verification in
	// flight allocates that much. Default 262144 (256 MiB): Dovecot writes
	// 64 MiB (ARGON2ID) or 32 MiB (ARGON2I) by default and up to 256 MiB
	// with -r 3, libsodium's "moderate"; its "sensitive" 1 GiB is refused.
	Argon2Memory uint32
	// Argon2Time is the highest Argon2 t= (passes over the memory).
	// Default 8: Dovecot writes 3 (ARGON2ID) or 4 (ARGON2I), up to 8.
	Argon2Time uint32
	// Argon2Threads is the highest Argon2 p= (lanes, run as that many
	// goroutines). Default 16: libsodium always writes 1, RFC 9106
	// suggests 4.
	Argon2Threads uint32
}

// DefaultLimits returns the limits a zero Limits field takes.
func DefaultLimits() Limits {
	return Limits{
		BcryptCost:     14,
		SHACryptRounds: 1_000_000,
		Argon2Memory:   256 * 1024,
		Argon2Time:     8,
		Argon2Threads:  16,
	}
}

// The formats' own maxima: a limit above one of them is a configuration
// error.
const (
	maxBcryptCost     = 31
	maxSHACryptRounds = 999_999_999
	maxArgon2Threads  = 255 // golang.org/x/crypto/argon2 takes a uint8
)

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.BcryptCost == 0 {
		l.BcryptCost = d.BcryptCost
	}
	if l.SHACryptRounds == 0 {
		l.SHACryptRounds = d.SHACryptRounds
	}
	if l.Argon2Memory == 0 {
		l.Argon2Memory = d.Argon2Memory
	}
	if l.Argon2Time == 0 {
		l.Argon2Time = d.Argon2Time
	}
	if l.Argon2Threads == 0 {
		l.Argon2Threads = d.Argon2Threads
	}
	return l
}

// Config configures a [Verifier]. The zero value is ready to use.
type Config struct {
	// Concurrency is how many expensive verifications (bcrypt, SHA-crypt,
	// Argon2) run at once; further ones wait for a slot until their
	// context ends. Zero means runtime.GOMAXPROCS(0), so that password
	// hashing can take all cores but never queue more work on them than
	// they can run. The cheap schemes (salted and unsalted digests, PLAIN)
	// take no slot.
	Concurrency int
	// Limits caps the cost parameters of a hash; a zero field takes its
	// value from DefaultLimits().
	Limits Limits
	// DefaultScheme is the scheme of a hash with no "{SCHEME}" prefix, as
	// Dovecot's default_password_scheme. Empty: such a hash is refused
	// with ErrUnsupported.
	DefaultScheme string
}

// Verifier verifies passwords against stored hashes. It is safe for
// concurrent use.
type Verifier struct {
	limits        Limits
	defaultScheme string
	slots         chan struct{} // a token per expensive verification running

	// running, when set (by tests), is called with +1 before an expensive
	// verification computes and with -1 after.
	running func(delta int)
}

// New returns a Verifier, or an error naming each setting out of range.
func New(cfg Config) (*Verifier, error) {
	var errs []error
	n := cfg.Concurrency
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	if n < 0 {
		errs = append(errs, fmt.Errorf("passhash: concurrency %d is negative", cfg.Concurrency))
	}
	l := cfg.Limits.withDefaults()
	if l.BcryptCost < 4 || l.BcryptCost > maxBcryptCost {
		errs = append(errs, fmt.Errorf("passhash: bcrypt cost limit %d outside 4..%d", l.BcryptCost, maxBcryptCost))
	}
	if l.SHACryptRounds < 1000 || l.SHACryptRounds > maxSHACryptRounds {
		errs = append(errs, fmt.Errorf("passhash: SHA-crypt rounds limit %d outside 1000..%d", l.SHACryptRounds, maxSHACryptRounds))
	}
	if l.Argon2Threads > maxArgon2Threads {
		errs = append(errs, fmt.Errorf("passhash: Argon2 threads limit %d above %d", l.Argon2Threads, maxArgon2Threads))
	}
	if l.Argon2Memory < 8 {
		errs = append(errs, fmt.Errorf("passhash: Argon2 memory limit %d KiB below the minimum of 8", l.Argon2Memory))
	}
	v := &Verifier{limits: l}
	if cfg.DefaultScheme != "" {
		name, _, err := splitScheme(cfg.DefaultScheme)
		if err == nil {
			_, err = lookup(name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("passhash: default scheme: %w", err))
		}
		v.defaultScheme = cfg.DefaultScheme
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	v.slots = make(chan struct{}, n)
	return v, nil
}

// Verify reports whether password matches the stored hash: nil when it
// does, [ErrMismatch] when it does not. Any other error means the password
// was not checked: an [*Error] for a hash that is malformed, of an
// unsupported scheme or above the limits, or [ErrBusy] (wrapping the
// context's error) when no slot came free before ctx ended. Give ctx the
// login's or lookup's deadline: without one, Verify waits for a slot as
// long as it takes. An expensive verification, once started, runs to its
// end whatever ctx does: it cannot be interrupted, and the limits bound how
// long it takes.
func (v *Verifier) Verify(ctx context.Context, hash, password string) error {
	h, err := v.parse(hash)
	if err != nil {
		return err
	}
	if len(password) > MaxPasswordLen {
		return ErrMismatch
	}
	if h.expensive() {
		if err := v.acquire(ctx); err != nil {
			return err
		}
		defer v.release()
		if v.running != nil {
			v.running(+1)
			defer v.running(-1)
		}
	}
	if !h.verify([]byte(password)) {
		return ErrMismatch
	}
	return nil
}

// Check parses hash as Verify does, without verifying anything: nil when
// Verify could check a password against it. It takes no slot.
func (v *Verifier) Check(hash string) error {
	_, err := v.parse(hash)
	return err
}

// InUse returns how many expensive verifications are running.
func (v *Verifier) InUse() int { return len(v.slots) }

// Concurrency returns the number of expensive verifications that may run at
// once.
func (v *Verifier) Concurrency() int { return cap(v.slots) }

func (v *Verifier) acquire(ctx context.Context) error {
	// A free slot is taken even when ctx has ended meanwhile: the work is
	// bounded by the limits, and ErrBusy is kept for a real shortage.
	select {
	case v.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case v.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		// Said for the log line of the login's [SYS/TEMP]: what ran
		// short and what to change.
		return fmt.Errorf("%w (%d at once) until the lookup's timeout: the stored hashes cost more CPU than "+
			"this machine has for the rate of logins; rehash with a lower cost (bcrypt, SHA-crypt rounds, "+
			"Argon2 memory) or give popgate more cores: %w", ErrBusy, cap(v.slots), context.Cause(ctx))
	}
}

func (v *Verifier) release() { <-v.slots }
