package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured; it is printed as a table and
// written as JSON. Durations are in the unit their name says; MB is 10^6
// octets, GB 10^9. A nil pointer is a figure that could not be measured
// (the CPU of an in-memory backend, which runs inside the benchmark).
type Report struct {
	Meta      Meta             `json:"meta"`
	Workloads []WorkloadResult `json:"workloads"`
	Idle      *IdleResult      `json:"idle,omitempty"`
	Checks    []Check          `json:"checks"`
	OK        bool             `json:"ok"`
}

// Meta says what ran, where.
type Meta struct {
	Start          time.Time `json:"start"`
	Seconds        float64   `json:"seconds"`
	Args           []string  `json:"args"`
	CPUs           int       `json:"cpus"`
	CPUModel       string    `json:"cpu_model,omitempty"`
	Kernel         string    `json:"kernel,omitempty"`
	GoVersion      string    `json:"go_version"`
	Cert           string    `json:"cert"`
	ClientTLS      string    `json:"client_tls"`
	Backend        string    `json:"backend"`
	BackendVersion string    `json:"backend_version,omitempty"`
	BackendTuning  []string  `json:"backend_tuning,omitempty"`
	Popgate        string    `json:"popgate"`
	Nginx          string    `json:"nginx,omitempty"` // the peer, when it ran
	DovecotProxy   string    `json:"dovecot_proxy,omitempty"`
	Cluster        string    `json:"cluster,omitempty"`            // the popgate-cluster side's Redis (-cluster)
	OAuth          string    `json:"oauth,omitempty"`              // the token workloads' provider and backend login
	PopgateSource  string    `json:"popgate_source"`               // "built from source" or "given with -popgate"
	PopgateSigner  string    `json:"popgate_rsa_signer,omitempty"` // "go" or "openssl 3.0.x", from popgate version
}

// SideResult is one side (direct, popgate or nginx) of one workload.
type SideResult struct {
	Side           string   `json:"side"`
	Sessions       int      `json:"sessions"`
	Errors         int      `json:"errors"`
	ErrorSamples   []string `json:"error_samples,omitempty"`
	Seconds        float64  `json:"seconds"`
	SessionsPerSec float64  `json:"sessions_per_s"`
	Bytes          int64    `json:"bytes,omitempty"`   // RETR responses as received
	Payload        int64    `json:"payload,omitempty"` // unstuffed messages, all verified
	MBPerSec       float64  `json:"mb_per_s,omitempty"`
	SessionP50Ms   float64  `json:"session_p50_ms"`
	SessionP99Ms   float64  `json:"session_p99_ms"`
	LoginP50Ms     float64  `json:"login_p50_ms"` // dial to PASS's +OK
	LoginP99Ms     float64  `json:"login_p99_ms"`
	TLS            string   `json:"tls,omitempty"`
	Resumed        int      `json:"resumed,omitempty"` // sessions whose TLS handshake resumed

	// The proxy of this side (popgate or nginx; none for direct): its CPU
	// (nginx: master and workers) and per session and GB.
	ProxyCPUSec          float64  `json:"proxy_cpu_s,omitempty"`
	ProxyCPUPerSessionMs float64  `json:"proxy_cpu_per_session_ms,omitempty"`
	ProxyCPUPerGBSec     *float64 `json:"proxy_cpu_per_gb_s,omitempty"`

	// popgate's own figures, on every side (on direct and nginx sides
	// popgate idles); the proxy_ figures above are popgate's on its side.
	PopgateCPUSec          float64  `json:"popgate_cpu_s"`
	PopgateCPUPerSessionMs float64  `json:"popgate_cpu_per_session_ms"`
	PopgateCPUPerGBSec     *float64 `json:"popgate_cpu_per_gb_s,omitempty"`
	PopgateRSSKiB          int64    `json:"popgate_rss_kib"`
	BackendCPUSec          *float64 `json:"backend_cpu_s"`
	BackendCPUPerSessionMs *float64 `json:"backend_cpu_per_session_ms"`
	BackendCPUPerGBSec     *float64 `json:"backend_cpu_per_gb_s,omitempty"`
	ClientCPUSec           float64  `json:"client_cpu_s"` // the benchmark process itself
	// Redis's CPU, on the popgate-cluster side (-cluster).
	RedisCPUSec          *float64 `json:"redis_cpu_s,omitempty"`
	RedisCPUPerSessionMs *float64 `json:"redis_cpu_per_session_ms,omitempty"`
}

// Ratios compare the popgate side with the direct side of one workload.
type Ratios struct {
	// CPUPerSession is popgate's own CPU per proxied session over the
	// backend's CPU per direct (TLS) session.
	CPUPerSession *float64 `json:"cpu_per_session,omitempty"`
	// CPUPerGB is popgate's CPU per GB relayed over the backend's per GB
	// sent directly over TLS.
	CPUPerGB *float64 `json:"cpu_per_gb,omitempty"`
	// Throughput is popgate's sessions/s (MB/s for RETR) over direct's.
	Throughput      float64 `json:"throughput"`
	AddedP50Ms      float64 `json:"added_session_p50_ms"`
	AddedP99Ms      float64 `json:"added_session_p99_ms"`
	AddedLoginP50Ms float64 `json:"added_login_p50_ms"`
	AddedLoginP99Ms float64 `json:"added_login_p99_ms"`
}

// WorkloadResult is one workload at one concurrency with one certificate
// kind, every side.
type WorkloadResult struct {
	Name        string      `json:"name"`
	Workload    string      `json:"workload"` // login, login-resume, retr
	Concurrency int         `json:"concurrency"`
	Cert        string      `json:"cert,omitempty"`
	Direct      SideResult  `json:"direct"`
	Popgate     SideResult  `json:"popgate"`
	Nginx       *SideResult `json:"nginx,omitempty"`
	// DovecotProxy is a second Dovecot proxying (proxy=y) to the backend.
	DovecotProxy *SideResult `json:"dovecot_proxy,omitempty"`
	Ratios       Ratios      `json:"ratios"` // popgate / direct
	// VsNginx compares popgate with nginx: popgate's CPU over nginx's
	// (master and workers), throughput over nginx's, latency added to
	// nginx's.
	VsNginx *Ratios `json:"popgate_vs_nginx,omitempty"`
	// VsDovecotProxy compares popgate with the Dovecot proxy likewise.
	VsDovecotProxy *Ratios `json:"popgate_vs_dovecot_proxy,omitempty"`
	// PopgateCluster is a second popgate with [cluster] (-cluster), its
	// failed-login budgets in Redis; ClusterVsPopgate compares it with
	// the popgate side.
	PopgateCluster   *SideResult `json:"popgate_cluster,omitempty"`
	ClusterVsPopgate *Ratios     `json:"popgate_cluster_vs_popgate,omitempty"`
}

// IdleResult is the idle workload: sessions logged in through popgate and
// held, and popgate's memory with them.
type IdleResult struct {
	Sessions      int      `json:"sessions"`
	Opened        int      `json:"opened"`
	Errors        int      `json:"errors"`
	ErrorSamples  []string `json:"error_samples,omitempty"`
	Backend       string   `json:"backend"`
	OpenSeconds   float64  `json:"open_seconds"`
	RSSBeforeKiB  int64    `json:"rss_before_kib"`
	RSSWithKiB    int64    `json:"rss_with_sessions_kib"`
	RSSAfterKiB   int64    `json:"rss_after_close_kib"`
	PerSessionKiB float64  `json:"rss_per_session_kib"`
	// After popgate has seen no new connection for its quiet period (it
	// then returns freed memory to the OS).
	QuietSeconds       float64 `json:"quiet_after_seconds"`
	RSSQuietKiB        int64   `json:"rss_with_sessions_quiet_kib"`
	PerSessionQuietKiB float64 `json:"rss_per_session_quiet_kib"`
	FDsBefore          int     `json:"fds_before"`
	FDsWith            int     `json:"fds_with_sessions"`
	FDsAfter           int     `json:"fds_after_close"`
	ThreadsWith        int64   `json:"threads_with_sessions"`
	CPUPerLoginMs      float64 `json:"popgate_cpu_per_login_ms"` // while opening
}

// Check is one end-of-run verdict.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// ratios compares w's popgate side with its direct side: popgate's CPU
// with the backend's.
func ratios(w *WorkloadResult) Ratios {
	d, p := &w.Direct, &w.Popgate
	return compare(d, p, d.BackendCPUPerSessionMs, d.BackendCPUPerGBSec)
}

// vsNginx compares w's popgate side with its nginx side, nil without one:
// popgate's CPU with nginx's.
func vsNginx(w *WorkloadResult) *Ratios { return vsPeer(w, w.Nginx) }

// vsPeer compares w's popgate side with the peer side n (nginx or the
// Dovecot proxy), nil without one: popgate's CPU with the peer's.
func vsPeer(w *WorkloadResult, n *SideResult) *Ratios {
	if n == nil {
		return nil
	}
	var perSession *float64
	if n.ProxyCPUPerSessionMs > 0 {
		perSession = ptr(n.ProxyCPUPerSessionMs)
	}
	return ptr(compare(n, &w.Popgate, perSession, n.ProxyCPUPerGBSec))
}

// compare computes the ratios of p (popgate's side) over base, whose CPU
// per session and per GB (nil: not measured) are baseCPU and baseGB.
func compare(base, p *SideResult, baseCPU, baseGB *float64) Ratios {
	d := base
	r := Ratios{
		AddedP50Ms:      p.SessionP50Ms - d.SessionP50Ms,
		AddedP99Ms:      p.SessionP99Ms - d.SessionP99Ms,
		AddedLoginP50Ms: p.LoginP50Ms - d.LoginP50Ms,
		AddedLoginP99Ms: p.LoginP99Ms - d.LoginP99Ms,
	}
	if d.MBPerSec > 0 {
		r.Throughput = p.MBPerSec / d.MBPerSec
	} else if d.SessionsPerSec > 0 {
		r.Throughput = p.SessionsPerSec / d.SessionsPerSec
	}
	if b := baseCPU; b != nil && *b > 0 {
		r.CPUPerSession = ptr(p.PopgateCPUPerSessionMs / *b)
	}
	if b := baseGB; b != nil && *b > 0 && p.PopgateCPUPerGBSec != nil {
		r.CPUPerGB = ptr(*p.PopgateCPUPerGBSec / *b)
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// writeTable prints r for people.
func writeTable(w io.Writer, r *Report) {
	m := r.Meta
	fmt.Fprintf(w, "pop3bench %s: %d CPUs", m.Start.Format("2006-01-02 15:04:05 MST"), m.CPUs)
	if m.CPUModel != "" {
		fmt.Fprintf(w, " (%s)", m.CPUModel)
	}
	fmt.Fprintf(w, ", %s, kernel %s\n", m.GoVersion, m.Kernel)
	fmt.Fprintf(w, "certificate %s; clients: %s\n", m.Cert, m.ClientTLS)
	fmt.Fprintf(w, "backend %s", m.Backend)
	if m.BackendVersion != "" {
		fmt.Fprintf(w, " %s", m.BackendVersion)
	}
	fmt.Fprintf(w, "; popgate %s (%s", m.Popgate, m.PopgateSource)
	if m.PopgateSigner != "" {
		fmt.Fprintf(w, ", rsa signer %s", m.PopgateSigner)
	}
	fmt.Fprintf(w, ") -> backend over plaintext\n")
	if m.Nginx != "" {
		fmt.Fprintf(w, "peer: %s -> backend over plaintext, same certificate\n", m.Nginx)
	}
	if m.DovecotProxy != "" {
		fmt.Fprintf(w, "peer: dovecot-proxy, %s -> backend over plaintext\n", m.DovecotProxy)
	}
	if m.Cluster != "" {
		fmt.Fprintf(w, "popgate-cluster: the same popgate with [cluster] on %s\n", m.Cluster)
	}
	if m.OAuth != "" {
		fmt.Fprintf(w, "popgate-oauth: the same popgate with [oauth] (AUTH XOAUTH2, initial response), issuer %s\n", m.OAuth)
	}
	if len(m.BackendTuning) > 0 {
		fmt.Fprintf(w, "backend tuning: %s\n", strings.Join(m.BackendTuning, "; "))
	}

	if len(r.Workloads) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tside\tsessions\terr\tresumed\tsess/s\tMB/s\tp50 ms\tp99 ms\tlogin p50\tlogin p99\tpx CPU/sess\tpx CPU/GB\tbe CPU/sess\tbe CPU/GB\tpg RSS\t")
		for _, wr := range r.Workloads {
			for _, s := range wr.sides() {
				mbs, pxGB, beGB := "", "", ""
				if wr.Workload == "retr" {
					mbs = fmt.Sprintf("%.0f", s.MBPerSec)
					pxGB, beGB = optSec(s.ProxyCPUPerGBSec), optSec(s.BackendCPUPerGBSec)
				}
				login50, login99 := "", ""
				if wr.isLogin() {
					login50, login99 = fmt.Sprintf("%.2f", s.LoginP50Ms), fmt.Sprintf("%.2f", s.LoginP99Ms)
				}
				resumed := ""
				if wr.Workload == "login-resume" {
					resumed = fmt.Sprint(s.Resumed)
				}
				pxCPU, rss := fmt.Sprintf("%.3f ms", s.ProxyCPUPerSessionMs), "-"
				switch s.Side {
				case "direct":
					pxCPU = "-"
					if wr.Workload == "retr" {
						pxGB = "-"
					}
				case "popgate", "popgate-cluster", "popgate-oauth":
					rss = kib(s.PopgateRSSKiB)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%.0f\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
					wr.Name, s.Side, s.Sessions, s.Errors, resumed, s.SessionsPerSec, mbs,
					s.SessionP50Ms, s.SessionP99Ms, login50, login99,
					pxCPU, pxGB, optMs(s.BackendCPUPerSessionMs), beGB, rss)
			}
		}
		tw.Flush()
		fmt.Fprintln(w, "  px = the side's proxy (popgate; nginx: master and workers; dovecot-proxy: all its processes), be = backend, pg = popgate;")
		fmt.Fprintln(w, "  CPU is user+system time from /proc, per session or per GB (10^9 octets) relayed;")
		fmt.Fprintln(w, "  latencies: whole session (dial to the server's close after QUIT) and login (dial to PASS's +OK); MB = 10^6 octets;")
		fmt.Fprintln(w, "  login-resume: each client resumes its TLS session (its first, full handshake unmeasured)")

		fmt.Fprintln(w)
		fmt.Fprintln(w, "popgate / direct:")
		for _, wr := range r.Workloads {
			fmt.Fprintf(w, "  %-20s %s\n", wr.Name, strings.Join(ratioParts(&wr, &wr.Direct, wr.Ratios, "direct", wr.Direct.BackendCPUPerSessionMs, wr.Direct.BackendCPUPerGBSec), "; "))
		}
		for _, peer := range []string{"nginx", "dovecot-proxy"} {
			var vs []string
			for _, wr := range r.Workloads {
				n, rt := wr.Nginx, wr.VsNginx
				if peer == "dovecot-proxy" {
					n, rt = wr.DovecotProxy, wr.VsDovecotProxy
				}
				if n == nil || rt == nil {
					continue
				}
				vs = append(vs, fmt.Sprintf("  %-20s %s", wr.Name, strings.Join(ratioParts(&wr, n, *rt, peer, nonZero(n.ProxyCPUPerSessionMs), n.ProxyCPUPerGBSec), "; ")))
			}
			if len(vs) > 0 {
				fmt.Fprintln(w)
				fmt.Fprintf(w, "popgate / %s:\n", peer)
				for _, l := range vs {
					fmt.Fprintln(w, l)
				}
			}
		}
	}

	var cl []string
	for _, wr := range r.Workloads {
		c, rt := wr.PopgateCluster, wr.ClusterVsPopgate
		if c == nil || rt == nil || !wr.isLogin() {
			continue
		}
		cl = append(cl, fmt.Sprintf("  %-20s CPU per login %.3f vs %.3f ms (%+.3f ms, %.2fx), Redis CPU per login %s; throughput %.2fx; added login latency p50 %+.2f ms, p99 %+.2f ms",
			wr.Name, c.PopgateCPUPerSessionMs, wr.Popgate.PopgateCPUPerSessionMs, c.PopgateCPUPerSessionMs-wr.Popgate.PopgateCPUPerSessionMs,
			deref(rt.CPUPerSession), optMs(c.RedisCPUPerSessionMs), rt.Throughput, rt.AddedLoginP50Ms, rt.AddedLoginP99Ms))
	}
	if len(cl) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "popgate with [cluster] (failed-login counters in Redis) / popgate:")
		for _, l := range cl {
			fmt.Fprintln(w, l)
		}
	}

	if tl := tokenLines(r.Workloads); len(tl) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "token logins (popgate-oauth, AUTH XOAUTH2, master login to the backend) / password logins (popgate, USER/PASS):")
		for _, l := range tl {
			fmt.Fprintln(w, l)
		}
	}

	if id := r.Idle; id != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "idle: %d sessions logged in through popgate and held (backend: %s)\n", id.Sessions, id.Backend)
		fmt.Fprintf(w, "  opened %d in %.1f s (%d errors), popgate CPU %.3f ms per login while opening\n",
			id.Opened, id.OpenSeconds, id.Errors, id.CPUPerLoginMs)
		fmt.Fprintf(w, "  popgate RSS %s before, %s with the sessions, %s after they closed: %.1f KiB per idle session\n",
			kib(id.RSSBeforeKiB), kib(id.RSSWithKiB), kib(id.RSSAfterKiB), id.PerSessionKiB)
		if id.RSSQuietKiB > 0 {
			fmt.Fprintf(w, "  %.0f s after the last login (popgate quiet): RSS %s with the sessions: %.1f KiB per idle session\n",
				id.QuietSeconds, kib(id.RSSQuietKiB), id.PerSessionQuietKiB)
		}
		fmt.Fprintf(w, "  popgate fds %d before, %d with the sessions, %d after; %d threads\n",
			id.FDsBefore, id.FDsWith, id.FDsAfter, id.ThreadsWith)
	}

	if len(r.Checks) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "checks:")
		for _, c := range r.Checks {
			verdict := "ok  "
			if !c.OK {
				verdict = "FAIL"
			}
			fmt.Fprintf(w, "  %s %s", verdict, c.Name)
			if c.Detail != "" {
				fmt.Fprintf(w, ": %s", c.Detail)
			}
			fmt.Fprintln(w)
		}
	}
	for _, wr := range r.Workloads {
		for _, s := range wr.sides() {
			for _, e := range s.ErrorSamples {
				fmt.Fprintf(w, "  error (%s, %s): %s\n", wr.Name, s.Side, e)
			}
		}
	}
	if r.Idle != nil {
		for _, e := range r.Idle.ErrorSamples {
			fmt.Fprintf(w, "  error (idle): %s\n", e)
		}
	}
}

// sides returns w's sides in the order the table shows them.
func (w *WorkloadResult) sides() []*SideResult {
	s := []*SideResult{&w.Direct, &w.Popgate}
	if w.Nginx != nil {
		s = append(s, w.Nginx)
	}
	if w.DovecotProxy != nil {
		s = append(s, w.DovecotProxy)
	}
	if w.PopgateCluster != nil {
		s = append(s, w.PopgateCluster)
	}
	return s
}

// isLogin reports whether w is a login workload (full or resumed).
// tokenLines sets popgate's CPU per login of each token workload beside
// that of the login workload at the same concurrency and certificate.
func tokenLines(ws []WorkloadResult) []string {
	var lines []string
	for _, t := range ws {
		if !isTokenWorkload(t.Workload) {
			continue
		}
		for _, p := range ws {
			if p.Workload != "login" || p.Concurrency != t.Concurrency || p.Cert != t.Cert {
				continue
			}
			tc, pc := t.Popgate.PopgateCPUPerSessionMs, p.Popgate.PopgateCPUPerSessionMs
			line := fmt.Sprintf("  %-24s popgate CPU per login %.3f vs %.3f ms (%+.3f ms", t.Name, tc, pc, tc-pc)
			if pc > 0 {
				line += fmt.Sprintf(", %.2fx", tc/pc)
			}
			line += fmt.Sprintf("), backend CPU per login %s vs %s; throughput %.0f vs %.0f/s",
				optMs(t.Popgate.BackendCPUPerSessionMs), optMs(p.Popgate.BackendCPUPerSessionMs), t.Popgate.SessionsPerSec, p.Popgate.SessionsPerSec)
			lines = append(lines, line)
		}
	}
	return lines
}

func (w *WorkloadResult) isLogin() bool {
	return w.Workload == "login" || w.Workload == "login-resume" || isTokenWorkload(w.Workload)
}

// ratioParts words the ratios rt of w's popgate side over base (named
// name), whose CPU per session and per GB are baseCPU and baseGB.
func ratioParts(w *WorkloadResult, base *SideResult, rt Ratios, name string, baseCPU, baseGB *float64) []string {
	var parts []string
	p := &w.Popgate
	if rt.CPUPerSession != nil && w.isLogin() {
		what := "CPU per login"
		if w.Workload == "login-resume" {
			what = "CPU per resumed login"
		}
		parts = append(parts, fmt.Sprintf("%s %.2fx (%.3f vs %.3f ms)", what, *rt.CPUPerSession, p.PopgateCPUPerSessionMs, deref(baseCPU)))
	}
	if rt.CPUPerGB != nil {
		parts = append(parts, fmt.Sprintf("CPU per GB %.2fx (%.2f vs %.2f s)", *rt.CPUPerGB, deref(p.PopgateCPUPerGBSec), deref(baseGB)))
	}
	if name == "direct" {
		if d, pb := base.BackendCPUPerSessionMs, p.BackendCPUPerSessionMs; w.isLogin() && d != nil && pb != nil {
			parts = append(parts, fmt.Sprintf("popgate+backend CPU per login %.3f ms vs direct %.3f ms", p.PopgateCPUPerSessionMs+*pb, *d))
		}
	}
	parts = append(parts, fmt.Sprintf("throughput %.2fx", rt.Throughput))
	if w.isLogin() {
		parts = append(parts, fmt.Sprintf("added login latency p50 %+.2f ms, p99 %+.2f ms", rt.AddedLoginP50Ms, rt.AddedLoginP99Ms))
	}
	parts = append(parts, fmt.Sprintf("added session latency p50 %+.2f ms, p99 %+.2f ms", rt.AddedP50Ms, rt.AddedP99Ms))
	return parts
}

func nonZero(v float64) *float64 {
	if v == 0 {
		return nil
	}
	return &v
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func optMs(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.3f ms", *p)
}

func optSec(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f s", *p)
}

// kib formats a size in KiB as MiB with one decimal.
func kib(v int64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(v)/1024)
}

// writeJSON writes r, indented, to path.
func writeJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
