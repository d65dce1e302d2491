package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

// testCert is a certificate/key pair written to PEM files.
type testCert struct {
	certFile string
	keyFile  string
	leaf     *x509.Certificate
}

// pool returns a pool that trusts the certificate.
func (c testCert) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.leaf)
	return p
}

// writeTestCert generates a self-signed ECDSA P-256 certificate for name and
// writes it and its key to dir as prefix.crt and prefix.key.
func writeTestCert(t *testing.T, dir, prefix, name string) testCert {
	t.Helper()
	return writeTestCertValid(t, dir, prefix, name, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

// writeTestCertValid is writeTestCert for a certificate valid from
// notBefore to notAfter.
func writeTestCertValid(t *testing.T, dir, prefix, name string, notBefore, notAfter time.Time) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := testCert{
		certFile: filepath.Join(dir, prefix+".crt"),
		keyFile:  filepath.Join(dir, prefix+".key"),
		leaf:     leaf,
	}
	writeFile(t, c.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return c
}

// pop3sConfig is the start of a configuration with JSON logs, one
// implicit-TLS listener serving cert, and every user routed to the plain
// POP3 backend at backend; a test adds the sections it is about.
func pop3sConfig(cert testCert, backend string) string {
	return fmt.Sprintf(`[log]
format = "json"
[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"
[tls]
certificates = [{ cert = %q, key = %q }]
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
default = "mbox"
`, cert.certFile, cert.keyFile, backend)
}

// buildText parses a configuration and builds its instance, logging
// nowhere and closed when t ends.
func buildText(t *testing.T, text string) *instance {
	t.Helper()
	c, err := ParseConfig("t", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	in, err := buildInstance(c, slog.New(slog.DiscardHandler), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.close)
	return in
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes text to a fresh config file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "popgate.toml")
	writeFile(t, path, []byte(text))
	return path
}

// fullConfig is a configuration using every supported key: an implicit TLS
// and a STLS listener, static certificates, backends of all three TLS modes
// and every kind of route. cert is also the backends' CA.
func fullConfig(cert testCert) string {
	return fmt.Sprintf(`# every supported key
[log]
level = "debug"
format = "json"

[[listen]]
name = "pop3s"
address = "127.0.0.1:9950"
tls = "implicit"
min_version = "1.3"

[[listen]]
name = "pop3"
address = "127.0.0.1:1100"
tls = "starttls"
allow_plaintext_from = ["127.0.0.0/8", "::1", "10.1.2.3/16"]
proxy_protocol = false

[tls]
min_version = "1.2"
default_server_name = "mail.example.com"
certificates = [{ cert = %[1]q, key = %[2]q }]

[[backend]]
name = "legacy"
address = "127.0.0.1:1110"
tls = "none"
client_address = "none"

[[backend]]
name = "modern"
address = "127.0.0.1:1111"
tls = "starttls"
server_name = "mail.example.com"
ca_file = %[1]q
min_version = "1.2"
connect_timeout = "2s"
timeout = "15s"
health_interval = "1s"
health_failures = 5
health_timeout = "2s"

[[backend]]
name = "pop3s"
address = "127.0.0.1:1112"
tls = "implicit"
server_name = "mail.example.com"
ca_file = %[1]q

[route]
default = "legacy"
users = { "alice@example.com" = "modern", "Carol@Example.COM" = "pop3s" }
domains = { "example.org" = "pop3s", "@example.net" = "modern" }

[limits]
max_connections = 100
max_connections_per_ip = 5
login_timeout = "30s"
idle_timeout = "15m"
max_login_failures = 2
failure_delay = "0s"
shutdown_timeout = "1m30s"

[metrics]
address = ""
`, cert.certFile, cert.keyFile)
}

func TestParseConfigFull(t *testing.T) {
	cert := writeTestCert(t, t.TempDir(), "mail", "mail.example.com")
	c, err := ParseConfig("full.toml", []byte(fullConfig(cert)))
	if err != nil {
		t.Fatalf("ParseConfig(full) error = %v, want nil", err)
	}

	if len(c.Listeners) != 2 {
		t.Fatalf("ParseConfig(full): %d listeners, want 2", len(c.Listeners))
	}
	if l := c.Listeners[0]; l.Name != "pop3s" || l.TLS != proxy.TLSImplicit || l.MinVersion != tls.VersionTLS13 || l.Key != "127.0.0.1:9950" {
		t.Errorf("listen[0] = %+v, want pop3s, implicit, min_version 1.3", l)
	}
	if l := c.Listeners[1]; l.TLS != proxy.TLSStartTLS || fmt.Sprint(l.AllowPlaintextFrom) != "[127.0.0.0/8 ::1/128 10.1.0.0/16]" || l.MinVersion != 0 {
		t.Errorf("listen[1] = %+v, want starttls with three allow_plaintext_from entries, tls.min_version", l)
	}
	if got := c.TLS.Certificates; len(got) != 1 || got[0].Cert != cert.certFile || got[0].Key != cert.keyFile {
		t.Errorf("tls.certificates = %+v, want [{%s %s}]", got, cert.certFile, cert.keyFile)
	}
	if c.TLS.DefaultServerName != "mail.example.com" || c.TLS.MinVersion != "1.2" || c.TLS.ACME != nil {
		t.Errorf("tls = %+v, want default_server_name mail.example.com, min_version 1.2, no ACME", c.TLS)
	}
	if !c.TLS.SessionTickets || c.TLS.TicketRotation != defaultSessionTicketRotation || c.TLS.TicketLifetime != defaultSessionTicketLifetime {
		t.Errorf("tls = %+v, want session tickets on with the default periods", c.TLS)
	}

	wantBackends := []struct {
		name       string
		tls        proxy.TLSMode
		serverName string
		caFile     string
	}{
		{"legacy", proxy.TLSNone, "", ""},
		{"modern", proxy.TLSStartTLS, "mail.example.com", cert.certFile},
		{"pop3s", proxy.TLSImplicit, "mail.example.com", cert.certFile},
	}
	if len(c.Backends) != len(wantBackends) {
		t.Fatalf("ParseConfig(full): %d backends, want %d", len(c.Backends), len(wantBackends))
	}
	for i, want := range wantBackends {
		b := c.Backends[i]
		if b.Name != want.name || b.TLS != want.tls || b.Trust.ServerName != want.serverName || b.Trust.CAFile != want.caFile ||
			b.Trust.MinVersion == "" || b.TLSConfig != nil {
			t.Errorf("backend[%d] = %+v, want %+v", i, b, want)
		}
	}
	if b := c.Backends[1]; b.ConnectTimeout != 2*time.Second || b.Timeout != 15*time.Second {
		t.Errorf("backend[1] timeouts = %v, %v, want 2s, 15s", b.ConnectTimeout, b.Timeout)
	}
	if b := c.Backends[1]; b.HealthInterval != time.Second || b.HealthFailures != 5 || b.HealthTimeout != 2*time.Second {
		t.Errorf("backend[1] health = %v, %d, %v, want 1s, 5, 2s", b.HealthInterval, b.HealthFailures, b.HealthTimeout)
	}
	if b := c.Backends[0]; b.HealthInterval != defaultHealthInterval || b.HealthFailures != defaultHealthFailures || b.HealthTimeout != defaultHealthTimeout {
		t.Errorf("backend[0] health (unset) = %v, %d, %v, want the defaults", b.HealthInterval, b.HealthFailures, b.HealthTimeout)
	}
	if b := c.Backends[0]; b.ConnectTimeout != defaultBackendConnectTimeout || b.Timeout != defaultBackendTimeout {
		t.Errorf("backend[0] timeouts (unset) = %v, %v, want the defaults %v, %v", b.ConnectTimeout, b.Timeout, defaultBackendConnectTimeout, defaultBackendTimeout)
	}

	if c.Route.Default != "legacy" || c.Route.Users["alice@example.com"] != "modern" || c.Route.Domains["example.org"] != "pop3s" {
		t.Errorf("route = %+v, want default legacy, alice -> modern, example.org -> pop3s", c.Route)
	}

	lim := c.Limits
	for _, d := range []struct {
		key       string
		got, want time.Duration
	}{
		{"login_timeout", lim.LoginTimeout, 30 * time.Second},
		{"idle_timeout", lim.IdleTimeout, 15 * time.Minute},
		{"failure_delay", lim.FailureDelay, 0},
		{"shutdown_timeout", lim.ShutdownTimeout, 90 * time.Second},
	} {
		if d.got != d.want {
			t.Errorf("limits.%s = %v, want %v", d.key, d.got, d.want)
		}
	}
	if lim.MaxConnections != 100 || lim.MaxConnectionsPerIP != 5 || lim.MaxLoginFailures != 2 {
		t.Errorf("limits = %+v, want max_connections 100, max_connections_per_ip 5, max_login_failures 2", lim)
	}
	if c.Metrics.Address != "" {
		t.Errorf("metrics.address = %q, want \"\" (disabled)", c.Metrics.Address)
	}
}

// TestSettingsDefaults: a configuration that sets nothing optional gets
// the defaults of defaults.go.
func TestSettingsDefaults(t *testing.T) {
	c, err := ParseConfig("minimal", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := limitSettings{
		MaxConnections:      defaultMaxConnections,
		MaxConnectionsPerIP: defaultMaxConnectionsPerIP,
		LoginTimeout:        defaultLoginTimeout,
		IdleTimeout:         defaultIdleTimeout,
		MaxLoginFailures:    defaultMaxLoginFailures,
		FailureDelay:        defaultFailureDelay,
		MaxFailuresPerIP:    defaultMaxFailuresPerIP,
		MaxFailuresPerUser:  defaultMaxFailuresPerUser,
		FailureWindow:       defaultFailureWindow,
		IPv6Prefix:          defaultIPv6Prefix,
		ShutdownTimeout:     defaultShutdownTimeout,
	}
	if !reflect.DeepEqual(c.Limits, want) {
		t.Errorf("limits = %+v, want %+v", c.Limits, want)
	}
	if c.Log != (logSettings{Level: slog.LevelInfo, Format: defaultLogFormat}) || c.TLS.MinVersion != defaultTLSMinVersion ||
		c.Metrics.Address != defaultMetricsAddress || c.POP3.Greeting != defaultGreeting || !c.POP3.HideBackendErrors {
		t.Errorf("settings = %+v, want the defaults", c)
	}
	if b := c.Backends[0]; b.ClientAddress != proxy.ClientAddressNone || b.Trust.MinVersion != defaultBackendMinVersion {
		t.Errorf("backend = %+v, want the defaults", b)
	}
	c, err = ParseConfig("http", []byte(minimal+"[route.http]\nurl = \"http://127.0.0.1:8080/auth\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Route.HTTP; h == nil || *h != (httpRouteSettings{URL: "http://127.0.0.1:8080/auth", Timeout: defaultHTTPTimeout,
		CacheTTL: defaultHTTPCacheTTL, NegativeCacheTTL: defaultHTTPNegativeCacheTTL, CacheSize: defaultHTTPCacheSize}) {
		t.Errorf("route.http = %+v, want the defaults", h)
	}
}

// Pieces of small configurations.
const (
	listenNone = "[[listen]]\naddress = \"127.0.0.1:1100\"\ntls = \"none\"\n\n"
	backendB   = "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n\n"
	routeB     = "[route]\ndefault = \"b\"\n\n"
	minimal    = listenNone + backendB + routeB
)

func TestParseConfigAccepts(t *testing.T) {
	tests := []struct {
		name string
		toml string
	}{
		{"minimal", minimal},
		{"metrics address empty disables", minimal + "[metrics]\naddress = \"\"\n"},
		{"client_address none", listenNone + backendB + "client_address = \"none\"\n" + routeB},
		{"client_address xclient", listenNone + backendB + "client_address = \"xclient\"\n" + routeB},
		{"client_address proxy-v1", listenNone + backendB + "client_address = \"proxy-v1\"\n" + routeB},
		{"client_address proxy-v2", listenNone + backendB + "client_address = \"proxy-v2\"\n" + routeB},
		{"proxy_protocol with trusted_proxies", "[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"none\"\nproxy_protocol = true\n" + backendB + routeB + "[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n"},
		{"trusted_proxies alone", minimal + "[limits]\ntrusted_proxies = [\"10.0.0.0/8\"]\n"},
		{"allow_plaintext_from bare address", "[[listen]]\naddress = \"127.0.0.1:110\"\ntls = \"starttls\"\nallow_plaintext_from = [\"192.0.2.1\", \"2001:db8::/32\"]\n" + backendB + routeB},
		{"route by users only", listenNone + backendB + "[route]\nusers = { \"a@example.com\" = \"b\" }\n"},
		{"route by domains only", listenNone + backendB + "[route]\ndomains = { \"example.com\" = \"b\" }\n"},
		{"same user twice to the same backend", listenNone + backendB + "[route]\nusers = { \"a@example.com\" = \"b\", \"A@Example.com\" = \"b\" }\n"},
		{"zero durations", minimal + "[limits]\nfailure_delay = \"0s\"\nshutdown_timeout = \"0s\"\n"},
		{"health checks off", listenNone + backendB + "health_interval = \"0s\"\n" + routeB},
		{"legacy tls versions", "[tls]\nmin_version = \"1.0\"\n\n" + minimal},
		{"comments and empty tables", "# popgate\n[log]\n[limits]\n[metrics]\n" + minimal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseConfig(tc.name, []byte(tc.toml)); err != nil {
				t.Errorf("ParseConfig(%s) error = %v, want nil", tc.name, err)
			}
		})
	}
}

// lineOf returns the 1-based number of the first line of text containing s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	i := strings.Index(text, s)
	if i < 0 {
		t.Fatalf("%q not in config", s)
	}
	return strings.Count(text[:i], "\n") + 1
}

func TestParseConfigRejects(t *testing.T) {
	const (
		badDuration      = minimal + "[limits]\nlogin_timeout = \"5 minutes\"\n"
		negativeDuration = minimal + "[limits]\nidle_timeout = \"-5s\"\n"
		badBackendDur    = listenNone + backendB + "connect_timeout = \"5\"\n\n" + routeB
	)
	tests := []struct {
		name string
		toml string
		want []string // each must appear in the error
	}{
		{"unknown top-level key", "colour = \"blue\"\n" + minimal, []string{`unknown key "colour"`}},
		{"proxy_protocol without trusted_proxies", "[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"none\"\nproxy_protocol = true\n" + backendB + routeB, []string{"listen[0].proxy_protocol", "limits.trusted_proxies"}},
		{"bad trusted_proxies", minimal + "[limits]\ntrusted_proxies = [\"10.0.0.0/33\", \"lb.example.com\"]\n", []string{"limits.trusted_proxies[0]", "limits.trusted_proxies[1]"}},
		{"bad client_address", listenNone + backendB + "client_address = \"proxy\"\n" + routeB, []string{`backend[0].client_address: "proxy"`, "xclient"}},
		{"unknown key in log", "[log]\nlevle = \"debug\"\n" + minimal, []string{`unknown key "log.levle"`}},
		{"unknown key in limits", minimal + "[limits]\nmax_conections = 5\n", []string{`unknown key "limits.max_conections"`}},
		{"unknown key in backend", listenNone + backendB + "servername = \"pop.internal\"\n\n" + routeB, []string{`unknown key "backend.servername"`}},
		{"unknown key in listen", "[[listen]]\naddress = \"127.0.0.1:110\"\ntls = \"none\"\nallow_plaintext = true\n" + backendB + routeB, []string{`unknown key "listen.allow_plaintext"`}},
		{"unknown key in certificates", "[tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\", chain = \"c\" }]\n" + minimal, []string{`unknown key "tls.certificates.chain"`}},
		{"bad duration", badDuration, []string{
			"limits.login_timeout",
			fmt.Sprintf("line %d", lineOf(t, badDuration, "login_timeout")),
			`invalid duration "5 minutes"`,
		}},
		{"duration without unit", badBackendDur, []string{
			"backend.connect_timeout",
			fmt.Sprintf("line %d", lineOf(t, badBackendDur, "connect_timeout")),
			`invalid duration "5"`,
		}},
		{"negative duration", negativeDuration, []string{
			"limits.idle_timeout",
			fmt.Sprintf("line %d", lineOf(t, negativeDuration, "idle_timeout")),
			"negative",
		}},
		{"zero login_timeout", minimal + "[limits]\nlogin_timeout = \"0s\"\n", []string{"limits.login_timeout", "positive"}},
		{"wrong type", "[log]\nlevel = 1\n" + minimal, []string{"log.level"}},
		{"route.default undefined", listenNone + backendB + "[route]\ndefault = \"nope\"\n", []string{`route.default: backend "nope" is not defined`}},
		{"route.users undefined", listenNone + backendB + "[route]\nusers = { \"x@example.com\" = \"nope\" }\n", []string{`route.users."x@example.com": backend "nope" is not defined`}},
		{"route.domains undefined", listenNone + backendB + "[route]\ndomains = { \"example.org\" = \"nope\" }\n", []string{`route.domains."example.org": backend "nope" is not defined`}},
		{"route users differing only in case", listenNone + backendB + "[[backend]]\nname = \"c\"\naddress = \"127.0.0.1:1\"\ntls = \"none\"\n\n[route]\nusers = { \"Alice@example.com\" = \"b\", \"alice@EXAMPLE.com\" = \"c\" }\n",
			[]string{`route.users."alice@EXAMPLE.com"`, `"Alice@example.com"`}},
		{"route domains differing only in case or @", listenNone + backendB + "[[backend]]\nname = \"c\"\naddress = \"127.0.0.1:1\"\ntls = \"none\"\n\n[route]\ndomains = { \"example.org\" = \"b\", \"@Example.ORG\" = \"c\" }\n",
			[]string{`route.domains."example.org"`, `"@Example.ORG"`}},
		{"duplicate backend name", listenNone + backendB + backendB + routeB, []string{`backend[1].name: "b" used twice`}},
		{"backend name missing", listenNone + "[[backend]]\naddress = \"127.0.0.1:1\"\ntls = \"none\"\n" + routeB, []string{"backend[0].name: missing"}},
		{"backend address not host:port", listenNone + "[[backend]]\nname = \"b\"\naddress = \"pop.internal\"\ntls = \"none\"\n" + routeB, []string{"backend[0].address"}},
		{"bad listen tls mode", "[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"ssl\"\n" + backendB + routeB, []string{`listen[0].tls: "ssl"`}},
		{"missing listen tls", "[[listen]]\naddress = \"127.0.0.1:995\"\n" + backendB + routeB, []string{"listen[0].tls"}},
		{"missing listen address", "[[listen]]\ntls = \"none\"\n" + backendB + routeB, []string{"listen[0].address: missing"}},
		{"bad backend tls mode", listenNone + "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\ntls = \"stls\"\n" + routeB, []string{`backend[0].tls: "stls"`}},
		{"missing backend tls", listenNone + "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n" + routeB, []string{"backend[0].tls: missing"}},
		{"server_name without tls", listenNone + backendB + "server_name = \"pop.internal\"\n\n" + routeB, []string{"backend[0]: server_name"}},
		{"ca_file with insecure_skip_verify", listenNone + "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\ntls = \"implicit\"\nca_file = \"ca.pem\"\ninsecure_skip_verify = true\n" + routeB, []string{"backend[0]: ca_file and insecure_skip_verify"}},
		{"allow_plaintext_from invalid CIDR", "[[listen]]\naddress = \"127.0.0.1:110\"\ntls = \"starttls\"\nallow_plaintext_from = [\"127.0.0.0/8\", \"10.0.0.0/33\"]\n" + backendB + routeB, []string{`listen[0].allow_plaintext_from[1]: "10.0.0.0/33"`}},
		{"allow_plaintext_from on implicit", "[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"implicit\"\nallow_plaintext_from = [\"127.0.0.0/8\"]\n" + backendB + routeB, []string{"listen[0].allow_plaintext_from"}},
		{"duplicate listener", listenNone + listenNone + backendB + routeB, []string{`listen[1].name: "127.0.0.1:1100" used twice`}},
		{"tls.min_version 1.4", "[tls]\nmin_version = \"1.4\"\n" + minimal, []string{"tls.min_version", `"1.4"`}},
		{"ticket rotation 0", "[tls]\nsession_ticket_rotation = \"0s\"\n" + minimal, []string{"tls.session_ticket_rotation", "shorter than 1m"}},
		{"ticket lifetime = rotation", "[tls]\nsession_ticket_rotation = \"24h\"\n" + minimal, []string{"tls.session_ticket_lifetime", "must be longer than the rotation period 24h0m0s"}},
		{"ticket lifetime 8 days", "[tls]\nsession_ticket_lifetime = \"192h\"\n" + minimal, []string{"tls.session_ticket_lifetime", "7 days"}},
		{"listen min_version 1.4", "[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"implicit\"\nmin_version = \"1.4\"\n" + backendB + routeB, []string{"listen[0].min_version", `"1.4"`}},
		{"backend min_version 1.4", listenNone + "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\ntls = \"implicit\"\nmin_version = \"1.4\"\n" + routeB, []string{"backend[0].min_version", `"1.4"`}},
		{"certificate without key", "[tls]\ncertificates = [{ cert = \"a.crt\" }]\n" + minimal, []string{"tls.certificates[0]"}},
		{"bad log level", "[log]\nlevel = \"verbose\"\n" + minimal, []string{`log.level: "verbose"`}},
		{"bad log format", "[log]\nformat = \"xml\"\n" + minimal, []string{`log.format: "xml"`}},
		{"negative max_connections", minimal + "[limits]\nmax_connections = -1\n", []string{"limits.max_connections: must not be negative"}},
		{"zero max_login_failures", minimal + "[limits]\nmax_login_failures = 0\n", []string{"limits.max_login_failures"}},
		{"zero health_failures", listenNone + backendB + "health_failures = 0\n" + routeB, []string{"backend[0].health_failures: must be at least 1"}},
		{"zero health_timeout", listenNone + backendB + "health_timeout = \"0s\"\n" + routeB, []string{"backend[0].health_timeout: must be positive"}},
		{"no listen", backendB + routeB, []string{"[[listen]]"}},
		{"no backend", listenNone + "[route]\ndefault = \"b\"\n", []string{"[[backend]]"}},
		{"no route at all", listenNone + backendB, []string{"route: no route at all"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.name, []byte(tc.toml))
			if err == nil {
				t.Fatalf("ParseConfig(%s) error = nil, want mention of %q", tc.name, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "config "+tc.name+":") {
				t.Errorf("ParseConfig(%s) error = %v, want it to start with %q", tc.name, err, "config "+tc.name+":")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseConfig(%s) error = %v, want mention of %q", tc.name, err, w)
				}
			}
		})
	}
}

// TestParseConfigRouting: the routing and throttling keys are accepted,
// and their mistakes named.
func TestParseConfigRouting(t *testing.T) {
	ok := []string{
		listenNone + backendB + "[route]\nmap_file = \"/etc/popgate/routes\"\n",
		listenNone + backendB + "[route]\ndefault = \"b\"\n[route.http]\nurl = \"http://127.0.0.1:8080/auth\"\ntimeout = \"3s\"\ncache_ttl = \"30s\"\nnegative_cache_ttl = \"5s\"\ncache_size = 1000\nbackend = \"b\"\n",
		minimal + "[limits]\nmax_failures_per_ip = 20\nmax_failures_per_user = 10\nfailure_window = \"10m\"\n",
		minimal + "[limits]\nipv6_prefix = 56\n",
		minimal + "[limits]\nipv6_prefix = 128\n",
		minimal + "[limits]\nmaster_user_separator = \"*\"\n",
		minimal + "[pop3]\ngreeting = \"hello\"\ncapabilities = [\"TOP\", \"UIDL\"]\nhide_backend_errors = true\n",
	}
	for i, cfg := range ok {
		if _, err := ParseConfig(fmt.Sprint("ok", i), []byte(cfg)); err != nil {
			t.Errorf("ParseConfig(ok%d) = %v", i, err)
		}
	}
	bad := []struct{ toml, key string }{
		{listenNone + backendB + "[route]\n[route.http]\ntimeout = \"3s\"\n", "route.http.url"},
		{listenNone + backendB + "[route]\n[route.http]\nurl = \"ftp://x/\"\n", "route.http.url"},
		{listenNone + backendB + "[route]\n[route.http]\nurl = \"http://127.0.0.1/\"\nbackend = \"nope\"\n", "route.http.backend"},
		{listenNone + backendB + "[route]\n[route.http]\nurl = \"http://127.0.0.1/\"\nbogus = 1\n", "route.http.bogus"},
		{minimal + "[limits]\nmax_failures_per_ip = -1\n", "limits.max_failures_per_ip"},
		{minimal + "[limits]\nipv6_prefix = 0\n", "limits.ipv6_prefix"},
		{minimal + "[limits]\nipv6_prefix = 129\n", "limits.ipv6_prefix"},
		{minimal + "[limits]\nmaster_user_separator = \"* \"\n", "limits.master_user_separator"},
	}
	for _, tc := range bad {
		_, err := ParseConfig("bad", []byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("ParseConfig(%q) error = %v, want mention of %q", tc.toml, err, tc.key)
		}
	}
}

func TestMetricsAddress(t *testing.T) {
	for _, tc := range []struct{ toml, want string }{
		{minimal, "127.0.0.1:9110"},
		{minimal + "[metrics]\naddress = \"\"\n", ""},
		{minimal + "[metrics]\naddress = \"[::1]:9999\"\n", "[::1]:9999"},
	} {
		c, err := ParseConfig("metrics", []byte(tc.toml))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Metrics.Address; got != tc.want {
			t.Errorf("metrics.address = %q, want %q", got, tc.want)
		}
	}
	if _, err := ParseConfig("bad", []byte(minimal+"[metrics]\naddress = \"9110\"\n")); err == nil || !strings.Contains(err.Error(), "metrics.address") {
		t.Errorf("metrics.address without a port: %v, want an error naming the key", err)
	}
}

func TestParseConfigReportsAllProblems(t *testing.T) {
	text := "colour = \"blue\"\n" +
		"[[listen]]\naddress = \"127.0.0.1:995\"\ntls = \"ssl\"\n" +
		"[[listen]]\naddress = \"127.0.0.1:110\"\ntls = \"starttls\"\nallow_plaintext_from = [\"300.0.0.1\"]\n" +
		"[tls]\nmin_version = \"1.4\"\n" +
		"[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n" +
		"[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\ntls = \"none\"\n" +
		"[route]\ndefault = \"nope\"\nusers = { \"x@example.com\" = \"gone\" }\n" +
		"[metrics]\naddress = \"9110\"\n"
	want := []string{
		`unknown key "colour"`,
		`listen[0].tls: "ssl"`,
		`listen[1].allow_plaintext_from[0]: "300.0.0.1"`,
		"tls.min_version",
		"backend[0].tls: missing",
		`backend[1].name: "b" used twice`,
		`route.default: backend "nope" is not defined`,
		`route.users."x@example.com": backend "gone" is not defined`,
		"metrics.address: address 9110: missing port",
	}
	_, err := ParseConfig("many", []byte(text))
	if err == nil {
		t.Fatalf("ParseConfig(many) error = nil, want %d problems", len(want))
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("ParseConfig(many) error = %v, want mention of %q", err, w)
		}
	}
	if head := fmt.Sprintf("%d problem(s)", len(want)); !strings.Contains(err.Error(), head) {
		t.Errorf("ParseConfig(many) error = %v, want mention of %q", err, head)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.toml")
	_, err := LoadConfig(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadConfig(%s) error = %v, want mention of %q", path, err, path)
	}
}

// TestBuildLoginPolicy: the keys of this wave reach the proxy and the
// throttle: hide_backend_errors is on unless said otherwise, ipv6_prefix
// groups IPv6 clients for the connection cap.
func TestBuildLoginPolicy(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		extra      string
		relay      bool
		ipv6Prefix int
	}{
		{"", false, 64},
		{"[pop3]\nhide_backend_errors = true\n", false, 64},
		{"[pop3]\nhide_backend_errors = false\n", true, 64},
		{"[limits]\nipv6_prefix = 48\n", false, 48},
	} {
		c, err := ParseConfig("t", []byte(minimal+tc.extra))
		if err != nil {
			t.Fatal(err)
		}
		in, err := buildInstance(c, log, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := in.proxyConfig.RelayBackendErrors; got != tc.relay {
			t.Errorf("%q: RelayBackendErrors = %v, want %v", tc.extra, got, tc.relay)
		}
		if got := in.proxyConfig.IPv6Prefix; got != tc.ipv6Prefix {
			t.Errorf("%q: IPv6Prefix = %d, want %d", tc.extra, got, tc.ipv6Prefix)
		}
	}
}
