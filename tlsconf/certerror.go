package tlsconf

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Reasons a certificate file is refused, as [CertificateError.Reason]
// gives them (and popgate_certificate_reload_errors_total counts them).
const (
	// ReasonUnreadable: missing, no permission, not a regular file, or
	// over 1 MiB.
	ReasonUnreadable = "unreadable"
	// ReasonInvalid: not a PEM certificate or key, or a key that does
	// not match the certificate.
	ReasonInvalid = "invalid"
	// ReasonExpired and ReasonNotYetValid: a certificate outside its
	// validity that would have replaced one inside its own.
	ReasonExpired     = "expired"
	ReasonNotYetValid = "not_yet_valid"
)

// CertificateError is a static certificate (or its key) that was refused.
// [NewServer] and [Server.Reload] return it, possibly wrapped.
type CertificateError struct {
	Cert, Key string // the pair's files
	Reason    string // ReasonUnreadable, ReasonInvalid, ReasonExpired, ReasonNotYetValid
	// NotBefore and NotAfter are the refused certificate's validity, for
	// ReasonExpired and ReasonNotYetValid; Kept is the NotAfter of the
	// certificate that stays in its place.
	NotBefore, NotAfter, Kept time.Time
	err                       error
}

func (e *CertificateError) Error() string { return e.err.Error() }

func (e *CertificateError) Unwrap() error { return e.err }

// pairError is a CertificateError for f without dates.
func pairError(f CertFile, reason string, err error) error {
	return &CertificateError{Cert: f.Cert, Key: f.Key, Reason: reason, err: err}
}

// validAt reports whether leaf is within its validity at now.
func validAt(leaf *x509.Certificate, now time.Time) bool {
	return !now.Before(leaf.NotBefore) && !now.After(leaf.NotAfter)
}

// notValidError refuses leaf, read from f and not valid at now, in place
// of kept, which is.
func notValidError(f CertFile, leaf, kept *x509.Certificate, now time.Time) error {
	e := &CertificateError{Cert: f.Cert, Key: f.Key, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Kept: kept.NotAfter}
	when := "expired at " + stamp(leaf.NotAfter)
	e.Reason = ReasonExpired
	if now.Before(leaf.NotBefore) {
		when = "not valid before " + stamp(leaf.NotBefore)
		e.Reason = ReasonNotYetValid
	}
	e.err = fmt.Errorf("tlsconf: certificate %s %s (valid %s to %s); keeping the certificate it would replace, valid until %s",
		f.Cert, when, stamp(leaf.NotBefore), stamp(leaf.NotAfter), stamp(kept.NotAfter))
	return e
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// asCertificateError returns the CertificateError in err's chain.
func asCertificateError(err error) (*CertificateError, bool) {
	var ce *CertificateError
	ok := errors.As(err, &ce)
	return ce, ok
}
