package tlsversion

import (
	"crypto/tls"
	"testing"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		v             uint16
		name, openssl string
	}{
		{tls.VersionTLS10, "1.0", "TLSv1"},
		{tls.VersionTLS11, "1.1", "TLSv1.1"},
		{tls.VersionTLS12, "1.2", "TLSv1.2"},
		{tls.VersionTLS13, "1.3", "TLSv1.3"},
		{0x0300, "", ""}, // SSL 3.0
		{0x0305, "", ""},
	} {
		if got := Name(tc.v); got != tc.name {
			t.Errorf("Name(%#04x) = %q, want %q", tc.v, got, tc.name)
		}
		if got := OpenSSL(tc.v); got != tc.openssl {
			t.Errorf("OpenSSL(%#04x) = %q, want %q", tc.v, got, tc.openssl)
		}
		if tc.name == "" {
			continue
		}
		if got, ok := Parse(tc.name); !ok || got != tc.v {
			t.Errorf("Parse(%q) = %#04x, %v; want %#04x", tc.name, got, ok, tc.v)
		}
	}
	for _, s := range []string{"", "1", "1.4", "TLSv1.2", "tls1.2"} {
		if v, ok := Parse(s); ok {
			t.Errorf("Parse(%q) = %#04x, want false", s, v)
		}
	}
}
