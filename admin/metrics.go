package admin

import (
	"context"
	"crypto/tls"
	"maps"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/popgate/popgate/pool"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// Sessions is what the admin endpoints need of the proxy; *proxy.Server
// implements it.
type Sessions interface {
	Stats() proxy.Stats
	SessionList() []proxy.SessionInfo
	EndSessions(user string) int
	EndSession(id string) bool
}

// Sources are what [Metrics] reads at each scrape rather than counting
// events. A nil field exports none of its series.
type Sources struct {
	// Sessions gives popgate_connections_active, popgate_sessions_active
	// and popgate_bytes_total, read once per scrape.
	Sessions Sessions
	// Certificates returns the NotAfter of each served certificate by
	// name, for popgate_certificate_expiry_timestamp_seconds.
	Certificates func() map[string]time.Time
	// LookupCaches returns, by routing source ("route.http",
	// "route.sql"), the hits and misses of the source's lookup cache
	// since it was made, for popgate_lookup_cache_hits_total and
	// popgate_lookup_cache_misses_total{source}. See [Metrics.SetSources]
	// for what happens when one is replaced.
	LookupCaches map[string]func() (hits, misses int64)
	// DirectoryPools returns, by routing source ("route.sql",
	// "route.ldap"), the connections its pool holds to the directory, in
	// use and idle, for popgate_directory_connections{source,state}.
	DirectoryPools map[string]func() (inUse, idle int)
	// ACMEOrderBudget returns how many orders the ACME order budget has
	// room for now, for popgate_acme_order_budget_remaining.
	ACMEOrderBudget func() float64
	// ClusterUp reports whether the last operation on the fleet's Redis
	// succeeded, for popgate_cluster_up; nil without [cluster].
	ClusterUp func() bool
	// ClusterFallbacks returns, by feature, the operations Redis failed
	// and the replica did on its own state, for
	// popgate_cluster_fallbacks_total{feature}; nil without [cluster].
	ClusterFallbacks func() map[string]uint64
	// BackendHealth returns the health checks' state of every checked
	// backend address ((*proxy.Server).BackendHealth), for
	// popgate_backend_up{backend} and
	// popgate_backend_address_up{backend,address}.
	BackendHealth func() []proxy.BackendHealth
	// Pools returns the backend pools' counters, for popgate_pool_*
	// (pools.go); nil without pools.
	Pools func() pool.Stats
	// The operator's console reads the rest (types in sources.go) and
	// BackendHealth; a nil one shows as unknown.
	// Listeners lists the served listeners.
	Listeners func() []ListenerInfo
	// Backends lists the configured backends.
	Backends func() []BackendInfo
	// CertificateDetails lists the served certificates.
	CertificateDetails func() []CertificateInfo
	// Route answers where user's logins go, without a password.
	Route func(ctx context.Context, user string) (RouteAnswer, error)
}

// Histogram buckets, in seconds.
var (
	backendBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	sessionBuckets = []float64{1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400}
)

// Metrics counts popgate's events for Prometheus in a registry of its own
// (not the global one). It implements [proxy.Observer]; its methods do not
// block beyond the first event of a new listener or backend name, which
// creates the label children that later events reuse.
type Metrics struct {
	reg *prometheus.Registry
	now func() time.Time

	connections     *prometheus.CounterVec
	refused         *prometheus.CounterVec
	tlsHandshakes   *prometheus.CounterVec
	tlsErrors       *prometheus.CounterVec
	logins          *prometheus.CounterVec
	backendConnect  *prometheus.HistogramVec
	backendLogin    *prometheus.HistogramVec
	backendLogins   *prometheus.CounterVec
	backendErrors   *prometheus.CounterVec
	sessionDuration *prometheus.HistogramVec
	reloads         *prometheus.CounterVec
	reloadOK        prometheus.Gauge
	reloadTime      prometheus.Gauge
	acmeOrders      *prometheus.CounterVec
	acmeWithheld    *prometheus.CounterVec
	certReloads     *prometheus.CounterVec // certreload.go
	dirLookups      *prometheus.CounterVec
	dirLatency      *prometheus.HistogramVec

	// Label children by listener, backend, refusal and TLS parameters,
	// so that the hot path needs no label hashing.
	listeners children[string, *listenerMetrics]
	backends  children[string, *backendMetrics]
	refusals  children[[2]string, prometheus.Counter]
	ciphers   children[handshakeKind, prometheus.Counter]
	loginRes  map[string]prometheus.Counter // read-only after NewMetrics
	// ACME order counters by [2]string{result, key type}, and withheld
	// orders by reason; read-only after NewMetrics.
	orderRes    map[[2]string]prometheus.Counter
	withheldRes map[string]prometheus.Counter

	src sourceCollector

	// For the console.
	version, commit string
	started         time.Time
	legacy          *legacyClients // legacy.go
	loginsPerMinute perMinute      // legacy.go
	reloadMu        sync.Mutex
	lastReload      time.Time // zero: none since start
	lastReloadErr   string
}

type listenerMetrics struct {
	accepted  prometheus.Counter
	tlsErrors prometheus.Counter
	duration  prometheus.Observer
}

type backendMetrics struct {
	connect       prometheus.Observer
	connectErrors prometheus.Counter
	login         prometheus.Observer
	loginErrors   prometheus.Counter
	logins        map[string]prometheus.Counter // by result; read-only once made
}

// NewMetrics returns a Metrics whose registry holds popgate's series, the
// Go runtime's (go_*), the process's (process_*) and
// popgate_build_info{version,commit,go_version}.
func NewMetrics(version, commit string) *Metrics {
	return newMetrics(version, commit, time.Now)
}

// NewNodeMetrics is NewMetrics for a replica of a fleet ([cluster]):
// every series, go_* and process_* included, carries the constant label
// node="<node>", so that the replicas' series stay apart wherever they
// are gathered together (a federation, a remote write, a scrape that
// relabels the pod away).
func NewNodeMetrics(version, commit, node string) *Metrics {
	return newMetricsLabels(version, commit, time.Now, prometheus.Labels{"node": node})
}

func newMetrics(version, commit string, now func() time.Time) *Metrics {
	return newMetricsLabels(version, commit, now, nil)
}

func newMetricsLabels(version, commit string, now func() time.Time, labels prometheus.Labels) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		now: now,
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_connections_total",
			Help: "Client connections accepted, by listener.",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_connections_refused_total",
			Help: "Client connections refused before their session started, by listener and reason (max_connections, max_connections_per_ip, untrusted_proxy, shutting_down).",
		}, []string{"listener", "reason"}),
		tlsHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_tls_handshakes_total",
			Help: "Client TLS handshakes completed, by protocol version (\"TLS 1.3\"), cipher suite and whether a session ticket resumed the session (\"true\", \"false\").",
		}, []string{"version", "cipher", "resumed"}),
		tlsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_tls_handshake_errors_total",
			Help: "Client TLS handshakes that failed, by listener.",
		}, []string{"listener"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_logins_total",
			Help: "Client login attempts, by result (ok, auth_failed, no_route, throttled, backend_error, lookup_error).",
		}, []string{"result"}),
		backendConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "popgate_backend_connect_seconds",
			Help:    "Time in seconds to open a successful TCP connection to a backend, by backend.",
			Buckets: backendBuckets,
		}, []string{"backend"}),
		backendLogin: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "popgate_backend_login_seconds",
			Help:    "Time in seconds of backend logins (connect, greeting, TLS, XCLIENT, authentication), whatever their result, by backend.",
			Buckets: backendBuckets,
		}, []string{"backend"}),
		backendLogins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_backend_logins_total",
			Help: "Backend logins, by backend and result (ok; rejected: the backend refused the credentials; error: unreachable, broken or timed out).",
		}, []string{"backend", "result"}),
		backendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_backend_errors_total",
			Help: "Backend failures, by backend and stage (connect: no TCP connection; login: the login failed other than by a refusal of the credentials).",
		}, []string{"backend", "stage"}),
		sessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "popgate_session_duration_seconds",
			Help:    "Duration in seconds of logged-in sessions, from accept to close, by listener.",
			Buckets: sessionBuckets,
		}, []string{"listener"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_config_reloads_total",
			Help: "Configuration reloads, by result (ok, failed).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "popgate_config_last_reload_successful",
			Help: "Whether the last configuration reload succeeded (1) or failed (0); 1 at start.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "popgate_config_last_reload_success_timestamp_seconds",
			Help: "Unix time in seconds of the last successful configuration load, at start or by a reload.",
		}),
		acmeOrders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_acme_orders_total",
			Help: "Attempts to obtain an ACME certificate that reached the CA (first orders and renewals), by result (issued, failed) and key type (ecdsa, rsa).",
		}, []string{"result", "key_type"}),
		acmeWithheld: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_acme_orders_withheld_total",
			Help: "Handshakes that needed a new ACME certificate and placed no order, by reason (backoff: the last order failed recently; budget: the order budget is used up; denied: the approval hook said no; ask_failed: it did not answer, or too many requests to it were under way; busy: a renewal of the name was under way, or another replica's order did not end in time; cluster: the fleet's order lock could not be taken, Redis being unreachable).",
		}, []string{"reason"}),
		dirLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popgate_directory_lookups_total",
			Help: "Queries routing sources sent to their directory (route.sql, route.ldap), by source and result (found; not_found: the next source decides; error: the directory failed, timed out or answered garbage). Answers from the lookup cache are not queries.",
		}, []string{"source", "result"}),
		dirLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "popgate_directory_lookup_seconds",
			Help:    "Time in seconds of the queries routing sources sent to their directory, waiting for a pooled connection included, whatever their result, by source.",
			Buckets: backendBuckets,
		}, []string{"source"}),
		loginRes:    make(map[string]prometheus.Counter),
		orderRes:    make(map[[2]string]prometheus.Counter),
		withheldRes: make(map[string]prometheus.Counter),
		version:     version,
		commit:      commit,
		started:     now(),
		legacy:      newLegacyClients(maxLegacyClients),
	}
	m.listeners.newFn = m.newListener
	m.backends.newFn = m.newBackend
	m.refusals.newFn = func(k [2]string) prometheus.Counter {
		return m.refused.WithLabelValues(k[0], k[1])
	}
	m.ciphers.newFn = func(k handshakeKind) prometheus.Counter {
		return m.tlsHandshakes.WithLabelValues(tls.VersionName(k.version), tls.CipherSuiteName(k.cipher), strconv.FormatBool(k.resumed))
	}
	// Every result shows from the start, so that rate() and alerts work
	// before the first event.
	for _, r := range []string{proxy.LoginOK, proxy.LoginAuthFailed, proxy.LoginNoRoute, proxy.LoginThrottled, proxy.LoginBackendError, proxy.LoginLookupError} {
		m.loginRes[r] = m.logins.WithLabelValues(r)
	}
	for _, r := range []string{tlsconf.OrderIssued, tlsconf.OrderFailed} {
		for _, k := range []string{tlsconf.KeyECDSA, tlsconf.KeyRSA} {
			m.orderRes[[2]string{r, k}] = m.acmeOrders.WithLabelValues(r, k)
		}
	}
	for _, r := range []string{tlsconf.WithheldBackoff, tlsconf.WithheldBudget, tlsconf.WithheldDenied, tlsconf.WithheldAskFailed, tlsconf.WithheldBusy, tlsconf.WithheldCluster} {
		m.withheldRes[r] = m.acmeWithheld.WithLabelValues(r)
	}
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("failed")
	m.reloadOK.Set(1)
	m.reloadTime.Set(unixSeconds(now()))

	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "popgate_build_info",
		Help:        "Always 1; its labels name the running popgate's version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "go_version": runtime.Version()},
	})
	buildInfo.Set(1)

	reg := prometheus.WrapRegistererWith(labels, m.reg)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		m.connections, m.refused, m.tlsHandshakes, m.tlsErrors, m.logins,
		m.backendConnect, m.backendLogin, m.backendLogins, m.backendErrors,
		m.sessionDuration,
		m.reloads, m.reloadOK, m.reloadTime,
		m.acmeOrders, m.acmeWithheld,
		m.dirLookups, m.dirLatency,
		&m.src,
	)
	m.certReloads = newCertReloadErrors()
	reg.MustRegister(m.certReloads)
	return m
}

// SetSources sets what m reads at each scrape. It may be called while
// scrapes run, after a configuration reload.
//
// The lookup cache counters stay monotonic across a replacement: a reload
// makes new caches whose counts start again at 0, so SetSources reads each
// old LookupCaches entry one last time and adds its counts to its source's
// base, which the new counts of the same source are added to. Hence a
// cache that continues the old counts (the same cache kept across a
// reload) must not be passed again: its counts would be counted twice;
// keep the whole Sources value then, or wrap the cache's counters so that
// they start at 0.
func (m *Metrics) SetSources(src Sources) { m.src.set(src) }

// Reloaded records the end of a configuration reload; err is nil when the
// new configuration is in use.
func (m *Metrics) Reloaded(err error) {
	m.reloadMu.Lock()
	m.lastReload, m.lastReloadErr = m.now(), ""
	if err != nil {
		m.lastReloadErr = err.Error()
	}
	m.reloadMu.Unlock()
	if err != nil {
		m.reloads.WithLabelValues("failed").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadOK.Set(1)
	m.reloadTime.Set(unixSeconds(m.now()))
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

var (
	_ proxy.Observer        = (*Metrics)(nil)
	_ tlsconf.OrderObserver = (*Metrics)(nil)
	_ proxy.LegacyObserver  = (*Metrics)(nil)
)

// DirectoryLookup counts and times one query of a routing source to its
// directory; it is an auth.LookupObserver.
func (m *Metrics) DirectoryLookup(source, result string, took time.Duration) {
	m.dirLookups.WithLabelValues(source, result).Inc()
	m.dirLatency.WithLabelValues(source).Observe(took.Seconds())
}

// ACMEOrder implements [tlsconf.OrderObserver].
func (m *Metrics) ACMEOrder(keyType, result string) {
	if c, ok := m.orderRes[[2]string{result, keyType}]; ok {
		c.Inc()
		return
	}
	m.acmeOrders.WithLabelValues(result, keyType).Inc()
}

// ACMEOrderWithheld implements [tlsconf.OrderObserver].
func (m *Metrics) ACMEOrderWithheld(reason string) {
	if c, ok := m.withheldRes[reason]; ok {
		c.Inc()
		return
	}
	m.acmeWithheld.WithLabelValues(reason).Inc()
}

// Accepted implements [proxy.Observer].
func (m *Metrics) Accepted(listener string) { m.listeners.get(listener).accepted.Inc() }

// Refused implements [proxy.Observer].
func (m *Metrics) Refused(listener, reason string) {
	m.refusals.get([2]string{listener, reason}).Inc()
}

// handshakeKind is what popgate_tls_handshakes_total is labelled with.
type handshakeKind struct {
	version, cipher uint16
	resumed         bool
}

// TLSHandshake implements [proxy.Observer]. The version is exported as
// crypto/tls names it ("TLS 1.3"), the cipher suite likewise
// ("TLS_AES_128_GCM_SHA256"); unknown numbers as "0x1305".
func (m *Metrics) TLSHandshake(listener string, version, cipher uint16, resumed bool) {
	m.ciphers.get(handshakeKind{version, cipher, resumed}).Inc()
}

// TLSHandshakeFailed implements [proxy.Observer].
func (m *Metrics) TLSHandshakeFailed(listener string) { m.listeners.get(listener).tlsErrors.Inc() }

// Login implements [proxy.Observer].
func (m *Metrics) Login(listener, result string) {
	m.loginsPerMinute.add(m.now(), result)
	if c, ok := m.loginRes[result]; ok {
		c.Inc()
		return
	}
	m.logins.WithLabelValues(result).Inc()
}

// BackendConnect implements [proxy.Observer]: a success is timed, a
// failure counted in popgate_backend_errors_total{stage="connect"}.
func (m *Metrics) BackendConnect(backend string, d time.Duration, err error) {
	b := m.backends.get(backend)
	if err != nil {
		b.connectErrors.Inc()
		return
	}
	b.connect.Observe(d.Seconds())
}

// BackendLogin implements [proxy.Observer]: every login is timed and
// counted by result; proxy.BackendUnreachable counts as "error" there
// (its failed connects are in popgate_backend_errors_total{stage="connect"}
// already), proxy.BackendError also in
// popgate_backend_errors_total{stage="login"}.
func (m *Metrics) BackendLogin(backend string, d time.Duration, result string) {
	b := m.backends.get(backend)
	b.login.Observe(d.Seconds())
	if result == proxy.BackendUnreachable {
		result = proxy.BackendError
		b.logins[result].Inc()
		return
	}
	if c, ok := b.logins[result]; ok {
		c.Inc()
	} else {
		m.backendLogins.WithLabelValues(backend, result).Inc()
	}
	if result == proxy.BackendError {
		b.loginErrors.Inc()
	}
}

// SessionEnd implements [proxy.Observer]. The octets are not counted
// here: popgate_bytes_total comes from [Sources.Sessions], which includes
// the sessions still running.
func (m *Metrics) SessionEnd(listener string, d time.Duration, in, out int64) {
	m.listeners.get(listener).duration.Observe(d.Seconds())
}

func (m *Metrics) newListener(name string) *listenerMetrics {
	return &listenerMetrics{
		accepted:  m.connections.WithLabelValues(name),
		tlsErrors: m.tlsErrors.WithLabelValues(name),
		duration:  m.sessionDuration.WithLabelValues(name),
	}
}

func (m *Metrics) newBackend(name string) *backendMetrics {
	b := &backendMetrics{
		connect:       m.backendConnect.WithLabelValues(name),
		connectErrors: m.backendErrors.WithLabelValues(name, "connect"),
		login:         m.backendLogin.WithLabelValues(name),
		loginErrors:   m.backendErrors.WithLabelValues(name, "login"),
		logins:        make(map[string]prometheus.Counter),
	}
	for _, r := range []string{proxy.BackendOK, proxy.BackendRejected, proxy.BackendError} {
		b.logins[r] = m.backendLogins.WithLabelValues(name, r)
	}
	return b
}

// children caches label children by key. Reads are a map lookup without
// a lock; a new key copies the map, which is rare: keys are listener and
// backend names from the configuration, refusal reasons and TLS
// parameters.
type children[K comparable, V any] struct {
	m     atomic.Pointer[map[K]V]
	mu    sync.Mutex // serialises writers
	newFn func(K) V
}

func (c *children[K, V]) get(k K) V {
	if p := c.m.Load(); p != nil {
		if v, ok := (*p)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[K]V
	if p := c.m.Load(); p != nil {
		old = *p
		if v, ok := old[k]; ok {
			return v
		}
	}
	next := make(map[K]V, len(old)+1)
	maps.Copy(next, old)
	v := c.newFn(k)
	next[k] = v
	c.m.Store(&next)
	return v
}

// sourceCollector exports the series read from Sources at scrape time.
type sourceCollector struct {
	mu  sync.Mutex
	src Sources
	// Lookup cache counts of the caches replaced so far, by source.
	base map[string][2]int64
}

var (
	activeDesc = prometheus.NewDesc("popgate_connections_active",
		"Open client connections, logging in or relaying, by listener.", []string{"listener"}, nil)
	sessionsDesc = prometheus.NewDesc("popgate_sessions_active",
		"Logged-in sessions being relayed.", nil, nil)
	bytesDesc = prometheus.NewDesc("popgate_bytes_total",
		"Octets relayed between clients and backends after login, by direction (client_to_backend, backend_to_client).", []string{"direction"}, nil)
	certDesc = prometheus.NewDesc("popgate_certificate_expiry_timestamp_seconds",
		"Unix time in seconds when a served certificate expires (its NotAfter), by name.", []string{"name"}, nil)
	hitsDesc = prometheus.NewDesc("popgate_lookup_cache_hits_total",
		"Route lookups answered from a routing source's cache, by source (route.http, route.sql).", []string{"source"}, nil)
	missesDesc = prometheus.NewDesc("popgate_lookup_cache_misses_total",
		"Route lookups not found in a routing source's cache, by source (route.http, route.sql).", []string{"source"}, nil)
	poolDesc = prometheus.NewDesc("popgate_directory_connections",
		"Connections a routing source's pool holds to its directory, by source (route.sql, route.ldap) and state (in_use, idle).", []string{"source", "state"}, nil)
	backendUpDesc = prometheus.NewDesc("popgate_backend_up",
		"1 while at least one address of a backend passes its health checks, 0 when all are down; only backends with health checks (health_interval).", []string{"backend"}, nil)
	addressUpDesc = prometheus.NewDesc("popgate_backend_address_up",
		"1 while a backend address passes its health checks, 0 once health_failures checks in a row failed; by backend and address (its address and fallbacks).", []string{"backend", "address"}, nil)
	clusterUpDesc = prometheus.NewDesc("popgate_cluster_up",
		"1 while the last operation on the fleet's Redis ([cluster]) succeeded, 0 after one failed; only with [cluster].", nil, nil)
	fallbacksDesc = prometheus.NewDesc("popgate_cluster_fallbacks_total",
		"Operations the fleet's Redis ([cluster]) failed and this replica did on its own state instead, by feature (tickets, throttle, sessions, acme).", []string{"feature"}, nil)
	budgetDesc = prometheus.NewDesc("popgate_acme_order_budget_remaining",
		"ACME orders the order budget (tls.acme.order_budget) has room for now; on-demand names leave order_budget_reserve of them to renewals and domains.", nil, nil)
)

func (c *sourceCollector) set(src Sources) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, old := range c.src.LookupCaches {
		h, m := old()
		if c.base == nil {
			c.base = make(map[string][2]int64)
		}
		b := c.base[k]
		c.base[k] = [2]int64{b[0] + h, b[1] + m}
	}
	c.src = src
}

// Describe implements prometheus.Collector.
func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{activeDesc, sessionsDesc, bytesDesc, certDesc, hitsDesc, missesDesc, poolDesc, budgetDesc, clusterUpDesc, fallbacksDesc, backendUpDesc, addressUpDesc, poolUsersDesc, poolSessionsDesc, poolWeightDesc, poolMovesDesc, poolAffinityDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	// Under mu so that set cannot move counts to the base between the
	// read and the sum.
	caches := make(map[string][2]int64, len(src.LookupCaches))
	for k, f := range src.LookupCaches {
		h, m := f()
		b := c.base[k]
		caches[k] = [2]int64{b[0] + h, b[1] + m}
	}
	c.mu.Unlock()

	if src.Sessions != nil {
		st := src.Sessions.Stats()
		for l, n := range st.Active {
			ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(n), l)
		}
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(st.Relaying))
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(st.BytesIn), "client_to_backend")
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(st.BytesOut), "backend_to_client")
	}
	if src.Certificates != nil {
		for name, t := range src.Certificates() {
			ch <- prometheus.MustNewConstMetric(certDesc, prometheus.GaugeValue, float64(t.Unix()), name)
		}
	}
	for k, n := range caches {
		ch <- prometheus.MustNewConstMetric(hitsDesc, prometheus.CounterValue, float64(n[0]), k)
		ch <- prometheus.MustNewConstMetric(missesDesc, prometheus.CounterValue, float64(n[1]), k)
	}
	for k, f := range src.DirectoryPools {
		inUse, idle := f()
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(inUse), k, "in_use")
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(idle), k, "idle")
	}
	if src.ACMEOrderBudget != nil {
		ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, src.ACMEOrderBudget())
	}
	if src.ClusterUp != nil {
		v := 0.0
		if src.ClusterUp() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(clusterUpDesc, prometheus.GaugeValue, v)
	}
	if src.ClusterFallbacks != nil {
		for f, n := range src.ClusterFallbacks() {
			ch <- prometheus.MustNewConstMetric(fallbacksDesc, prometheus.CounterValue, float64(n), f)
		}
	}
	if src.Pools != nil {
		collectPools(ch, src.Pools())
	}
	if src.BackendHealth != nil {
		up := map[string]bool{}
		for _, h := range src.BackendHealth() {
			up[h.Backend] = up[h.Backend] || h.Up
			ch <- prometheus.MustNewConstMetric(addressUpDesc, prometheus.GaugeValue, boolValue(h.Up), h.Backend, h.Address)
		}
		for b, u := range up {
			ch <- prometheus.MustNewConstMetric(backendUpDesc, prometheus.GaugeValue, boolValue(u), b)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
