package main

import (
	"github.com/popgate/popgate/pool"
	"log/slog"
	"net/netip"
	"time"

	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// settings is a configuration file checked and parsed, with the defaults
// of defaults.go applied: all that buildInstance needs, typed, so that it
// only assembles the running parts and parses nothing again. ParseConfig
// makes it from the file (Config.settings); it is not changed after.
type settings struct {
	Log       logSettings
	Listeners []listenerSettings
	TLS       tlsSettings
	Backends  []backendSettings
	Pools     []pool.Pool // [[pool]]
	Route     routeSettings
	Limits    limitSettings
	OAuth     *oauthSettings // nil without [oauth]; oauth.go
	POP3      pop3Settings
	Metrics   metricsSettings
	Cluster   *cluster.Config // nil: no [cluster], one replica alone
}

// logSettings is [log].
type logSettings struct {
	Level  slog.Level
	Format string // auto, text or json
}

// listenerSettings is one [[listen]].
type listenerSettings struct {
	// Listener is all but its TLSConfig, which buildInstance makes from
	// the certificates; Name is the address when listen.name is not set.
	proxy.Listener
	Address string
	// Key identifies the socket across reloads: the address, or for port
	// 0 (any free port, for tests) the address and the name.
	Key string
	// MinVersion is listen.min_version; 0 means tls.min_version's.
	MinVersion uint16
}

// tlsSettings is [tls].
type tlsSettings struct {
	MinVersion        string // "1.0" to "1.3", as tlsconf takes it
	DefaultServerName string
	Certificates      []tlsconf.CertFile
	// SessionTickets is tls.session_tickets; TicketRotation and
	// TicketLifetime apply to the process's ticket keys (instance.tickets).
	SessionTickets                 bool
	TicketRotation, TicketLifetime time.Duration
	ACME                           *acmeSettings // nil without [tls.acme]
}

// acmeSettings is [tls.acme].
type acmeSettings struct {
	// ACME is the section as tlsconf takes it but for AllowHost, which
	// comes from the routes (acmeSettings.tlsconf).
	ACME              tlsconf.ACMEConfig
	DomainsFromRoutes bool
	RouteNamePatterns []string
	// MaxChallengeConns caps the connections both challenge answerers
	// hold at once, MaxChallengeConnsPerIP those from one client; the
	// file descriptor limit may lower them (fdBudget).
	MaxChallengeConns, MaxChallengeConnsPerIP int
}

// backendSettings is one [[backend]].
type backendSettings struct {
	// Backend is all but its TLSConfig, which buildInstance makes from
	// Trust when TLS is not TLSNone.
	proxy.Backend
	Trust tlsconf.BackendConfig
	// OAuthMaster is the backend's own master login for bearer-token
	// logins; nil uses [oauth]'s.
	OAuthMaster *masterSettings
}

// routeSettings is [route].
type routeSettings struct {
	Default string            // "" refuses the users no source routes
	Users   map[string]string // as written; auth.NewStatic folds the keys
	Domains map[string]string
	MapFile string
	HTTP    *httpRouteSettings // nil without [route.http]
	SQL     *sqlRouteSettings  // nil without [route.sql]
	LDAP    *ldapRouteSettings // nil without [route.ldap]; ldap.go
}

// httpRouteSettings is [route.http].
type httpRouteSettings struct {
	URL     string
	Backend string // "" leaves a bare Auth-Server answer without backend settings
	Timeout time.Duration
	// CacheTTL, NegativeCacheTTL and CacheSize set the auth.Cache in
	// front of the service; a CacheTTL of 0 means none.
	CacheTTL, NegativeCacheTTL time.Duration
	CacheSize                  int
}

// sqlRouteSettings is [route.sql].
type sqlRouteSettings struct {
	Driver  string // auth.SQLPostgres or auth.SQLMySQL
	DSN     string // "" when DSNFile holds it
	DSNFile string // read when the source is built (start and every reload)
	Query   string
	// MaxConnections caps the pool, Timeout each query.
	MaxConnections int
	Timeout        time.Duration
	Backend        string // "" leaves a host and port answer without backend settings
	// CacheTTL, NegativeCacheTTL and CacheSize set the auth.Cache in
	// front of the database; a CacheTTL of 0 means none.
	CacheTTL, NegativeCacheTTL time.Duration
	CacheSize                  int
}

// limitSettings is [limits].
type limitSettings struct {
	MaxConnections      int // 0: no cap
	MaxConnectionsPerIP int // 0: no cap
	LoginTimeout        time.Duration
	IdleTimeout         time.Duration
	MaxLoginFailures    int
	FailureDelay        time.Duration
	MaxFailuresPerIP    int // 0: no limit
	MaxFailuresPerUser  int // 0: no limit
	FailureWindow       time.Duration
	IPv6Prefix          int
	MasterUserSeparator string
	TrustedProxies      []netip.Prefix
	// TrustedEveryone are the entries of TrustedProxies, as written, that
	// cover every address, for a warning at every start.
	TrustedEveryone []string
	ShutdownTimeout time.Duration
}

// pop3Settings is [pop3].
type pop3Settings struct {
	Greeting          string
	Capabilities      []string
	HideBackendErrors bool
}

// metricsSettings is [metrics].
type metricsSettings struct {
	Address        string // "" disables the admin endpoints
	TokenFile      string // "" asks for no token
	ProtectMetrics bool
	InsecureOpen   bool
	AllowedHosts   []string
	TLS            bool // HTTPS with the POP3 listeners' certificates
}
