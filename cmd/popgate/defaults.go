package main

import (
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/tlsconf"
)

// The defaults of the configuration file: what a key that is left out
// means. They are written here only. The configuration applies them (the
// libraries' own zero-value defaults are never relied on), and configKeys
// lists them by key for TestConfigKeysDocumented, which holds
// config.example.toml, README.md and docs/*.md to the same values.
const (
	defaultLogLevel  = "info"
	defaultLogFormat = "auto"

	defaultTLSMinVersion = "1.2"
	// Session tickets: a new key every 6 hours, each accepted for a day, so
	// a client that polls resumes after a night's break, and a key taken
	// from memory opens the tickets of one day at most.
	defaultSessionTickets        = true
	defaultSessionTicketRotation = 6 * time.Hour
	defaultSessionTicketLifetime = 24 * time.Hour

	defaultACMEDirectoryURL      = tlsconf.LetsEncryptURL
	defaultHTTPChallenge         = ":80"
	defaultRenewBefore           = 30 * 24 * time.Hour
	defaultChallengeConns        = tlsconf.DefaultChallengeConns
	defaultChallengeConnsPerIP   = tlsconf.DefaultChallengeConnsPerIP
	defaultOrderBudget           = tlsconf.DefaultOrderBudget
	defaultOrderBudgetPeriod     = tlsconf.DefaultOrderBudgetPeriod
	defaultAskTimeout            = tlsconf.DefaultAskTimeout
	defaultBackendMinVersion     = "1.2"
	defaultBackendClientAddress  = "none"
	defaultBackendConnectTimeout = 5 * time.Second
	defaultBackendTimeout        = 15 * time.Second
	defaultHealthInterval        = 10 * time.Second
	defaultHealthFailures        = 3
	defaultHealthTimeout         = 5 * time.Second
	defaultHTTPTimeout           = 3 * time.Second
	defaultHTTPCacheTTL          = 60 * time.Second
	defaultHTTPNegativeCacheTTL  = 10 * time.Second
	defaultHTTPCacheSize         = 100000
	defaultSQLMaxConnections     = 8
	defaultSQLTimeout            = 2 * time.Second
	defaultSQLCacheTTL           = 60 * time.Second
	defaultSQLNegativeCacheTTL   = 10 * time.Second
	defaultSQLCacheSize          = 100000
	defaultLDAPScope             = "sub"
	defaultLDAPFilter            = "(&(objectClass=inetOrgPerson)(mail=%u))"
	defaultLDAPHostAttribute     = "mailHost"
	defaultLDAPTimeout           = 3 * time.Second
	defaultLDAPConnections       = 4
	defaultLDAPCacheTTL          = 60 * time.Second
	defaultLDAPNegativeCacheTTL  = 10 * time.Second
	defaultLDAPCacheSize         = 100000
	// Bearer tokens: a minute of clock skew either way; introspection
	// answers trusted for 30 s, so a revoked token stops working within
	// that.
	defaultOAuthClockSkew             = time.Minute
	defaultOAuthUserClaim             = "email"
	defaultOAuthTimeout               = 5 * time.Second
	defaultOAuthKeyRefreshInterval    = time.Minute
	defaultOAuthCacheSize             = 100000
	defaultOAuthIntrospectionCacheTTL = 30 * time.Second
	defaultMaxConnections             = 10000
	defaultMaxConnectionsPerIP        = 50
	defaultLoginTimeout               = 60 * time.Second
	defaultIdleTimeout                = 10 * time.Minute // RFC 1939 §3 asks for at least this
	defaultMaxLoginFailures           = 3
	defaultFailureDelay               = time.Second
	defaultMaxFailuresPerIP           = 20
	defaultMaxFailuresPerUser         = 10
	defaultFailureWindow              = 10 * time.Minute
	defaultIPv6Prefix                 = auth.DefaultIPv6Prefix
	defaultShutdownTimeout            = 30 * time.Second
	defaultGreeting                   = "POP3 server ready"
	defaultHideBackendErrors          = true
	defaultClusterKeyPrefix           = "popgate:"
	defaultMetricsAddress             = "127.0.0.1:9110" // loopback: /sessions can end sessions
)

// defaultRouteNamePatterns is tls.acme.route_name_patterns when the key is
// absent.
var defaultRouteNamePatterns = []string{"pop.{domain}", "mail.{domain}"}

// configKey is one key of the configuration file.
type configKey struct {
	// Key is the key as error messages name it, "backend.timeout" for
	// that of every [[backend]].
	Key string
	// Default is what leaving the key out means: a string, int, bool,
	// time.Duration or []string. nil: the key is required, or its default
	// is its zero value ("", false, 0, none), or no single value (the
	// address for listen.name).
	Default any
}

// configKeys is every key of the configuration file, in the order of
// config.example.toml. TestConfigKeysComplete checks that it has every
// key Config decodes.
var configKeys = []configKey{
	{"log.level", defaultLogLevel},
	{"log.format", defaultLogFormat},

	{"listen.name", nil}, // the address
	{"listen.address", nil},
	{"listen.tls", nil},
	{"listen.min_version", nil}, // tls.min_version
	{"listen.proxy_protocol", nil},
	{"listen.allow_plaintext_from", nil},
	{"listen.oauth", nil},

	{"tls.min_version", defaultTLSMinVersion},
	{"tls.default_server_name", nil},
	{"tls.certificates", nil},
	{"tls.session_tickets", defaultSessionTickets},
	{"tls.session_ticket_rotation", defaultSessionTicketRotation},
	{"tls.session_ticket_lifetime", defaultSessionTicketLifetime},
	{"tls.acme.domains", nil},
	{"tls.acme.email", nil},
	{"tls.acme.cache_dir", nil},
	{"tls.acme.insecure_cache_permissions", nil},
	{"tls.acme.directory_url", defaultACMEDirectoryURL},
	{"tls.acme.ca_file", nil},
	{"tls.acme.http_challenge", defaultHTTPChallenge},
	{"tls.acme.tls_alpn_challenge", nil},
	{"tls.acme.max_challenge_connections", defaultChallengeConns},
	{"tls.acme.max_challenge_connections_per_ip", defaultChallengeConnsPerIP},
	{"tls.acme.renew_before", defaultRenewBefore},
	{"tls.acme.domains_from_routes", nil},
	{"tls.acme.route_name_patterns", defaultRouteNamePatterns},
	{"tls.acme.order_budget", defaultOrderBudget},
	{"tls.acme.order_budget_period", defaultOrderBudgetPeriod},
	{"tls.acme.order_budget_reserve", nil}, // a fifth of order_budget, as tlsconf makes it
	{"tls.acme.ask_url", nil},
	{"tls.acme.ask_timeout", defaultAskTimeout},

	{"backend.name", nil},
	{"backend.address", nil},
	{"backend.tls", nil},
	{"backend.server_name", nil}, // the address's host
	{"backend.ca_file", nil},
	{"backend.insecure_skip_verify", nil},
	{"backend.min_version", defaultBackendMinVersion},
	{"backend.connect_timeout", defaultBackendConnectTimeout},
	{"backend.timeout", defaultBackendTimeout},
	{"backend.client_address", defaultBackendClientAddress},
	{"backend.relay_authzid", nil},
	{"backend.oauth_master_user", nil}, // [oauth]'s master_user
	{"backend.oauth_master_password_file", nil},
	{"backend.oauth_master_separator", nil}, // "": SASL PLAIN (never [oauth]'s)
	{"backend.fallbacks", nil},
	{"backend.health_interval", defaultHealthInterval},
	{"backend.health_failures", defaultHealthFailures},
	{"backend.health_timeout", defaultHealthTimeout},

	{"pool.name", nil},
	{"pool.backends", nil},
	{"pool.weights", nil}, // 1 for each backend
	{"pool.affinity_ttl", defaultAffinityTTL},
	{"pool.outage", defaultOutage},

	{"route.default", nil},
	{"route.users", nil},
	{"route.domains", nil},
	{"route.map_file", nil},
	{"route.http.url", nil},
	{"route.http.timeout", defaultHTTPTimeout},
	{"route.http.cache_ttl", defaultHTTPCacheTTL},
	{"route.http.negative_cache_ttl", defaultHTTPNegativeCacheTTL},
	{"route.http.cache_size", defaultHTTPCacheSize},
	{"route.http.backend", nil},
	{"route.sql.driver", nil},
	{"route.sql.dsn", nil},
	{"route.sql.dsn_file", nil},
	{"route.sql.query", nil},
	{"route.sql.max_connections", defaultSQLMaxConnections},
	{"route.sql.timeout", defaultSQLTimeout},
	{"route.sql.cache_ttl", defaultSQLCacheTTL},
	{"route.sql.negative_cache_ttl", defaultSQLNegativeCacheTTL},
	{"route.sql.cache_size", defaultSQLCacheSize},
	{"route.sql.backend", nil},
	{"route.ldap.url", nil},
	{"route.ldap.insecure_plaintext", nil},
	{"route.ldap.ca_file", nil},     // the system's roots
	{"route.ldap.server_name", nil}, // the URL's host
	{"route.ldap.bind_dn", nil},
	{"route.ldap.bind_password", nil},
	{"route.ldap.bind_password_file", nil},
	{"route.ldap.base", nil},
	{"route.ldap.scope", defaultLDAPScope},
	{"route.ldap.filter", defaultLDAPFilter},
	{"route.ldap.backend", nil},
	{"route.ldap.port", nil}, // the port of route.ldap.backend's address
	{"route.ldap.timeout", defaultLDAPTimeout},
	{"route.ldap.connections", defaultLDAPConnections},
	{"route.ldap.cache_ttl", defaultLDAPCacheTTL},
	{"route.ldap.negative_cache_ttl", defaultLDAPNegativeCacheTTL},
	{"route.ldap.cache_size", defaultLDAPCacheSize},
	{"route.ldap.attributes.backend", nil},
	{"route.ldap.attributes.host", defaultLDAPHostAttribute},
	{"route.ldap.attributes.port", nil},
	{"route.ldap.attributes.login", nil},
	{"route.ldap.attributes.password", nil},
	{"route.ldap.attributes.password_hash", nil},
	{"route.ldap.attributes.enabled", nil},

	{"oauth.issuer", nil},
	{"oauth.audience", nil},
	{"oauth.algorithms", auth.DefaultOAuthAlgorithms},
	{"oauth.clock_skew", defaultOAuthClockSkew},
	{"oauth.user_claim", defaultOAuthUserClaim},
	{"oauth.domains", nil}, // any; required when a route source compares local parts only
	{"oauth.require_email_verified", true},
	{"oauth.allow_unnormalized_names", nil},
	{"oauth.require_access_token_type", nil},
	{"oauth.ca_file", nil}, // the system's roots
	{"oauth.timeout", defaultOAuthTimeout},
	{"oauth.key_refresh_interval", defaultOAuthKeyRefreshInterval},
	{"oauth.cache_size", defaultOAuthCacheSize},
	{"oauth.introspection", nil},
	{"oauth.client_id", nil},
	{"oauth.client_secret_file", nil},
	{"oauth.introspection_cache_ttl", defaultOAuthIntrospectionCacheTTL},
	{"oauth.master_user", nil},
	{"oauth.master_password_file", nil},
	{"oauth.master_separator", nil},

	{"limits.max_connections", defaultMaxConnections},
	{"limits.max_connections_per_ip", defaultMaxConnectionsPerIP},
	{"limits.login_timeout", defaultLoginTimeout},
	{"limits.idle_timeout", defaultIdleTimeout},
	{"limits.max_login_failures", defaultMaxLoginFailures},
	{"limits.failure_delay", defaultFailureDelay},
	{"limits.max_failures_per_ip", defaultMaxFailuresPerIP},
	{"limits.max_failures_per_user", defaultMaxFailuresPerUser},
	{"limits.failure_window", defaultFailureWindow},
	{"limits.master_user_separator", nil},
	{"limits.ipv6_prefix", defaultIPv6Prefix},
	{"limits.trusted_proxies", nil},
	{"limits.shutdown_timeout", defaultShutdownTimeout},

	{"pop3.greeting", defaultGreeting},
	{"pop3.capabilities", nil},
	{"pop3.hide_backend_errors", defaultHideBackendErrors},

	{"metrics.address", defaultMetricsAddress},
	{"metrics.token_file", nil},
	{"metrics.protect_metrics", nil},
	{"metrics.insecure_open", nil},
	{"metrics.allowed_hosts", nil},
	{"metrics.tls", nil},

	{"cluster.redis", nil},
	{"cluster.addresses", nil},
	{"cluster.sentinel_master", nil},
	{"cluster.tls", nil},
	{"cluster.user", nil},
	{"cluster.password_file", nil},
	{"cluster.sentinel_user", nil},
	{"cluster.sentinel_password_file", nil},
	{"cluster.ca_file", nil},
	{"cluster.key_prefix", defaultClusterKeyPrefix},
	{"cluster.node_name", nil},
	{"cluster.key_file", nil},
}
