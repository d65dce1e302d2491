package admin

import (
	"crypto/tls"
	"errors"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

var (
	t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	t1 = t0.Add(90 * time.Minute)
)

// testClock is a settable clock for newMetrics.
type testClock struct{ t atomic.Pointer[time.Time] }

func newClock(t time.Time) *testClock {
	c := &testClock{}
	c.set(t)
	return c
}

func (c *testClock) set(t time.Time) { c.t.Store(&t) }
func (c *testClock) now() time.Time  { return *c.t.Load() }

// counts is a LookupCache source whose counts a test moves.
type counts struct{ hits, misses atomic.Int64 }

func (c *counts) get() (int64, int64) { return c.hits.Load(), c.misses.Load() }

func TestMetrics(t *testing.T) {
	certExpiry := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		events func(m *Metrics, clock *testClock)
		want   map[string]float64
		absent []string // series that must not be exported
	}{
		{
			name:   "defaults",
			events: func(*Metrics, *testClock) {},
			want: map[string]float64{
				`popgate_logins_total{result="ok"}`:                                                          0,
				`popgate_logins_total{result="auth_failed"}`:                                                 0,
				`popgate_logins_total{result="no_route"}`:                                                    0,
				`popgate_logins_total{result="throttled"}`:                                                   0,
				`popgate_logins_total{result="backend_error"}`:                                               0,
				`popgate_logins_total{result="lookup_error"}`:                                                0,
				`popgate_config_reloads_total{result="ok"}`:                                                  0,
				`popgate_config_reloads_total{result="failed"}`:                                              0,
				`popgate_config_last_reload_successful`:                                                      1,
				`popgate_config_last_reload_success_timestamp_seconds`:                                       float64(t0.Unix()),
				`popgate_build_info{commit="abc123",go_version="` + runtime.Version() + `",version="1.2.3"}`: 1,
			},
			absent: []string{
				`popgate_sessions_active`,
				`popgate_bytes_total{direction="client_to_backend"}`,
				`popgate_lookup_cache_hits_total`,
				`popgate_lookup_cache_misses_total`,
				`popgate_directory_connections`,
				`popgate_acme_order_budget_remaining`,
				`popgate_backend_up`,
				`popgate_backend_address_up`,
			},
		},
		{
			// One backend with an address down and one up is up; one
			// with every address down is down.
			name: "backend health",
			events: func(m *Metrics, _ *testClock) {
				m.SetSources(Sources{BackendHealth: func() []proxy.BackendHealth {
					return []proxy.BackendHealth{
						{Backend: "mx", Address: "10.0.0.1:995", Up: false},
						{Backend: "mx", Address: "10.0.0.2:995", Index: 1, Up: true},
						{Backend: "old", Address: "10.0.0.9:110", Up: false},
					}
				}})
			},
			want: map[string]float64{
				`popgate_backend_up{backend="mx"}`:                                 1,
				`popgate_backend_up{backend="old"}`:                                0,
				`popgate_backend_address_up{address="10.0.0.1:995",backend="mx"}`:  0,
				`popgate_backend_address_up{address="10.0.0.2:995",backend="mx"}`:  1,
				`popgate_backend_address_up{address="10.0.0.9:110",backend="old"}`: 0,
			},
		},
		{
			name: "connections",
			events: func(m *Metrics, _ *testClock) {
				m.Accepted("pop3s")
				m.Accepted("pop3s")
				m.Accepted("pop3")
				m.Refused("pop3s", "max_connections")
				m.Refused("pop3s", "max_connections")
				m.Refused("pop3", "untrusted_proxy")
				m.TLSHandshakeFailed("pop3s")
			},
			want: map[string]float64{
				`popgate_connections_total{listener="pop3s"}`:                                  2,
				`popgate_connections_total{listener="pop3"}`:                                   1,
				`popgate_connections_refused_total{listener="pop3s",reason="max_connections"}`: 2,
				`popgate_connections_refused_total{listener="pop3",reason="untrusted_proxy"}`:  1,
				`popgate_tls_handshake_errors_total{listener="pop3s"}`:                         1,
				`popgate_tls_handshake_errors_total{listener="pop3"}`:                          0,
			},
			absent: []string{`popgate_connections_refused_total{listener="pop3",reason="max_connections"}`},
		},
		{
			name: "tls handshakes",
			events: func(m *Metrics, _ *testClock) {
				m.TLSHandshake("pop3s", tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, false)
				m.TLSHandshake("pop3", tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, false)
				m.TLSHandshake("pop3", tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, true)
				m.TLSHandshake("pop3s", tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, true)
				m.TLSHandshake("pop3s", tls.VersionTLS10, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, false)
			},
			want: map[string]float64{
				`popgate_tls_handshakes_total{cipher="TLS_AES_128_GCM_SHA256",resumed="false",version="TLS 1.3"}`:               2,
				`popgate_tls_handshakes_total{cipher="TLS_AES_128_GCM_SHA256",resumed="true",version="TLS 1.3"}`:                1,
				`popgate_tls_handshakes_total{cipher="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",resumed="true",version="TLS 1.2"}`: 1,
				`popgate_tls_handshakes_total{cipher="TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",resumed="false",version="TLS 1.0"}`:   1,
			},
		},
		{
			name: "logins",
			events: func(m *Metrics, _ *testClock) {
				for range 3 {
					m.Login("pop3s", proxy.LoginOK)
				}
				m.Login("pop3s", proxy.LoginAuthFailed)
				m.Login("pop3", proxy.LoginThrottled)
			},
			want: map[string]float64{
				`popgate_logins_total{result="ok"}`:            3,
				`popgate_logins_total{result="auth_failed"}`:   1,
				`popgate_logins_total{result="throttled"}`:     1,
				`popgate_logins_total{result="no_route"}`:      0,
				`popgate_logins_total{result="backend_error"}`: 0,
				`popgate_logins_total{result="lookup_error"}`:  0,
			},
		},
		{
			name: "backend connect",
			events: func(m *Metrics, _ *testClock) {
				m.BackendConnect("mx1", 3*time.Millisecond, nil)
				m.BackendConnect("mx1", 40*time.Millisecond, nil)
				m.BackendConnect("mx1", 5*time.Second, errors.New("connection refused"))
				m.BackendConnect("mx2", time.Second, errors.New("i/o timeout"))
			},
			want: map[string]float64{
				`popgate_backend_connect_seconds_count{backend="mx1"}`:             2,
				`popgate_backend_connect_seconds_sum{backend="mx1"}`:               0.043,
				`popgate_backend_connect_seconds_bucket{backend="mx1",le="0.001"}`: 0,
				`popgate_backend_connect_seconds_bucket{backend="mx1",le="0.005"}`: 1,
				`popgate_backend_connect_seconds_bucket{backend="mx1",le="0.05"}`:  2,
				`popgate_backend_connect_seconds_bucket{backend="mx1",le="30"}`:    2,
				`popgate_backend_connect_seconds_count{backend="mx2"}`:             0,
				`popgate_backend_errors_total{backend="mx1",stage="connect"}`:      1,
				`popgate_backend_errors_total{backend="mx1",stage="login"}`:        0,
				`popgate_backend_errors_total{backend="mx2",stage="connect"}`:      1,
				`popgate_backend_logins_total{backend="mx1",result="ok"}`:          0,
			},
		},
		{
			name: "backend login",
			events: func(m *Metrics, _ *testClock) {
				m.BackendLogin("mx1", 20*time.Millisecond, proxy.BackendOK)
				m.BackendLogin("mx1", 30*time.Millisecond, proxy.BackendOK)
				m.BackendLogin("mx1", 200*time.Millisecond, proxy.BackendRejected)
				m.BackendLogin("mx1", 15*time.Second, proxy.BackendError)
			},
			want: map[string]float64{
				`popgate_backend_login_seconds_count{backend="mx1"}`:             4,
				`popgate_backend_login_seconds_sum{backend="mx1"}`:               15.25,
				`popgate_backend_login_seconds_bucket{backend="mx1",le="0.025"}`: 1,
				`popgate_backend_login_seconds_bucket{backend="mx1",le="0.25"}`:  3,
				`popgate_backend_login_seconds_bucket{backend="mx1",le="10"}`:    3,
				`popgate_backend_login_seconds_bucket{backend="mx1",le="30"}`:    4,
				`popgate_backend_logins_total{backend="mx1",result="ok"}`:        2,
				`popgate_backend_logins_total{backend="mx1",result="rejected"}`:  1,
				`popgate_backend_logins_total{backend="mx1",result="error"}`:     1,
				`popgate_backend_errors_total{backend="mx1",stage="login"}`:      1,
				`popgate_backend_errors_total{backend="mx1",stage="connect"}`:    0,
			},
		},
		{
			name: "backend unreachable",
			events: func(m *Metrics, _ *testClock) {
				m.BackendConnect("mx1", time.Millisecond, errors.New("refused"))
				m.BackendLogin("mx1", 2*time.Millisecond, proxy.BackendUnreachable)
			},
			want: map[string]float64{
				`popgate_backend_logins_total{backend="mx1",result="error"}`:  1,
				`popgate_backend_errors_total{backend="mx1",stage="connect"}`: 1,
				`popgate_backend_errors_total{backend="mx1",stage="login"}`:   0,
				`popgate_backend_login_seconds_count{backend="mx1"}`:          1,
			},
		},
		{
			name: "session end",
			events: func(m *Metrics, _ *testClock) {
				m.SessionEnd("pop3s", 90*time.Second, 10, 20)
				m.SessionEnd("pop3s", 3*time.Hour, 10, 20)
			},
			want: map[string]float64{
				`popgate_session_duration_seconds_count{listener="pop3s"}`:             2,
				`popgate_session_duration_seconds_sum{listener="pop3s"}`:               90 + 3*3600,
				`popgate_session_duration_seconds_bucket{le="60",listener="pop3s"}`:    0,
				`popgate_session_duration_seconds_bucket{le="300",listener="pop3s"}`:   1,
				`popgate_session_duration_seconds_bucket{le="14400",listener="pop3s"}`: 2,
				`popgate_connections_total{listener="pop3s"}`:                          0,
			},
		},
		{
			name: "sources",
			events: func(m *Metrics, _ *testClock) {
				lookups := &counts{}
				lookups.hits.Store(7)
				lookups.misses.Store(3)
				m.SetSources(Sources{
					Sessions: &fakeSessions{stats: proxy.Stats{
						Active:   map[string]int{"pop3s": 3, "pop3": 1},
						Relaying: 2,
						BytesIn:  100,
						BytesOut: 5000,
					}},
					Certificates: func() map[string]time.Time {
						return map[string]time.Time{"mail.example.com": certExpiry, "*.example.net": certExpiry.Add(time.Hour)}
					},
					LookupCaches:   map[string]func() (int64, int64){"route.http": lookups.get},
					DirectoryPools: map[string]func() (int, int){"route.sql": func() (int, int) { return 2, 5 }},
				})
			},
			want: map[string]float64{
				`popgate_connections_active{listener="pop3s"}`:                          3,
				`popgate_connections_active{listener="pop3"}`:                           1,
				`popgate_sessions_active`:                                               2,
				`popgate_bytes_total{direction="client_to_backend"}`:                    100,
				`popgate_bytes_total{direction="backend_to_client"}`:                    5000,
				`popgate_certificate_expiry_timestamp_seconds{name="mail.example.com"}`: float64(certExpiry.Unix()),
				`popgate_certificate_expiry_timestamp_seconds{name="*.example.net"}`:    float64(certExpiry.Unix() + 3600),
				`popgate_lookup_cache_hits_total{source="route.http"}`:                  7,
				`popgate_lookup_cache_misses_total{source="route.http"}`:                3,
				`popgate_directory_connections{source="route.sql",state="in_use"}`:      2,
				`popgate_directory_connections{source="route.sql",state="idle"}`:        5,
			},
		},
		{
			name: "acme orders",
			events: func(m *Metrics, _ *testClock) {
				m.ACMEOrder(tlsconf.KeyECDSA, tlsconf.OrderIssued)
				m.ACMEOrder(tlsconf.KeyECDSA, tlsconf.OrderIssued)
				m.ACMEOrder(tlsconf.KeyRSA, tlsconf.OrderFailed)
				for range 3 {
					m.ACMEOrderWithheld(tlsconf.WithheldBudget)
				}
				m.ACMEOrderWithheld(tlsconf.WithheldDenied)
				m.SetSources(Sources{ACMEOrderBudget: func() float64 { return 42 }})
			},
			want: map[string]float64{
				`popgate_acme_orders_total{key_type="ecdsa",result="issued"}`: 2,
				`popgate_acme_orders_total{key_type="ecdsa",result="failed"}`: 0,
				`popgate_acme_orders_total{key_type="rsa",result="issued"}`:   0,
				`popgate_acme_orders_total{key_type="rsa",result="failed"}`:   1,
				`popgate_acme_orders_withheld_total{reason="budget"}`:         3,
				`popgate_acme_orders_withheld_total{reason="denied"}`:         1,
				`popgate_acme_orders_withheld_total{reason="backoff"}`:        0,
				`popgate_acme_orders_withheld_total{reason="ask_failed"}`:     0,
				`popgate_acme_orders_withheld_total{reason="busy"}`:           0,
				`popgate_acme_order_budget_remaining`:                         42,
			},
		},
		{
			name: "reload failed",
			events: func(m *Metrics, clock *testClock) {
				clock.set(t1)
				m.Reloaded(errors.New("bad config"))
			},
			want: map[string]float64{
				`popgate_config_reloads_total{result="ok"}`:            0,
				`popgate_config_reloads_total{result="failed"}`:        1,
				`popgate_config_last_reload_successful`:                0,
				`popgate_config_last_reload_success_timestamp_seconds`: float64(t0.Unix()),
			},
		},
		{
			name: "reload ok after a failure",
			events: func(m *Metrics, clock *testClock) {
				m.Reloaded(errors.New("bad config"))
				clock.set(t1)
				m.Reloaded(nil)
			},
			want: map[string]float64{
				`popgate_config_reloads_total{result="ok"}`:            1,
				`popgate_config_reloads_total{result="failed"}`:        1,
				`popgate_config_last_reload_successful`:                1,
				`popgate_config_last_reload_success_timestamp_seconds`: float64(t1.Unix()),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newClock(t0)
			m := newMetrics("1.2.3", "abc123", clock.now)
			tc.events(m, clock)
			got, _ := scrape(t, Handler(m, nil, nil, nil, nil))
			for series, want := range tc.want {
				v, ok := got[series]
				if !ok {
					t.Errorf("%s missing", series)
					continue
				}
				if math.Abs(v-want) > 1e-9 {
					t.Errorf("%s = %v, want %v", series, v, want)
				}
			}
			for _, series := range tc.absent {
				for g, v := range got {
					// A series named without labels stands for
					// every series of its family.
					if g == series || !strings.Contains(series, "{") && strings.HasPrefix(g, series+"{") {
						t.Errorf("%s = %v, want no such series", g, v)
					}
				}
			}
		})
	}
}

// TestMetricsFamilies checks the contract: every popgate series exists
// with its type and a help text, next to the Go and process series.
func TestMetricsFamilies(t *testing.T) {
	m := NewMetrics("dev", "")
	m.SetSources(Sources{
		Sessions:        &fakeSessions{stats: proxy.Stats{Active: map[string]int{"pop3s": 1}}},
		Certificates:    func() map[string]time.Time { return map[string]time.Time{"a": t0} },
		LookupCaches:    map[string]func() (int64, int64){"route.http": func() (int64, int64) { return 0, 0 }},
		DirectoryPools:  map[string]func() (int, int){"route.sql": func() (int, int) { return 0, 0 }},
		ACMEOrderBudget: func() float64 { return 1 },
		ClusterUp:       func() bool { return true },
		BackendHealth:   func() []proxy.BackendHealth { return []proxy.BackendHealth{{Backend: "mx", Address: "a:1", Up: true}} },
	})
	m.Accepted("pop3s")
	m.Refused("pop3s", "shutting_down")
	m.TLSHandshake("pop3s", tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, false)
	m.TLSHandshakeFailed("pop3s")
	m.Login("pop3s", proxy.LoginOK)
	m.BackendConnect("mx", time.Millisecond, nil)
	m.BackendLogin("mx", time.Millisecond, proxy.BackendOK)
	m.SessionEnd("pop3s", time.Second, 0, 0)
	m.DirectoryLookup("route.sql", "found", time.Millisecond)

	want := map[string]string{
		"popgate_build_info":                                   "GAUGE",
		"popgate_connections_total":                            "COUNTER",
		"popgate_connections_refused_total":                    "COUNTER",
		"popgate_tls_handshakes_total":                         "COUNTER",
		"popgate_tls_handshake_errors_total":                   "COUNTER",
		"popgate_logins_total":                                 "COUNTER",
		"popgate_backend_connect_seconds":                      "HISTOGRAM",
		"popgate_backend_login_seconds":                        "HISTOGRAM",
		"popgate_backend_logins_total":                         "COUNTER",
		"popgate_backend_errors_total":                         "COUNTER",
		"popgate_session_duration_seconds":                     "HISTOGRAM",
		"popgate_connections_active":                           "GAUGE",
		"popgate_sessions_active":                              "GAUGE",
		"popgate_bytes_total":                                  "COUNTER",
		"popgate_certificate_expiry_timestamp_seconds":         "GAUGE",
		"popgate_certificate_reload_errors_total":              "COUNTER",
		"popgate_lookup_cache_hits_total":                      "COUNTER",
		"popgate_cluster_up":                                   "GAUGE",
		"popgate_lookup_cache_misses_total":                    "COUNTER",
		"popgate_directory_lookups_total":                      "COUNTER",
		"popgate_directory_lookup_seconds":                     "HISTOGRAM",
		"popgate_directory_connections":                        "GAUGE",
		"popgate_config_reloads_total":                         "COUNTER",
		"popgate_config_last_reload_successful":                "GAUGE",
		"popgate_config_last_reload_success_timestamp_seconds": "GAUGE",
		"popgate_acme_orders_total":                            "COUNTER",
		"popgate_acme_orders_withheld_total":                   "COUNTER",
		"popgate_acme_order_budget_remaining":                  "GAUGE",
		"popgate_backend_up":                                   "GAUGE",
		"popgate_backend_address_up":                           "GAUGE",
		"go_goroutines":                                        "GAUGE",
	}
	if runtime.GOOS == "linux" {
		want["process_start_time_seconds"] = "GAUGE"
	}
	_, fams := scrape(t, Handler(m, nil, nil, nil, nil))
	for name, typ := range want {
		f, ok := fams[name]
		if !ok {
			t.Errorf("family %s missing", name)
			continue
		}
		if got := f.GetType().String(); got != typ {
			t.Errorf("%s is a %s, want %s", name, got, typ)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help", name)
		}
	}
	for name := range fams {
		if _, ok := want[name]; !ok && len(name) > 8 && name[:8] == "popgate_" {
			t.Errorf("unexpected family %s", name)
		}
	}
}

// TestLookupCacheMonotonic replaces the lookup cache source as reloads do
// and checks that the counters never go down.
func TestLookupCacheMonotonic(t *testing.T) {
	m := newMetrics("dev", "", newClock(t0).now)
	h := Handler(m, nil, nil, nil, nil)
	a, b, c, d := &counts{}, &counts{}, &counts{}, &counts{}
	httpCache := func(c *counts) map[string]func() (int64, int64) {
		return map[string]func() (int64, int64){"route.http": c.get}
	}
	steps := []struct {
		name                 string
		do                   func()
		wantHits, wantMisses float64
		wantAbsent           bool
	}{
		{"first source", func() { a.hits.Store(5); a.misses.Store(2); m.SetSources(Sources{LookupCaches: httpCache(a)}) }, 5, 2, false},
		{"first grows", func() { a.hits.Store(8); a.misses.Store(3) }, 8, 3, false},
		{"replaced by a new cache", func() {
			m.SetSources(Sources{LookupCaches: map[string]func() (int64, int64){"route.http": b.get, "route.sql": d.get}})
		}, 8, 3, false},
		{"new cache counts", func() { b.hits.Store(1); b.misses.Store(4); d.hits.Store(100) }, 9, 7, false},
		{"cache removed", func() { m.SetSources(Sources{}) }, 0, 0, true},
		{"cache back", func() { m.SetSources(Sources{LookupCaches: httpCache(c)}) }, 9, 7, false},
		{"it counts", func() { c.hits.Store(1) }, 10, 7, false},
	}
	for _, st := range steps {
		st.do()
		got, _ := scrape(t, h)
		hits, okH := got[`popgate_lookup_cache_hits_total{source="route.http"}`]
		misses, okM := got[`popgate_lookup_cache_misses_total{source="route.http"}`]
		if st.wantAbsent {
			if okH || okM {
				t.Errorf("%s: lookup cache series exported without a source", st.name)
			}
			continue
		}
		if hits != st.wantHits || misses != st.wantMisses {
			t.Errorf("%s: hits, misses = %v, %v, want %v, %v", st.name, hits, misses, st.wantHits, st.wantMisses)
		}
	}
}

// TestMetricsConcurrent runs events, scrapes and source replacements at
// once, for the race detector, and checks that the counters scraped never
// go down.
func TestMetricsConcurrent(t *testing.T) {
	m := NewMetrics("dev", "")
	h := Handler(m, nil, nil, nil, nil)
	sessions := &fakeSessions{}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			listener := []string{"pop3s", "pop3", "submission", "pop3-proxy"}[i]
			for range 1000 {
				m.Accepted(listener)
				m.Login(listener, proxy.LoginOK)
				m.TLSHandshake(listener, tls.VersionTLS13, tls.TLS_AES_256_GCM_SHA384, false)
				m.BackendConnect(listener+"-backend", time.Millisecond, nil)
				m.BackendLogin(listener+"-backend", time.Millisecond, proxy.BackendOK)
				m.SessionEnd(listener, time.Second, 1, 1)
			}
		})
	}
	wg.Go(func() {
		for n := range int64(200) {
			// Each reload brings a cache already used a little, whose
			// counts then freeze.
			c := &counts{}
			c.hits.Store(n % 3)
			m.SetSources(Sources{Sessions: sessions, LookupCaches: map[string]func() (int64, int64){"route.sql": c.get}})
			sessions.setStats(proxy.Stats{BytesIn: n, BytesOut: 2 * n, Active: map[string]int{"pop3s": int(n % 5)}})
		}
	})

	monotonic := []string{
		`popgate_lookup_cache_hits_total{source="route.sql"}`,
		`popgate_logins_total{result="ok"}`,
		`popgate_bytes_total{direction="backend_to_client"}`,
	}
	last := make(map[string]float64)
	for range 20 {
		got, _ := scrape(t, h)
		for _, s := range monotonic {
			if v, ok := got[s]; ok {
				if v < last[s] {
					t.Errorf("%s went down: %v after %v", s, v, last[s])
				}
				last[s] = v
			}
		}
	}
	wg.Wait()

	got, _ := scrape(t, h)
	for s, want := range map[string]float64{
		`popgate_lookup_cache_hits_total{source="route.sql"}`: 199, // the sum of n%3 for n < 200
		`popgate_logins_total{result="ok"}`:                   4000,
		`popgate_bytes_total{direction="backend_to_client"}`:  2 * 199,
	} {
		if got[s] != want {
			t.Errorf("%s = %v at the end, want %v", s, got[s], want)
		}
	}
}

func BenchmarkObserver(b *testing.B) {
	m := NewMetrics("dev", "")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Accepted("pop3s")
			m.TLSHandshake("pop3s", tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, false)
			m.Login("pop3s", proxy.LoginOK)
			m.BackendConnect("mx1", time.Millisecond, nil)
			m.BackendLogin("mx1", 10*time.Millisecond, proxy.BackendOK)
			m.SessionEnd("pop3s", time.Minute, 100, 1000)
		}
	})
}
