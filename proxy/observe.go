package proxy

import (
	"net/netip"
	"time"
)

// Observer receives the events a metrics system counts. Its methods are
// called from session goroutines, concurrently, on the hot path: they must
// be fast and must not block. admin.Metrics (package admin) is the
// Prometheus one.
type Observer interface {
	// Accepted: a client connection was accepted on listener.
	Accepted(listener string)
	// Refused: a client connection was refused before its session
	// started; reason is "max_connections", "max_connections_per_ip",
	// "untrusted_proxy" or "shutting_down".
	Refused(listener, reason string)
	// TLSHandshake: a client completed a TLS handshake (version and
	// cipher as crypto/tls numbers them); resumed: with a session ticket.
	TLSHandshake(listener string, version, cipher uint16, resumed bool)
	// TLSHandshakeFailed: a client's TLS handshake failed.
	TLSHandshakeFailed(listener string)
	// Login: a login attempt ended with result, one of LoginOK,
	// LoginAuthFailed, LoginNoRoute, LoginThrottled, LoginBackendError,
	// LoginLookupError.
	Login(listener, result string)
	// BackendConnect: the TCP connection to backend took d; err is the
	// failure of the last address tried, nil on success.
	BackendConnect(backend string, d time.Duration, err error)
	// BackendLogin: a backend login (connect, greeting, STLS or TLS,
	// XCLIENT, USER/PASS or AUTH) took d and ended with result, one of
	// BackendOK, BackendRejected (the backend refused the credentials),
	// BackendUnreachable (no address could be connected to; each failed
	// connect was reported to BackendConnect) or BackendError (broken or
	// timed out once connected).
	BackendLogin(backend string, d time.Duration, result string)
	// SessionEnd: a logged-in session ended after d, having relayed in
	// octets from the client and out octets to it.
	SessionEnd(listener string, d time.Duration, in, out int64)
}

// LegacyObserver is an optional extension of [Observer]: an Observer
// that implements it is told, at the end of each login attempt, of the
// clients an operator will have to call before raising a listener's
// min_version or requiring SNI: those whose TLS is older than TLS 1.2 or
// that sent no server name. Modern clients cost the hot path one
// comparison. Like Observer's, its method must be fast and not block.
type LegacyObserver interface {
	// LegacyClient: a client at client on listener, with TLS version
	// (crypto/tls's number) and SNI sni ("" for none), tried to log in as
	// user.
	LegacyClient(listener string, client netip.Addr, user string, version uint16, sni string)
}

// Login results, for [Observer.Login] and the "result" of a failed login's
// log line.
const (
	LoginOK           = "ok"
	LoginAuthFailed   = "auth_failed"
	LoginNoRoute      = "no_route"
	LoginThrottled    = "throttled"
	LoginBackendError = "backend_error"
	LoginLookupError  = "lookup_error"
)

// Backend login results, for [Observer.BackendLogin].
const (
	BackendOK          = "ok"
	BackendRejected    = "rejected"
	BackendUnreachable = "unreachable"
	BackendError       = "error"
)

// nopObserver is the Observer of a Server without one.
type nopObserver struct{}

func (nopObserver) Accepted(string)                                {}
func (nopObserver) Refused(string, string)                         {}
func (nopObserver) TLSHandshake(string, uint16, uint16, bool)      {}
func (nopObserver) TLSHandshakeFailed(string)                      {}
func (nopObserver) Login(string, string)                           {}
func (nopObserver) BackendConnect(string, time.Duration, error)    {}
func (nopObserver) BackendLogin(string, time.Duration, string)     {}
func (nopObserver) SessionEnd(string, time.Duration, int64, int64) {}

// SessionInfo describes a live client connection, for the admin
// endpoint's GET /sessions.
type SessionInfo struct {
	// ID is the connection id of the log lines ("conn") and of XCLIENT's
	// SESSION.
	ID string `json:"id"`
	// User is the user name of the login (the last attempt while the
	// session is still in AUTHORIZATION); "" before any.
	User string `json:"user"`
	// Client is the client's address (the PROXY header's when there was
	// one).
	Client netip.AddrPort `json:"client"`
	// Listener is the name of the listener the client connected to.
	Listener string `json:"listener"`
	// Backend is the backend the session is relayed to; "" while it is
	// not logged in.
	Backend string `json:"backend"`
	// State is "authorization" before the login, "relaying" after.
	State string `json:"state"`
	// Started is when the connection was accepted.
	Started time.Time `json:"started"`
	// BytesIn and BytesOut count octets relayed client→backend and
	// backend→client since the login.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// TLSVersion is "TLS 1.3" and so on; "" for a plaintext client.
	TLSVersion string `json:"tls_version"`
	// SNI is the server name the client asked for in its TLS handshake;
	// "" without TLS or without SNI.
	SNI string `json:"sni,omitempty"`
	// Node is the node_name of the replica that holds the session, in
	// the fleet-wide list of a [cluster]; "" otherwise (the proxy
	// leaves it empty).
	Node string `json:"node,omitempty"`
}
