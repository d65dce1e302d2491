package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/popgate/popgate/auth"
)

// TLSMode says how a connection is encrypted.
type TLSMode int

const (
	// TLSNone is plaintext throughout.
	TLSNone TLSMode = iota
	// TLSImplicit starts TLS before the first POP3 byte (POP3S, RFC 8314).
	TLSImplicit
	// TLSStartTLS starts in plaintext and upgrades with STLS (RFC 2595).
	TLSStartTLS
)

// String returns the configuration name of m: "none", "implicit" or
// "starttls".
func (m TLSMode) String() string {
	switch m {
	case TLSNone:
		return "none"
	case TLSImplicit:
		return "implicit"
	case TLSStartTLS:
		return "starttls"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// ParseTLSMode parses "none", "implicit" or "starttls".
func ParseTLSMode(s string) (TLSMode, error) {
	switch s {
	case "none":
		return TLSNone, nil
	case "implicit":
		return TLSImplicit, nil
	case "starttls":
		return TLSStartTLS, nil
	}
	return 0, fmt.Errorf("unknown TLS mode %q (want none, implicit or starttls)", s)
}

// ClientAddressMode is how a backend learns the real client address.
type ClientAddressMode int

const (
	// ClientAddressNone tells the backend nothing: it sees popgate's
	// address.
	ClientAddressNone ClientAddressMode = iota
	// ClientAddressXCLIENT sends Dovecot's POP3 XCLIENT command before the
	// login. The backend must advertise XCLIENT (it does so only to its
	// login_trusted_networks); one that does not fails the login.
	ClientAddressXCLIENT
	// ClientAddressProxyV1 writes a PROXY protocol v1 header first thing
	// after the TCP connect.
	ClientAddressProxyV1
	// ClientAddressProxyV2 writes a PROXY protocol v2 header first thing
	// after the TCP connect.
	ClientAddressProxyV2
)

// String returns the configuration name of m.
func (m ClientAddressMode) String() string {
	switch m {
	case ClientAddressNone:
		return "none"
	case ClientAddressXCLIENT:
		return "xclient"
	case ClientAddressProxyV1:
		return "proxy-v1"
	case ClientAddressProxyV2:
		return "proxy-v2"
	}
	return fmt.Sprintf("ClientAddressMode(%d)", int(m))
}

// ParseClientAddressMode parses "none", "xclient", "proxy-v1" or "proxy-v2".
func ParseClientAddressMode(s string) (ClientAddressMode, error) {
	for m := ClientAddressNone; m <= ClientAddressProxyV2; m++ {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown client address mode %q (want none, xclient, proxy-v1 or proxy-v2)", s)
}

// Listener describes how clients on one listening socket are served.
type Listener struct {
	// Name identifies the listener in logs; "" uses the socket address.
	Name string
	// TLS is the client-side encryption: TLSImplicit for POP3S,
	// TLSStartTLS for STLS on the plaintext port, TLSNone for tests and
	// loopback.
	TLS TLSMode
	// TLSConfig serves TLSImplicit and TLSStartTLS; required for them.
	TLSConfig *tls.Config
	// AllowPlaintextFrom lists client networks that may log in without
	// TLS on a TLSStartTLS listener. Empty: nobody may.
	AllowPlaintextFrom []netip.Prefix
	// ProxyProtocol requires a PROXY protocol v1 or v2 header at the start
	// of every connection, before the TLS handshake and the greeting, and
	// accepts it only from Config.TrustedProxies. The header's client
	// address is then the session's client address for limits, throttling,
	// logs, routing and the backend. A connection from elsewhere, or
	// without a valid header, is closed. false: no header is ever read
	// (PROXY protocol is never guessed).
	ProxyProtocol bool
	// OAuth offers AUTH OAUTHBEARER (RFC 7628) and XOAUTH2 on this
	// listener, after TLS only: the SASL line of CAPA names them once the
	// connection is encrypted. The Router must verify the token (an
	// auth.TokenVerifier, such as auth.OAuthRouter); with any other,
	// such logins fail ("-ERR [SYS/TEMP]").
	OAuth bool
}

// Backend is a POP3 server popgate logs in to.
type Backend struct {
	// Name identifies the backend in routes and logs.
	Name string
	// Address is host:port.
	Address string
	// Fallbacks are further host:port addresses, tried in order when the
	// ones before cannot be reached (refused, timed out). Once a
	// connection stands, its answer is final: a login is never retried
	// elsewhere.
	Fallbacks []string
	// TLS is how popgate talks to the backend. With TLSStartTLS a backend
	// that does not complete STLS refuses the login; popgate never falls
	// back to plaintext.
	TLS TLSMode
	// TLSConfig is the client configuration (trust, server name) for
	// TLSImplicit and TLSStartTLS; required for them.
	TLSConfig *tls.Config
	// RelayAuthzID lets clients log in with a SASL PLAIN authorization
	// identity different from their user name (a master user opening
	// another user's mailbox): popgate logs in to this backend with AUTH
	// PLAIN carrying that identity, and the backend decides. Without it
	// such logins are refused.
	RelayAuthzID bool
	// ConnectTimeout bounds the TCP connect; 0 means 5s.
	ConnectTimeout time.Duration
	// Timeout bounds each backend reply during the login (greeting, CAPA,
	// STLS and TLS handshake, USER, PASS); 0 means 15s.
	Timeout time.Duration
	// ClientAddress is how the backend learns the client's address:
	// ClientAddressNone (the zero value) tells it nothing.
	ClientAddress ClientAddressMode
	// HealthInterval is how often each of the backend's addresses is
	// checked while the server serves: connect, the PROXY header (a
	// LOCAL one), the TLS handshake or STLS as a login would do them,
	// the greeting, then QUIT; never a login. An address is down after
	// HealthFailures failed checks in a row and up again after one that
	// passes; logins try the addresses that are down last (see
	// [Server.BackendHealth]). 0 checks nothing.
	HealthInterval time.Duration
	// HealthFailures is how many checks in a row must fail for an
	// address to be down; 0 means 3.
	HealthFailures int
	// HealthTimeout bounds one check, the connect included; 0 means 5s.
	HealthTimeout time.Duration
}

func (b *Backend) addresses() []string {
	return append([]string{b.Address}, b.Fallbacks...)
}

func (b *Backend) connectTimeout() time.Duration {
	if b.ConnectTimeout > 0 {
		return b.ConnectTimeout
	}
	return 5 * time.Second
}

func (b *Backend) healthFailures() int {
	if b.HealthFailures > 0 {
		return b.HealthFailures
	}
	return 3
}

func (b *Backend) healthTimeout() time.Duration {
	if b.HealthTimeout > 0 {
		return b.HealthTimeout
	}
	return 5 * time.Second
}

func (b *Backend) timeout() time.Duration {
	if b.Timeout > 0 {
		return b.Timeout
	}
	return 15 * time.Second
}

// Pools assigns a pool's users to its backends (a *pool.Director).
type Pools interface {
	// Assign returns the backend of pool for a new session of user (the
	// mailbox's name), and release, which the session calls once it
	// ended (loggedIn false: it never logged in). ok false: pool names
	// no pool.
	Assign(ctx context.Context, pool, user string) (backend string, release func(loggedIn bool), ok bool, err error)
}

// Config configures a [Server]. Only Router and Backends are required.
type Config struct {
	// Router decides where each login goes.
	Router auth.Router
	// OAuthError is the JSON of RFC 7628's error response, sent (base64)
	// as a continuation after a refused bearer token before the
	// "-ERR [AUTH]"; nil sends {"status":"invalid_token"}. See
	// auth.OAuthErrorChallenge.
	OAuthError []byte
	// Backends are the backends a Router's decision may name.
	Backends map[string]*Backend
	// Pools assigns the users of backend pools: a decision whose
	// backend is no key of Backends but a pool's name gets one of the
	// pool's backends from it, for the user's mailbox. nil: decisions
	// name backends only.
	Pools Pools
	// Greeting is the text of the greeting after "+OK "; "" means
	// "POP3 server ready". It carries no APOP timestamp: APOP cannot be
	// relayed (RFC 1939 §7).
	Greeting string
	// LoginTimeout bounds the whole AUTHORIZATION state, TLS handshake
	// and backend login included; 0 means 60s.
	LoginTimeout time.Duration
	// IdleTimeout closes a logged-in session when neither side has sent
	// anything for this long; 0 means 10 minutes (RFC 1939 §3 asks for at
	// least 10). No QUIT is sent.
	IdleTimeout time.Duration
	// MaxLoginFailures closes the connection after this many failed
	// logins; 0 means 3.
	MaxLoginFailures int
	// FailureDelay is waited before answering a failed login; 0 means
	// none.
	FailureDelay time.Duration
	// MaxConnections caps concurrent client connections; 0 means no cap.
	// Connections beyond it get "-ERR [SYS/TEMP]" and are closed.
	MaxConnections int
	// MaxConnectionsPerIP caps concurrent connections from one client
	// address; 0 means no cap. Behind a PROXY protocol listener the
	// address is the header's, counted once the header is read.
	MaxConnectionsPerIP int
	// IPv6Prefix is the prefix length that groups IPv6 clients into one
	// client for MaxConnectionsPerIP, as the Throttle groups them for
	// failed logins (see auth.ClientNet); 0 means auth.DefaultIPv6Prefix
	// (/64). IPv4 clients count by their address.
	IPv6Prefix int
	// TrustedProxies are the source networks a listener with
	// ProxyProtocol accepts connections (and headers) from. Empty: such
	// a listener accepts nobody.
	TrustedProxies []netip.Prefix
	// ProxyHeaderTimeout bounds the wait for a PROXY header; 0 means 5s.
	// login_timeout bounds it too.
	ProxyHeaderTimeout time.Duration
	// Throttle limits failed logins per client address and per user; nil
	// means no limit. A throttled attempt reaches neither the router nor
	// a backend.
	Throttle *auth.Throttle
	// AssumedFailureTime is what a backend is assumed to take to refuse a
	// login until it has refused a few dozen: popgate answers every
	// refusal of credentials no sooner than the longest time backends
	// took recently (see failureTimes), and starts from this. 0 means
	// DefaultAssumedFailureTime; tests set a small one.
	AssumedFailureTime time.Duration
	// MasterUserSeparator is the backends' master user separator
	// (Dovecot's auth_master_user_separator, e.g. "*"). A client's name
	// "user*master" then counts in the failed-login throttle as the master
	// user, not as a fresh user name each time. "" means none.
	MasterUserSeparator string
	// RelayBackendErrors relays a backend's refusal of the credentials
	// as the backend worded it. The default answers it with popgate's
	// own "-ERR [AUTH] Authentication failed", the words every other
	// refusal of credentials gets (an unknown name, a lookup's no), so
	// that the text gives no name away. Either way, refusals that come
	// only after the password was checked ([IN-USE], [LOGIN-DELAY]) and
	// the backend's own trouble ([SYS/TEMP], [SYS/PERM]) are relayed as
	// they are.
	RelayBackendErrors bool
	// ExtraCapabilities are added to the CAPA answer before login (for
	// clients that look for TOP or UIDL first). popgate does not check
	// that the backends honour them.
	ExtraCapabilities []string
	// Logger receives the session log; nil discards it. Only New reads
	// it: Reconfigure keeps the first Logger.
	Logger *slog.Logger
	// Observer receives counts for metrics; nil counts nothing. Only New
	// reads it: Reconfigure keeps the first Observer.
	Observer Observer
	// DialContext connects to backends; nil means a net.Dialer.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

func (c *Config) loginTimeout() time.Duration {
	if c.LoginTimeout > 0 {
		return c.LoginTimeout
	}
	return 60 * time.Second
}

func (c *Config) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return 10 * time.Minute
}

func (c *Config) maxLoginFailures() int {
	if c.MaxLoginFailures > 0 {
		return c.MaxLoginFailures
	}
	return 3
}

func (c *Config) assumedFailureTime() time.Duration {
	if c.AssumedFailureTime > 0 {
		return c.AssumedFailureTime
	}
	return DefaultAssumedFailureTime
}

func (c *Config) proxyHeaderTimeout() time.Duration {
	if c.ProxyHeaderTimeout > 0 {
		return c.ProxyHeaderTimeout
	}
	return 5 * time.Second
}

// clientNet returns the network ip counts in for the per-client limits.
func (c *Config) clientNet(ip netip.Addr) (netip.Prefix, bool) {
	return auth.ClientNet(ip, c.IPv6Prefix)
}

// trustedProxy reports whether ip may send a PROXY header.
func (c *Config) trustedProxy(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range c.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (c *Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Config) greeting() string {
	if c.Greeting != "" {
		return c.Greeting
	}
	return "POP3 server ready"
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Router == nil {
		errs = append(errs, errors.New("proxy: Config.Router is nil"))
	}
	for name, b := range c.Backends {
		if b == nil {
			errs = append(errs, fmt.Errorf("proxy: backend %q is nil", name))
			continue
		}
		if b.Address == "" {
			errs = append(errs, fmt.Errorf("proxy: backend %q has no address", name))
		}
		if b.TLS != TLSNone && b.TLSConfig == nil {
			errs = append(errs, fmt.Errorf("proxy: backend %q: TLS %s needs a TLSConfig", name, b.TLS))
		}
		if b.ClientAddress < ClientAddressNone || b.ClientAddress > ClientAddressProxyV2 {
			errs = append(errs, fmt.Errorf("proxy: backend %q: unknown client address mode %d", name, b.ClientAddress))
		}
	}
	return errors.Join(errs...)
}
