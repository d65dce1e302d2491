// Package tlsversion names the TLS versions popgate speaks, in the two forms
// it reads and writes: the configuration's "1.2" (tls.min_version and a
// listener's or backend's min_version) and OpenSSL's "TLSv1.2", the words
// nginx sends in auth_http's Auth-SSL-Protocol and haproxy in the PROXY
// protocol's SSL version (ssl_fc_protocol). One table holds both forms.
// Logs use Go's own [tls.VersionName] ("TLS 1.2").
package tlsversion

import "crypto/tls"

// versions is the table, oldest first. It is never written.
var versions = [...]struct {
	id      uint16
	name    string // the configuration's
	openssl string // OpenSSL's SSL_get_version
}{
	{tls.VersionTLS10, "1.0", "TLSv1"},
	{tls.VersionTLS11, "1.1", "TLSv1.1"},
	{tls.VersionTLS12, "1.2", "TLSv1.2"},
	{tls.VersionTLS13, "1.3", "TLSv1.3"},
}

// Parse returns the version a configuration name ("1.2") stands for, and
// false for a name it does not know.
func Parse(name string) (uint16, bool) {
	for _, v := range versions {
		if v.name == name {
			return v.id, true
		}
	}
	return 0, false
}

// Name returns the configuration's name of v ("1.2"), or "" for a version
// it does not know.
func Name(v uint16) string {
	for _, w := range versions {
		if w.id == v {
			return w.name
		}
	}
	return ""
}

// OpenSSL returns OpenSSL's name of v ("TLSv1.2"), or "" for a version it
// does not know.
func OpenSSL(v uint16) string {
	for _, w := range versions {
		if w.id == v {
			return w.openssl
		}
	}
	return ""
}
