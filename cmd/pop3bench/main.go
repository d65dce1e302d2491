// Command pop3bench is popgate's benchmark: it measures popgate side by
// side with the backend it fronts, in one run, and reports the ratios.
//
// From the repository root, as root (Dovecot drops privileges itself):
//
//	go run ./cmd/pop3bench
//
// It builds popgate from the current source and runs it as a separate
// process with a generated configuration: one implicit-TLS listener on
// 127.0.0.1 with a certificate the benchmark generates (ECDSA P-256 with
// -cert ec, RSA-2048 with -cert rsa; -cert both runs the login workloads
// once with each), in front of the backend's plaintext port (the
// legacy-server case). The backend is a real Dovecot, tuned for
// performance, when the dovecot binary is installed, and the in-memory
// server of proxy/pop3test otherwise (-backend forces either).
//
// nginx's mail proxy runs beside popgate as a peer (-nginx=false leaves it
// out; Debian's nginx and libnginx-mod-mail are installed with apt-get when
// missing): its own process (daemon off, its own prefix, pid and log
// files, stopped by PID), a master with worker_processes auto (one worker
// per CPU, as popgate is one process using every CPU), the same
// certificate and the same backend port, session tickets and a shared
// session cache, and an auth_http the benchmark answers itself. With a
// Dovecot backend, a second Dovecot proxying every user to it (proxy=y in
// its passdb, the benchmark's tuning) is a further peer (-dovecot-proxy).
//
// Every workload runs on each side: "direct", the clients talking POP3S
// to the backend itself, "popgate", the same clients through popgate,
// "nginx", through nginx, and "dovecot-proxy", through the Dovecot proxy.
// Sessions send one command at a time:
//
//   - login, at 1 and 32 concurrent clients: connect, a full TLS 1.3
//     handshake (no session cache), greeting, USER, PASS, STAT, QUIT, and
//     wait for the server to close;
//   - login-resume, the same, but each client keeps a TLS session cache:
//     its first session (unmeasured) makes a full handshake, every
//     measured one offers to resume, and the report counts those that did;
//   - retr, at 4 concurrent clients: the same as login with RETR of a
//     10 MiB message full of dot-stuffed lines, its size checked against
//     the "+OK n octets" line and its unstuffed content against a CRC;
//   - idle: -idle sessions logged in through popgate and held, and
//     popgate's resident memory per session. These go to the in-memory
//     backend (a Dovecot POP3 session is a process of its own) in a fresh
//     popgate process, so that earlier workloads leave nothing in its heap.
//
// For each workload and side it reports sessions/s, latency percentiles,
// MB/s, errors, resumed sessions, the proxy's CPU (utime+stime from /proc;
// nginx's master and workers together, the Dovecot proxy's master and all
// its processes) per session and per GB, popgate's RSS, the backend's CPU
// (Dovecot's master and all its processes), and the ratios popgate/direct,
// popgate/nginx and popgate/dovecot-proxy. The figures are printed as
// a table and written as JSON (-json). At the end it checks that there
// was no error, that every byte arrived, that every login-resume session
// through popgate and nginx resumed, that popgate's file descriptors went
// back to their baseline once all sessions had closed, and that popgate
// and nginx are still alive and exit cleanly; it exits 1 if a check
// failed.
//
// The token workloads (-oauth runs both) log in with OAuth 2.0 bearer
// tokens, AUTH XOAUTH2 with the token as the initial response, through a
// second popgate, "popgate-oauth", with [oauth] verifying RS256 JWTs
// against internal/oidctest's OpenID provider (in the benchmark process,
// HTTPS on 127.0.0.1), and logging in to the backend as a master user
// (Dovecot's "user*master"; the in-memory backend takes AUTH PLAIN with
// the user as authorization identity):
//
//   - login-token-cached, at 1 and 32 concurrent clients: as login, with
//     one token per mailbox, verified by popgate in the warm-up and taken
//     from its cache of verified tokens in every measured session;
//   - login-token-new: a token popgate has not seen in every session (its
//     RS256 signature checked against the cached JWKS); the tokens are
//     signed before the measurement, so the clients' CPU is not in it.
//
// Their direct side logs in to the backend with the password, as login
// does, and the report sets popgate's CPU per token login beside its CPU
// per password login (the login workload) at the same concurrency.
//
// With -cluster, a second popgate runs beside the first with [cluster]
// (a private redis-server of internal/dirrun, as the fleet tests use): the
// side "popgate-cluster", whose failed-login budgets live in Redis, for
// the cost per login of the shared counters (popgate's CPU, and Redis's
// CPU beside it).
//
// Everything listens on 127.0.0.1 only. The benchmark stops only the
// processes it started, by PID, and removes its temporary directory.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/proxy/pop3test"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags.
type options struct {
	Certs       []certgen.KeyType // the login workloads run once with each
	Nginx       bool              // run nginx's mail proxy as a peer
	DProxy      bool              // run a Dovecot proxy as a peer (Dovecot backend only)
	Backend     string            // auto | dovecot | memory
	Workloads   map[string]bool
	Logins      int
	Retrs       int
	Duration    time.Duration
	Idle        int
	Popgate     string
	PopgateTags string // go build -tags of popgate
	JSON        string
	LogLevel    string
	MLKEM       bool
	IdleSettle  time.Duration
	Concurrency []int // of the login workload
	Cluster     bool  // run a second popgate with [cluster] on a private Redis
	Pool        bool  // route every login through a [[pool]] of the one backend
}

// tokenWorkloadNames are the workloads of bearer-token logins, through
// popgate-oauth.
func tokenWorkloadNames() []string { return []string{"login-token-cached", "login-token-new"} }

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("pop3bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./cmd/pop3bench [flags]\n\nBenchmarks popgate side by side with its backend (see the package comment).\n\n")
		fs.PrintDefaults()
	}
	o := &options{}
	cert := fs.String("cert", "ec", "certificate kind of popgate, nginx and the backend: ec (ECDSA P-256), rsa (RSA-2048), or both (the login workloads once with each; retr and idle with ECDSA)")
	fs.BoolVar(&o.Nginx, "nginx", true, "run nginx's mail proxy as a peer of popgate (installed with apt-get when missing)")
	fs.BoolVar(&o.DProxy, "dovecot-proxy", true, "with a Dovecot backend, run a second Dovecot as a proxy to it (proxy=y) as a peer of popgate")
	fs.StringVar(&o.Backend, "backend", "auto", "backend: dovecot, memory (proxy/pop3test in this process), or auto (dovecot when installed)")
	workloads := fs.String("workloads", "login,login-resume,retr,idle", "comma-separated workloads to run: login, login-resume, retr, idle, login-token-cached, login-token-new")
	oauth := fs.Bool("oauth", false, "add the token workloads login-token-cached and login-token-new (a popgate with [oauth] against a test OpenID provider on loopback)")
	fs.IntVar(&o.Logins, "logins", 5000, "login sessions per side and concurrency (at most; see -duration)")
	fs.IntVar(&o.Retrs, "retrs", 200, "RETR sessions of the 10 MiB message per side (at most; see -duration)")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "time limit of each side of each workload")
	fs.IntVar(&o.Idle, "idle", 2000, "idle sessions held through popgate (each costs the benchmark 2 and popgate 2 file descriptors)")
	fs.StringVar(&o.Popgate, "popgate", "", "popgate binary to run instead of building ./cmd/popgate")
	fs.StringVar(&o.PopgateTags, "popgate-tags", "", "build tags of popgate (go build -tags), e.g. openssl for libcrypto's RSA signatures")
	fs.StringVar(&o.JSON, "json", "pop3bench.json", "file to write the figures to as JSON (\"\" for none)")
	fs.StringVar(&o.LogLevel, "popgate-log-level", "warn", "popgate's log.level (debug, info, warn, error); info logs a line per session")
	fs.BoolVar(&o.MLKEM, "mlkem", false, "let clients offer Go's default key exchanges (X25519MLKEM768 first) instead of X25519 only")
	fs.BoolVar(&o.Cluster, "cluster", false, "run a second popgate with [cluster] on a private redis-server (side popgate-cluster): the cost per login of the fleet's shared failed-login counters")
	fs.BoolVar(&o.Pool, "pool", false, "route the popgates' logins through a backend pool ([[pool]] of the one backend, affinity in Redis with -cluster): the cost per login of the assignment")
	fs.DurationVar(&o.IdleSettle, "idle-settle", 2*time.Second, "wait before sampling popgate's memory in the idle workload")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.Popgate != "" && o.PopgateTags != "" {
		return nil, errors.New("-popgate-tags builds popgate; with -popgate PATH nothing is built")
	}
	var err error
	if o.Certs, err = parseCerts(*cert); err != nil {
		return nil, err
	}
	switch o.Backend {
	case "auto", "dovecot", "memory":
	default:
		return nil, fmt.Errorf("-backend %q: want dovecot, memory or auto", o.Backend)
	}
	o.Workloads = map[string]bool{}
	for _, w := range strings.Split(*workloads, ",") {
		switch w = strings.TrimSpace(w); w {
		case "login", "login-resume", "retr", "idle", "login-token-cached", "login-token-new":
			o.Workloads[w] = true
		case "":
		default:
			return nil, fmt.Errorf("-workloads: unknown workload %q (want login, login-resume, retr, idle, login-token-cached, login-token-new)", w)
		}
	}
	if *oauth {
		for _, w := range tokenWorkloadNames() {
			o.Workloads[w] = true
		}
	}
	if len(o.Workloads) == 0 {
		return nil, errors.New("-workloads: nothing to run")
	}
	switch o.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("-popgate-log-level %q: want debug, info, warn or error", o.LogLevel)
	}
	if o.Logins < 1 || o.Retrs < 1 || o.Duration <= 0 || o.IdleSettle < 0 {
		return nil, errors.New("-logins and -retrs must be positive, -duration too")
	}
	// Each idle session holds two descriptors in this process (client and
	// in-memory server) and two in popgate.
	if limit := fdLimit(); o.Workloads["idle"] && (o.Idle < 1 || 2*o.Idle+200 > limit) {
		return nil, fmt.Errorf("-idle %d: want 1 to %d (this process and popgate may each hold %d file descriptors and need 2 per idle session)", o.Idle, (limit-200)/2, limit)
	}
	o.Concurrency = []int{1, 32}
	return o, nil
}

// parseCerts parses -cert: ec (or ecdsa), rsa, or both.
func parseCerts(v string) ([]certgen.KeyType, error) {
	switch v {
	case "ec", "ecdsa", "":
		return []certgen.KeyType{certgen.ECDSA}, nil
	case "rsa":
		return []certgen.KeyType{certgen.RSA}, nil
	case "both":
		return []certgen.KeyType{certgen.ECDSA, certgen.RSA}, nil
	}
	return nil, fmt.Errorf("-cert %q: want ec, rsa or both", v)
}

func fdLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return int(min(rl.Max, 1<<20))
}

// Sizes of the workloads.
const (
	loginUsers  = 100 // mailboxes the login workload rotates through
	retrClients = 4
	retrSize    = 10 << 20
	warmup      = 20 // unmeasured sessions before each measurement, at least
	idleOpeners = 32 // clients opening idle sessions at once
	popgateName = "popgate.test"
)

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "pop3bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{o: o, progress: stderr}
	rep, err := b.run(ctx)
	if cerr := b.cleanup(); cerr != nil {
		fmt.Fprintf(stderr, "pop3bench: cleanup: %v\n", cerr)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted; everything it started is stopped")
		}
		fmt.Fprintf(stderr, "pop3bench: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout)
	writeTable(stdout, rep)
	if o.JSON != "" {
		path := o.JSON
		if err := writeJSON(path, rep); err != nil {
			path = filepath.Join(os.TempDir(), "pop3bench.json")
			if err2 := writeJSON(path, rep); err2 != nil {
				fmt.Fprintf(stderr, "pop3bench: write JSON: %v; %v\n", err, err2)
				return 1
			}
		}
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
		}
		fmt.Fprintf(stdout, "\nJSON written to %s\n", path)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// bench is one run of the benchmark and what it started.
type bench struct {
	o        *options
	progress io.Writer
	dir      string // temporary; removed by cleanup

	ca       *certgen.CA
	caFile   string
	pgCert   string
	pgKey    string
	bin      string
	back     *backend // login and retr, of the current certificate phase
	idleBack *backend // idle: always in-memory
	procs    []*popgateProc
	nginx    *nginxProc // of the current certificate phase
	dproxy   *backend   // the Dovecot proxy of the current phase, or nil
	cluster  *clusterSide
	oauth    *oauthSide // the token workloads' provider and popgate-oauth
	nginxBin string
	nginxMod string
	msg      []byte

	accounts     []account
	retrAccounts []account
	want         wantMessage
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "pop3bench: "+format+"\n", args...)
}

// cleanup stops everything the run started and removes its directory.
func (b *bench) cleanup() error {
	var errs []error
	for _, p := range b.procs {
		if err := p.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := b.nginx.stop(); err != nil {
		errs = append(errs, err)
	}
	if err := b.dproxy.stop(); err != nil {
		errs = append(errs, err)
	}
	if err := b.cluster.close(); err != nil {
		errs = append(errs, err)
	}
	if err := b.oauth.close(); err != nil {
		errs = append(errs, err)
	}
	if err := b.back.stop(); err != nil {
		errs = append(errs, err)
	}
	if err := b.idleBack.stop(); err != nil {
		errs = append(errs, err)
	}
	if b.dir != "" {
		errs = append(errs, os.RemoveAll(b.dir))
	}
	return errors.Join(errs...)
}

// clientTLS is the clients' configuration: TLS 1.3 only, no session cache
// (every session makes a full handshake), no ALPN (as most mail clients).
func (b *bench) clientTLS(serverName string) *tls.Config {
	c := &tls.Config{
		RootCAs:    b.ca.Pool,
		ServerName: serverName,
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
	}
	if !b.o.MLKEM {
		// What OpenSSL 3.0 clients (and most mail clients) offer, and what
		// OpenSSL 3.0 in Dovecot would pick anyway.
		c.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	return c
}

func (b *bench) run(ctx context.Context) (*Report, error) {
	start := time.Now()
	rep := &Report{Meta: Meta{
		Start: start, Args: os.Args[1:], CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		CPUModel: cpuModel(), Kernel: strings.TrimSpace(readOr("/proc/sys/kernel/osrelease")),
		Cert: certNames(b.o.Certs), ClientTLS: "TLS 1.3, full handshake per session (no session cache; login-resume: one per client), X25519",
	}}
	if b.o.MLKEM {
		rep.Meta.ClientTLS = "TLS 1.3, full handshake per session (no session cache; login-resume: one per client), Go's default key exchanges"
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return nil, fmt.Errorf("needs Linux's /proc: %w", err)
	}
	var err error
	if b.dir, err = os.MkdirTemp("", "pop3bench-"); err != nil {
		return nil, err
	}
	// Dovecot's unprivileged processes read their part below it.
	if err := os.Chmod(b.dir, 0o755); err != nil {
		return nil, err
	}

	// Build popgate while the certificates and the backend are prepared.
	type built struct {
		path string
		err  error
	}
	buildc := make(chan built, 1)
	if b.o.Popgate != "" {
		buildc <- built{b.o.Popgate, nil}
		rep.Meta.PopgateSource = "given with -popgate"
	} else {
		b.logf("building popgate from source")
		go func() {
			p, err := buildPopgate(ctx, b.dir, b.o.PopgateTags)
			buildc <- built{p, err}
		}()
		rep.Meta.PopgateSource = "built from source, no -race"
		if b.o.PopgateTags != "" {
			rep.Meta.PopgateSource += ", -tags " + b.o.PopgateTags
		}
	}

	if b.ca, err = certgen.NewCA("pop3bench", b.o.Certs[0]); err != nil {
		return nil, err
	}
	b.caFile = filepath.Join(b.dir, "ca.pem")
	if err := b.ca.WriteCert(b.caFile); err != nil {
		return nil, err
	}
	for i := range loginUsers {
		b.accounts = append(b.accounts, account{fmt.Sprintf("user%d", i), fmt.Sprintf("bench-pw-%d", i)})
	}
	for i := range retrClients {
		b.retrAccounts = append(b.retrAccounts, account{fmt.Sprintf("retr%d", i), fmt.Sprintf("bench-retr-pw-%d", i)})
	}
	b.msg = pop3test.GenerateMessage(retrSize)
	b.want = newWantMessage(b.msg)
	if b.o.Nginx && b.loadWorkloads() {
		if b.nginxBin, b.nginxMod, err = nginxBinary(ctx, b.logf); err != nil {
			return nil, fmt.Errorf("nginx (-nginx=false runs without it): %w", err)
		}
	}
	if b.o.Workloads["idle"] {
		mb := map[string]*pop3test.Mailbox{}
		for _, a := range b.idleAccounts() {
			mb[a.User] = &pop3test.Mailbox{Password: a.Pass}
		}
		if b.idleBack, err = startMemory(mb, nil, false); err != nil {
			return nil, err
		}
		if !b.loadWorkloads() {
			rep.Meta.Backend = "memory (idle only)"
		}
	}

	bl := <-buildc
	if bl.err != nil {
		return nil, bl.err
	}
	b.bin = bl.path
	rep.Meta.Popgate = b.bin
	rep.Meta.PopgateSigner = rsaSigner(b.bin)

	var checks []Check
	if b.loadWorkloads() {
		for i, kt := range b.o.Certs {
			ws, phaseChecks, err := b.certPhase(ctx, kt, i == 0, rep)
			if err != nil {
				return nil, err
			}
			rep.Workloads = append(rep.Workloads, ws...)
			checks = append(checks, phaseChecks...)
		}
	}
	if b.pgCert == "" { // idle only
		if b.pgCert, b.pgKey, err = b.ca.IssueFiles(b.dir, "popgate", popgateName, b.o.Certs[0]); err != nil {
			return nil, err
		}
	}
	if b.o.Workloads["idle"] {
		id, idleChecks, err := b.idleWorkload(ctx)
		if err != nil {
			return nil, err
		}
		rep.Idle = id
		checks = append(checks, idleChecks...)
	}
	rep.Checks = append(workloadChecks(rep), checks...)
	if c, ok := resumeCheck(rep.Workloads); ok {
		rep.Checks = append(rep.Checks, c)
	}
	rep.OK = true
	for _, c := range rep.Checks {
		rep.OK = rep.OK && c.OK
	}
	rep.Meta.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// loadWorkloads reports whether any of login, login-resume and retr runs.
func (b *bench) loadWorkloads() bool {
	return b.o.Workloads["login"] || b.o.Workloads["login-resume"] || b.o.Workloads["retr"] || b.tokenWorkloads()
}

// tokenWorkloads reports whether a token workload runs.
func (b *bench) tokenWorkloads() bool {
	return b.o.Workloads["login-token-cached"] || b.o.Workloads["login-token-new"]
}

// certPhase runs the load workloads with certificates of kind kt: the
// backend, popgate and nginx all start with one, run the login workloads
// (and, in the first phase, retr), and stop.
func (b *bench) certPhase(ctx context.Context, kt certgen.KeyType, first bool, rep *Report) ([]WorkloadResult, []Check, error) {
	var err error
	suffix := ""
	if len(b.o.Certs) > 1 {
		suffix = " " + shortCert(kt)
	}
	if b.pgCert, b.pgKey, err = b.ca.IssueFiles(b.dir, "popgate-"+string(kt), popgateName, kt); err != nil {
		return nil, nil, err
	}
	if err := b.startBackend(b.msg, kt); err != nil {
		return nil, nil, err
	}
	if first {
		rep.Meta.Backend, rep.Meta.BackendVersion, rep.Meta.BackendTuning = b.back.Kind, b.back.Version, b.back.Tuning
	}
	if err := b.prime(ctx); err != nil {
		return nil, nil, err
	}
	name := "popgate" + strings.ReplaceAll(suffix, " ", "-")
	pg, err := b.startPopgate(ctx, name, b.back.PlainAddr, "", nil)
	if err != nil {
		return nil, nil, err
	}
	fdBase, err := settledFDs(pg.PID, 0)
	if err != nil {
		return nil, nil, err
	}
	if b.nginxBin != "" {
		conf := b.clientTLS(popgateName)
		probe := func(addr string) error {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			c, err := dialPOP3(pctx, target{Addr: addr, TLS: conf})
			if err != nil {
				return err
			}
			defer c.Close()
			return c.quit()
		}
		if b.nginx, err = startNginx(ctx, b.nginxBin, b.nginxMod, filepath.Join(b.dir, "nginx-"+string(kt)), b.pgCert, b.pgKey, popgateName, b.back.PlainAddr, probe); err != nil {
			return nil, nil, err
		}
		rep.Meta.Nginx = "nginx " + b.nginx.Version + " (mail module; master + worker_processes auto)"
		b.logf("nginx running, pid %d, at %s", b.nginx.PID, b.nginx.Addr)
	}
	if b.o.DProxy && b.back.Kind == "dovecot" {
		b.logf("starting Dovecot as a proxy")
		dir := filepath.Join(b.dir, "dovecot-proxy-"+string(kt))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, nil, err
		}
		if b.dproxy, err = startDovecotProxy(dir, b.ca, b.caFile, kt, b.accounts, b.retrAccounts, b.back.PlainAddr, b.logf); err != nil {
			return nil, nil, err
		}
		rep.Meta.DovecotProxy = "a second Dovecot with proxy=y in its passdb, same tuning"
	}
	if b.o.Cluster {
		if err := b.startCluster(ctx, name+"-cluster", rep); err != nil {
			return nil, nil, err
		}
	}
	if b.tokenWorkloads() {
		if err := b.startOAuth(ctx, name+"-oauth", rep); err != nil {
			return nil, nil, err
		}
	}
	var ws, tws []WorkloadResult // through popgate, through popgate-oauth
	for _, wl := range append([]string{"login", "login-resume", "retr"}, tokenWorkloadNames()...) {
		if !b.o.Workloads[wl] || wl == "retr" && !first {
			continue
		}
		concs := b.o.Concurrency
		if wl == "retr" {
			concs = []int{retrClients}
		}
		for _, c := range concs {
			var w *WorkloadResult
			if isTokenWorkload(wl) {
				w, err = b.loadWorkload(ctx, b.oauth.pg, nil, wl, c)
			} else {
				w, err = b.loadWorkload(ctx, pg, b.nginx, wl, c)
			}
			if err != nil {
				return nil, nil, err
			}
			w.Name += suffix
			w.Cert = kt.String()
			if isTokenWorkload(wl) {
				tws = append(tws, *w)
			} else {
				ws = append(ws, *w)
			}
		}
	}
	mc := metricsCheck(pg, ws)
	mc.Name = strings.Replace(mc.Name, "popgate:", name+":", 1)
	checks := []Check{mc}
	checks = append(checks, b.endChecks(pg, name, fdBase)...)
	if side := b.oauth; side != nil && side.pg != nil {
		mc := metricsCheck(side.pg, tws)
		mc.Name = strings.Replace(mc.Name, "popgate:", name+"-oauth:", 1)
		checks = append(checks, mc)
		// Its HTTPS client keeps idle connections to the issuer (the JWKS
		// fetch), up to issuerIdleConns.
		checks = append(checks, b.endChecks(side.pg, name+"-oauth", side.fdBase+issuerIdleConns)...)
		side.pg = nil
	}
	ws = append(ws, tws...)
	if b.nginx != nil {
		alive := Check{Name: "nginx" + strings.ReplaceAll(suffix, " ", "-") + ": still running at the end", OK: b.nginx.alive(), Detail: fmt.Sprintf("pid %d", b.nginx.PID)}
		if !alive.OK {
			alive.Detail = fmt.Sprintf("pid %d exited: %v; log %s", b.nginx.PID, b.nginx.exitErr, b.nginx.LogFile)
		}
		err := b.nginx.stop()
		exit := Check{Name: "nginx" + strings.ReplaceAll(suffix, " ", "-") + ": stopped on SIGTERM", OK: err == nil}
		if err != nil {
			exit.Detail = err.Error()
		}
		checks = append(checks, alive, exit)
		b.nginx = nil
	}
	if cs := b.cluster; cs != nil {
		checks = append(checks, cs.check(name+"-cluster"))
		// Its Redis client keeps up to 4 connections (cluster's
		// PoolSize), opened as the load needs them.
		checks = append(checks, b.endChecks(cs.pg, name+"-cluster", cs.fdBase+redisPool)...)
		b.cluster = nil
		if err := cs.close(); err != nil {
			return nil, nil, err
		}
	}
	dpErr := b.dproxy.stop()
	b.dproxy = nil
	err = b.back.stop()
	b.back = nil
	return ws, checks, errors.Join(dpErr, err)
}

// isTokenWorkload reports whether workload logs in with bearer tokens.
func isTokenWorkload(workload string) bool {
	return workload == "login-token-cached" || workload == "login-token-new"
}

// shortCert names kt as -cert does.
func shortCert(kt certgen.KeyType) string {
	if kt == certgen.RSA {
		return "rsa"
	}
	return "ec"
}

// certNames names the certificate kinds for the report header.
func certNames(kts []certgen.KeyType) string {
	var names []string
	for _, kt := range kts {
		names = append(names, kt.String())
	}
	return strings.Join(names, ", then ")
}

// startBackend starts the login/retr backend the flags ask for, with a
// certificate of kind kt.
func (b *bench) startBackend(msg []byte, kt certgen.KeyType) error {
	kind := b.o.Backend
	if kind == "auto" {
		kind = "memory"
		if dovecotrun.Available() {
			kind = "dovecot"
		}
	}
	var err error
	switch kind {
	case "dovecot":
		b.logf("starting Dovecot")
		dir := filepath.Join(b.dir, "dovecot-"+string(kt))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		b.back, err = startDovecot(dir, b.ca, b.caFile, kt, b.accounts, b.retrAccounts, msg, b.tokenWorkloads(), func(f string, a ...any) { b.logf(f, a...) })
		return err
	default:
		certFile, keyFile, err := b.ca.IssueFiles(b.dir, "memory-"+string(kt), memoryServerName, kt)
		if err != nil {
			return err
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		mb := map[string]*pop3test.Mailbox{}
		for _, a := range b.accounts {
			mb[a.User] = &pop3test.Mailbox{Password: a.Pass}
		}
		for _, a := range b.retrAccounts {
			mb[a.User] = &pop3test.Mailbox{Password: a.Pass, Messages: [][]byte{msg}}
		}
		b.back, err = startMemory(mb, &cert, b.tokenWorkloads())
		return err
	}
}

// prime logs in to every mailbox once, directly, so that no measured
// session pays for a mailbox's first opening (Dovecot builds its index
// files then).
func (b *bench) prime(ctx context.Context) error {
	t := target{Side: "direct", Addr: b.back.TLSAddr, TLS: b.clientTLS(b.back.ServerName)}
	res := runLoad(ctx, t, b.accounts, 8, len(b.accounts), time.Minute, nil)
	retr := runLoad(ctx, t, b.retrAccounts, len(b.retrAccounts), len(b.retrAccounts), time.Minute, &b.want)
	if err := ctx.Err(); err != nil {
		return err
	}
	if res.Errors+retr.Errors > 0 {
		return fmt.Errorf("the backend fails sessions before the benchmark starts: %s", strings.Join(append(res.ErrorMsgs, retr.ErrorMsgs...), "; "))
	}
	return nil
}

// idleAccounts are the mailboxes of the idle workload, one per session.
func (b *bench) idleAccounts() []account {
	acc := make([]account, b.o.Idle)
	for i := range acc {
		acc[i] = account{fmt.Sprintf("idle%d", i), fmt.Sprintf("idle-pw-%d", i)}
	}
	return acc
}

// startPopgate runs a popgate named name in front of backendAddr, with
// extra at the end of its configuration and oauth as its [oauth] (nil:
// none).
func (b *bench) startPopgate(ctx context.Context, name, backendAddr, extra string, oauth []string) (*popgateProc, error) {
	cfg := popgateConfig{Extra: extra, OAuth: oauth,
		LogLevel: b.o.LogLevel, CertFile: b.pgCert, KeyFile: b.pgKey, ServerName: popgateName,
		Backends: []popgateBackend{{Name: "backend", Address: backendAddr}},
		Default:  "backend",
	}
	if b.o.Pool {
		// Every login is assigned by the pool, and with [cluster] its
		// affinity is read and held in Redis.
		cfg.Default = "pool"
		cfg.Extra = "\n[[pool]]\nname = \"pool\"\nbackends = [\"backend\"]\n" + cfg.Extra
	}
	conf := b.clientTLS(popgateName)
	probe := func(addr string) error {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := dialPOP3(pctx, target{Addr: addr, TLS: conf})
		if err != nil {
			return err
		}
		defer c.Close()
		return c.quit()
	}
	p, err := startPopgate(ctx, b.bin, b.dir, name, cfg, probe)
	if err != nil {
		return nil, err
	}
	b.procs = append(b.procs, p)
	b.logf("%s running, pid %d, at %s", name, p.PID, p.Addr)
	return p, nil
}

// loadWorkload runs workload ("login", "login-resume" or "retr") at
// concurrency conc, direct, through pg and through ng (when not nil).
func (b *bench) loadWorkload(ctx context.Context, pg *popgateProc, ng *nginxProc, workload string, conc int) (*WorkloadResult, error) {
	w := &WorkloadResult{Name: fmt.Sprintf("%s c=%d", workload, conc), Workload: workload, Concurrency: conc}
	accounts, total := b.accounts, b.o.Logins
	var want *wantMessage
	if workload == "retr" {
		accounts, total, want = b.retrAccounts, b.o.Retrs, &b.want
	}
	resume := workload == "login-resume"
	targets := []target{
		{Side: "direct", Addr: b.back.TLSAddr, TLS: b.clientTLS(b.back.ServerName), Resume: resume},
		{Side: "popgate", Addr: pg.Addr, TLS: b.clientTLS(popgateName), Resume: resume},
	}
	if isTokenWorkload(workload) {
		// pg is popgate-oauth, and only it takes tokens; the direct side
		// logs in with the password, as in every workload.
		targets[1].Side = "popgate-oauth"
		ng = nil
	}
	if ng != nil {
		targets = append(targets, target{Side: "nginx", Addr: ng.Addr, TLS: b.clientTLS(popgateName), Resume: resume})
	}
	if dp := b.dproxy; dp != nil && !isTokenWorkload(workload) {
		targets = append(targets, target{Side: "dovecot-proxy", Addr: dp.TLSAddr, TLS: b.clientTLS(dp.ServerName), Resume: resume})
	}
	if cs := b.cluster; cs != nil && !isTokenWorkload(workload) {
		targets = append(targets, target{Side: "popgate-cluster", Addr: cs.pg.Addr, TLS: b.clientTLS(popgateName), Resume: resume})
	}
	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		warm := max(warmup, 2*conc)
		switch {
		case t.Side != "popgate-oauth":
		case workload == "login-token-cached":
			// Every mailbox's token verified once, in order, so that
			// every measured login finds its token in popgate's cache.
			cached := b.oauth.cached
			t.Token = func(a account) string { return cached[a.User] }
			runLoad(ctx, t, accounts, 1, len(accounts), time.Minute, nil)
		default: // login-token-new
			b.logf("%s: signing about %d tokens", w.Name, total+warm)
			pool := newTokenPool(b.oauth.idp, accounts, total+warm)
			t.Token = pool.token
		}
		// Unmeasured: Dovecot forks its processes, every side warms up.
		runLoad(ctx, t, accounts, conc, warm, b.o.Duration, want)

		before := b.sample(pg, ng)
		res := runLoad(ctx, t, accounts, conc, total, b.o.Duration, want)
		time.Sleep(300 * time.Millisecond) // let processes finish the last sessions' teardown
		after := b.sample(pg, ng)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		side := sideResult(t.Side, res, before, after)
		switch t.Side {
		case "direct":
			w.Direct = side
		case "popgate", "popgate-oauth":
			w.Popgate = side
		case "nginx":
			w.Nginx = &side
		case "popgate-cluster":
			w.PopgateCluster = &side
		default:
			w.DovecotProxy = &side
		}
		b.logf("%s %s: %d sessions (%d resumed), %d errors, %.0f/s", w.Name, t.Side, res.Sessions, res.Resumed, res.Errors, side.SessionsPerSec)
	}
	w.Ratios = ratios(w)
	w.VsNginx = vsNginx(w)
	w.VsDovecotProxy = vsPeer(w, w.DovecotProxy)
	if w.PopgateCluster != nil {
		w.ClusterVsPopgate = ptr(compare(&w.Popgate, w.PopgateCluster, nonZero(w.Popgate.PopgateCPUPerSessionMs), w.Popgate.PopgateCPUPerGBSec))
	}
	return w, nil
}

// snapshot is the processes' counters at one moment.
type snapshot struct {
	PopgateCPU float64 // seconds
	NginxCPU   float64 // master and workers
	NginxOK    bool
	DProxyCPU  float64 // the Dovecot proxy's master and all its processes
	DProxyOK   bool
	BackendCPU float64
	BackendOK  bool
	ClientCPU  float64
	RSSKiB     int64
	// With -cluster: the second popgate's and Redis's CPU.
	ClusterCPU float64
	RedisCPU   float64
	ClusterOK  bool
}

func (b *bench) sample(pg *popgateProc, ng *nginxProc) snapshot {
	var s snapshot
	if ng != nil {
		s.NginxCPU, s.NginxOK = ng.cpu()
	}
	s.DProxyCPU, s.DProxyOK = b.dproxy.cpu()
	if cpu, err := processCPU(pg.PID); err == nil {
		s.PopgateCPU = cpu.Seconds()
	}
	if m, err := readMem(pg.PID); err == nil {
		s.RSSKiB = m.RSSKiB
	}
	s.BackendCPU, s.BackendOK = b.back.cpu()
	s.ClientCPU = selfCPU().Seconds()
	if cs := b.cluster; cs != nil {
		pc, err1 := processCPU(cs.pg.PID)
		rc, err2 := processCPU(cs.redis.PID())
		s.ClusterCPU, s.RedisCPU, s.ClusterOK = pc.Seconds(), rc.Seconds(), err1 == nil && err2 == nil
	}
	return s
}

// sideResult turns a run's client measurements and the counters around it
// into the figures of one side.
func sideResult(side string, res loadResult, before, after snapshot) SideResult {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	s := SideResult{
		Side: side, Sessions: res.Sessions, Errors: res.Errors, ErrorSamples: res.ErrorMsgs,
		Seconds:       res.Elapsed.Seconds(),
		Bytes:         res.Bytes,
		Payload:       res.Payload,
		SessionP50Ms:  ms(percentile(res.Session, 50)),
		SessionP99Ms:  ms(percentile(res.Session, 99)),
		LoginP50Ms:    ms(percentile(res.Login, 50)),
		LoginP99Ms:    ms(percentile(res.Login, 99)),
		PopgateCPUSec: after.PopgateCPU - before.PopgateCPU,
		PopgateRSSKiB: after.RSSKiB,
		ClientCPUSec:  after.ClientCPU - before.ClientCPU,
	}
	s.Resumed = res.Resumed
	switch side {
	case "popgate", "popgate-oauth":
		s.ProxyCPUSec = s.PopgateCPUSec
	case "nginx":
		if before.NginxOK && after.NginxOK {
			s.ProxyCPUSec = after.NginxCPU - before.NginxCPU
		}
	case "dovecot-proxy":
		if before.DProxyOK && after.DProxyOK {
			s.ProxyCPUSec = after.DProxyCPU - before.DProxyCPU
		}
	case "popgate-cluster":
		// Its popgate is the cluster one; popgate_ figures are its.
		if before.ClusterOK && after.ClusterOK {
			s.ProxyCPUSec = after.ClusterCPU - before.ClusterCPU
			s.PopgateCPUSec = s.ProxyCPUSec
			redis := after.RedisCPU - before.RedisCPU
			s.RedisCPUSec = &redis
			if res.Sessions > 0 {
				s.RedisCPUPerSessionMs = ptr(redis * 1000 / float64(res.Sessions))
			}
		}
	}
	if res.TLS != nil {
		s.TLS = fmt.Sprintf("%s %s %s", tls.VersionName(res.TLS.Version), tls.CipherSuiteName(res.TLS.CipherSuite), res.TLS.CurveID)
	}
	if s.Seconds > 0 {
		s.SessionsPerSec = float64(res.Sessions) / s.Seconds
		s.MBPerSec = float64(res.Bytes) / 1e6 / s.Seconds
	}
	if res.Sessions > 0 {
		s.PopgateCPUPerSessionMs = s.PopgateCPUSec * 1000 / float64(res.Sessions)
		s.ProxyCPUPerSessionMs = s.ProxyCPUSec * 1000 / float64(res.Sessions)
	}
	if res.Bytes > 0 {
		s.PopgateCPUPerGBSec = ptr(s.PopgateCPUSec / (float64(res.Bytes) / 1e9))
		if side != "direct" {
			s.ProxyCPUPerGBSec = ptr(s.ProxyCPUSec / (float64(res.Bytes) / 1e9))
		}
	}
	if before.BackendOK && after.BackendOK {
		cpu := after.BackendCPU - before.BackendCPU
		s.BackendCPUSec = &cpu
		if res.Sessions > 0 {
			s.BackendCPUPerSessionMs = ptr(cpu * 1000 / float64(res.Sessions))
		}
		if res.Bytes > 0 {
			s.BackendCPUPerGBSec = ptr(cpu / (float64(res.Bytes) / 1e9))
		}
	}
	return s
}

// idleWorkload holds -idle sessions through a fresh popgate in front of
// the in-memory backend and measures popgate's memory with them.
func (b *bench) idleWorkload(ctx context.Context) (*IdleResult, []Check, error) {
	pg, err := b.startPopgate(ctx, "popgate-idle", b.idleBack.PlainAddr, "", nil)
	if err != nil {
		return nil, nil, err
	}
	accounts := b.idleAccounts()
	t := target{Side: "popgate", Addr: pg.Addr, TLS: b.clientTLS(popgateName)}
	// A few whole sessions first, so the baseline includes the code and
	// pools every session needs.
	warm := runLoad(ctx, t, accounts, min(4, len(accounts)), warmup, time.Minute, nil)
	fdBase, err := settledFDs(pg.PID, 0)
	if err != nil {
		return nil, nil, err
	}
	sleepCtx(ctx, b.o.IdleSettle)
	m0, err := readMem(pg.PID)
	if err != nil {
		return nil, nil, err
	}
	cpu0, _ := processCPU(pg.PID)

	b.logf("idle: opening %d sessions through popgate", len(accounts))
	is := openIdle(ctx, t, accounts, idleOpeners)
	cpu1, _ := processCPU(pg.PID)
	sleepCtx(ctx, b.o.IdleSettle)
	m1, err := readMem(pg.PID)
	if err != nil {
		return nil, nil, err
	}
	fdsWith, _ := countFDs(pg.PID)
	opened := len(is.conns)
	// popgate returns freed memory to the OS once no connection has come
	// or gone for half a second after a burst (the sample above may or
	// may not come after that), and for any amount 5 s after the last
	// one; sample again once that has happened.
	quiet := max(b.o.IdleSettle, 12*time.Second)
	sleepCtx(ctx, quiet-b.o.IdleSettle)
	mq, err := readMem(pg.PID)
	if err != nil {
		return nil, nil, err
	}
	b.logf("idle: %d sessions open, popgate RSS %d KiB (before: %d KiB); closing them", opened, m1.RSSKiB, m0.RSSKiB)
	closeErrs, closeMsgs := is.closeAll(idleOpeners)
	fdsAfter, _ := settledFDs(pg.PID, fdBase)
	m2, _ := readMem(pg.PID)

	id := &IdleResult{
		Sessions: len(accounts), Opened: opened,
		Errors:       is.Errors + closeErrs + warm.Errors,
		ErrorSamples: append(append(append([]string{}, warm.ErrorMsgs...), is.ErrorMsgs...), closeMsgs...),
		Backend:      "in-memory proxy/pop3test inside the benchmark process (a Dovecot POP3 session is a process of its own)",
		OpenSeconds:  is.Elapsed.Seconds(),
		RSSBeforeKiB: m0.RSSKiB, RSSWithKiB: m1.RSSKiB, RSSAfterKiB: m2.RSSKiB,
		FDsBefore: fdBase, FDsWith: fdsWith, FDsAfter: fdsAfter,
		ThreadsWith: m1.Threads,
	}
	if opened > 0 {
		id.PerSessionKiB = float64(m1.RSSKiB-m0.RSSKiB) / float64(opened)
		id.QuietSeconds = quiet.Seconds()
		id.RSSQuietKiB = mq.RSSKiB
		id.PerSessionQuietKiB = float64(mq.RSSKiB-m0.RSSKiB) / float64(opened)
		id.CPUPerLoginMs = (cpu1 - cpu0).Seconds() * 1000 / float64(opened)
	}
	checks := []Check{{
		Name:   "idle: every session logged in and ended cleanly",
		OK:     id.Errors == 0 && opened == len(accounts),
		Detail: fmt.Sprintf("%d of %d opened, %d errors", opened, len(accounts), id.Errors),
	}, {
		Name:   "idle: popgate holds 2 descriptors per session",
		OK:     fdsWith-fdBase == 2*opened,
		Detail: fmt.Sprintf("%d more with %d sessions", fdsWith-fdBase, opened),
	}}
	checks = append(checks, b.endChecks(pg, "popgate-idle", fdBase)...)
	return id, checks, nil
}

// endChecks checks pg after its last session: descriptors back to the
// baseline, still alive, a clean exit on SIGTERM, and what it logged.
func (b *bench) endChecks(pg *popgateProc, name string, fdBase int) []Check {
	fds, err := settledFDs(pg.PID, fdBase)
	fdCheck := Check{Name: name + ": file descriptors back to the baseline after all sessions closed",
		OK: err == nil && fds <= fdBase, Detail: fmt.Sprintf("%d open, baseline %d", fds, fdBase)}
	if err != nil {
		fdCheck.Detail = err.Error()
	}
	alive := Check{Name: name + ": still running at the end", OK: pg.alive(), Detail: fmt.Sprintf("pid %d", pg.PID)}
	if !alive.OK {
		alive.Detail = fmt.Sprintf("pid %d exited: %v; log %s", pg.PID, pg.exitErr, pg.LogFile)
	}
	stopErr := pg.stop()
	exit := Check{Name: name + ": clean exit on SIGTERM", OK: stopErr == nil}
	if stopErr != nil {
		exit.Detail = stopErr.Error()
	}
	logCheck := Check{Name: name + ": no WARN or ERROR in its log"}
	if sum, err := summarizeLog(pg.LogFile); err != nil {
		logCheck.Detail = err.Error()
	} else {
		logCheck.OK = sum.Warn == 0 && sum.Error == 0
		logCheck.Detail = fmt.Sprintf("%d WARN, %d ERROR", sum.Warn, sum.Error)
		for _, s := range sum.Samples {
			logCheck.Detail += "\n      " + s
		}
	}
	return []Check{fdCheck, alive, exit, logCheck}
}

// metricsCheck scrapes popgate's /metrics once the workloads are done: the
// logins and octets the clients measured (warm-up sessions come on top)
// are counted, and no login failed.
func metricsCheck(pg *popgateProc, ws []WorkloadResult) Check {
	c := Check{Name: "popgate: /metrics counts the sessions, no failed login"}
	m, err := pg.scrape()
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	var sessions, bytes float64
	for _, w := range ws {
		sessions += float64(w.Popgate.Sessions)
		bytes += float64(w.Popgate.Bytes)
	}
	failed := 0.0
	for _, r := range []string{"auth_failed", "no_route", "throttled", "backend_error", "lookup_error"} {
		failed += m[`popgate_logins_total{result="`+r+`"}`]
	}
	ok, out := m[`popgate_logins_total{result="ok"}`], m[`popgate_bytes_total{direction="backend_to_client"}`]
	c.OK = ok >= sessions && out >= bytes && failed == 0
	c.Detail = fmt.Sprintf("logins ok %.0f (clients measured %.0f), failed %.0f, backend_to_client %.0f octets (RETR answers %.0f)", ok, sessions, failed, out, bytes)
	return c
}

// workloadChecks are the verdicts on the load workloads' client results.
func workloadChecks(r *Report) []Check {
	var checks []Check
	errs, sessions := 0, 0
	var retrs, payload, wantPayload int64
	for _, w := range r.Workloads {
		for _, s := range w.sides() {
			errs += s.Errors
			sessions += s.Sessions
			if w.Workload == "retr" {
				retrs += int64(s.Sessions)
				payload += s.Payload
			}
		}
	}
	if len(r.Workloads) > 0 {
		checks = append(checks, Check{Name: "no errors in the load workloads", OK: errs == 0,
			Detail: fmt.Sprintf("%d errors in %d sessions", errs, sessions+errs)})
	}
	wantPayload = retrs * retrSize
	if retrs > 0 {
		checks = append(checks, Check{
			Name:   "every RETR: size as announced in +OK n octets, unstuffed length and CRC-32C right",
			OK:     payload == wantPayload,
			Detail: fmt.Sprintf("%d messages, %d octets", retrs, payload),
		})
	}
	return checks
}

// resumeCheck checks that the login-resume workloads resumed every
// measured session through popgate and nginx. Direct resumption is only
// reported: Dovecot's login processes each keep their own ticket keys, so
// a session resumes only when it reaches the process that issued the
// ticket (the same holds for the Dovecot proxy). ok is false when no
// login-resume workload ran.
func resumeCheck(ws []WorkloadResult) (c Check, ok bool) {
	c = Check{Name: "login-resume: every measured session resumed through popgate and nginx", OK: true}
	var details []string
	for _, w := range ws {
		if w.Workload != "login-resume" {
			continue
		}
		ok = true
		for _, s := range w.sides() {
			details = append(details, fmt.Sprintf("%s %s %d/%d", w.Name, s.Side, s.Resumed, s.Sessions))
			if (s.Side == "popgate" || s.Side == "nginx") && (s.Resumed != s.Sessions || s.Sessions == 0) {
				c.OK = false
			}
		}
	}
	c.Detail = strings.Join(details, ", ")
	return c, ok
}

// settledFDs polls pid's descriptor count until it is at most target (or,
// with target 0, until it stops changing), for up to 10 s, and returns it:
// connections close asynchronously after the client sees the end.
func settledFDs(pid, target int) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	last := -1
	for {
		n, err := countFDs(pid)
		if err != nil {
			return 0, err
		}
		if (target > 0 && n <= target) || (target == 0 && n == last) || time.Now().After(deadline) {
			return n, nil
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	for line := range strings.Lines(readOr("/proc/cpuinfo")) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
