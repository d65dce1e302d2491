package main

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("percentile(1..100 ms, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestRatios(t *testing.T) {
	w := &WorkloadResult{
		Direct:  SideResult{SessionsPerSec: 400, SessionP50Ms: 3, SessionP99Ms: 6, LoginP50Ms: 2, LoginP99Ms: 5, BackendCPUPerSessionMs: ptr(3.0)},
		Popgate: SideResult{SessionsPerSec: 500, SessionP50Ms: 3.5, SessionP99Ms: 8, LoginP50Ms: 2.25, LoginP99Ms: 5.5, PopgateCPUPerSessionMs: 0.75},
	}
	r := ratios(w)
	if r.CPUPerSession == nil || math.Abs(*r.CPUPerSession-0.25) > 1e-9 {
		t.Errorf("CPUPerSession = %v, want 0.25", r.CPUPerSession)
	}
	if math.Abs(r.Throughput-1.25) > 1e-9 || r.AddedP50Ms != 0.5 || r.AddedP99Ms != 2 || r.AddedLoginP50Ms != 0.25 || r.AddedLoginP99Ms != 0.5 {
		t.Errorf("ratios = %+v", r)
	}
	if r.CPUPerGB != nil {
		t.Errorf("CPUPerGB = %v for a workload without bytes", *r.CPUPerGB)
	}
	// Without the backend's CPU (in-memory backend) there is no CPU ratio.
	w.Direct.BackendCPUPerSessionMs = nil
	if r := ratios(w); r.CPUPerSession != nil {
		t.Errorf("CPUPerSession = %v without backend CPU, want nil", *r.CPUPerSession)
	}
}

func TestVsNginx(t *testing.T) {
	w := &WorkloadResult{
		Popgate: SideResult{SessionsPerSec: 500, SessionP50Ms: 3, LoginP50Ms: 2, PopgateCPUPerSessionMs: 0.5, PopgateCPUPerGBSec: ptr(0.8)},
	}
	if r := vsNginx(w); r != nil {
		t.Errorf("vsNginx without an nginx side = %+v, want nil", *r)
	}
	w.Nginx = &SideResult{SessionsPerSec: 250, SessionP50Ms: 4, LoginP50Ms: 2.5, ProxyCPUPerSessionMs: 1, ProxyCPUPerGBSec: ptr(1.6), MBPerSec: 0}
	r := vsNginx(w)
	if r == nil || r.CPUPerSession == nil || *r.CPUPerSession != 0.5 || r.CPUPerGB == nil || *r.CPUPerGB != 0.5 ||
		r.Throughput != 2 || r.AddedP50Ms != -1 || r.AddedLoginP50Ms != -0.5 {
		t.Errorf("vsNginx = %+v, want CPU 0.5x, GB 0.5x, throughput 2x, -1 ms, -0.5 ms", r)
	}
	// nginx's CPU not measured: no CPU ratio.
	w.Nginx.ProxyCPUPerSessionMs, w.Nginx.ProxyCPUPerGBSec = 0, nil
	if r := vsNginx(w); r.CPUPerSession != nil || r.CPUPerGB != nil {
		t.Errorf("vsNginx without nginx's CPU = %+v, want no CPU ratios", r)
	}
}

func TestParseCerts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // certNames, "" for an error
	}{
		{"ec", "ECDSA P-256"}, {"ecdsa", "ECDSA P-256"}, {"rsa", "RSA-2048"},
		{"both", "ECDSA P-256, then RSA-2048"}, {"ed25519", ""}, {"EC", ""},
	} {
		kts, err := parseCerts(tc.in)
		if got := certNames(kts); got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("parseCerts(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestResumeCheck(t *testing.T) {
	if _, ok := resumeCheck([]WorkloadResult{{Workload: "login"}}); ok {
		t.Error("resumeCheck without a login-resume workload: ok")
	}
	w := WorkloadResult{Name: "login-resume c=32", Workload: "login-resume",
		Direct:       SideResult{Side: "direct", Sessions: 100, Resumed: 40},
		Popgate:      SideResult{Side: "popgate", Sessions: 100, Resumed: 100},
		Nginx:        &SideResult{Side: "nginx", Sessions: 100, Resumed: 100},
		DovecotProxy: &SideResult{Side: "dovecot-proxy", Sessions: 100, Resumed: 30},
	}
	c, ok := resumeCheck([]WorkloadResult{w})
	if !ok || !c.OK || c.Detail != "login-resume c=32 direct 40/100, login-resume c=32 popgate 100/100, login-resume c=32 nginx 100/100, login-resume c=32 dovecot-proxy 30/100" {
		t.Errorf("resumeCheck = %+v, %v; want OK (direct and dovecot-proxy are only reported)", c, ok)
	}
	w.Popgate.Resumed = 99
	if c, _ := resumeCheck([]WorkloadResult{w}); c.OK {
		t.Errorf("resumeCheck with a full handshake through popgate = %+v, want FAIL", c)
	}
}

func TestWriteTable(t *testing.T) {
	login := WorkloadResult{Name: "login c=1", Workload: "login", Concurrency: 1,
		Direct:       SideResult{Side: "direct", Sessions: 1000, SessionsPerSec: 294, SessionP50Ms: 3.23, SessionP99Ms: 6.03, LoginP50Ms: 2.62, LoginP99Ms: 5.24, BackendCPUPerSessionMs: ptr(2.84)},
		Popgate:      SideResult{Side: "popgate", Sessions: 900, Errors: 1, ErrorSamples: []string{"popgate as user7: PASS: EOF"}, SessionsPerSec: 250, SessionP50Ms: 4, SessionP99Ms: 7, LoginP50Ms: 3, LoginP99Ms: 6, PopgateCPUPerSessionMs: 0.5, ProxyCPUPerSessionMs: 0.5, PopgateRSSKiB: 14438, BackendCPUPerSessionMs: ptr(1.7)},
		Nginx:        &SideResult{Side: "nginx", Sessions: 800, Errors: 2, ErrorSamples: []string{"nginx as user3: STAT: EOF"}, SessionsPerSec: 200, SessionP50Ms: 5, SessionP99Ms: 9, LoginP50Ms: 3.5, LoginP99Ms: 7, ProxyCPUPerSessionMs: 0.625, BackendCPUPerSessionMs: ptr(1.6)},
		DovecotProxy: &SideResult{Side: "dovecot-proxy", Sessions: 700, SessionsPerSec: 240, SessionP50Ms: 4.5, LoginP50Ms: 3.25, ProxyCPUPerSessionMs: 1.25, BackendCPUPerSessionMs: ptr(1.7)},
	}
	login.Ratios, login.VsNginx, login.VsDovecotProxy = ratios(&login), vsNginx(&login), vsPeer(&login, login.DovecotProxy)
	resume := WorkloadResult{Name: "login-resume c=32 rsa", Workload: "login-resume", Concurrency: 32, Cert: "RSA-2048",
		Direct:  SideResult{Side: "direct", Sessions: 500, Resumed: 210, SessionsPerSec: 900, BackendCPUPerSessionMs: ptr(1.25)},
		Popgate: SideResult{Side: "popgate", Sessions: 500, Resumed: 500, SessionsPerSec: 950, PopgateCPUPerSessionMs: 0.25, ProxyCPUPerSessionMs: 0.25},
		Nginx:   &SideResult{Side: "nginx", Sessions: 500, Resumed: 500, SessionsPerSec: 300, ProxyCPUPerSessionMs: 0.4},
	}
	resume.Ratios, resume.VsNginx = ratios(&resume), vsNginx(&resume)
	retr := WorkloadResult{Name: "retr c=4", Workload: "retr", Concurrency: 4,
		Direct:  SideResult{Side: "direct", Sessions: 100, MBPerSec: 150, BackendCPUPerGBSec: ptr(5.0)},
		Popgate: SideResult{Side: "popgate", Sessions: 100, MBPerSec: 160, PopgateCPUPerGBSec: ptr(1.0), ProxyCPUPerGBSec: ptr(1.0), BackendCPUPerGBSec: ptr(3.0)},
		Nginx:   &SideResult{Side: "nginx", Sessions: 100, MBPerSec: 80, ProxyCPUPerGBSec: ptr(1.25), BackendCPUPerGBSec: ptr(3.0)},
	}
	retr.Ratios, retr.VsNginx = ratios(&retr), vsNginx(&retr)
	r := &Report{
		Meta: Meta{Start: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), CPUs: 2, GoVersion: "go1.26", Cert: "ECDSA P-256, then RSA-2048",
			Backend: "dovecot", BackendVersion: "2.3.19.1", Popgate: "/tmp/x/popgate", PopgateSource: "built from source",
			Nginx:         "nginx 1.22.1 (mail module; master + worker_processes auto)",
			DovecotProxy:  "a second Dovecot with proxy=y",
			BackendTuning: tuningSummary([]string{"service pop3 {", "  service_count = 100", "  process_limit = 9", "}", "auth_cache_size = 10M"})},
		Workloads: []WorkloadResult{login, resume, retr},
		Idle:      &IdleResult{Sessions: 2000, Opened: 2000, RSSBeforeKiB: 10240, RSSWithKiB: 61440, PerSessionKiB: 25.6, FDsBefore: 11, FDsWith: 4011, FDsAfter: 11},
		Checks:    []Check{{Name: "no errors", OK: false, Detail: "1 error"}, {Name: "alive", OK: true}},
	}
	var b strings.Builder
	writeTable(&b, r)
	out := b.String()
	for _, want := range []string{
		"2 CPUs",
		"certificate ECDSA P-256, then RSA-2048;",
		"backend dovecot 2.3.19.1",
		"peer: nginx 1.22.1 (mail module; master + worker_processes auto) -> backend over plaintext, same certificate",
		"service pop3 { service_count = 100, process_limit = 9 }; auth_cache_size = 10M",
		"login c=1         direct      1000    0              294",
		"login c=1          nginx       800    2              200",
		"login-resume c=32 rsa         direct       500    0      210",
		"login-resume c=32 rsa        popgate       500    0      500",
		"0.500 ms",
		"0.625 ms",
		"1.25 s",
		"14.1 MiB",
		"popgate / direct:",
		"CPU per login 0.18x (0.500 vs 2.840 ms)",
		"popgate+backend CPU per login 2.200 ms vs direct 2.840 ms",
		"added login latency p50 +0.38 ms, p99 +0.76 ms",
		"CPU per resumed login 0.20x (0.250 vs 1.250 ms)",
		"CPU per GB 0.20x (1.00 vs 5.00 s)",
		"throughput 1.07x",
		"popgate / nginx:",
		"login c=1            CPU per login 0.80x (0.500 vs 0.625 ms); throughput 1.25x; added login latency p50 -0.50 ms, p99 -1.00 ms",
		"login-resume c=32 rsa CPU per resumed login 0.62x (0.250 vs 0.400 ms); throughput 3.17x",
		"retr c=4             CPU per GB 0.80x (1.00 vs 1.25 s); throughput 2.00x",
		"peer: dovecot-proxy, a second Dovecot with proxy=y -> backend over plaintext",
		"login c=1  dovecot-proxy       700    0              240",
		"popgate / dovecot-proxy:\n  login c=1            CPU per login 0.40x (0.500 vs 1.250 ms); throughput 1.04x; added login latency p50 -0.25 ms",
		"25.6 KiB per idle session",
		"FAIL no errors: 1 error",
		"ok   alive",
		"error (login c=1, popgate): popgate as user7: PASS: EOF",
		"error (login c=1, nginx): nginx as user3: STAT: EOF",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The nginx comparison is no popgate+backend line.
	if _, vs, _ := strings.Cut(out, "popgate / nginx:"); strings.Contains(vs, "popgate+backend") {
		t.Errorf("popgate / nginx section has a popgate+backend figure:\n%s", vs)
	}
	// Without an nginx side there is no nginx section.
	r.Workloads = []WorkloadResult{retr}
	r.Workloads[0].Nginx, r.Workloads[0].VsNginx = nil, nil
	b.Reset()
	writeTable(&b, r)
	if strings.Contains(b.String(), "popgate / nginx:") || strings.Contains(b.String(), "popgate / dovecot-proxy:") {
		t.Errorf("nginx section without nginx:\n%s", b.String())
	}
}

func TestPopgateTOML(t *testing.T) {
	cfg := popgateConfig{Addr: "127.0.0.1:9995", LogLevel: "warn", CertFile: `/tmp/a "b"/c.crt`, KeyFile: "/tmp/c.key",
		ServerName: "popgate.test", Backends: []popgateBackend{{Name: "backend", Address: "127.0.0.1:110"}}, Default: "backend"}
	out := cfg.toml()
	for _, want := range []string{
		`level = "warn"`, `format = "json"`, `address = "127.0.0.1:9995"`, `tls = "implicit"`,
		`certificates = [{ cert = "/tmp/a \"b\"/c.crt", key = "/tmp/c.key" }]`,
		"[[backend]]\nname = \"backend\"\naddress = \"127.0.0.1:110\"\ntls = \"none\"",
		`default = "backend"`, "max_connections = 0", "max_connections_per_ip = 0", "[metrics]\naddress = ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config lacks %q:\n%s", want, out)
		}
	}
}

func TestReportJSON(t *testing.T) {
	w := WorkloadResult{Name: "login-resume c=1 ec", Workload: "login-resume", Concurrency: 1, Cert: "ECDSA P-256",
		Direct:       SideResult{Side: "direct", Sessions: 10, Resumed: 4, BackendCPUPerSessionMs: ptr(2.0)},
		Popgate:      SideResult{Side: "popgate", Sessions: 10, Resumed: 10, PopgateCPUPerSessionMs: 0.5, ProxyCPUPerSessionMs: 0.5},
		Nginx:        &SideResult{Side: "nginx", Sessions: 10, Resumed: 10, ProxyCPUPerSessionMs: 1},
		DovecotProxy: &SideResult{Side: "dovecot-proxy", Sessions: 10, Resumed: 3, ProxyCPUPerSessionMs: 2},
	}
	w.Ratios, w.VsNginx, w.VsDovecotProxy = ratios(&w), vsNginx(&w), vsPeer(&w, w.DovecotProxy)
	path := filepath.Join(t.TempDir(), "r.json")
	if err := writeJSON(path, &Report{Meta: Meta{Nginx: "nginx 1.22.1"}, Workloads: []WorkloadResult{w}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"nginx": "nginx 1.22.1"`, `"cert": "ECDSA P-256"`, `"workload": "login-resume"`,
		`"resumed": 4`, `"proxy_cpu_per_session_ms": 1`, `"popgate_vs_nginx": {`, `"cpu_per_session": 0.5`,
		`"cpu_per_session": 0.25`, `"dovecot_proxy": {`, `"popgate_vs_dovecot_proxy": {`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
}

// TestTokenWorkloads: -oauth adds both token workloads, and the report
// sets each beside the password login of the same concurrency and
// certificate only.
func TestTokenWorkloads(t *testing.T) {
	o, err := parseFlags([]string{"-workloads", "login", "-oauth"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"login", "login-token-cached", "login-token-new"} {
		if !o.Workloads[w] {
			t.Errorf("-workloads login -oauth: %s does not run", w)
		}
	}
	side := func(cpu float64) SideResult { return SideResult{PopgateCPUPerSessionMs: cpu, SessionsPerSec: 100} }
	ws := []WorkloadResult{
		{Name: "login c=1", Workload: "login", Concurrency: 1, Cert: "ECDSA", Popgate: side(1.0)},
		{Name: "login c=32", Workload: "login", Concurrency: 32, Cert: "ECDSA", Popgate: side(0.5)},
		{Name: "login-token-new c=1", Workload: "login-token-new", Concurrency: 1, Cert: "ECDSA", Popgate: side(1.2)},
	}
	lines := tokenLines(ws)
	if len(lines) != 1 || !strings.Contains(lines[0], "1.200 vs 1.000 ms (+0.200 ms, 1.20x)") {
		t.Errorf("tokenLines: %q", lines)
	}
}
