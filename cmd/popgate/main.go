// Command popgate is a TLS-terminating POP3 proxy.
//
// Usage:
//
//	popgate run   -config /etc/popgate/popgate.toml   serve
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
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

const usage = `popgate: a TLS-terminating POP3 proxy

Usage:
  popgate run   -config FILE       serve POP3S / POP3+STLS as FILE says
  popgate check -config FILE       validate FILE (and its certificates) and exit
  popgate route -config FILE USER  print the backend USER's logins go to
  popgate demo                     start a proxy and a sample mailbox on loopback
  popgate version                  print the version
`

func main() {
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
	case "check":
		err = cmdCheck(args[1:], stdout, stderr)
	case "route":
		err = cmdRoute(args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "popgate", version())
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

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		return v
	}
	return "(unknown)"
}

func configFlag(name string, args []string, stderr io.Writer) (*flag.FlagSet, *string, error) {
	fs := flag.NewFlagSet("popgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/popgate/popgate.toml", "configuration `file`")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	return fs, path, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	_, path, err := configFlag("check", args, stderr)
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
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d backends)\n", *path, len(c.Listen), len(c.Backend))
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
	known := map[string]BackendConfig{}
	for _, b := range c.Backend {
		known[b.Name] = b
	}
	in := &instance{}
	backends := map[string]*proxy.Backend{}
	for name := range known {
		backends[name] = &proxy.Backend{Name: name}
	}
	chain, err := buildRouter(in, c, backends)
	if err != nil {
		return err
	}
	if name, ok := routeTarget(chain, user); ok {
		b := known[name]
		fmt.Fprintf(stdout, "%s -> %s (%s, tls=%s)\n  why: %s\n", user, name, b.Address, b.TLS, chain.Explain(user))
		return nil
	}
	fmt.Fprintf(stdout, "%s: %s\n", user, chain.Explain(user))
	return nil
}

// cmdRun serves until ctx is done or a SIGTERM or SIGINT arrives.
func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	_, path, err := configFlag("run", args, stderr)
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
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("popgate starting", "version", version(), "config", *path)
	return serve(ctx, in, log, c.Limits.ShutdownTimeout.or(defaultShutdownTimeout))
}

// serve binds every listener, serves until ctx is done, then shuts down
// gracefully within grace.
func serve(ctx context.Context, in *instance, log *slog.Logger, grace time.Duration) error {
	var lns []net.Listener
	for i, l := range in.listeners {
		ln, err := net.Listen("tcp", in.addrs[i])
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	var challenges *tlsconf.Challenges
	if in.certs != nil {
		ch, err := in.certs.ListenChallenges()
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return err
		}
		challenges = ch
	}
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for i, l := range in.listeners {
		log.Info("listening", "listener", l.Name, "address", lns[i].Addr().String(), "tls", l.TLS.String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- in.server.Serve(ctx, lns[i], l)
		}()
	}
	go trimWhenQuiet(ctx, in.server, quietPeriod, log)
	stopChallenges := func() {}
	if challenges != nil {
		if a := challenges.HTTPAddr(); a != "" {
			log.Info("acme http-01 answerer listening", "address", a)
		}
		if a := challenges.TLSALPNAddr(); a != "" {
			log.Info("acme tls-alpn-01 answerer listening", "address", a)
		}
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stopChallenges = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			challenges.Serve(cctx)
		}()
	}
	mf, certs := in.mapFile, in.certs
	if mf != nil {
		go mf.Watch(ctx, mapFilePoll, func(err error) {
			if err != nil {
				log.Error("route.map_file: reload failed; keeping the previous table", "file", mf.Path(), "err", err)
				return
			}
			log.Info("route.map_file reloaded", "file", mf.Path(), "routes", mf.Len())
		})
	}
	if certs != nil {
		go certs.Watch(ctx, certFilePoll)
	}
	if mf != nil || certs != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
				}
				if mf != nil {
					if err := mf.Reload(); err != nil {
						log.Error("SIGHUP: route.map_file reload failed; keeping the previous table", "file", mf.Path(), "err", err)
					} else {
						log.Info("SIGHUP: route.map_file reloaded", "file", mf.Path(), "routes", mf.Len())
					}
				}
				if certs != nil {
					if err := certs.Reload(); err != nil {
						log.Error("SIGHUP: tls certificate reload failed; keeping the previous certificates", "err", err)
					}
				}
			}
		}()
	}
	if in.lookup != nil {
		defer in.lookup.Close()
	}
	var err error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", grace, "sessions", in.server.Sessions())
	case err = <-errc:
		// When ctx is done, every Serve returns ErrServerClosed, and
		// select may pick that over ctx.Done: that is a normal stop.
		if ctx.Err() != nil && errors.Is(err, proxy.ErrServerClosed) {
			err = nil
			log.Info("shutting down", "grace", grace, "sessions", in.server.Sessions())
		} else {
			log.Error("listener failed, shutting down", "err", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if serr := in.server.Shutdown(sctx); serr != nil {
		log.Warn("shutdown grace period over; closed remaining sessions", "err", serr)
	}
	stopChallenges() // also when a listener failed and ctx is not done
	wg.Wait()
	log.Info("stopped")
	return err
}

// newLogger builds the process logger: colored text on a terminal, JSON
// otherwise, unless the config says which.
func newLogger(lc LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	switch lc.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	format := lc.Format
	if format == "" || format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "tint"
		}
	}
	switch format {
	case "tint":
		return slog.New(tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly}))
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
// before it returns freed memory to the operating system.
const quietPeriod = 5 * time.Second

// certFilePoll is how often popgate checks tls.certificates files for
// changes.
const certFilePoll = 5 * time.Second

// trimWhenQuiet returns freed memory to the OS once no connection has been
// accepted for a quiet period. A burst of logins leaves garbage behind; when
// the sessions it opened then sit idle, nothing allocates, no collection
// runs, and the garbage would stay resident until the runtime's two-minute
// forced GC. One collection per quiet spell is cheap next to the logins
// that caused it.
func trimWhenQuiet(ctx context.Context, srv *proxy.Server, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	type activity struct {
		accepted uint64
		sessions int
	}
	now := func() activity { return activity{srv.Accepted(), srv.Sessions()} }
	last, dirty := now(), true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// New connections and ended sessions both leave garbage.
		if a := now(); a != last {
			last, dirty = a, true
			continue
		}
		if dirty {
			dirty = false
			start := time.Now()
			debug.FreeOSMemory()
			log.Debug("quiet: returned free memory to the OS", "took", time.Since(start).Round(time.Microsecond).String(), "sessions", srv.Sessions())
		}
	}
}

// routeTarget returns the backend a static, map file or default rule sends
// user to, without asking an HTTP service.
func routeTarget(c *auth.Chain, user string) (string, bool) {
	if b, _, ok := c.Static.Match(user); ok {
		return b, true
	}
	if c.Map != nil {
		if b, _, ok := c.Map.Lookup(user); ok {
			return b, true
		}
	}
	if c.HTTP == nil && c.Default != "" {
		return c.Default, true
	}
	return "", false
}
