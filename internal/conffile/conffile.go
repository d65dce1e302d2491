// Package conffile writes popgate's configuration file for the programs
// that start popgate as a process: the interop tests and pop3bench. It
// writes the keys they choose (config.example.toml shows every key);
// cmd/popgate's tests check that popgate accepts what it writes.
package conffile

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// File is a configuration file. Fields left empty are left out of it, so
// that popgate's defaults apply.
type File struct {
	Comment   string // the first line, after "# "
	Log       Log
	Listeners []Listener
	TLS       TLS
	Backends  []Backend
	Route     Route
	// Limits are the lines of [limits], as written:
	// `shutdown_timeout = "2s"`.
	Limits []string
	// OAuth are the lines of [oauth], as written; nil leaves it out.
	OAuth []string
	// MetricsAddress is metrics.address ("" disables the admin
	// endpoints); nil leaves it out (the default, 127.0.0.1:9110).
	MetricsAddress *string
	// MetricsTokenFile is metrics.token_file, the admin token that the
	// console and /sessions ask for; "" leaves it out.
	MetricsTokenFile string
}

// Log is [log].
type Log struct {
	Level  string // debug | info | warn | error
	Format string // auto | text | json
}

// Listener is one [[listen]].
type Listener struct {
	Name          string
	Address       string
	TLS           string // implicit | starttls | none
	ProxyProtocol bool
	OAuth         bool // offer AUTH OAUTHBEARER and XOAUTH2
}

// TLS is [tls].
type TLS struct {
	DefaultServerName string
	Certificates      []Certificate
	// ACME is the body of [tls.acme], as written; "" leaves the section
	// out.
	ACME string
}

// Certificate is one entry of tls.certificates.
type Certificate struct {
	Cert, Key string // PEM files
}

// Backend is one [[backend]].
type Backend struct {
	Name       string
	Address    string
	TLS        string // none | starttls | implicit
	ServerName string
	CAFile     string
	// ClientAddress is client_address; "" leaves it out (none).
	ClientAddress string
	// RelayAuthzID is relay_authzid.
	RelayAuthzID bool
	// Fallbacks is fallbacks; nil leaves it out.
	Fallbacks []string
	// HealthInterval and HealthTimeout are health_interval and
	// health_timeout ("10s"), HealthFailures health_failures; "" and 0
	// leave them out.
	HealthInterval, HealthTimeout string
	HealthFailures                int
}

// Route is [route].
type Route struct {
	Default string            // route.default
	Users   map[string]string // route.users: user → backend name
	Domains map[string]string // route.domains: domain → backend name
	MapFile string            // route.map_file
	HTTPURL string            // route.http.url; "" leaves [route.http] out
	SQL     *SQL              // [route.sql]; nil leaves it out
	LDAP    *LDAP             // [route.ldap]; nil leaves it out
}

// SQL is [route.sql]; an empty string or zero leaves a key out.
type SQL struct {
	Driver, DSN, DSNFile, Query string
	Backend                     string
	Timeout, CacheTTL           string // durations, "2s"
	MaxConnections              int
}

// LDAP is [route.ldap]; an empty string or zero leaves a key out (the
// attributes keep their defaults: mailHost for the host).
type LDAP struct {
	URL, CAFile              string
	BindDN, BindPasswordFile string
	Base, Filter             string
	Backend                  string
	Timeout, CacheTTL        string // durations, "3s"
	Connections              int
}

// String returns the file's text.
func (f *File) String() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	section := func(name string) {
		if b.Len() > 0 {
			p("")
		}
		p("%s", name)
	}
	str := func(key, v string) {
		if v != "" {
			p("%s = %s", key, quote(v))
		}
	}
	num := func(key string, v int) {
		if v != 0 {
			p("%s = %d", key, v)
		}
	}
	if f.Comment != "" {
		p("# %s", f.Comment)
	}
	if f.Log != (Log{}) {
		section("[log]")
		str("level", f.Log.Level)
		str("format", f.Log.Format)
	}
	for _, l := range f.Listeners {
		section("[[listen]]")
		str("name", l.Name)
		str("address", l.Address)
		str("tls", l.TLS)
		if l.ProxyProtocol {
			p("proxy_protocol = true")
		}
		if l.OAuth {
			p("oauth = true")
		}
	}
	if t := f.TLS; t.DefaultServerName != "" || len(t.Certificates) > 0 || t.ACME != "" {
		section("[tls]")
		str("default_server_name", t.DefaultServerName)
		if len(t.Certificates) > 0 {
			certs := make([]string, len(t.Certificates))
			for i, c := range t.Certificates {
				certs[i] = fmt.Sprintf("{ cert = %s, key = %s }", quote(c.Cert), quote(c.Key))
			}
			p("certificates = [%s]", strings.Join(certs, ", "))
		}
		if t.ACME != "" {
			p("[tls.acme]")
			p("%s", strings.TrimSuffix(t.ACME, "\n"))
		}
	}
	for _, be := range f.Backends {
		section("[[backend]]")
		str("name", be.Name)
		str("address", be.Address)
		str("tls", be.TLS)
		str("server_name", be.ServerName)
		str("ca_file", be.CAFile)
		str("client_address", be.ClientAddress)
		if be.RelayAuthzID {
			p("relay_authzid = true")
		}
		if len(be.Fallbacks) > 0 {
			quoted := make([]string, len(be.Fallbacks))
			for i, f := range be.Fallbacks {
				quoted[i] = quote(f)
			}
			p("fallbacks = [%s]", strings.Join(quoted, ", "))
		}
		str("health_interval", be.HealthInterval)
		str("health_timeout", be.HealthTimeout)
		num("health_failures", be.HealthFailures)
	}
	if r := f.Route; r.Default != "" || len(r.Users) > 0 || len(r.Domains) > 0 || r.MapFile != "" || r.HTTPURL != "" || r.SQL != nil || r.LDAP != nil {
		section("[route]")
		str("default", r.Default)
		table := func(key string, m map[string]string) {
			if len(m) == 0 {
				return
			}
			var pairs []string
			for _, k := range slices.Sorted(maps.Keys(m)) {
				pairs = append(pairs, quote(k)+" = "+quote(m[k]))
			}
			p("%s = { %s }", key, strings.Join(pairs, ", "))
		}
		table("users", r.Users)
		table("domains", r.Domains)
		str("map_file", r.MapFile)
		if q := r.SQL; q != nil {
			section("[route.sql]")
			str("driver", q.Driver)
			str("dsn", q.DSN)
			str("dsn_file", q.DSNFile)
			str("query", q.Query)
			str("backend", q.Backend)
			str("timeout", q.Timeout)
			str("cache_ttl", q.CacheTTL)
			num("max_connections", q.MaxConnections)
		}
		if l := r.LDAP; l != nil {
			section("[route.ldap]")
			str("url", l.URL)
			str("ca_file", l.CAFile)
			str("bind_dn", l.BindDN)
			str("bind_password_file", l.BindPasswordFile)
			str("base", l.Base)
			str("filter", l.Filter)
			str("backend", l.Backend)
			str("timeout", l.Timeout)
			str("cache_ttl", l.CacheTTL)
			num("connections", l.Connections)
		}
		if r.HTTPURL != "" {
			section("[route.http]")
			str("url", r.HTTPURL)
		}
	}
	if f.OAuth != nil {
		section("[oauth]")
		for _, l := range f.OAuth {
			p("%s", l)
		}
	}
	if len(f.Limits) > 0 {
		section("[limits]")
		for _, l := range f.Limits {
			p("%s", l)
		}
	}
	if f.MetricsAddress != nil || f.MetricsTokenFile != "" {
		section("[metrics]")
		if f.MetricsAddress != nil {
			p("address = %s", quote(*f.MetricsAddress))
		}
		if f.MetricsTokenFile != "" {
			str("token_file", f.MetricsTokenFile)
		}
	}
	return b.String()
}

// quote returns s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
