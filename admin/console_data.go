package admin

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Counter is a named count on a console page.
type Counter struct {
	Name  string
	Value int64
}

// LoginCount is the logins of one result.
type LoginCount struct {
	Result     string
	Total      int64 // since start
	LastMinute int64 // in the last complete minute of the clock
}

type overviewPage struct {
	Version, Commit string
	Started         time.Time
	Listeners       []ListenerInfo
	Active          []Counter // open connections by listener
	Relaying        int
	Logins          []LoginCount
	Handshakes      []Counter // since start, by version and cipher
	LiveNoSNI       int       // live TLS sessions without SNI
	LiveTLS         int
	LegacySeen      int
	LastReload      time.Time
	LastReloadErr   string
}

// counters sums the counters of vec by the values of labels, joined by
// " ". It collects vec alone: gathering the whole registry would also
// run every source's callback (certificates, health checks, caches) and
// the runtime's collector for a few counters.
func counters(vec *prometheus.CounterVec, labels ...string) []Counter {
	ch := make(chan prometheus.Metric)
	go func() {
		vec.Collect(ch)
		close(ch)
	}()
	sum := map[string]float64{}
	for pm := range ch {
		var m dto.Metric
		if pm.Write(&m) != nil {
			continue // a counter's Write does not fail
		}
		var key []string
		for _, l := range labels {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == l {
					key = append(key, lp.GetValue())
				}
			}
		}
		sum[strings.Join(key, " ")] += m.GetCounter().GetValue()
	}
	out := make([]Counter, 0, len(sum))
	for k, v := range sum {
		out = append(out, Counter{k, int64(v)})
	}
	slices.SortFunc(out, func(a, b Counter) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func (c *console) overview() overviewPage {
	m := c.m
	p := overviewPage{Version: m.version, Commit: m.commit, Started: m.started}
	src := m.src.get()
	if src.Listeners != nil {
		p.Listeners = src.Listeners()
	}
	if c.sessions != nil {
		st := c.sessions.Stats()
		for l, n := range st.Active {
			p.Active = append(p.Active, Counter{l, int64(n)})
		}
		slices.SortFunc(p.Active, func(a, b Counter) int { return cmp.Compare(a.Name, b.Name) })
		p.Relaying = st.Relaying
		for _, s := range c.sessions.SessionList() {
			if s.TLSVersion != "" {
				p.LiveTLS++
				if s.SNI == "" {
					p.LiveNoSNI++
				}
			}
		}
	}
	last := m.loginsPerMinute.last(m.now())
	for _, x := range counters(m.logins, "result") {
		p.Logins = append(p.Logins, LoginCount{x.Name, x.Value, last[x.Name]})
	}
	p.Handshakes = slices.DeleteFunc(counters(m.tlsHandshakes, "version", "cipher"), func(c Counter) bool { return c.Value == 0 })
	p.LegacySeen = len(m.LegacyClients())
	m.reloadMu.Lock()
	p.LastReload, p.LastReloadErr = m.lastReload, m.lastReloadErr
	m.reloadMu.Unlock()
	return p
}

type certRow struct {
	CertificateInfo
	DaysLeft int
}

type certificatesPage struct {
	Known bool
	Certs []certRow
}

func (c *console) certificates() certificatesPage {
	src := c.m.src.get()
	var p certificatesPage
	now := c.now()
	if src.CertificateDetails != nil {
		p.Known = true
		for _, ci := range src.CertificateDetails() {
			p.Certs = append(p.Certs, certRow{ci, int(ci.NotAfter.Sub(now).Hours() / 24)})
		}
		slices.SortFunc(p.Certs, func(a, b certRow) int { return a.NotAfter.Compare(b.NotAfter) })
	}
	return p
}

type backendRow struct {
	BackendInfo
	Checked     bool
	Health      []AddressHealth
	Sessions    int
	LoginsOK    int64
	Rejected    int64
	Errors      int64
	ConnectErrs int64
}

type backendsPage struct {
	Known    bool
	Backends []backendRow
}

func (c *console) backends() backendsPage {
	src := c.m.src.get()
	var p backendsPage
	if src.Backends == nil {
		return p
	}
	p.Known = true
	sessions := map[string]int{}
	if c.sessions != nil {
		for _, s := range c.sessions.SessionList() {
			if s.Backend != "" {
				sessions[s.Backend]++
			}
		}
	}
	var health map[string][]AddressHealth
	if src.BackendHealth != nil {
		health = map[string][]AddressHealth{}
		for _, h := range src.BackendHealth() {
			health[h.Backend] = append(health[h.Backend], AddressHealth{
				Address: h.Address, Up: h.Up, LastCheck: h.LastCheck, Latency: h.Latency, Err: h.LastErr})
		}
	}
	logins := map[string]int64{}
	for _, x := range counters(c.m.backendLogins, "backend", "result") {
		logins[x.Name] = x.Value
	}
	errs := map[string]int64{}
	for _, x := range counters(c.m.backendErrors, "backend", "stage") {
		errs[x.Name] = x.Value
	}
	for _, b := range src.Backends() {
		row := backendRow{BackendInfo: b, Sessions: sessions[b.Name],
			LoginsOK: logins[b.Name+" ok"], Rejected: logins[b.Name+" rejected"], Errors: logins[b.Name+" error"],
			ConnectErrs: errs[b.Name+" connect"]}
		if h, ok := health[b.Name]; ok {
			row.Checked, row.Health = true, h
		}
		p.Backends = append(p.Backends, row)
	}
	return p
}

// since says how long ago t was, coarsely.
func since(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
