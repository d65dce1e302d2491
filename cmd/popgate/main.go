// Command popgate is a TLS-terminating POP3 proxy.
//
// Usage:
//
//	popgate run   -config /etc/popgate/popgate.toml   serve (SIGHUP reloads, SIGUSR2 upgrades)
//	popgate upgrade -pid-file /run/popgate/popgate.pid hand the sockets to the binary now installed
//	popgate check -config FILE                         validate a configuration and exit
//	popgate route -config FILE USER                    show where USER's logins go
//	popgate demo                                       a working proxy on loopback, no setup
//	popgate version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/osslsign"
	"github.com/popgate/popgate/pool"
	"github.com/popgate/popgate/proxy"
)

const usage = `popgate: a TLS-terminating POP3 proxy

Usage:
  popgate run   -config FILE       serve POP3S / POP3+STLS as FILE says
                [-watch-config]    (SIGHUP reloads FILE; -watch-config also on change)
                [-pid-file PID]    (SIGUSR2 upgrades: see popgate upgrade)
  popgate upgrade -pid-file PID    hand the running popgate's sockets to the binary
                                   installed now, wait until it serves; the old
                                   one finishes its sessions
  popgate check -config FILE       validate FILE (and its certificates) and exit
  popgate route -config FILE USER  print the backend USER's logins go to
  popgate pool -config FILE CMD    list or change the backend pools of the
                                   running popgate (popgate pool help)
  popgate demo                     start a proxy and a sample mailbox on loopback
  popgate version                  print the version
`

// defaultGCPercent is popgate's GOGC unless the environment sets one. A
// proxy's live heap is small (about 1 MiB with a few sessions), so at Go's
// default of 100 it collects at the 4 MiB minimum heap: every 50 logins or
// so. At 200 the minimum is 8 MiB, and CPU per login at 32 concurrent
// logins went down about 7 % (docs/performance.md) for about 5 MiB more
// under load. The memory that idle sessions hold after a burst is given
// back by trimWhenQuiet either way.
const defaultGCPercent = 200

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	os.Exit(mainErr(os.Args[1:], os.Stdout, os.Stderr))
}

func mainErr(args []string, stdout, stderr io.Writer) int {
	return mainContext(context.Background(), args, stdout, stderr)
}

// mainContext is mainErr with a context: run and demo stop when ctx is done
// (or on SIGTERM/SIGINT), so that tests can stop them without signalling
// their own process.
func mainContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], stderr)
	case "upgrade":
		err = cmdUpgrade(args[1:], stdout, stderr)
	case "check":
		err = cmdCheck(args[1:], stdout, stderr)
	case "route":
		err = cmdRoute(args[1:], stdout, stderr)
	case "pool":
		err = cmdPool(args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "version", "-version", "--version":
		v, commit, goVersion := versionInfo()
		fmt.Fprintf(stdout, "popgate %s\ncommit %s\n%s %s/%s\nrsa signer %s\n", v, commit, goVersion, runtime.GOOS, runtime.GOARCH,
			osslsign.Implementation())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "popgate: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "popgate:", err)
		return 1
	}
	return 0
}

// Set at build time, for release builds:
//
//	go build -ldflags "-X main.buildVersion=v1.2.0 -X main.buildCommit=$(git rev-parse HEAD)" ./cmd/popgate
//
// Without them the module version and the VCS revision Go records in the
// binary are used.
var (
	buildVersion string
	buildCommit  string
)

// versionInfo returns popgate's version, the commit it was built from
// ("-dirty" when the tree had changes) and the Go version.
func versionInfo() (version, commit, goVersion string) {
	version, commit, goVersion = buildVersion, buildCommit, runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if version == "" {
			version = bi.Main.Version
		}
		if commit == "" {
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if commit != "" && modified {
				commit += "-dirty"
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	if commit == "" {
		commit = "unknown"
	}
	return version, commit, goVersion
}

func configFlag(name string, args []string, stderr io.Writer, more ...func(*flag.FlagSet)) (*flag.FlagSet, *string, error) {
	fs := flag.NewFlagSet("popgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/popgate/popgate.toml", "configuration `file`")
	for _, f := range more {
		f(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	return fs, path, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	var offline bool
	_, path, err := configFlag("check", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&offline, "offline", false, "check the file only: ask no OAuth issuer (for a service manager's check before a start or reload, which an issuer outage must not block)")
	})
	if err != nil {
		return err
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(c.Log, stderr)
	in, err := build(c, log)
	if err != nil {
		return err
	}
	in.server.Close()
	in.close()
	if in.oauth != nil && !offline {
		if err := checkOAuthIssuer(in.oauth, c.OAuth.Timeout); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d backends)\n", *path, len(c.Listeners), len(c.Backends))
	return nil
}

func cmdRoute(args []string, stdout, stderr io.Writer) error {
	fs, path, err := configFlag("route", args, stderr)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("route: give exactly one user name")
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	user := fs.Arg(0)
	backends := map[string]*proxy.Backend{}
	for _, b := range c.Backends {
		backends[b.Name] = &b.Backend
	}
	in := &instance{cfg: c, log: newLogger(c.Log, stderr)}
	if err := buildRouter(in, &c.Route, backends); err != nil {
		return err
	}
	defer in.close()
	name, why, err := in.router.Explain(context.Background(), user)
	if err != nil {
		return err
	}
	// A directory's host answer goes to its own address, with the
	// settings of the source's backend (plaintext without one).
	if via, addr, ok := auth.SplitAddressRoute(name); ok {
		mode := proxy.TLSNone
		if b := backends[via]; b != nil {
			mode = b.TLS
		}
		fmt.Fprintf(stdout, "%s -> %s (tls=%s)\n  why: %s\n", user, addr, mode, why)
		return nil
	}
	if b := backends[name]; b != nil {
		fmt.Fprintf(stdout, "%s -> %s (%s, tls=%s)\n  why: %s\n", user, name, b.Address, b.TLS, why)
		return nil
	}
	for _, p := range c.Pools {
		if p.Name == name {
			b := pool.Pick(pool.Fold(user), p.Members, nil)
			fmt.Fprintf(stdout, "%s -> pool %s: %s by the hash, unless an affinity holds the user elsewhere (popgate pool list -users)\n  why: %s\n", user, name, b, why)
			return nil
		}
	}
	fmt.Fprintf(stdout, "%s: %s\n", user, why)
	return nil
}

// cmdRun serves until ctx is done or a SIGTERM or SIGINT arrives.
func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	var watch bool
	var pidFile string
	_, path, err := configFlag("run", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&watch, "watch-config", false, "reload when the configuration file's content changes (checked every 5s), as on SIGHUP")
		fs.StringVar(&pidFile, "pid-file", "", "write the serving process's PID to `file` (for popgate upgrade); an upgrade names the new process in it once it has handed over")
	})
	if err != nil {
		return err
	}
	// Signals first: loading certificates or a large map file takes a
	// moment, and SIGHUP's default action would end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// SIGUSR2's default action ends the process too.
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	// The sockets of the process this one replaces, or systemd's, before
	// anything can fail: a failed start closes them by exiting, and the
	// old process (or systemd) still holds them.
	inherit, err := inheritSockets()
	if err != nil {
		return err
	}
	closeOnExecAll()
	if inherit != nil {
		inheritedTicketKeys = inherit.tickets
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	level.Set(c.Log.Level)
	log := newLoggerLevel(c.Log, level, stderr)
	if c.Cluster != nil {
		// Every line names the replica (the metrics carry it as a label).
		node, err := c.Cluster.Node()
		if err != nil {
			return err
		}
		log = log.With("node", node)
	}
	r, err := prepare(c, log)
	// The first instance has taken the inherited ticket keys, or had no
	// TLS listener to take them for: not kept in memory, nor given to the
	// key source a later reload builds, which would take them as new.
	clear(inheritedTicketKeys)
	inheritedTicketKeys = nil
	if err != nil {
		return err
	}
	r.path, r.level, r.hup, r.usr2, r.inherit, r.pidFile = *path, level, hup, usr2, inherit, pidFile
	if watch {
		r.watchEvery = configFilePoll
	}
	v, commit, goVersion := versionInfo()
	// rsa_signer: "go", or "openssl 3.0.x" in a build with -tags openssl
	// (see internal/osslsign).
	log.Info("popgate starting", "version", v, "commit", commit, "go", goVersion, "rsa_signer", osslsign.Implementation(),
		"config", *path, "pid", os.Getpid())
	return r.run(ctx)
}

// prepare turns c into a runner. Metrics are counted even while
// metrics.address is "", so that a reload can turn the endpoints on.
func prepare(c *settings, log *slog.Logger) (*runner, error) {
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		return nil, err
	}
	v, commit, _ := versionInfo()
	var metrics *admin.Metrics
	if in.cluster != nil {
		metrics = admin.NewNodeMetrics(v, commit, in.cluster.Node())
	} else {
		metrics = admin.NewMetrics(v, commit)
	}
	in.proxyConfig.Observer = metrics
	if in.certs != nil {
		// Every later certificate store shares this one's ACME client
		// (ShareACME), and with it the observer.
		in.certs.ObserveOrders(metrics)
	}
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		in.close()
		return nil, err
	}
	in.director.SetDown(in.server.BackendDown)
	in.director.SetKey(in.server.PoolKey)
	in.director.SetEnd(in.server.EndPoolSessions)
	r := newRunner(in, log)
	r.metrics = metrics
	return r, nil
}

// newLogger builds the process logger: colored text on a terminal, JSON
// otherwise, unless the config says which.
func newLogger(lc logSettings, w io.Writer) *slog.Logger {
	return newLoggerLevel(lc, lc.Level, w)
}

// newLoggerLevel is newLogger with a level that can change (a
// *slog.LevelVar, which a reload sets).
func newLoggerLevel(lc logSettings, level slog.Leveler, w io.Writer) *slog.Logger {
	format := lc.Format
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "tint"
		}
	}
	switch format {
	case "tint":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly}))
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	default:
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && !strings.EqualFold(os.Getenv("TERM"), "dumb")
}

// quietPeriod is how long popgate must see no connection come or go
// before it returns freed memory to the operating system, however little;
// after a burst that left at least burstGarbage to give back, it does so
// once a burstQuiet passes without a connection.
const (
	quietPeriod  = 5 * time.Second
	burstQuiet   = 500 * time.Millisecond
	burstGarbage = 4 << 20
)

// certFilePoll is how often popgate checks tls.certificates files for
// changes.
const certFilePoll = 5 * time.Second

// trimWhenQuiet returns freed memory to the OS once no connection has come
// or gone for a while. A burst of logins leaves garbage behind (the
// handshakes' buffers, the stacks they grew); when the sessions it opened
// then sit idle, nothing allocates, no collection runs, and the garbage
// would stay resident until the runtime's two-minute forced GC: 10 KiB
// and more per idle session, as much again as the sessions themselves.
// So, once quiet for burstQuiet, it collects when the memory the runtime
// holds has grown by burstGarbage since the last time, and after quiet
// for quietPeriod it does whatever the amount.
// A server that is never quiet for half a second allocates all along and
// its collections run by themselves; a trickle of lone logins crosses
// burstGarbage only every few dozen logins. One collection per quiet
// spell is cheap next to the logins that caused it.
func trimWhenQuiet(ctx context.Context, srv activitySource, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(burstQuiet)
	defer t.Stop()
	type activity struct {
		accepted uint64
		sessions int
	}
	now := func() activity { return activity{srv.Accepted(), srv.Sessions()} }
	last, dirty := now(), true
	var quietFor time.Duration
	base := retained() // after the last trim
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// New connections and ended sessions both leave garbage.
		if a := now(); a != last {
			last, dirty, quietFor = a, true, 0
			continue
		}
		quietFor += burstQuiet
		if !dirty {
			continue
		}
		held := retained()
		if held < base+burstGarbage && quietFor < every {
			continue
		}
		dirty = false
		start := time.Now()
		debug.FreeOSMemory()
		base = retained()
		log.Debug("quiet: returned free memory to the OS", "took", time.Since(start).Round(time.Microsecond).String(),
			"sessions", srv.Sessions(), "before_bytes", held, "after_bytes", base, "quiet", quietFor.String())
	}
}

// activitySource is what trimWhenQuiet watches: a *proxy.Server.
type activitySource interface {
	Accepted() uint64
	Sessions() int
}

// retained returns the memory the Go runtime holds from the OS and has not
// given back: what a trim can lower.
func retained() uint64 {
	samples := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(samples)
	total, released := samples[0].Value.Uint64(), samples[1].Value.Uint64()
	if released > total {
		return 0
	}
	return total - released
}
