package main

// Regression tests from the fourth attack review (session tickets and the
// per-listener TLS settings): each TestAttack4* test failed while the
// defect it names was present.

import (
	"crypto/tls"
	"fmt"
	"slices"
	"testing"
)

// TestAttack4ListenerMinVersionSuites: with tls.min_version below 1.2 the
// shared config enables the legacy suites, RSA key exchange included (no
// forward secrecy; Go's defaults have left it out since Go 1.22). A
// listener that asks for min_version = "1.2" only raised MinVersion on its
// clone and kept those suites: TLS_RSA_WITH_AES_128_CBC_SHA on the port
// the operator made strict, and (the listeners sharing ticket keys) such a
// session from the legacy port resuming there. The strict listener gets
// the default suites, as it would under tls.min_version = "1.2".
func TestAttack4ListenerMinVersionSuites(t *testing.T) {
	cert := writeTestCert(t, t.TempDir(), "one", "mail.example.com")
	text := fmt.Sprintf(`[[listen]]
name = "legacy"
address = "127.0.0.1:0"
tls = "implicit"
[[listen]]
name = "strict"
address = "127.0.0.1:0"
tls = "implicit"
min_version = "1.2"
[tls]
min_version = "1.0"
certificates = [{ cert = %q, key = %q }]
[[backend]]
name = "mbox"
address = "127.0.0.1:1"
tls = "none"
[route]
default = "mbox"
`, cert.certFile, cert.keyFile)
	in := buildText(t, text)
	for _, l := range in.listeners {
		suites := l.TLSConfig.CipherSuites
		legacy := slices.Contains(suites, tls.TLS_RSA_WITH_AES_128_CBC_SHA)
		switch l.Name {
		case "legacy":
			if !legacy {
				t.Errorf("listener legacy (tls.min_version 1.0) lacks the legacy suites: %v", suites)
			}
		case "strict":
			if legacy || l.TLSConfig.MinVersion != tls.VersionTLS12 {
				t.Errorf("listener strict (min_version 1.2): MinVersion %x, suites %v, want Go's defaults", l.TLSConfig.MinVersion, suites)
			}
		}
	}
}
