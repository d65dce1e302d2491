package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/auth/ldapsource"
	"github.com/popgate/popgate/internal/safefile"
	"github.com/popgate/popgate/tlsconf"
)

// RouteLDAPConfig is [route.ldap]: routes from an LDAP directory's
// entries (docs/routing.md, "LDAP directory").
type RouteLDAPConfig struct {
	URL               string              `toml:"url"`
	InsecurePlaintext bool                `toml:"insecure_plaintext"`
	CAFile            string              `toml:"ca_file"`
	ServerName        string              `toml:"server_name"`
	BindDN            string              `toml:"bind_dn"`
	BindPassword      string              `toml:"bind_password"`
	BindPasswordFile  string              `toml:"bind_password_file"`
	Base              string              `toml:"base"`
	Scope             string              `toml:"scope"`
	Filter            string              `toml:"filter"`
	Attributes        RouteLDAPAttributes `toml:"attributes"`
	Backend           string              `toml:"backend"`
	Port              *int                `toml:"port"`
	Timeout           Duration            `toml:"timeout"`
	Connections       *int                `toml:"connections"`
	CacheTTL          Duration            `toml:"cache_ttl"`
	NegativeCacheTTL  Duration            `toml:"negative_cache_ttl"`
	CacheSize         *int                `toml:"cache_size"`
}

// RouteLDAPAttributes is [route.ldap.attributes]: the attributes of an
// entry the decision is made of. Host is a pointer so that host = ""
// can turn off the default.
type RouteLDAPAttributes struct {
	Backend      string  `toml:"backend"`
	Host         *string `toml:"host"`
	Port         string  `toml:"port"`
	Login        string  `toml:"login"`
	Password     string  `toml:"password"`
	PasswordHash string  `toml:"password_hash"`
	Enabled      string  `toml:"enabled"`
}

// ldapRouteSettings is [route.ldap], checked.
type ldapRouteSettings struct {
	URL       string
	Plaintext bool
	CAFile    string
	// ServerName is checked on the directory's certificate; "" means
	// the URL's host.
	ServerName string
	BindDN     string
	// BindPassword is bind_password; buildInstance reads
	// BindPasswordFile instead when it is set (again on every reload).
	BindPassword     auth.Password
	BindPasswordFile string
	Base             string
	Scope            int
	Filter           string
	Attributes       ldapsource.Attributes
	Backend          string // "" leaves a host answer without backend settings (plaintext)
	Port             int    // port, or the port of Backend's address (portFrom); 0 for none
	Timeout          time.Duration
	Connections      int
	// CacheTTL, NegativeCacheTTL and CacheSize set the auth.Cache in
	// front of the directory; a CacheTTL of 0 means none.
	CacheTTL, NegativeCacheTTL time.Duration
	CacheSize                  int
}

// ldapScopes are route.ldap.scope's values.
var ldapScopes = map[string]int{"sub": ldap.ScopeWholeSubtree, "one": ldap.ScopeSingleLevel, "base": ldap.ScopeBaseObject}

// ldapAttributeName is an attribute description's name: a name of
// letters, digits and hyphens, or an OID (RFC 4512 §2.5).
var ldapAttributeName = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*)$`)

// settings checks [route.ldap]; known are the backends' names.
func (l *RouteLDAPConfig) settings(known map[string]bool, add func(string, ...any)) *ldapRouteSettings {
	s := &ldapRouteSettings{
		URL:              l.URL,
		Plaintext:        l.InsecurePlaintext,
		CAFile:           l.CAFile,
		ServerName:       l.ServerName,
		BindDN:           l.BindDN,
		BindPassword:     auth.Password(l.BindPassword),
		BindPasswordFile: l.BindPasswordFile,
		Base:             l.Base,
		Filter:           l.Filter,
		Backend:          l.Backend,
		Port:             intOr(l.Port, 0),
		Timeout:          l.Timeout.or(defaultLDAPTimeout),
		Connections:      intOr(l.Connections, defaultLDAPConnections),
		CacheTTL:         l.CacheTTL.or(defaultLDAPCacheTTL),
		NegativeCacheTTL: l.NegativeCacheTTL.or(defaultLDAPNegativeCacheTTL),
		CacheSize:        intOr(l.CacheSize, defaultLDAPCacheSize),
	}
	switch u, err := url.Parse(l.URL); {
	case l.URL == "":
		add("route.ldap.url: missing")
	case err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		add("route.ldap.url: %q is not ldap://host[:port] or ldaps://host[:port] (base and filter have keys of their own)", l.URL)
	case u.Scheme == "ldaps" && l.InsecurePlaintext:
		add("route.ldap.insecure_plaintext: an ldaps:// URL is always encrypted; remove the key or use ldap://")
	}
	if l.InsecurePlaintext && (l.CAFile != "" || l.ServerName != "") {
		add("route.ldap.insecure_plaintext: no TLS, so ca_file and server_name would be ignored; remove them or the key")
	}
	switch {
	case l.BindPassword != "" && l.BindPasswordFile != "":
		add("route.ldap.bind_password and bind_password_file: set one")
	case l.BindDN == "" && (l.BindPassword != "" || l.BindPasswordFile != ""):
		add("route.ldap.bind_dn: missing, with a bind password")
	case l.BindDN != "" && l.BindPassword == "" && l.BindPasswordFile == "":
		add("route.ldap.bind_password_file: missing, with bind_dn (omit bind_dn to search anonymously)")
	}
	if l.Base == "" {
		add("route.ldap.base: missing (the DN the search starts at, such as \"ou=people,dc=example,dc=com\")")
	} else if _, err := ldap.ParseDN(l.Base); err != nil {
		add("route.ldap.base: %q is not a DN: %v", l.Base, err)
	}
	scope := l.Scope
	if scope == "" {
		scope = defaultLDAPScope
	}
	var ok bool
	if s.Scope, ok = ldapScopes[scope]; !ok {
		add("route.ldap.scope: %q is not one of sub, one, base", l.Scope)
	}
	if s.Filter == "" {
		s.Filter = defaultLDAPFilter
	}
	if err := ldapsource.CheckFilter(s.Filter); err != nil {
		add("route.ldap.filter: %v", err)
	}
	a := l.Attributes
	s.Attributes = ldapsource.Attributes{Backend: a.Backend, Host: defaultLDAPHostAttribute, Port: a.Port,
		Login: a.Login, Password: a.Password, PasswordHash: a.PasswordHash, Enabled: a.Enabled}
	if a.Host != nil {
		s.Attributes.Host = *a.Host
	}
	sa := s.Attributes
	for _, f := range []struct{ key, name string }{
		{"backend", sa.Backend}, {"host", sa.Host}, {"port", sa.Port}, {"login", sa.Login},
		{"password", sa.Password}, {"password_hash", sa.PasswordHash}, {"enabled", sa.Enabled},
	} {
		if f.name != "" && !ldapAttributeName.MatchString(f.name) {
			add("route.ldap.attributes.%s: %q is not an attribute name", f.key, f.name)
		}
	}
	switch {
	case sa.Backend == "" && sa.Host == "":
		add("route.ldap.attributes: neither backend nor host is set; an entry must say where its logins go")
	case sa.Password != "" && sa.PasswordHash == "":
		add("route.ldap.attributes.password: needs attributes.password_hash; popgate hands a master password " +
			"only to a client whose own password it checked")
	case sa.Host != "" && sa.Port == "" && l.Port == nil && l.Backend == "":
		add("route.ldap.port: missing; with attributes.host set, give port, attributes.port or backend (whose port is used)")
	}
	if l.Backend != "" && !known[l.Backend] {
		add("route.ldap.backend: backend %q is not defined", l.Backend)
	}
	if l.Port != nil && (*l.Port < 1 || *l.Port > 65535) {
		add("route.ldap.port: %d is not a port", *l.Port)
	}
	if l.Timeout.Set && l.Timeout.Duration <= 0 {
		add("route.ldap.timeout: must be positive")
	}
	if s.Connections < 1 {
		add("route.ldap.connections: must be at least 1")
	}
	if l.CacheSize != nil && *l.CacheSize < 0 {
		add("route.ldap.cache_size: must not be negative")
	}
	return s
}

// portFrom sets Port from route.ldap.backend's address when port is not
// set.
func (l *ldapRouteSettings) portFrom(backends []backendSettings) {
	if l.Port != 0 || l.Backend == "" {
		return
	}
	for _, b := range backends {
		if b.Name != l.Backend {
			continue
		}
		if _, p, err := net.SplitHostPort(b.Address); err == nil {
			l.Port, _ = strconv.Atoi(p)
		}
	}
}

// maxBindPasswordLen bounds route.ldap.bind_password_file.
const maxBindPasswordLen = 4096

// build makes the LDAP source, behind a cache unless cache_ttl is 0
// (in.caches, and in.pools, for the metrics).
func (l *ldapRouteSettings) build(in *instance, known func(string) bool) (auth.Source, error) {
	u, err := url.Parse(l.URL)
	if err != nil {
		return nil, errors.New("bad url") // checked by the settings
	}
	if l.Plaintext && !isLoopbackHost(u.Hostname()) {
		in.log.Warn("route.ldap.insecure_plaintext to a host that is not loopback: the bind password and every user name "+
			"cross the network in clear text; use StartTLS (the default) or ldaps://", "host", u.Host)
	}
	pass := l.BindPassword
	if l.BindPasswordFile != "" {
		b, err := safefile.ReadFile(l.BindPasswordFile, safefile.Options{Limit: maxBindPasswordLen + 2, Private: true})
		if errors.Is(err, safefile.ErrTooLarge) {
			return nil, fmt.Errorf("bind_password_file: %s holds more than %d bytes, which is no password", l.BindPasswordFile, maxBindPasswordLen)
		}
		if err != nil {
			return nil, fmt.Errorf("bind_password_file: %w", err)
		}
		pass = auth.Password(strings.TrimRight(string(b), "\r\n"))
		if pass == "" {
			return nil, fmt.Errorf("bind_password_file: %s is empty", l.BindPasswordFile)
		}
	}
	hashes, err := in.passwordHashes()
	if err != nil {
		return nil, err
	}
	cfg := ldapsource.Config{
		URL:          l.URL,
		Plaintext:    l.Plaintext,
		BindDN:       l.BindDN,
		BindPassword: pass,
		Base:         l.Base,
		Scope:        l.Scope,
		Filter:       l.Filter,
		Attributes:   l.Attributes,
		Timeout:      l.Timeout,
		Connections:  l.Connections,
		Directory: auth.Directory{
			Source:       "route.ldap",
			Backend:      l.Backend,
			KnownBackend: known,
			Hashes:       hashes,
		},
	}
	if !l.Plaintext {
		name := l.ServerName
		if name == "" {
			name = u.Hostname()
		}
		cfg.TLSConfig, err = tlsconf.Backend(tlsconf.BackendConfig{ServerName: name, CAFile: l.CAFile, MinVersion: "1.2"})
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
	}
	if l.Port != 0 {
		cfg.Port = strconv.Itoa(l.Port)
	}
	cfg.Observer = in.lookups.observe
	src, err := ldapsource.New(cfg)
	if err != nil {
		return nil, err
	}
	in.pools = append(in.pools, sourcePool{"route.ldap", src})
	if l.CacheTTL <= 0 {
		return src, nil
	}
	c := auth.NewCache(src, l.CacheSize, l.CacheTTL, l.NegativeCacheTTL, nil)
	in.caches = append(in.caches, sourceCache{"route.ldap", c})
	return c, nil
}
