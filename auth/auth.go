// Package auth decides where a POP3 login goes.
//
// A [Router] maps the credentials a client presented (see [Credentials]) to a
// [Decision]: the backend that holds the mailbox and the name and password to
// log in there with. [Static] implements the static table of popgate's
// configuration (exact user, then domain, then a default), [MapFile] a
// route file re-read when it changes, [HTTP] a lookup service speaking
// nginx's auth_http protocol, [Cache] an LRU in front of any Router, and
// [Chain] the lookup order of the configuration: the sources of routes
// (each a [Source]: static users and domains, map file, HTTP service) in
// turn, then the default. [Throttle] counts failed logins
// per client address and per user name. The package also decodes the SASL
// mechanisms popgate relays (PLAIN and LOGIN).
//
// Nothing in this package logs or formats a password: [Password] prints as
// "***" through every fmt verb, log/slog and encoding/json.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Password is a secret. Its String, GoString, Format and LogValue methods all
// print "***", so a Password that ends up in a log line or an error message
// by mistake does not leak. Convert it explicitly with string(p) where the
// cleartext is needed on the wire.
type Password string

const redacted = "***"

// String returns "***".
func (Password) String() string { return redacted }

// GoString returns "***".
func (Password) GoString() string { return redacted }

// Format prints "***" for every verb.
func (Password) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// LogValue returns "***".
func (Password) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON returns "***", so a Password inside a struct logged by a JSON
// handler stays hidden.
func (Password) MarshalJSON() ([]byte, error) { return []byte(`"***"`), nil }

// MarshalText returns "***".
func (Password) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Credentials are what a client presented in the AUTHORIZATION state.
type Credentials struct {
	User     string   // USER argument or SASL authentication identity
	Password Password // PASS argument or SASL password
	AuthzID  string   // SASL PLAIN authorization identity; "" when none was given
	Method   string   // "USER" (USER/PASS), "PLAIN", "LOGIN", or a bearer token's "OAUTHBEARER" or "XOAUTH2"
}

// LogValue logs the user and method, never the password.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", c.User), slog.String("method", c.Method))
}

// MaxCredentialLen bounds the user name and the password. RFC 1939 limits
// arguments to 40 octets; clients send longer ones (tokens, long addresses),
// so this is generous but finite.
const MaxCredentialLen = 1024

// ErrBadCredentialBytes is returned by [Credentials.Check] for a name or
// password that holds CR, LF or NUL: relayed to a backend or a lookup
// service they would end a command line and start another (the nginx
// credential-injection class).
var ErrBadCredentialBytes = errors.New("auth: credentials contain CR, LF or NUL")

// Check reports whether the credentials may be relayed: a user name is
// present, nothing is longer than [MaxCredentialLen] (a bearer token than
// [MaxSASLLen]), and no field holds CR, LF or NUL.
func (c Credentials) Check() error {
	if c.User == "" && c.Method != MethodOAuthBearer {
		// OAUTHBEARER may leave the name to the token (RFC 7628's
		// authzid is optional); the token's router fills it in.
		return errors.New("auth: empty user name")
	}
	for i, s := range []string{c.User, string(c.Password), c.AuthzID} {
		limit := MaxCredentialLen
		if i == 1 && IsTokenMethod(c.Method) {
			limit = MaxSASLLen // a bearer token (JWTs run to 2 KB and more)
		}
		if len(s) > limit {
			return errors.New("auth: credentials too long")
		}
		if strings.ContainsAny(s, "\r\n\x00") {
			return ErrBadCredentialBytes
		}
	}
	return nil
}

// Request is one login attempt to route.
type Request struct {
	Credentials
	Client   netip.AddrPort // the client's address (after PROXY protocol, when used)
	Local    netip.AddrPort // the address the client connected to
	Listener string         // name of the listener the client came in on
	TLS      bool           // the client connection is encrypted
	Attempt  int            // 1 for the first login attempt on this connection

	// TLSVersion and TLSCipher describe the client's TLS connection when
	// TLS is set, for lookup services that want them (auth_http's
	// Auth-SSL-Protocol and Auth-SSL-Cipher); "" when unknown. The proxy
	// names the version in OpenSSL's words ("TLSv1.3"), as nginx does.
	TLSVersion string
	TLSCipher  string
}

// Decision says where a login goes.
type Decision struct {
	// Backend names a configured backend. Its address and TLS settings are
	// used unless Address overrides the address.
	Backend string
	// Address, when not empty, is the host:port to connect to instead of
	// the backend's configured address (a lookup service's answer).
	Address string
	// User and Password are what popgate sends to the backend. A router
	// that does not rewrite them copies the client's.
	User     string
	Password Password
	// AuthzID, when set, says the directory allows this login to act as
	// AuthzID: popgate relays it to the backend as the SASL PLAIN
	// authorization identity (User logs in to act as AuthzID, a master
	// user opening a mailbox), on backends that relay one. A router sets
	// it only on the directory's explicit word (auth_http's Auth-Authzid
	// answer), never by copying the client's: a client's authorization
	// identity is relayed with its own credentials only, and refused when
	// a router rewrote User or Password without naming it.
	AuthzID string
	// Name is the user a verified credential names, when it names one
	// of its own: an [OAuthRouter] sets the token's name. popgate logs
	// and lists the session under it when the client named nobody
	// (OAUTHBEARER without "a="), so that the session log, /sessions
	// and ending a user's sessions see the user.
	Name string
	// Mailbox, when set, is the mailbox the login opens, when User and
	// AuthzID do not say it in a form popgate can read: an
	// [OAuthRouter]'s master login ("bob*master" with oauth's own
	// separator). A backend pool keys the user's affinity by it, so that
	// bob's token and password logins go to one backend.
	Mailbox string
}

// Router decides where a login goes. Route returns [ErrNoRoute] when nothing
// routes the user, a *[DeniedError] when the credentials were checked and
// refused, and any other error for a failure that may pass (an unreachable
// lookup service, say): popgate answers the first two with the same
// "-ERR [AUTH]" and the last with "-ERR [SYS/TEMP]".
type Router interface {
	Route(ctx context.Context, req *Request) (Decision, error)
}

// RouterFunc adapts a function to a [Router].
type RouterFunc func(ctx context.Context, req *Request) (Decision, error)

// Route calls f(ctx, req).
func (f RouterFunc) Route(ctx context.Context, req *Request) (Decision, error) { return f(ctx, req) }

// ErrNoRoute is returned by a [Router] when nothing routes the user.
var ErrNoRoute = errors.New("auth: no route for user")

// DeniedError is returned by a [Router] that checked the credentials and
// refused them. Reason is for the log, never for the client.
type DeniedError struct {
	Reason string
	Wait   time.Duration // the router asks to delay the answer this long (0: none)
	// Checked says that the refusal took a check of the password: popgate's
	// own, of a directory's password_hash (bcrypt's or Argon2's time), or
	// a lookup service's. The proxy makes every refusal wait as long as
	// recent checked ones took, so that the check's time tells no name
	// apart; a refusal that checked nothing (a disabled account, a cached
	// answer) is fast, and must not make that wait shorter.
	Checked bool
}

func (e *DeniedError) Error() string {
	if e.Reason == "" {
		return "auth: login denied"
	}
	return "auth: login denied: " + e.Reason
}
