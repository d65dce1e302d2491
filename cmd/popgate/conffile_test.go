package main

import (
	"testing"
	"time"

	"github.com/popgate/popgate/internal/conffile"
)

// TestConfFile: popgate accepts what internal/conffile writes for the
// interop tests and pop3bench, with every field set, and reads it as meant.
func TestConfFile(t *testing.T) {
	f := conffile.File{
		Comment: `every field, and a "quoted" \ name`,
		Log:     conffile.Log{Level: "debug", Format: "json"},
		Listeners: []conffile.Listener{
			{Name: "pop3s", Address: "127.0.0.1:0", TLS: "implicit"},
			{Name: "pp", Address: "127.0.0.1:0", TLS: "none", ProxyProtocol: true},
		},
		TLS: conffile.TLS{
			DefaultServerName: "mail.example.com",
			Certificates:      []conffile.Certificate{{Cert: `/etc/popgate/a "b".crt`, Key: `C:\popgate\a.key`}},
			ACME:              "domains = [\"mail.example.com\"]\ncache_dir = \"/var/lib/popgate/acme\"\n",
		},
		Backends: []conffile.Backend{
			{Name: "b", Address: "127.0.0.1:110", TLS: "none", ClientAddress: "xclient", RelayAuthzID: true},
			{Name: "s", Address: "127.0.0.1:995", TLS: "implicit", ServerName: "pop.internal", CAFile: "/etc/popgate/ca.pem",
				Fallbacks: []string{"127.0.0.2:995", "127.0.0.3:995"}, HealthInterval: "250ms", HealthFailures: 2, HealthTimeout: "1s"},
		},
		Route: conffile.Route{
			Default: "b",
			Users:   map[string]string{"alice@example.com": "s", "tab\tuser": "b"},
			Domains: map[string]string{"example.org": "s"},
			MapFile: "/etc/popgate/routes",
			HTTPURL: "http://127.0.0.1:8080/auth",
			SQL: &conffile.SQL{Driver: "postgres", DSN: "postgres://popgate@127.0.0.1/mail", Query: "SELECT backend FROM users WHERE email = :user",
				Backend: "s", Timeout: "2s", CacheTTL: "0s", MaxConnections: 4},
			LDAP: &conffile.LDAP{URL: "ldap://127.0.0.1:389", CAFile: "/etc/popgate/ldap-ca.pem", BindDN: "cn=popgate,dc=example,dc=com",
				BindPasswordFile: "/etc/popgate/ldap-password", Base: "ou=people,dc=example,dc=com", Filter: "(mail=%u)",
				Backend: "s", Timeout: "3s", CacheTTL: "10m", Connections: 2},
		},
		Limits:           []string{`shutdown_timeout = "2s"`, `trusted_proxies = ["127.0.0.0/8"]`},
		MetricsAddress:   new(""),
		MetricsTokenFile: "/etc/popgate/admin-token",
	}
	c, err := ParseConfig("conffile", []byte(f.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, f.String())
	}
	if len(c.Listeners) != 2 || !c.Listeners[1].ProxyProtocol || c.TLS.Certificates[0].Cert != `/etc/popgate/a "b".crt` ||
		c.TLS.Certificates[0].Key != `C:\popgate\a.key` || c.TLS.ACME == nil || len(c.Backends) != 2 || !c.Backends[0].RelayAuthzID ||
		c.Backends[1].Trust.CAFile != "/etc/popgate/ca.pem" || c.Route.Users["tab\tuser"] != "b" || c.Route.HTTP == nil ||
		c.Limits.ShutdownTimeout.String() != "2s" || c.Metrics.Address != "" || c.Metrics.TokenFile != "/etc/popgate/admin-token" || len(c.Backends[1].Fallbacks) != 2 ||
		c.Backends[1].Fallbacks[1] != "127.0.0.3:995" || c.Backends[1].HealthInterval.String() != "250ms" ||
		c.Backends[1].HealthFailures != 2 || c.Backends[1].HealthTimeout.String() != "1s" {
		t.Errorf("settings = %+v\nfrom\n%s", c, f.String())
	}
	if q := c.Route.SQL; q == nil || q.Driver != "postgres" || q.Backend != "s" || q.CacheTTL != 0 || q.MaxConnections != 4 {
		t.Errorf("route.sql = %+v\nfrom\n%s", q, f.String())
	}
	if l := c.Route.LDAP; l == nil || l.URL != "ldap://127.0.0.1:389" || l.BindPasswordFile != "/etc/popgate/ldap-password" ||
		l.Filter != "(mail=%u)" || l.Backend != "s" || l.CacheTTL != 10*time.Minute || l.Connections != 2 {
		t.Errorf("settings = %+v\nfrom\n%s", c, f.String())
	}
}
