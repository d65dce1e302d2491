package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/popgate/popgate/cluster"

	"github.com/BurntSushi/toml"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/safefile"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// Config is the TOML configuration file as decoded, each key as written: a
// key that is left out is a nil pointer, an unset Duration or a zero value.
// Its keys are the file's contract with operators: config.example.toml
// documents each one with its default, and ParseConfig refuses, by name, a
// key that is not here. ParseConfig checks it and turns it into settings,
// which the rest of popgate reads; the defaults are in defaults.go.
type Config struct {
	Log     LogConfig       `toml:"log"`
	Listen  []ListenConfig  `toml:"listen"`
	TLS     TLSConfig       `toml:"tls"`
	Backend []BackendConfig `toml:"backend"`
	// Pool is [[pool]]: backends that share a pool's users (pools.go).
	Pool   []PoolConfig `toml:"pool"`
	Route  RouteConfig  `toml:"route"`
	Limits LimitsConfig `toml:"limits"`
	// OAuth is [oauth]; nil (no section): no bearer-token logins.
	OAuth   *OAuthConfig  `toml:"oauth"`
	POP3    POP3Config    `toml:"pop3"`
	Metrics MetricsConfig `toml:"metrics"`
	// Cluster is [cluster]; nil (no section) runs one replica alone.
	Cluster *ClusterConfig `toml:"cluster"`
}

// ClusterConfig is [cluster]: the Redis a fleet of replicas shares
// (docs/fleet.md).
type ClusterConfig struct {
	Redis                string   `toml:"redis"`
	Addresses            []string `toml:"addresses"`
	SentinelMaster       string   `toml:"sentinel_master"`
	TLS                  bool     `toml:"tls"`
	User                 string   `toml:"user"`
	PasswordFile         string   `toml:"password_file"`
	SentinelUser         string   `toml:"sentinel_user"`
	SentinelPasswordFile string   `toml:"sentinel_password_file"`
	CAFile               string   `toml:"ca_file"`
	KeyPrefix            string   `toml:"key_prefix"`
	NodeName             string   `toml:"node_name"`
	KeyFile              string   `toml:"key_file"`
}

// POP3Config is [pop3]: what popgate says before login.
type POP3Config struct {
	Greeting          string   `toml:"greeting"`
	Capabilities      []string `toml:"capabilities"`
	HideBackendErrors *bool    `toml:"hide_backend_errors"` // nil: true
}

// LogConfig is [log].
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error; "" = info
	Format string `toml:"format"` // auto | text | json; "" = auto
}

// ListenConfig is one [[listen]].
type ListenConfig struct {
	Name               string   `toml:"name"`
	Address            string   `toml:"address"`
	TLS                string   `toml:"tls"`
	AllowPlaintextFrom []string `toml:"allow_plaintext_from"`
	MinVersion         string   `toml:"min_version"`
	ProxyProtocol      bool     `toml:"proxy_protocol"`
	OAuth              bool     `toml:"oauth"`
}

// TLSConfig is [tls].
type TLSConfig struct {
	MinVersion            string       `toml:"min_version"`
	DefaultServerName     string       `toml:"default_server_name"`
	Certificates          []CertConfig `toml:"certificates"`
	SessionTickets        *bool        `toml:"session_tickets"` // nil: true
	SessionTicketRotation Duration     `toml:"session_ticket_rotation"`
	SessionTicketLifetime Duration     `toml:"session_ticket_lifetime"`
	ACME                  *ACMEConfig  `toml:"acme"`
}

// CertConfig is one entry of tls.certificates.
type CertConfig struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// BackendConfig is one [[backend]].
type BackendConfig struct {
	Name               string   `toml:"name"`
	Address            string   `toml:"address"`
	Fallbacks          []string `toml:"fallbacks"`
	TLS                string   `toml:"tls"`
	ServerName         string   `toml:"server_name"`
	CAFile             string   `toml:"ca_file"`
	InsecureSkipVerify bool     `toml:"insecure_skip_verify"`
	MinVersion         string   `toml:"min_version"`
	ClientAddress      string   `toml:"client_address"`
	RelayAuthzID       bool     `toml:"relay_authzid"`
	// The master login of bearer-token logins to this backend, instead
	// of [oauth]'s (oauth.go).
	OAuthMasterUser         string   `toml:"oauth_master_user"`
	OAuthMasterPasswordFile string   `toml:"oauth_master_password_file"`
	OAuthMasterSeparator    *string  `toml:"oauth_master_separator"`
	ConnectTimeout          Duration `toml:"connect_timeout"`
	Timeout                 Duration `toml:"timeout"`
	HealthInterval          Duration `toml:"health_interval"`
	HealthFailures          *int     `toml:"health_failures"`
	HealthTimeout           Duration `toml:"health_timeout"`
}

// RouteConfig is [route].
type RouteConfig struct {
	Default string            `toml:"default"`
	Users   map[string]string `toml:"users"`
	Domains map[string]string `toml:"domains"`
	MapFile string            `toml:"map_file"`
	HTTP    *RouteHTTPConfig  `toml:"http"`
	SQL     *RouteSQLConfig   `toml:"sql"`
	LDAP    *RouteLDAPConfig  `toml:"ldap"` // ldap.go
}

// RouteHTTPConfig is [route.http]: a lookup service speaking nginx's
// auth_http protocol.
type RouteHTTPConfig struct {
	URL              string   `toml:"url"`
	Timeout          Duration `toml:"timeout"`
	CacheTTL         Duration `toml:"cache_ttl"`
	NegativeCacheTTL Duration `toml:"negative_cache_ttl"`
	CacheSize        *int     `toml:"cache_size"`
	Backend          string   `toml:"backend"`
}

// RouteSQLConfig is [route.sql]: a query to a PostgreSQL or MySQL/MariaDB
// database.
type RouteSQLConfig struct {
	Driver           string   `toml:"driver"`
	DSN              string   `toml:"dsn"`
	DSNFile          string   `toml:"dsn_file"`
	Query            string   `toml:"query"`
	MaxConnections   *int     `toml:"max_connections"`
	Timeout          Duration `toml:"timeout"`
	CacheTTL         Duration `toml:"cache_ttl"`
	NegativeCacheTTL Duration `toml:"negative_cache_ttl"`
	CacheSize        *int     `toml:"cache_size"`
	Backend          string   `toml:"backend"`
}

// LimitsConfig is [limits].
type LimitsConfig struct {
	MaxConnections      *int     `toml:"max_connections"`
	MaxConnectionsPerIP *int     `toml:"max_connections_per_ip"`
	LoginTimeout        Duration `toml:"login_timeout"`
	IdleTimeout         Duration `toml:"idle_timeout"`
	MaxLoginFailures    *int     `toml:"max_login_failures"`
	FailureDelay        Duration `toml:"failure_delay"`
	MaxFailuresPerIP    *int     `toml:"max_failures_per_ip"`
	MaxFailuresPerUser  *int     `toml:"max_failures_per_user"`
	FailureWindow       Duration `toml:"failure_window"`
	IPv6Prefix          *int     `toml:"ipv6_prefix"`
	MasterUserSeparator string   `toml:"master_user_separator"`
	TrustedProxies      []string `toml:"trusted_proxies"`
	ShutdownTimeout     Duration `toml:"shutdown_timeout"`
}

// MetricsConfig is [metrics]: the admin endpoints.
type MetricsConfig struct {
	// Address serves /metrics, /healthz, /readyz and /sessions; omitted
	// means defaultMetricsAddress, "" disables.
	Address *string `toml:"address"`
	// TokenFile holds the bearer token /sessions asks for (and /metrics
	// with ProtectMetrics), re-read on every reload; "" asks for none,
	// which a non-loopback Address allows only with InsecureOpen.
	TokenFile string `toml:"token_file"`
	// ProtectMetrics asks for the token on /metrics too; needs TokenFile.
	ProtectMetrics bool `toml:"protect_metrics"`
	// InsecureOpen allows a non-loopback Address without a token, with a
	// warning at every start.
	InsecureOpen bool `toml:"insecure_open"`
	// TLS serves the address over HTTPS with the certificates the POP3
	// listeners serve (same SNI selection, ACME included).
	TLS bool `toml:"tls"`
	// AllowedHosts are further names (and addresses) the admin endpoints
	// answer to in the Host header; set, they turn the Host check on
	// for a non-loopback Address too.
	AllowedHosts []string `toml:"allowed_hosts"`
}

// Duration is a Go duration string in TOML ("30s", "10m").
type Duration struct {
	time.Duration
	Set bool // present in the file
}

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (use Go syntax such as \"30s\" or \"10m\")", b)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: negative", b)
	}
	d.Duration, d.Set = v, true
	return nil
}

// or returns d, or def when d was not set.
func (d Duration) or(def time.Duration) time.Duration {
	if d.Set {
		return d.Duration
	}
	return def
}

func intOr(p *int, def int) int {
	if p != nil {
		return *p
	}
	return def
}

func boolOr(p *bool, def bool) bool {
	if p != nil {
		return *p
	}
	return def
}

// mapFilePoll is how often route.map_file is checked for changes.
const mapFilePoll = 5 * time.Second

// maxConfigSize bounds the configuration file: route.users inline can
// make it large, but never this large.
const maxConfigSize = 16 << 20

// readConfig reads the configuration file: a regular file (symlinks
// followed, as a Kubernetes ConfigMap's are) of at most maxConfigSize, so
// that a file replaced by a named pipe or a link to /dev/zero cannot block
// or exhaust a reload.
func readConfig(path string) ([]byte, error) {
	return safefile.ReadFile(path, safefile.Options{Limit: maxConfigSize})
}

// LoadConfig reads, decodes and checks the configuration file at path and
// returns its settings. Errors name the offending key, and the line where
// the decoder knows it.
func LoadConfig(path string) (*settings, error) {
	data, err := readConfig(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes and checks a configuration and returns its settings;
// name is used in errors.
func ParseConfig(name string, data []byte) (*settings, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// LastKey names the key whose value failed, e.g. a Duration's
			// UnmarshalText error, which otherwise says only "invalid
			// duration".
			if pe.LastKey != "" {
				return nil, fmt.Errorf("config %s: line %d: %s: %s", name, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return nil, fmt.Errorf("config %s: line %d: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("unknown key %q", k.String()))
	}
	return c.check(name, errs...)
}

// check returns c's settings, or an error that lists every problem, those
// given first; name is used in the error.
func (c *Config) check(name string, problems ...error) (*settings, error) {
	s, errs := c.settings()
	errs = slices.Concat(problems, errs)
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = "  " + e.Error()
		}
		return nil, fmt.Errorf("config %s: %d problem(s):\n%s", name, len(errs), strings.Join(msgs, "\n"))
	}
	return s, nil
}

// settings checks c and turns it into settings, with the defaults of
// defaults.go applied. The errors name the keys; with any, the settings are
// incomplete.
func (c *Config) settings() (*settings, []error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	s := &settings{
		Log:       c.Log.settings(add),
		Listeners: c.listeners(add),
		TLS:       c.TLS.settings(add),
	}
	checkDefaultName(c, add)
	var known map[string]bool
	s.Backends, known = c.backends(add)
	routes := maps.Clone(known)
	s.Pools = c.pools(known, routes, add)
	s.Route = c.Route.settings(routes, add)
	if s.Route.LDAP != nil {
		s.Route.LDAP.portFrom(s.Backends)
	}
	checkRouteNames(s, add)
	s.Limits = c.Limits.settings(add)
	s.OAuth = c.OAuth.settings(add)
	if s.OAuth != nil {
		// A token login's master login is chosen by the route's
		// backend name, before a pool assigns the member: a member's
		// own master login would never be used, and [oauth]'s would
		// go to it instead.
		poolOf := map[string]string{}
		for _, p := range s.Pools {
			for _, m := range p.Members {
				poolOf[m.Backend] = p.Name
			}
		}
		for _, b := range s.Backends {
			sep, key := s.OAuth.MasterSeparator, "oauth.master_separator"
			switch {
			case b.OAuthMaster != nil && poolOf[b.Name] != "":
				add("backend %q oauth_master_user: not used for a member of pool %q (a token login's master login is the pool's, [oauth] master_user); remove it and set [oauth] master_user, master_password_file and master_separator for the pool's backends", b.Name, poolOf[b.Name])
				continue
			case b.OAuthMaster != nil:
				sep, key = b.OAuthMaster.Separator, fmt.Sprintf("backend %q oauth_master_separator", b.Name)
			case s.OAuth.MasterUser == "":
				add("oauth.master_user and master_password_file: missing, and backend %q has no oauth_master_user; the backend login of a verified user goes through a master user", b.Name)
				continue
			}
			if sep == "" && !b.RelayAuthzID {
				// The token login would fail at the backend login,
				// one user at a time, with [SYS/TEMP].
				add("%s: \"\" logs in to backend %q with SASL PLAIN as the master, the user as authorization identity, which needs relay_authzid = true on the backend; set it, or the backend's master user separator (Dovecot's auth_master_user_separator, e.g. \"*\")", key, b.Name)
			}
		}
	}
	s.POP3 = pop3Settings{
		Greeting:          cmp.Or(c.POP3.Greeting, defaultGreeting),
		Capabilities:      c.POP3.Capabilities,
		HideBackendErrors: boolOr(c.POP3.HideBackendErrors, defaultHideBackendErrors),
	}
	s.Metrics = c.Metrics.settings(add)
	s.Cluster = c.Cluster.settings(add)
	if s.Cluster != nil && s.Metrics.Address != "" && s.Metrics.TokenFile == "" {
		// Without a token the loopback address is open to any local
		// user; with [cluster] its /sessions reach every replica.
		add("metrics.token_file: required with [cluster] while the admin endpoints are on (metrics.address): /sessions lists " +
			"and ends the sessions of the whole fleet, which no local user without the token should do; set metrics.token_file " +
			"(/metrics stays open unless metrics.protect_metrics), or metrics.address = \"\" to turn the admin endpoints off")
	}
	return s, errs
}

// settings checks [cluster]; its files are read when the cluster client
// is made (cluster.Open).
func (cc *ClusterConfig) settings(add func(string, ...any)) *cluster.Config {
	if cc == nil {
		return nil
	}
	s := &cluster.Config{
		Redis:                cc.Redis,
		Addresses:            cc.Addresses,
		SentinelMaster:       cc.SentinelMaster,
		TLS:                  cc.TLS,
		User:                 cc.User,
		PasswordFile:         cc.PasswordFile,
		SentinelUser:         cc.SentinelUser,
		SentinelPasswordFile: cc.SentinelPasswordFile,
		CAFile:               cc.CAFile,
		KeyPrefix:            cmp.Or(cc.KeyPrefix, defaultClusterKeyPrefix),
		NodeName:             cc.NodeName,
		KeyFile:              cc.KeyFile,
	}
	// The URL is never quoted: it may hold a password.
	u, err := url.Parse(cc.Redis)
	switch {
	case cc.Redis == "" && len(cc.Addresses) == 0:
		add("cluster.redis: required in [cluster]: the fleet's Redis, redis://host:6379/0 or rediss://host:6380/0 (TLS); or cluster.addresses for Sentinels (with sentinel_master) or a Redis Cluster")
	case cc.Redis == "":
		for _, a := range cc.Addresses {
			if h, p, err := net.SplitHostPort(a); err != nil || h == "" || p == "" {
				add("cluster.addresses: %q is not host:port", a)
			}
		}
		if (cc.SentinelPasswordFile != "" || cc.SentinelUser != "") && cc.SentinelMaster == "" {
			add("cluster.sentinel_user and cluster.sentinel_password_file: set only with cluster.sentinel_master (Sentinels)")
		}
		if cc.SentinelUser != "" && cc.SentinelPasswordFile == "" {
			add("cluster.sentinel_user: set with cluster.sentinel_password_file (the user's password)")
		}
		if cc.CAFile != "" && !cc.TLS {
			add("cluster.ca_file: set only with TLS: tls = true with cluster.addresses")
		}
	case len(cc.Addresses) > 0:
		add("cluster.redis and cluster.addresses: set one, not both: redis for one server, addresses for Sentinels (with sentinel_master) or the nodes of a Redis Cluster")
	case cc.TLS:
		add("cluster.tls: set only with cluster.addresses; with cluster.redis, a rediss:// URL asks for TLS")
	case cc.SentinelMaster != "" || cc.SentinelPasswordFile != "" || cc.SentinelUser != "":
		add("cluster.sentinel_master: set with cluster.addresses (the Sentinels' addresses), not with cluster.redis")
	case err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "":
		add("cluster.redis: not a URL of the form redis://host:port/db or rediss://host:port/db")
	default:
		if _, has := u.User.Password(); has && cc.PasswordFile != "" {
			add("cluster.redis: the URL holds a password and cluster.password_file is set; keep the password in the file only")
		}
		if cc.CAFile != "" && u.Scheme != "rediss" {
			add("cluster.ca_file: set only with a rediss:// URL (TLS)")
		}
	}
	if cc.KeyFile == "" {
		add("cluster.key_file: required in [cluster]: the key that seals what popgate stores in Redis (make it with `openssl rand -hex 32`, the same file on every replica)")
	}
	if strings.ContainsAny(cc.KeyPrefix, "{}") {
		add("cluster.key_prefix: %q holds a brace, which Redis Cluster reads as a hash tag", cc.KeyPrefix)
	}
	return s
}

// settings checks [log].
func (l LogConfig) settings(add func(string, ...any)) logSettings {
	s := logSettings{Format: cmp.Or(l.Format, defaultLogFormat)}
	switch cmp.Or(l.Level, defaultLogLevel) {
	case "info":
		s.Level = slog.LevelInfo
	case "debug":
		s.Level = slog.LevelDebug
	case "warn":
		s.Level = slog.LevelWarn
	case "error":
		s.Level = slog.LevelError
	default:
		add("log.level: %q is not one of debug, info, warn, error", l.Level)
	}
	switch s.Format {
	case "auto", "text", "json":
	default:
		add("log.format: %q is not one of auto, text, json", l.Format)
	}
	return s
}

// listeners checks [[listen]].
func (c *Config) listeners(add func(string, ...any)) []listenerSettings {
	if len(c.Listen) == 0 {
		add("listen: no [[listen]] section; popgate would serve nothing")
	}
	var ls []listenerSettings
	names, addrs := map[string]bool{}, map[string]bool{}
	for i, l := range c.Listen {
		key := fmt.Sprintf("listen[%d]", i)
		s := listenerSettings{Address: l.Address, Key: l.key()}
		s.Name, s.ProxyProtocol = l.name(), l.ProxyProtocol
		if l.Address == "" {
			add("%s.address: missing", key)
		} else if _, _, err := net.SplitHostPort(l.Address); err != nil {
			add("%s.address: %q is not host:port", key, l.Address)
		} else if addrs[s.Key] {
			add("%s.address: %q used twice", key, l.Address)
		} else {
			addrs[s.Key] = true
		}
		var err error
		if s.TLS, err = proxy.ParseTLSMode(l.TLS); err != nil {
			add("%s.tls: %q is not one of implicit, starttls, none", key, l.TLS)
		}
		if names[s.Name] {
			add("%s.name: %q used twice", key, s.Name)
		} else {
			names[s.Name] = true
		}
		s.AllowPlaintextFrom = prefixes(key+".allow_plaintext_from", l.AllowPlaintextFrom, add)
		if len(l.AllowPlaintextFrom) > 0 && l.TLS != "starttls" {
			add("%s.allow_plaintext_from: only meaningful with tls = \"starttls\"", key)
		}
		if l.MinVersion != "" {
			if s.MinVersion, err = tlsconf.ParseVersion(l.MinVersion); err != nil {
				add("%s.min_version: %v", key, err)
			}
		}
		s.OAuth = l.OAuth
		switch {
		case l.OAuth && c.OAuth == nil:
			add("%s.oauth: needs an [oauth] section (the issuer that verifies the tokens)", key)
		case l.OAuth && l.TLS == "none":
			add("%s.oauth: needs tls = \"implicit\" or \"starttls\" (bearer tokens are offered after TLS only)", key)
		}
		if l.ProxyProtocol && len(c.Limits.TrustedProxies) == 0 {
			add("%s.proxy_protocol: needs limits.trusted_proxies (the load balancers that may send the header)", key)
		}
		ls = append(ls, s)
	}
	return ls
}

// prefixes parses the addresses and networks of the list at key.
func prefixes(key string, list []string, add func(string, ...any)) []netip.Prefix {
	var ps []netip.Prefix
	for i, p := range list {
		pfx, err := parsePrefix(p)
		if err != nil {
			add("%s[%d]: %v", key, i, err)
			continue
		}
		ps = append(ps, pfx)
	}
	return ps
}

// settings checks [tls] and [tls.acme].
func (t TLSConfig) settings(add func(string, ...any)) tlsSettings {
	s := tlsSettings{MinVersion: cmp.Or(t.MinVersion, defaultTLSMinVersion), DefaultServerName: t.DefaultServerName, ACME: t.ACME.settings(add)}
	if _, err := tlsconf.ParseVersion(t.MinVersion); err != nil {
		add("tls.min_version: %v", err)
	}
	s.SessionTickets = t.SessionTickets == nil || *t.SessionTickets
	s.TicketRotation = t.SessionTicketRotation.or(defaultSessionTicketRotation)
	s.TicketLifetime = t.SessionTicketLifetime.or(defaultSessionTicketLifetime)
	if err := tlsconf.CheckTicketPeriods(s.TicketRotation, s.TicketLifetime); err != nil {
		key := "tls.session_ticket_lifetime"
		if s.TicketRotation < tlsconf.MinTicketRotation {
			key = "tls.session_ticket_rotation"
		}
		add("%s: %v", key, err)
	}
	for i, cf := range t.Certificates {
		if cf.Cert == "" || cf.Key == "" {
			add("tls.certificates[%d]: both cert and key are required", i)
		}
		s.Certificates = append(s.Certificates, tlsconf.CertFile{Cert: cf.Cert, Key: cf.Key})
	}
	return s
}

// backends checks [[backend]] and returns the names it defines too.
func (c *Config) backends(add func(string, ...any)) ([]backendSettings, map[string]bool) {
	var bs []backendSettings
	known := map[string]bool{}
	for i, b := range c.Backend {
		key := fmt.Sprintf("backend[%d]", i)
		if b.Name == "" {
			add("%s.name: missing", key)
		} else if known[b.Name] {
			add("%s.name: %q used twice", key, b.Name)
		}
		known[b.Name] = true
		if b.Address == "" {
			add("%s.address: missing", key)
		} else if _, _, err := net.SplitHostPort(b.Address); err != nil {
			add("%s.address: %q is not host:port", key, b.Address)
		}
		for j, f := range b.Fallbacks {
			if _, _, err := net.SplitHostPort(f); err != nil {
				add("%s.fallbacks[%d]: %q is not host:port", key, j, f)
			}
		}
		mode, err := proxy.ParseTLSMode(b.TLS)
		if b.TLS == "" {
			add("%s.tls: missing (none, starttls or implicit)", key)
		} else if err != nil {
			add("%s.tls: %q is not one of none, starttls, implicit", key, b.TLS)
		}
		if mode == proxy.TLSNone && (b.ServerName != "" || b.CAFile != "" || b.InsecureSkipVerify) {
			add("%s: server_name, ca_file and insecure_skip_verify need tls = \"starttls\" or \"implicit\"", key)
		}
		if b.CAFile != "" && b.InsecureSkipVerify {
			add("%s: ca_file and insecure_skip_verify contradict each other", key)
		}
		minVersion := cmp.Or(b.MinVersion, defaultBackendMinVersion)
		if _, err := tlsconf.ParseVersion(minVersion); err != nil {
			add("%s.min_version: %v", key, err)
		}
		clientAddr, err := proxy.ParseClientAddressMode(cmp.Or(b.ClientAddress, defaultBackendClientAddress))
		if err != nil {
			add("%s.client_address: %q is not one of none, xclient, proxy-v1, proxy-v2", key, b.ClientAddress)
		}
		if b.ConnectTimeout.Set && b.ConnectTimeout.Duration == 0 {
			add("%s.connect_timeout: must be positive", key)
		}
		if b.Timeout.Set && b.Timeout.Duration == 0 {
			add("%s.timeout: must be positive", key)
		}
		healthFailures := defaultHealthFailures
		if b.HealthFailures != nil {
			if healthFailures = *b.HealthFailures; healthFailures < 1 {
				add("%s.health_failures: must be at least 1", key)
			}
		}
		if b.HealthTimeout.Set && b.HealthTimeout.Duration == 0 {
			add("%s.health_timeout: must be positive (health_interval = \"0s\" turns the checks off)", key)
		}
		bs = append(bs, backendSettings{
			OAuthMaster: b.oauthMaster(key, add),
			Backend: proxy.Backend{
				Name:           b.Name,
				Address:        b.Address,
				Fallbacks:      b.Fallbacks,
				TLS:            mode,
				RelayAuthzID:   b.RelayAuthzID,
				ConnectTimeout: b.ConnectTimeout.or(defaultBackendConnectTimeout),
				Timeout:        b.Timeout.or(defaultBackendTimeout),
				ClientAddress:  clientAddr,
				HealthInterval: b.HealthInterval.or(defaultHealthInterval),
				HealthFailures: healthFailures,
				HealthTimeout:  b.HealthTimeout.or(defaultHealthTimeout),
			},
			Trust: tlsconf.BackendConfig{
				ServerName:         b.ServerName,
				Address:            b.Address,
				CAFile:             b.CAFile,
				InsecureSkipVerify: b.InsecureSkipVerify,
				MinVersion:         minVersion,
			},
		})
	}
	if len(c.Backend) == 0 {
		add("backend: no [[backend]] section; nothing to route to")
	}
	return bs, known
}

// settings checks [route]; known are the backends' names.
func (r RouteConfig) settings(known map[string]bool, add func(string, ...any)) routeSettings {
	s := routeSettings{Default: r.Default, Users: r.Users, Domains: r.Domains, MapFile: r.MapFile}
	checkRoute := func(key, target string) {
		if !known[target] {
			add("%s: backend %q is not defined (defined: %s)", key, target, strings.Join(sortedKeys(known), ", "))
		}
	}
	if r.Default != "" {
		checkRoute("route.default", r.Default)
	}
	for _, u := range sortedKeys(r.Users) {
		checkRoute(fmt.Sprintf("route.users.%q", u), r.Users[u])
	}
	for _, d := range sortedKeys(r.Domains) {
		checkRoute(fmt.Sprintf("route.domains.%q", d), r.Domains[d])
	}
	// auth.NewStatic folds keys (auth.UserKey, auth.DomainKey); two keys
	// that fold to one but name different backends would route by map
	// order, differently from run to run.
	checkFolded := func(table string, m map[string]string, fold func(string) string) {
		seen := map[string]string{}
		for _, k := range sortedKeys(m) {
			f := fold(k)
			if prev, ok := seen[f]; ok && m[prev] != m[k] {
				add("route.%s.%q: the same key as %q (keys ignore case), but a different backend", table, k, prev)
			} else if !ok {
				seen[f] = k
			}
		}
	}
	checkFolded("users", r.Users, auth.UserKey)
	checkFolded("domains", r.Domains, auth.DomainKey)
	if h := r.HTTP; h != nil {
		switch u, err := url.Parse(h.URL); {
		case h.URL == "":
			add("route.http.url: missing")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			add("route.http.url: %q is not an http:// or https:// URL", h.URL)
		}
		if h.Backend != "" && !known[h.Backend] {
			add("route.http.backend: backend %q is not defined", h.Backend)
		}
		if h.Timeout.Set && h.Timeout.Duration == 0 {
			add("route.http.timeout: must be positive")
		}
		if h.CacheSize != nil && *h.CacheSize < 0 {
			add("route.http.cache_size: must not be negative")
		}
		s.HTTP = &httpRouteSettings{
			URL:              h.URL,
			Backend:          h.Backend,
			Timeout:          h.Timeout.or(defaultHTTPTimeout),
			CacheTTL:         h.CacheTTL.or(defaultHTTPCacheTTL),
			NegativeCacheTTL: h.NegativeCacheTTL.or(defaultHTTPNegativeCacheTTL),
			CacheSize:        intOr(h.CacheSize, defaultHTTPCacheSize),
		}
	}
	if q := r.SQL; q != nil {
		s.SQL = q.settings(known, add)
	}
	if r.LDAP != nil {
		s.LDAP = r.LDAP.settings(known, add)
	}
	if r.Default == "" && len(s.sources()) == 0 {
		add("route: no route at all; set route.default, route.users or route.domains")
	}
	return s
}

// settings checks [route.sql]; known are the backends' names. The query
// itself is checked when the source is built (auth.OpenSQL), against the
// server.
func (q *RouteSQLConfig) settings(known map[string]bool, add func(string, ...any)) *sqlRouteSettings {
	switch q.Driver {
	case auth.SQLPostgres, auth.SQLMySQL:
	case "":
		add("route.sql.driver: missing (postgres or mysql; mysql serves MariaDB too)")
	default:
		add("route.sql.driver: %q is not postgres or mysql (mysql serves MariaDB too)", q.Driver)
	}
	switch {
	case q.DSN == "" && q.DSNFile == "":
		add("route.sql: set dsn, or dsn_file (a file holding it, so that the database password need not be in this file)")
	case q.DSN != "" && q.DSNFile != "":
		add("route.sql: dsn and dsn_file contradict each other; set one")
	}
	if strings.TrimSpace(q.Query) == "" {
		add("route.sql.query: missing (a SELECT returning backend, or host and port, for :user)")
	}
	if q.MaxConnections != nil && *q.MaxConnections < 1 {
		add("route.sql.max_connections: must be at least 1")
	}
	if q.Timeout.Set && q.Timeout.Duration == 0 {
		add("route.sql.timeout: must be positive")
	}
	if q.CacheSize != nil && *q.CacheSize < 0 {
		add("route.sql.cache_size: must not be negative")
	}
	if q.Backend != "" && !known[q.Backend] {
		add("route.sql.backend: backend %q is not defined", q.Backend)
	}
	return &sqlRouteSettings{
		Driver:           q.Driver,
		DSN:              q.DSN,
		DSNFile:          q.DSNFile,
		Query:            q.Query,
		MaxConnections:   intOr(q.MaxConnections, defaultSQLMaxConnections),
		Timeout:          q.Timeout.or(defaultSQLTimeout),
		Backend:          q.Backend,
		CacheTTL:         q.CacheTTL.or(defaultSQLCacheTTL),
		NegativeCacheTTL: q.NegativeCacheTTL.or(defaultSQLNegativeCacheTTL),
		CacheSize:        intOr(q.CacheSize, defaultSQLCacheSize),
	}
}

// settings checks [limits].
func (lim LimitsConfig) settings(add func(string, ...any)) limitSettings {
	for _, k := range []struct {
		key string
		p   *int
		min int
	}{
		{"limits.max_connections", lim.MaxConnections, 0},
		{"limits.max_connections_per_ip", lim.MaxConnectionsPerIP, 0},
		{"limits.max_login_failures", lim.MaxLoginFailures, 0},
		{"limits.max_failures_per_ip", lim.MaxFailuresPerIP, 0},
		{"limits.max_failures_per_user", lim.MaxFailuresPerUser, 0},
	} {
		if k.p != nil && *k.p < 0 {
			add("%s: must not be negative", k.key)
		}
	}
	if lim.MaxLoginFailures != nil && *lim.MaxLoginFailures == 0 {
		add("limits.max_login_failures: must be at least 1")
	}
	for _, k := range []struct {
		key string
		d   Duration
	}{
		{"limits.login_timeout", lim.LoginTimeout},
		{"limits.idle_timeout", lim.IdleTimeout},
	} {
		if k.d.Set && k.d.Duration == 0 {
			add("%s: must be positive", k.key)
		}
	}
	if p := lim.IPv6Prefix; p != nil && (*p < 1 || *p > 128) {
		add("limits.ipv6_prefix: must be between 1 and 128 (the length of the IPv6 prefix that counts as one client; 64 by default)")
	}
	if badSeparator(lim.MasterUserSeparator) {
		add("limits.master_user_separator: must be a few characters without spaces, as the backends' (Dovecot's auth_master_user_separator, e.g. \"*\")")
	}
	var everyone []string
	for _, p := range lim.TrustedProxies {
		if pfx, err := parsePrefix(p); err == nil && pfx.Bits() == 0 {
			everyone = append(everyone, p)
		}
	}
	return limitSettings{
		MaxConnections:      intOr(lim.MaxConnections, defaultMaxConnections),
		MaxConnectionsPerIP: intOr(lim.MaxConnectionsPerIP, defaultMaxConnectionsPerIP),
		LoginTimeout:        lim.LoginTimeout.or(defaultLoginTimeout),
		IdleTimeout:         lim.IdleTimeout.or(defaultIdleTimeout),
		MaxLoginFailures:    intOr(lim.MaxLoginFailures, defaultMaxLoginFailures),
		FailureDelay:        lim.FailureDelay.or(defaultFailureDelay),
		MaxFailuresPerIP:    intOr(lim.MaxFailuresPerIP, defaultMaxFailuresPerIP),
		MaxFailuresPerUser:  intOr(lim.MaxFailuresPerUser, defaultMaxFailuresPerUser),
		FailureWindow:       lim.FailureWindow.or(defaultFailureWindow),
		IPv6Prefix:          intOr(lim.IPv6Prefix, defaultIPv6Prefix),
		MasterUserSeparator: lim.MasterUserSeparator,
		TrustedProxies:      prefixes("limits.trusted_proxies", lim.TrustedProxies, add),
		TrustedEveryone:     everyone,
		ShutdownTimeout:     lim.ShutdownTimeout.or(defaultShutdownTimeout),
	}
}

// settings checks [metrics]. The admin address lists user names and
// client addresses (and what failed logins typed as a name) and ends
// sessions, so a non-loopback address needs a token or an explicit
// insecure_open.
func (m MetricsConfig) settings(add func(string, ...any)) metricsSettings {
	s := metricsSettings{
		Address:        defaultMetricsAddress,
		TokenFile:      m.TokenFile,
		ProtectMetrics: m.ProtectMetrics,
		InsecureOpen:   m.InsecureOpen,
		AllowedHosts:   m.AllowedHosts,
		TLS:            m.TLS,
	}
	if m.Address != nil {
		s.Address = *m.Address
	}
	if a := s.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			add("metrics.address: %v", err)
		} else if !isLoopback(a) && m.TokenFile == "" && !m.InsecureOpen {
			add("metrics.address: %q is not a loopback address and metrics.token_file is not set: anyone who reaches it "+
				"could list the sessions (user names, client addresses) and end them; set metrics.token_file, "+
				"or metrics.insecure_open = true if something else guards the address", a)
		}
	}
	if m.TLS && s.Address == "" {
		add("metrics.tls: needs metrics.address (the admin endpoints are off)")
	}
	if m.InsecureOpen && m.TokenFile != "" {
		add("metrics.insecure_open: contradicts metrics.token_file (with a token the endpoints are not open)")
	}
	if m.ProtectMetrics && m.TokenFile == "" {
		add("metrics.protect_metrics: needs metrics.token_file")
	}
	for i, h := range m.AllowedHosts {
		if !validHost(h) {
			add("metrics.allowed_hosts[%d]: %q is not a host name or an IP address (no port, no scheme, no wildcard)", i, h)
		}
	}
	return s
}

// validHost reports whether h is an IP address (IPv6 with or without
// brackets) or a DNS name, with an optional trailing dot.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil {
		return true
	}
	name := strings.TrimSuffix(h, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// key identifies the listener's socket across reloads: its address, or
// for port 0 (any free port, for tests) its name too.
func (l ListenConfig) key() string {
	if _, port, _ := net.SplitHostPort(l.Address); port == "0" || port == "" {
		return l.Address + " " + l.name()
	}
	return l.Address
}

func (l ListenConfig) name() string {
	if l.Name != "" {
		return l.Name
	}
	return l.Address
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR network", s)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
