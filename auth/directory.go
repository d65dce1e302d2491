package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Entry is what a directory (an SQL row, an LDAP entry) says about one
// user, before [Directory] makes a [Decision] of it. Every field is as the
// directory returned it, untrusted.
type Entry struct {
	// Where names the entry for logs and `popgate route`: "row 1 of
	// route.sql.query", an LDAP entry's DN.
	Where string
	// Backend names a configured backend; or Host and Port give an
	// address, reached with the source's backend settings.
	Backend    string
	Host, Port string
	// Login, when not empty, is the name popgate logs in to the backend
	// with instead of the client's ("alice*master" for a master user).
	Login string
	// Password, when not empty, is the password popgate logs in to the
	// backend with instead of the client's (a master user's). The
	// directory must return PasswordHash with it: popgate hands the
	// master's password only to a client whose own password it checked.
	Password Password
	// PasswordHash, when not empty, is checked against the client's
	// password before any backend is contacted ({SCHEME}hash, as Dovecot
	// writes it).
	PasswordHash string
	// Disabled refuses the login: the directory's enabled column or
	// attribute said so.
	Disabled bool
}

// HashChecker checks a password against a stored hash. Check returns nil
// when they match, [ErrPasswordMismatch] when they do not, and any other
// error when it cannot tell (an unknown scheme, a malformed hash, too many
// checks under way); the error must contain neither the hash nor the
// password.
type HashChecker interface {
	Check(ctx context.Context, hash string, password Password) error
}

// ErrPasswordMismatch is returned by a [HashChecker] for a wrong password.
var ErrPasswordMismatch = errors.New("auth: password does not match")

// Directory turns the [Entry] a directory source found for a login into
// the login's [Decision]: the rules the SQL and LDAP sources share.
//
// An entry is refused (a *[DeniedError], "-ERR [AUTH]" like a wrong
// password) when it is disabled or its PasswordHash does not match the
// client's password, which an empty password never does. An entry that
// cannot be used as it stands is an error, and the client gets
// "-ERR [SYS/TEMP]", never a login: no
// backend and no host, or both; an unknown backend name; a bad host or
// port; a Login or Password that holds CR, LF or NUL; and a Password
// without a PasswordHash, which would log anyone who knows a user name in
// with the master's password.
type Directory struct {
	// Source names the source in errors and refusals: "route.sql".
	Source string
	// Backend names the configured backend whose settings (TLS, server
	// name, client address) are used with a Host/Port answer; "" dials
	// the address in plaintext, as for auth_http.
	Backend string
	// KnownBackend reports whether a backend name is configured; nil
	// accepts any name.
	KnownBackend func(name string) bool
	// Hashes checks PasswordHash; nil makes an entry with one an error.
	Hashes HashChecker
}

// Decide makes the Decision for req from e.
func (d *Directory) Decide(ctx context.Context, req *Request, e *Entry) (Decision, error) {
	if e.Disabled {
		return Decision{}, &DeniedError{Reason: d.Source + ": account disabled (" + e.Where + ")"}
	}
	dec, err := d.destination(e)
	if err != nil {
		return Decision{}, err
	}
	if e.Password != "" && e.PasswordHash == "" {
		return Decision{}, fmt.Errorf("auth: %s: %s returns a password for the backend but no password_hash: "+
			"popgate hands a master password only to a client whose own password it checked", d.Source, e.Where)
	}
	if e.PasswordHash != "" {
		if d.Hashes == nil {
			return Decision{}, fmt.Errorf("auth: %s: %s returns a password_hash, and this source checks none", d.Source, e.Where)
		}
		if req.Password == "" {
			// SASL PLAIN lets one through (RFC 4616 does not); a
			// hash made of an empty password ("{PLAIN}" || a column
			// left empty to mean no login) would match it.
			return Decision{}, &DeniedError{Reason: d.Source + ": an empty password, which matches no password_hash (" + e.Where + ")"}
		}
		switch err := d.Hashes.Check(ctx, e.PasswordHash, req.Password); {
		case errors.Is(err, ErrPasswordMismatch):
			return Decision{}, &DeniedError{Reason: d.Source + ": password does not match the password_hash of " + e.Where, Checked: true}
		case err != nil:
			return Decision{}, fmt.Errorf("auth: %s: password_hash of %s: %w", d.Source, e.Where, err)
		}
	}
	dec.User, dec.Password = req.User, req.Password
	if e.Login != "" {
		dec.User = e.Login
	}
	if e.Password != "" {
		dec.Password = e.Password
	}
	if err := (Credentials{User: dec.User, Password: dec.Password}).Check(); err != nil {
		return Decision{}, fmt.Errorf("auth: %s: unusable login or password in %s", d.Source, e.Where)
	}
	return dec, nil
}

// Route is a directory source's Decide: req's credentials checked, the
// entry find returns for them (nil for none: [ErrNoRoute]) decided by
// Decide. timeout bounds find and the password hash check together, whose
// wait for a turn (auth/passhash's bound on concurrent checks) ends with
// it: a flood of costly checks gets the login a [SYS/TEMP] in time, not a
// wait until its deadline.
func (d *Directory) Route(ctx context.Context, req *Request, timeout time.Duration, find func(context.Context) (*Entry, error)) (Decision, error) {
	if err := req.Credentials.Check(); err != nil {
		return Decision{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	e, err := find(ctx)
	if err != nil {
		return Decision{}, err
	}
	if e == nil {
		return Decision{}, ErrNoRoute
	}
	return d.Decide(ctx, req, e)
}

// destination checks e's backend or address.
func (d *Directory) destination(e *Entry) (Decision, error) {
	hasAddr := e.Host != "" || e.Port != ""
	switch {
	case e.Backend != "" && hasAddr:
		return Decision{}, fmt.Errorf("auth: %s: %s names both a backend and a host", d.Source, e.Where)
	case e.Backend != "":
		if d.KnownBackend != nil && !d.KnownBackend(e.Backend) {
			return Decision{}, fmt.Errorf("auth: %s: %s names unknown backend %.64q", d.Source, e.Where, e.Backend)
		}
		return Decision{Backend: e.Backend}, nil
	case !hasAddr:
		return Decision{}, fmt.Errorf("auth: %s: %s names no backend and no host", d.Source, e.Where)
	}
	host := strings.TrimSuffix(strings.TrimPrefix(e.Host, "["), "]")
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Decision{}, fmt.Errorf("auth: %s: %s: host %.64q has a zone", d.Source, e.Where, e.Host)
		}
		host = ip.Unmap().String()
	} else if !validHostname(host) {
		return Decision{}, fmt.Errorf("auth: %s: %s: host %.64q is neither an IP address nor a host name", d.Source, e.Where, e.Host)
	}
	p, err := strconv.ParseUint(e.Port, 10, 16)
	if err != nil || p == 0 {
		return Decision{}, fmt.Errorf("auth: %s: %s: bad port %.16q", d.Source, e.Where, e.Port)
	}
	return Decision{Backend: d.Backend, Address: net.JoinHostPort(host, strconv.FormatUint(p, 10))}, nil
}

// Explain says, for `popgate route`, where e sends its user's logins and
// what the login would need, without a password: the backend (or
// address) and the words that say why.
func (d *Directory) Explain(e *Entry) (backend, why string) {
	if e.Disabled {
		return "", d.Source + ": " + e.Where + ": account disabled, logins are refused"
	}
	dec, err := d.destination(e)
	if err != nil {
		return "", err.Error() + "; logins fail with [SYS/TEMP]"
	}
	why = d.Source + ", " + e.Where
	backend = dec.Backend
	if dec.Address != "" {
		why += ", address " + dec.Address
		if dec.Backend != "" {
			why += " with backend " + strconv.Quote(dec.Backend) + "'s settings"
		}
		backend = AddressRoute(dec.Backend, dec.Address)
	}
	if e.Login != "" {
		why += ", logs in to the backend as " + strconv.Quote(e.Login)
	}
	switch {
	case e.Password != "" && e.PasswordHash == "":
		why += "; returns a password without password_hash: logins fail with [SYS/TEMP]"
	case e.Password != "":
		why += ", with the directory's password once the client's matches password_hash"
	case e.PasswordHash != "":
		why += ", once the client's password matches password_hash"
	}
	return backend, why
}

// AddressRoute is the backend a source's Lookup returns for a route to
// an address (a directory's host answer) rather than to a configured
// backend: the address, and the backend whose settings reach it ("" for
// plaintext). `popgate route` shows the address then, not the backend's
// own; [SplitAddressRoute] takes it apart. Only Explain uses it: logins
// are routed by Decide's [Decision], which has both fields.
func AddressRoute(backend, address string) string { return backend + "\x00" + address }

// SplitAddressRoute takes apart what [AddressRoute] made; ok is false for
// a plain backend name.
func SplitAddressRoute(s string) (backend, address string, ok bool) { return strings.Cut(s, "\x00") }

// validHostname reports whether s is a DNS host name: labels of letters,
// digits and hyphens, not starting or ending with a hyphen, at most 63
// bytes each and 253 in all, an optional trailing dot.
func validHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// DomainBlind is a source whose lookup compares a name's local part only:
// route.ldap with a filter that has %n but neither %u nor %d, route.sql
// with a query that has :local but neither :user nor :domain and no user
// column. It finds one entry for "carol", "carol@a.example" and
// "carol@b.example", so the failed-login limit per user counts such names
// by their local part: each domain would otherwise be a budget of guesses
// of its own at one password.
type DomainBlind interface {
	IgnoresDomain() bool
}

// Lookup results a directory source reports to its [LookupObserver].
const (
	LookupFound    = "found"     // an entry for the user
	LookupNotFound = "not_found" // none: the next source is asked
	LookupError    = "error"     // the directory failed, timed out or answered garbage
)

// LookupObserver sees every query a directory source sends: its source
// name ("route.sql"), the result (LookupFound, LookupNotFound,
// LookupError) and the round trip. It must be fast and safe for
// concurrent use; the metrics count and time lookups with it.
type LookupObserver func(source, result string, took time.Duration)

// Report tells o (when set) how a lookup of source begun at start ended:
// LookupError with err, LookupNotFound without an entry, LookupFound
// with one. Both directory sources report through it, so that they
// classify their lookups alike.
func (o LookupObserver) Report(source string, start time.Time, found bool, err error) {
	if o == nil {
		return
	}
	result := LookupFound
	switch {
	case err != nil:
		result = LookupError
	case !found:
		result = LookupNotFound
	}
	o(source, result, time.Since(start))
}

// PoolStats are the connections a directory source holds to its server.
type PoolStats struct {
	InUse, Idle int
}

// Pooled is a source that holds a pool of connections, for the metrics.
type Pooled interface {
	PoolStats() PoolStats
}
