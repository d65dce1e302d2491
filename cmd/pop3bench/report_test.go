package main

import (
	"math"
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

func TestWriteTable(t *testing.T) {
	login := WorkloadResult{Name: "login c=1", Workload: "login", Concurrency: 1,
		Direct:  SideResult{Side: "direct", Sessions: 1000, SessionsPerSec: 294, SessionP50Ms: 3.23, SessionP99Ms: 6.03, LoginP50Ms: 2.62, LoginP99Ms: 5.24, BackendCPUPerSessionMs: ptr(2.84)},
		Popgate: SideResult{Side: "popgate", Sessions: 900, Errors: 1, ErrorSamples: []string{"popgate as user7: PASS: EOF"}, SessionsPerSec: 250, SessionP50Ms: 4, SessionP99Ms: 7, LoginP50Ms: 3, LoginP99Ms: 6, PopgateCPUPerSessionMs: 0.5, PopgateRSSKiB: 14438, BackendCPUPerSessionMs: ptr(1.7)},
	}
	login.Ratios = ratios(&login)
	retr := WorkloadResult{Name: "retr c=4", Workload: "retr", Concurrency: 4,
		Direct:  SideResult{Side: "direct", Sessions: 100, MBPerSec: 150, BackendCPUPerGBSec: ptr(5.0)},
		Popgate: SideResult{Side: "popgate", Sessions: 100, MBPerSec: 160, PopgateCPUPerGBSec: ptr(1.0), BackendCPUPerGBSec: ptr(3.0)},
	}
	retr.Ratios = ratios(&retr)
	r := &Report{
		Meta: Meta{Start: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), CPUs: 2, GoVersion: "go1.26", Cert: "ECDSA P-256",
			Backend: "dovecot", BackendVersion: "2.3.19.1", Popgate: "/tmp/x/popgate", PopgateSource: "built from source",
			BackendTuning: tuningSummary([]string{"service pop3 {", "  service_count = 100", "  process_limit = 9", "}", "auth_cache_size = 10M"})},
		Workloads: []WorkloadResult{login, retr},
		Idle:      &IdleResult{Sessions: 2000, Opened: 2000, RSSBeforeKiB: 10240, RSSWithKiB: 61440, PerSessionKiB: 25.6, FDsBefore: 11, FDsWith: 4011, FDsAfter: 11},
		Checks:    []Check{{Name: "no errors", OK: false, Detail: "1 error"}, {Name: "alive", OK: true}},
	}
	var b strings.Builder
	writeTable(&b, r)
	out := b.String()
	for _, want := range []string{
		"2 CPUs",
		"backend dovecot 2.3.19.1",
		"service pop3 { service_count = 100, process_limit = 9 }; auth_cache_size = 10M",
		"login c=1   direct      1000    0     294",
		"0.500 ms",
		"14.1 MiB",
		"CPU per login 0.18x (0.500 vs 2.840 ms)",
		"popgate+backend CPU per login 2.200 ms vs direct 2.840 ms",
		"added login latency p50 +0.38 ms, p99 +0.76 ms",
		"CPU per GB 0.20x (1.00 vs 5.00 s)",
		"throughput 1.07x",
		"25.6 KiB per idle session",
		"FAIL no errors: 1 error",
		"ok   alive",
		"error (login c=1, popgate): popgate as user7: PASS: EOF",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
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
