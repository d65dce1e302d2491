package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/internal/filewatch"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// runner serves a configuration for the life of the process: it binds the
// listeners, applies reloads (SIGHUP) and drains on shutdown. The proxy
// server, the bound sockets, the ACME client and the metrics outlive every
// reload; routes, backends, limits and certificates are replaced.
type runner struct {
	log   *slog.Logger
	level *slog.LevelVar // the log level a reload sets; nil: fixed
	// path is the configuration file a reload reads; "" re-applies the
	// running configuration (re-reading the map file and certificates).
	path    string
	srv     *proxy.Server
	metrics *admin.Metrics // nil only for serve (tests)
	// hup delivers SIGHUP; nil makes run register for it. cmdRun
	// registers before it loads anything, so that an early SIGHUP is a
	// reload after start and not the signal's default, which kills.
	hup chan os.Signal
	// watchEvery, when set, polls path and reloads when its content
	// changes (-watch-config).
	watchEvery time.Duration
	// usr2 delivers SIGUSR2, an upgrade (handover.go); nil: no upgrades
	// (serve, in tests, must not start its executable again).
	usr2 chan os.Signal
	// inherit holds the sockets passed at start (an upgrade, systemd's
	// socket activation); nil: none, every socket is bound here.
	inherit *inherited

	pidFile     string      // -pid-file; "" for none
	upgradeBusy atomic.Bool // an upgrade is starting its new process
	handedOver  atomic.Bool // a new process took the sockets: this one drains
	stopRun     context.CancelFunc
	// reloads counts the reloads begun: one during an upgrade is passed
	// on to the new process (handover.go).
	reloads atomic.Uint64

	cur      atomic.Pointer[instance]
	serving  atomic.Bool // every listener is bound and served
	draining atomic.Bool // shutdown has begun

	ctx  context.Context // the whole run's
	wg   sync.WaitGroup  // accept loops, answerers, the admin server
	errc chan error      // a listener that failed

	// fleet lists and ends the sessions of the fleet ([cluster]); nil
	// without. stopFleet ends its Run.
	fleet     *cluster.Sessions
	stopFleet context.CancelFunc

	// reloadMu serialises reloads. It is held while a reload reads the
	// configuration, certificate and map files; mu, which shutdown
	// needs, is not, so that a read that hangs cannot hold up SIGTERM.
	reloadMu   sync.Mutex
	mu         sync.Mutex              // guards what follows
	lns        map[string]*bound       // POP3 listeners by ListenConfig.key
	adminLn    *bound                  // nil without metrics.address
	adminAddr  string                  // metrics.address as configured when adminLn was bound
	acmeLns    map[string]net.Listener // the ACME answerers' sockets by configured address
	challenges *tlsconf.Challenges
	stopChall  context.CancelFunc // ends challenges' Serve
	stopGen    context.CancelFunc // ends the current instance's map file watch
	stopCerts  context.CancelFunc // ends the certificate file watch
	watched    *tlsconf.Server    // whose files stopCerts' watch polls
}

// bound is a listening socket and the way to stop serving it.
type bound struct {
	ln   net.Listener
	stop context.CancelFunc
}

func newRunner(in *instance, log *slog.Logger) *runner {
	r := &runner{log: log, srv: in.server, lns: map[string]*bound{}, errc: make(chan error, 1)}
	if in.cluster != nil {
		r.fleet = in.cluster.NewSessions(in.server)
	}
	r.cur.Store(in)
	return r
}

// notify sends state to systemd (sdNotify). Outside systemd it does
// nothing; a socket that is set but refuses is worth a WARN.
func (r *runner) notify(state string) {
	if err := sdNotify(state); err != nil {
		r.log.Warn("could not notify systemd", "err", err)
	}
}

// current returns the live instance.
func (r *runner) current() *instance { return r.cur.Load() }

// run binds everything, serves until ctx is done (or a listener fails),
// then shuts down gracefully.
func (r *runner) run(ctx context.Context) error {
	in := r.current()
	ctx, r.stopRun = context.WithCancel(ctx)
	defer r.stopRun()
	r.ctx = ctx
	r.mu.Lock()
	lns, err := r.bindNew(in)
	budget := planFDs(fdLimit(), in.cfg)
	if err == nil {
		r.logFDBudget(budget, in.cfg)
	}
	if err == nil && in.certs != nil {
		lim := budget.challengeLimits()
		// The answerers count clients as the POP3 limits do, by the
		// live limits.ipv6_prefix.
		lim.ClientNet = func(ip netip.Addr) (netip.Prefix, bool) {
			return auth.ClientNet(ip, r.current().cfg.Limits.IPv6Prefix)
		}
		lim.Listen = func(addr string) (net.Listener, error) {
			ln, err := r.listen(acmeKey(addr), addr)
			if err == nil {
				if r.acmeLns == nil {
					r.acmeLns = map[string]net.Listener{}
				}
				r.acmeLns[addr] = ln
			}
			return ln, err
		}
		r.challenges, err = in.certs.ListenChallenges(lim)
	}
	if err == nil {
		if addr := in.cfg.Metrics.Address; addr != "" && r.metrics != nil {
			var ln net.Listener
			if ln, err = r.listen(adminKey(addr), addr); err != nil {
				err = fmt.Errorf("metrics.address: %w", err)
			} else {
				r.adminAddr = addr
				r.startAdmin(ln)
			}
		}
	}
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		if r.challenges != nil {
			r.challenges.Close()
		}
		r.mu.Unlock()
		r.srv.Close()
		return err
	}
	for i, l := range in.listeners {
		r.startListener(in.keys[i], lns[in.keys[i]], l)
	}
	if ch := r.challenges; ch != nil {
		if a := ch.HTTPAddr(); a != "" {
			r.log.Info("acme http-01 answerer listening", "address", a)
		}
		if a := ch.TLSALPNAddr(); a != "" {
			r.log.Info("acme tls-alpn-01 answerer listening", "address", a)
		}
		// Its own context: shutdown ends it also when a listener
		// failed and ctx is not done.
		cctx, cancel := context.WithCancel(ctx)
		r.stopChall = cancel
		r.wg.Go(func() { ch.Serve(cctx) })
	}
	r.startWatches(in)
	r.setSources(in)
	r.startFleet()
	r.mu.Unlock()
	r.serving.Store(true)
	r.inherit.closeUnused(r.log)
	// Told to stop before it served (SIGTERM while it loaded): as the new
	// process of an upgrade it must not take over, neither the PID file
	// nor the service.
	abandon := r.inherit.upgrading() && ctx.Err() != nil
	// The new process of an upgrade leaves the PID file to the old one,
	// which writes this one's PID once it has handed over.
	writePID := func() {
		if err := writePIDFile(r.pidFile, os.Getpid()); err != nil {
			r.log.Warn("could not write the PID file; popgate upgrade cannot find this process", "file", r.pidFile, "err", err)
		}
	}
	if r.pidFile != "" && !r.inherit.upgrading() {
		writePID()
	}
	if abandon {
		// The pipe closed without a word, the old process serves on,
		// the sockets as before: the drain is the one after a
		// handover, which serves the clients accepted here to the end
		// and says nothing to systemd (this is not the main process).
		r.handedOver.Store(true)
		r.inherit.abandonReady()
		r.log.Warn("upgrade: stopping before serving; the old process serves on", "old_pid", r.inherit.parent)
	} else if r.inherit.upgrading() {
		// The parent tells systemd, with this process's PID as the
		// new MAINPID: until then this one is not the main process.
		if err := r.inherit.signalReady(); err != nil {
			r.log.Warn("upgrade: could not tell the old process this one serves; it ends this one when it gives up", "err", err)
			if r.pidFile != "" {
				writePID() // it may be gone, and not write it
			}
		}
		r.log.Info("upgrade: serving; the old process drains", "old_pid", r.inherit.parent)
	} else {
		r.notify(fmt.Sprintf("READY=1\nSTATUS=serving %d listeners", len(in.listeners)))
	}
	go trimWhenQuiet(ctx, r.srv, quietPeriod, r.log)
	if r.usr2 != nil {
		// Until run returns, not until ctx is done: a signal to a
		// process that drains is answered in the log too.
		wctx, stopWatch := context.WithCancel(context.Background())
		defer stopWatch()
		go r.watchUpgrades(wctx, r.usr2)
	}
	if r.watchEvery > 0 && r.path != "" {
		r.watchConfig(ctx, r.watchEvery)
	}

	hup := r.hup
	if hup == nil {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
	}
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				r.reload()
			}
		}
	}()

	select {
	case <-ctx.Done():
	case err = <-r.errc:
		r.log.Error("listener failed, shutting down", "err", err)
	}
	return r.shutdown(err)
}

// logFDBudget logs how the file descriptor limit is shared, and warns
// when a cap had to be lowered or limits.max_connections does not fit.
func (r *runner) logFDBudget(b fdBudget, c *settings) {
	if b.Limit == 0 {
		return
	}
	r.log.Info("file descriptor budget", "limit", b.Limit, "reserve", fdReserve,
		"acme_challenges", b.Challenges, "pop3_sessions", b.pop3Sessions())
	if b.ChallengesLowered {
		total := c.TLS.ACME.MaxChallengeConns
		r.log.Warn("tls.acme.max_challenge_connections lowered to a quarter of the file descriptor limit, so that POP3 keeps its share",
			"configured", total, "max_challenge_connections", b.Challenges, "limit", b.Limit)
	}
	if mc := c.Limits.MaxConnections; mc > b.pop3Sessions() {
		r.log.Warn("limits.max_connections is more than the file descriptor limit holds; accepts fail with \"too many open files\" before it is reached: raise the limit (LimitNOFILE) or lower limits.max_connections",
			"max_connections", mc, "pop3_sessions", b.pop3Sessions(), "limit", b.Limit)
	}
}

// shutdown stops accepting, lets sessions finish within the grace period,
// closes the rest and stops everything else.
func (r *runner) shutdown(err error) error {
	// Under r.mu, which an upgrade holds when it reads draining and sets
	// handedOver (handover.go).
	r.mu.Lock()
	r.draining.Store(true)
	upgraded := r.handedOver.Load()
	if upgraded {
		// The new process serves the admin address and the ACME
		// answerers from now on; here they would only answer
		// "draining" and stale figures. No STOPPING=1: this process
		// is not the service's main process any more, and the service
		// goes on.
		if r.adminLn != nil {
			r.adminLn.stop()
		}
		if r.stopChall != nil {
			r.stopChall()
		}
	}
	r.mu.Unlock()
	if !upgraded {
		r.notify(fmt.Sprintf("STOPPING=1\nSTATUS=draining %d sessions", r.srv.Sessions()))
	}
	grace := r.current().cfg.Limits.ShutdownTimeout
	r.log.Info("shutting down", "grace", grace.String(), "sessions", r.srv.Sessions(), "upgraded", upgraded)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	drain := r.srv.Shutdown
	if upgraded || r.inherit.socketActivated() {
		// Another process serves the sockets now, or systemd keeps
		// them and queues what comes until the next one does: the
		// clients still logging in here (accepted a moment before)
		// are served to the end, not closed, as the logged-in ones.
		drain = r.srv.HandOver
	}
	if serr := drain(sctx); serr != nil {
		r.log.Warn("shutdown grace period over; closed remaining sessions", "sessions", r.srv.Sessions(), "err", serr)
	}
	r.mu.Lock()
	for _, b := range r.lns {
		b.stop()
	}
	if r.adminLn != nil {
		r.adminLn.stop()
	}
	if r.stopGen != nil {
		r.stopGen()
	}
	if r.stopCerts != nil {
		r.stopCerts()
	}
	if r.stopChall != nil {
		r.stopChall() // Serve closes the answerers' listeners
	}
	if r.stopFleet != nil {
		r.stopFleet() // after the drain: its sessions could be ended until then
	}
	r.mu.Unlock()
	r.wg.Wait()
	if r.pidFile != "" {
		removePIDFile(r.pidFile)
	}
	r.current().close()
	if cl := r.current().cluster; cl != nil {
		cl.Close()
	}
	r.log.Info("stopped")
	return err
}

// bindNew binds the addresses of in that are not bound yet; on failure it
// closes what it bound.
func (r *runner) bindNew(in *instance) (map[string]net.Listener, error) {
	lns := map[string]net.Listener{}
	for i, addr := range in.addrs {
		key := in.keys[i]
		if r.lns[key] != nil {
			continue
		}
		ln, err := r.listen(pop3Key(key), addr)
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return nil, fmt.Errorf("listener %q: %w", in.listeners[i].Name, err)
		}
		lns[key] = ln
	}
	return lns, nil
}

// startListener serves ln as l. r.mu is held.
func (r *runner) startListener(key string, ln net.Listener, l proxy.Listener) {
	ctx, stop := context.WithCancel(r.ctx)
	r.lns[key] = &bound{ln: ln, stop: stop}
	r.log.Info("listening", "listener", l.Name, "address", ln.Addr().String(), "tls", l.TLS.String(), "proxy_protocol", l.ProxyProtocol)
	r.wg.Go(func() {
		err := r.srv.Serve(ctx, ln, l)
		if err != nil && !errors.Is(err, proxy.ErrServerClosed) && ctx.Err() == nil {
			select {
			case r.errc <- err:
			default:
			}
		}
	})
}

// startAdmin serves the admin endpoints on ln. r.mu is held.
func (r *runner) startAdmin(ln net.Listener) {
	ctx, stop := context.WithCancel(context.Background())
	r.adminLn = &bound{ln: ln, stop: stop}
	h := admin.Handler(r.metrics, r.adminSessions(), r.ready, r.adminAccess, r.log, admin.WithPools(r.current().director))
	a := r.adminAccess()
	r.log.Info("admin endpoints listening", "address", ln.Addr().String(), "paths", "/metrics /healthz /readyz /sessions /pools /console/",
		"token_required", a.Token != "", "protect_metrics", a.ProtectMetrics && a.Token != "", "host_check", a.CheckHost,
		"tls", r.current().adminTLS != nil)
	r.wg.Go(func() {
		if err := admin.ServeTLS(ctx, ln, h, r.adminTLS, r.log); err != nil {
			r.log.Error("admin endpoints failed", "err", err)
		}
	})
}

// adminAccess is the running configuration's access rules for the admin
// endpoints, asked for on every request: a reload that changes the token
// applies to the next one.
func (r *runner) adminAccess() admin.Access { return r.current().admin }

// adminTLS is the running configuration's TLS for the admin address,
// asked at every connection: a reload that sets or clears metrics.tls
// applies to the next one; nil serves plain HTTP.
func (r *runner) adminTLS() *tls.Config { return r.current().adminTLS }

// ready is /readyz: listeners bound, certificates loaded, not draining.
func (r *runner) ready() error {
	switch {
	case r.draining.Load():
		return errors.New("draining: shutting down")
	case !r.serving.Load():
		return errors.New("starting: listeners not bound yet")
	}
	if certs := r.current().certs; certs != nil {
		if missing := certs.MissingACME(); len(missing) > 0 {
			return fmt.Errorf("no ACME certificate yet for %s", strings.Join(missing, ", "))
		}
	}
	return nil
}

// startWatches polls in's map file and certificate files. r.mu is held.
func (r *runner) startWatches(in *instance) {
	if r.stopGen != nil {
		r.stopGen()
		r.stopGen = nil
	}
	if mf := in.mapFile; mf != nil {
		ctx, stop := context.WithCancel(r.ctx)
		r.stopGen = stop
		go mf.Watch(ctx, mapFilePoll, func(err error) {
			if err != nil {
				r.log.Error("route.map_file: reload failed; keeping the previous table", "file", mf.Path(), "err", err)
				return
			}
			r.log.Info("route.map_file reloaded", "file", mf.Path(), "routes", mf.Len())
		})
	}
	if in.certs != r.watched {
		if r.stopCerts != nil {
			r.stopCerts()
			r.stopCerts = nil
		}
		r.watched = in.certs
		if in.certs != nil {
			ctx, stop := context.WithCancel(r.ctx)
			r.stopCerts = stop
			go in.certs.Watch(ctx, certFilePoll, r.certsRefused)
		}
	}
}

// setSources points the metrics at in's parts. r.mu is held.
func (r *runner) setSources(in *instance) {
	if r.metrics == nil {
		return
	}
	src := admin.Sources{Sessions: r.srv, BackendHealth: r.srv.BackendHealth}
	consoleSources(&src, in)
	if src.Listeners != nil {
		// The addresses as bound: a port 0 is the port it got.
		ls := src.Listeners()
		for i := range ls {
			for j, l := range in.listeners {
				if b := r.lns[in.keys[j]]; l.Name == ls[i].Name && b != nil {
					ls[i].Address = b.ln.Addr().String()
				}
			}
		}
		src.Listeners = func() []admin.ListenerInfo { return ls }
	}
	if len(in.cfg.Pools) > 0 {
		src.Pools = in.director.Stats
	}
	if in.cluster != nil {
		src.ClusterUp = in.cluster.Up
		src.ClusterFallbacks = in.cluster.Fallbacks
	}
	if certs := in.certs; certs != nil {
		src.Certificates = certs.Expiry
		if _, ok := certs.OrderBudgetLeft(); ok {
			src.ACMEOrderBudget = func() float64 { n, _ := certs.OrderBudgetLeft(); return n }
		}
	}
	for _, sc := range in.caches {
		if src.LookupCaches == nil {
			src.LookupCaches = map[string]func() (int64, int64){}
		}
		c := sc.cache
		src.LookupCaches[sc.source] = func() (int64, int64) { return c.Hits(), c.Misses() }
	}
	for _, sp := range in.pools {
		if src.DirectoryPools == nil {
			src.DirectoryPools = map[string]func() (int, int){}
		}
		p := sp.pool
		src.DirectoryPools[sp.source] = func() (int, int) { st := p.PoolStats(); return st.InUse, st.Idle }
	}
	in.lookups.set(r.metrics.DirectoryLookup)
	r.metrics.SetSources(src)
}

// reload re-reads the configuration file and applies it to new sessions.
// Nothing changes unless all of it can: an invalid file, an address that
// cannot be bound, a broken certificate or map file, or a change that
// needs a restart, keeps the running configuration, and the reason is
// logged.
func (r *runner) reload() error {
	r.reloads.Add(1)
	r.notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
	err := r.apply()
	status := "STATUS=serving; configuration reloaded"
	if err != nil {
		status = "STATUS=serving; last reload failed: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	r.notify("READY=1\n" + status)
	if r.metrics != nil {
		r.metrics.Reloaded(err)
	}
	if err != nil {
		r.certsRefused(err)
		r.log.Error("configuration reload failed; keeping the running configuration", "config", r.path, "err", err)
	}
	return err
}

// certsRefused counts a reload whose static certificate files were
// refused, in popgate_certificate_reload_errors_total; other errors are
// not counted there.
func (r *runner) certsRefused(err error) {
	var ce *tlsconf.CertificateError
	if r.metrics != nil && errors.As(err, &ce) {
		r.metrics.CertificateReloadFailed(ce.Reason)
	}
}

func (r *runner) apply() error {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	if r.draining.Load() {
		return errors.New("shutting down")
	}
	if r.handedOver.Load() {
		// The new process serves, and gets the reload (SIGHUP) once
		// it is the main process. A new ACME client here would renew
		// beside it (StopOrders at the handover).
		return errors.New("this process has handed over to the new one of an upgrade, and drains: reload that one")
	}
	// Files are read first, without r.mu; the running instance changes
	// only under reloadMu, which this reload holds.
	old := r.current()
	c := old.cfg
	if r.path != "" {
		var err error
		if c, err = LoadConfig(r.path); err != nil {
			return err
		}
	}
	in, err := buildInstance(c, r.log, old, r.current)
	if err != nil {
		return err
	}
	live := false
	defer func() {
		if !live {
			in.close() // refused: nothing has used it
		}
	}()
	if in.certsReused {
		// [tls] is as it was: re-read its files, as SIGHUP always did.
		// This replaces the running store's certificates at once, as
		// the file watch does.
		if err := in.certs.Reload(); err != nil {
			return err
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining.Load() {
		return errors.New("shutting down")
	}
	if c.Log.Format != old.cfg.Log.Format {
		r.log.Warn("log.format changed; it takes effect at the next restart", "running", old.cfg.Log.Format, "configured", c.Log.Format)
	}
	lns, err := r.bindNew(in)
	if err != nil {
		return err
	}
	closeNew := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	var adminLn net.Listener
	addr := c.Metrics.Address
	adminChanged := addr != old.cfg.Metrics.Address && r.metrics != nil // nil: serve, no admin
	if adminChanged && addr != "" {
		if adminLn, err = r.listen(adminKey(addr), addr); err != nil {
			closeNew()
			return fmt.Errorf("metrics.address: %w", err)
		}
	}
	if err := r.srv.Reconfigure(in.proxyConfig); err != nil {
		closeNew()
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}

	// From here on nothing fails: the new configuration goes live.
	r.cur.Store(in)
	in.goLive()
	live = true
	var added, removed []string
	keep := map[string]bool{}
	for i, l := range in.listeners {
		a := in.keys[i]
		keep[a] = true
		if ln := lns[a]; ln != nil {
			r.startListener(a, ln, l)
			added = append(added, l.Name)
			continue
		}
		if err := r.srv.UpdateListener(r.lns[a].ln, l); err != nil {
			// Serve has not registered the socket yet (a reload
			// right after start): it will serve the old settings
			// until the next reload.
			r.log.Warn("listener settings not updated", "listener", l.Name, "err", err)
		}
	}
	for a, b := range r.lns {
		if !keep[a] {
			b.stop()
			delete(r.lns, a)
			removed = append(removed, b.ln.Addr().String())
			r.log.Info("listener closed; its sessions go on", "address", b.ln.Addr().String())
		}
	}
	if adminChanged {
		if r.adminLn != nil {
			r.adminLn.stop()
			r.adminLn = nil
		}
		if adminLn != nil {
			r.adminAddr = addr
			r.startAdmin(adminLn)
		}
	} else if r.adminLn != nil && (in.adminTLS != nil) != (old.adminTLS != nil) {
		// The address stays bound; its next connections follow.
		r.log.Info("admin endpoints: metrics.tls changed for new connections", "address", r.adminLn.ln.Addr().String(), "tls", in.adminTLS != nil)
	}
	if r.level != nil {
		r.level.Set(c.Log.Level)
	}
	r.startWatches(in)
	r.setSources(in)
	// At once, not when its last session ends (which may be hours after
	// its login): close leaves running sessions working.
	old.close()
	slices.Sort(added)
	slices.Sort(removed)
	r.log.Info("configuration reloaded; new sessions use it, running ones keep theirs",
		"config", r.path, "listeners", len(in.listeners), "backends", len(c.Backends),
		"listeners_added", added, "listeners_removed", removed, "sessions", r.srv.Sessions())
	return nil
}

// configFilePoll is how often -watch-config looks at the configuration file.
const configFilePoll = 5 * time.Second

// configSettle is how long after its last modification the configuration
// file is read again at the next round even when stat says nothing changed:
// a rewrite in place within the file system's timestamp granularity keeps
// size and modification time (see filewatch's Snapshot.ModifiedAfter).
const configSettle = 2 * time.Second

// watchConfig reloads when the content of the configuration file changes,
// for setups where nobody sends SIGHUP (a Kubernetes ConfigMap, a file a
// deployment tool writes). A change that does not load is refused and
// logged once; the next change tries again. It reads the file once now,
// then polls in a goroutine of its own until ctx is done: when stat sees
// the file change, the content decides, so that a touch or an identical
// rewrite reloads nothing.
func (r *runner) watchConfig(ctx context.Context, every time.Duration) {
	paths := []string{r.path}
	seen := filewatch.StatAll(paths) // before the read: a change after it shows at the first round
	sum, _ := r.configSum()
	go r.pollConfig(ctx, every, paths, configSettled(seen), sum)
}

// configSettled returns seen, or nil (read again at the next round) when the
// file was modified within configSettle.
func configSettled(seen filewatch.Snapshot) filewatch.Snapshot {
	if seen.ModifiedAfter(time.Now().Add(-configSettle)) {
		return nil
	}
	return seen
}

// configSum is the SHA-256 of the configuration file, and false when it
// cannot be read.
func (r *runner) configSum() ([32]byte, bool) {
	b, err := readConfig(r.path)
	return sha256.Sum256(b), err == nil
}

// pollConfig is watchConfig's goroutine. seen is what stat said of the
// file when it was last read (nil: read it at the next round), last the
// content's sum then.
func (r *runner) pollConfig(ctx context.Context, every time.Duration, paths []string, seen filewatch.Snapshot, last [32]byte) {
	filewatch.Watch(ctx, every, paths, func() filewatch.Snapshot { return seen }, func(now filewatch.Snapshot) {
		cur, ok := r.configSum()
		if !ok {
			return // unreadable for a moment (being replaced): read again at the next round
		}
		seen = configSettled(now)
		if cur == last {
			return
		}
		last = cur
		r.log.Info("configuration file changed; reloading", "config", r.path)
		r.reload()
	})
}
