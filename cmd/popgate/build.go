package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/auth/passhash"
	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/internal/safefile"
	"github.com/popgate/popgate/pool"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// instance is a configuration turned into running parts, before listening.
// A reload builds a new one from the new file; the proxy server and the
// bound sockets carry over. An instance that is dropped (replaced by a
// reload, refused, or at the end) is closed.
type instance struct {
	cfg         *settings       // what it was built from
	certs       *tlsconf.Server // nil without TLS listeners
	certsReused bool            // certs is the previous instance's; its files are re-read when this one goes live
	// tickets seals the session tickets of every listener; one for the
	// life of the process (made with the first TLS listener), so that a
	// reload keeps tickets resuming. nil without TLS listeners so far.
	tickets *tlsconf.Tickets
	// cluster is the fleet's Redis ([cluster]); one for the life of the
	// process, closed at shutdown. nil without [cluster].
	cluster     *cluster.Cluster
	server      *proxy.Server // set by build; a reload reconfigures the running one
	proxyConfig proxy.Config
	listeners   []proxy.Listener
	addrs       []string // listen addresses, by index of listeners
	keys        []string // the listeners' ListenConfig.key, by index
	// router is the lookup chain; nil until buildInstance has built it.
	router *auth.Chain
	// oauth puts bearer-token logins through the issuer's verifier in
	// front of router; nil without [oauth].
	oauth *auth.OAuthRouter
	// oauthPrint identifies the inputs of oauth's verifier (buildOAuth).
	oauthPrint [32]byte
	mapFile    *auth.MapFile // among router's sources, for its file watch; nil without route.map_file
	// caches and pools are router's lookup caches and directory
	// connection pools by source, for the metrics; lookups passes the
	// directory sources' queries to them once the runner sets it.
	caches   []sourceCache
	pools    []sourcePool
	lookups  lookupRelay
	throttle *auth.Throttle // shared by every instance of the process
	// director assigns the users of [[pool]]s; one for the life of the
	// process, as the throttle, so that affinities and the operator's
	// changes survive every reload (goLive gives it the new pools).
	director *pool.Director
	// hashes verifies the directory sources' password hashes; shared by
	// every instance of the process, as the throttle is, so that its
	// bound on concurrent bcrypt, SHA-crypt and Argon2 verifications
	// holds across reloads.
	hashes *passhash.Verifier
	// throttleConfig is this configuration's limits, applied to throttle
	// by goLive.
	throttleConfig auth.ThrottleConfig
	admin          admin.Access // who may use the admin endpoints (metrics.token_file read)
	// adminTLS serves the admin address over HTTPS (metrics.tls); nil
	// serves plain HTTP.
	adminTLS *tls.Config
	log      *slog.Logger

	// throttleStore is throttle's store in the fleet's Redis (nil
	// without [cluster]), shared as throttle is; throttleHold is this
	// configuration's reservation hold for it, applied by goLive.
	throttleStore *cluster.ThrottleStore
	throttleHold  time.Duration
}

// build loads certificates and backend trust and makes the proxy server.
func build(c *settings, log *slog.Logger) (*instance, error) {
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		return nil, err
	}
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		in.close()
		return nil, err
	}
	in.director.SetDown(in.server.BackendDown)
	in.director.SetKey(in.server.PoolKey)
	in.director.SetEnd(in.server.EndPoolSessions)
	return in, nil
}

// close releases what in alone owns: its routing sources, with their
// connections to the lookup service and their cached lookup answers. It is
// called as soon as in is dropped, while sessions that started with it may
// still run (for hours, once spliced), so it leaves their parts working:
// the lookup still answers, with a connection per request, and the cache
// starts over. What a later instance may share (the certificate store, the
// throttle) is left alone, and so are the file watches, which the runner
// stops.
func (in *instance) close() {
	if in.router == nil {
		return
	}
	if err := in.router.Close(); err != nil {
		in.log.Warn("closing the routing sources", "err", err)
	}
}

// hasDomain reports whether in's routes name domain (route.domains, the
// map file's "@domain" lines), for ACME's domains_from_routes.
func (in *instance) hasDomain(domain string) bool {
	return in.router != nil && in.router.HasDomain(domain)
}

// errACMEChanged refuses a reload that changes [tls.acme].
var errACMEChanged = errors.New("tls.acme: ACME settings cannot change on a reload (one ACME client runs per process, so that renewals are not doubled); restart popgate to apply them")

// errClusterChanged refuses a reload that changes [cluster].
var errClusterChanged = errors.New("cluster: [cluster] cannot change on a reload (the process keeps one Redis client and one shared ticket keyring); restart popgate to apply it")

// buildInstance turns c into running parts, without a proxy server. prev
// is the running instance on a reload (nil at start): its certificate
// store is kept when [tls] is unchanged, its ACME client, its session
// ticket keys and its throttle (with every count) always. current returns
// the live instance for the ACME on-demand policy; nil means the one being
// built.
func buildInstance(c *settings, log *slog.Logger, prev *instance, current func() *instance) (_ *instance, err error) {
	in := &instance{cfg: c, log: log}
	ownCluster := false
	defer func() {
		if err != nil {
			in.close()
			if ownCluster {
				in.cluster.Close()
			}
		}
	}()
	if current == nil {
		current = func() *instance { return in }
	}
	if in.admin, err = adminAccess(c.Metrics, log); err != nil {
		return nil, err
	}
	// metrics.tls serves the POP3 listeners' certificates, made even
	// where every listener is plain.
	needTLS := c.Metrics.TLS
	for _, l := range c.Listeners {
		needTLS = needTLS || l.TLS != proxy.TLSNone
	}
	var prevCerts *tlsconf.Server
	if prev != nil {
		if !reflect.DeepEqual(prev.cfg.Cluster, c.Cluster) {
			return nil, errClusterChanged
		}
		in.cluster = prev.cluster
		in.tickets = prev.tickets
		prevCerts = prev.certs
		prevACME := prevCerts != nil && prevCerts.ACME()
		if (prevACME || c.TLS.ACME != nil) && (!prevACME || !reflect.DeepEqual(prev.cfg.TLS.ACME, c.TLS.ACME)) {
			return nil, errACMEChanged
		}
	}
	if c.Cluster != nil && in.cluster == nil {
		if in.cluster, err = cluster.Open(*c.Cluster, log); err != nil {
			return nil, err
		}
		ownCluster = true
	}
	if needTLS && in.tickets == nil {
		// The periods of a reload apply once it goes live (goLive),
		// except with [cluster], whose replicas agree on them at start.
		tc := tlsconf.TicketsConfig{
			Rotation: c.TLS.TicketRotation,
			Lifetime: c.TLS.TicketLifetime,
			// The keys of the process this one replaces (an
			// upgrade, handover.go): its tickets keep resuming.
			Inherited: inheritedTicketKeys,
			Logger:    log,
		}
		if in.cluster != nil {
			tc.Source = in.cluster.NewTicketKeys(c.TLS.TicketRotation, c.TLS.TicketLifetime)
		}
		in.tickets, err = tlsconf.NewTickets(tc)
		if err != nil {
			return nil, err
		}
	}
	switch {
	case !needTLS:
	case prevCerts != nil && reflect.DeepEqual(prev.cfg.TLS, c.TLS):
		in.certs, in.certsReused = prevCerts, true
	default:
		// The map file loads later (buildRouter); the policy reads
		// the live instance's routes on handshakes only.
		acme, err := c.TLS.ACME.tlsconf(func(d string) bool { return current().hasDomain(d) })
		if err != nil {
			return nil, err
		}
		if acme != nil && in.cluster != nil {
			// The fleet shares the ACME cache and orders each name once.
			cl := in.cluster
			acme.Cache = func(dir autocert.Cache) autocert.Cache {
				return cl.ACMECacheRestoring(dir, func(key string, data []byte) error {
					return tlsconf.ValidCacheEntry(key, data, time.Now())
				})
			}
			acme.OrderLock = in.cluster.ACMELocks()
		}
		ts, err := tlsconf.NewServer(tlsconf.ServerConfig{
			Certificates:      c.TLS.Certificates,
			ACME:              acme,
			ShareACME:         prevCerts,
			Previous:          prevCerts,
			DefaultServerName: c.TLS.DefaultServerName,
			MinVersion:        c.TLS.MinVersion,
			SessionTickets:    in.tickets,
			NoSessionTickets:  !c.TLS.SessionTickets,
			Logger:            log,
		})
		if err != nil {
			return nil, tlsError(err)
		}
		in.certs = ts
	}

	if c.Metrics.TLS {
		in.adminTLS = adminTLSConfig(in.certs.TLSConfig())
	}
	for _, lc := range c.Listeners {
		l := lc.Listener
		if l.TLS != proxy.TLSNone {
			tc := in.certs.TLSConfig()
			if v := lc.MinVersion; v != 0 {
				tc = tc.Clone()
				tc.MinVersion = v
				// The suites follow the listener's version, not
				// tls.min_version's: a strict listener beside
				// legacy ones must not keep their RSA key
				// exchange (no forward secrecy).
				tc.CipherSuites = nil
				if v < tls.VersionTLS12 {
					tc.CipherSuites = tlsconf.LegacyCipherSuites()
				}
			}
			l.TLSConfig = tc
		}
		if l.TLS == proxy.TLSNone && !isLoopback(lc.Address) {
			log.Warn("LISTENER WITHOUT TLS ON A NON-LOOPBACK ADDRESS: passwords will cross the network in clear text",
				"listener", l.Name, "address", lc.Address)
		}
		in.listeners = append(in.listeners, l)
		in.addrs = append(in.addrs, lc.Address)
		in.keys = append(in.keys, lc.Key)
	}

	backends := make(map[string]*proxy.Backend, len(c.Backends))
	for _, bc := range c.Backends {
		b := bc.Backend // a copy: a proxy.Server keeps it
		if b.TLS != proxy.TLSNone {
			tc, err := tlsconf.Backend(bc.Trust)
			if err != nil {
				return nil, fmt.Errorf("backend %q: %w", b.Name, err)
			}
			b.TLSConfig = tc
			if bc.Trust.InsecureSkipVerify {
				log.Warn("backend certificate is NOT verified (insecure_skip_verify): anyone on the path can read the passwords",
					"backend", b.Name)
			}
		} else if !isLoopback(b.Address) {
			log.Warn("backend is reached without TLS: passwords cross the network to it in clear text",
				"backend", b.Name, "address", b.Address)
		}
		backends[b.Name] = &b
	}

	if h := c.Route.HTTP; h != nil {
		// The settings have checked the URL. Its host only: the URL may
		// carry credentials.
		if u, err := url.Parse(h.URL); err == nil && u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			log.Warn("route.http.url is plain http:// to a host that is not loopback: every login's password crosses the network "+
				"to the lookup service in clear text; use https://", "host", u.Host)
		}
	}
	if prev != nil {
		in.hashes = prev.hashes
	}
	if prev != nil {
		in.director = prev.director
	} else {
		in.director = newDirector(c, in.cluster, log)
	}
	if err := buildRouter(in, &c.Route, backends); err != nil {
		return nil, err
	}
	lim := c.Limits
	in.throttleConfig = auth.ThrottleConfig{
		MaxPerIP:   lim.MaxFailuresPerIP,
		MaxPerUser: lim.MaxFailuresPerUser,
		Window:     lim.FailureWindow,
		IPv6Prefix: lim.IPv6Prefix,
	}
	// The fleet's budgets, in Redis. An attempt lasts until the login
	// deadline and the wait for a verdict past it.
	in.throttleHold = lim.LoginTimeout + time.Minute
	if prev != nil {
		// One throttle for the life of the process: counts, locks and
		// attempts in flight survive every reload; the new limits apply
		// once the reload goes live (instance.goLive).
		in.throttle, in.throttleStore = prev.throttle, prev.throttleStore
	} else {
		tc := in.throttleConfig
		if in.cluster != nil {
			in.throttleStore = in.cluster.NewThrottleStore(in.throttleHold)
			tc.Store = in.throttleStore
		}
		in.throttle = auth.NewThrottle(tc)
	}
	if lim.IdleTimeout < defaultIdleTimeout {
		log.Warn("limits.idle_timeout is below the 10 minutes RFC 1939 §3 asks for", "idle_timeout", lim.IdleTimeout)
	}
	for _, p := range lim.TrustedEveryone {
		log.Warn("limits.trusted_proxies includes every address: any client can send a PROXY header and claim to be any address, "+
			"past max_connections_per_ip, the failed-login limits and the backends' view of the client; list the load balancers only",
			"trusted_proxy", p)
	}
	var router auth.Router = in.router
	if c.OAuth != nil {
		var prevV *auth.OAuth
		var prevPrint [32]byte
		if prev != nil && prev.oauth != nil {
			prevV, prevPrint = prev.oauth.Verifier, prev.oauthPrint
		}
		if in.oauth, in.oauthPrint, err = buildOAuth(c.OAuth, c.Backends, in.router, prevV, prevPrint); err != nil {
			return nil, err
		}
		if len(c.OAuth.Domains) == 0 {
			log.Warn(warnOAuthDomains)
		}
		router = in.oauth
	}
	in.proxyConfig = proxy.Config{
		Router:              router,
		Backends:            backends,
		Pools:               in.director,
		Throttle:            in.throttle,
		Greeting:            c.POP3.Greeting,
		ExtraCapabilities:   c.POP3.Capabilities,
		RelayBackendErrors:  !c.POP3.HideBackendErrors,
		LoginTimeout:        lim.LoginTimeout,
		IdleTimeout:         lim.IdleTimeout,
		MaxLoginFailures:    lim.MaxLoginFailures,
		FailureDelay:        lim.FailureDelay,
		MaxConnections:      lim.MaxConnections,
		MaxConnectionsPerIP: lim.MaxConnectionsPerIP,
		IPv6Prefix:          lim.IPv6Prefix,
		MasterUserSeparator: lim.MasterUserSeparator,
		TrustedProxies:      lim.TrustedProxies,
		Logger:              log,
	}
	if in.oauth != nil {
		in.proxyConfig.OAuthError = auth.OAuthErrorChallenge(in.oauth.Verifier.DiscoveryURL(), "")
	}
	if err := in.proxyConfig.Validate(); err != nil {
		return nil, err
	}
	return in, nil
}

// goLive applies what in shares with the instance it replaces once in is
// the running configuration: the throttle's limits, the ticket key periods.
func (in *instance) goLive() {
	in.throttle.Reconfigure(in.throttleConfig)
	if in.throttleStore != nil {
		in.throttleStore.SetHold(in.throttleHold)
	}
	in.director.Reconfigure(in.cfg.Pools, backendNames(in.cfg.Backends))
	if in.tickets != nil {
		in.tickets.SetPeriods(in.cfg.TLS.TicketRotation, in.cfg.TLS.TicketLifetime)
	}
}

// tlsError names the key behind an error of tlsconf.NewServer; for a
// refused ACME cache, the way out as well.
func tlsError(err error) error {
	var ce *tlsconf.CacheError
	switch {
	case errors.As(err, &ce) && errors.Is(err, safefile.ErrNotPrivate):
		return fmt.Errorf("tls.acme.cache_dir: %w (another user could put a certificate there that popgate would serve; "+
			"only if that is acceptable, set tls.acme.insecure_cache_permissions = true)", err)
	case errors.As(err, &ce):
		return fmt.Errorf("tls.acme.cache_dir: %w", err)
	}
	return fmt.Errorf("tls: %w", err)
}

// isLoopback reports whether a listen or dial address stays on this host.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	return err == nil && isLoopbackHost(host)
}

// isLoopbackHost reports whether a host name or IP address is this host.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// adminAccess turns [metrics] into the admin endpoints' access rules,
// reading metrics.token_file. On a loopback address, or with
// metrics.allowed_hosts, the Host header must name the address: that
// stops DNS rebinding from a browser on this host. A non-loopback address
// without a token (metrics.insecure_open) is logged at WARN every time.
func adminAccess(m metricsSettings, log *slog.Logger) (admin.Access, error) {
	a := admin.Access{ProtectMetrics: m.ProtectMetrics}
	if m.TokenFile != "" {
		tok, err := readToken(m.TokenFile)
		if err != nil {
			return a, fmt.Errorf("metrics.token_file: %w", err)
		}
		a.Token = tok
	}
	addr := m.Address
	if addr == "" {
		return a, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	a.CheckHost = isLoopback(addr) || len(m.AllowedHosts) > 0
	if ip, err := netip.ParseAddr(host); host != "" && (err != nil || !ip.IsUnspecified()) {
		a.Hosts = append(a.Hosts, host)
	}
	a.Hosts = append(a.Hosts, m.AllowedHosts...)
	if a.Token == "" && !isLoopback(addr) {
		log.Warn("ADMIN ENDPOINTS OPEN WITHOUT A TOKEN ON A NON-LOOPBACK ADDRESS (metrics.insecure_open): "+
			"anyone who reaches it can list the sessions and end them; set metrics.token_file",
			"address", addr)
	}
	return a, nil
}

// Bounds of the admin token in metrics.token_file.
const (
	minTokenLen = 16   // characters; openssl rand -hex 32 makes 64
	maxTokenLen = 4096 // a file this long is not a token (or not the right file)
)

// readToken reads the admin token from path: one line of printable ASCII
// without spaces, its line end dropped. Errors never show the token.
func readToken(path string) (string, error) {
	// A regular file (a FIFO must not hang start or reload) of bounded
	// size; safefile's error names the path and never the content.
	b, err := safefile.ReadFile(path, safefile.Options{Limit: maxTokenLen + 2})
	if errors.Is(err, safefile.ErrTooLarge) {
		return "", fmt.Errorf("%s holds more than %d bytes, which is no token", path, maxTokenLen)
	}
	if err != nil {
		return "", err
	}
	const hint = "put a random token in it, e.g. openssl rand -hex 32"
	tok := strings.TrimRight(string(b), "\r\n")
	switch {
	case tok == "":
		return "", fmt.Errorf("%s is empty; %s", path, hint)
	case len(tok) > maxTokenLen:
		return "", fmt.Errorf("%s holds more than %d bytes, which is no token", path, maxTokenLen)
	case len(tok) < minTokenLen:
		return "", fmt.Errorf("%s: the token is %d characters, too short (at least %d); %s", path, len(tok), minTokenLen, hint)
	}
	for _, r := range tok {
		if r <= ' ' || r > '~' {
			return "", fmt.Errorf("%s: the token holds a space, a control character or a non-ASCII one (one line of printable ASCII is needed); %s", path, hint)
		}
	}
	return tok, nil
}

// buildRouter makes in's lookup chain (in.router) from [route]'s sources.
func buildRouter(in *instance, r *routeSettings, backends map[string]*proxy.Backend) error {
	// A route may name a [[pool]] wherever it may name a backend.
	pools := map[string]bool{}
	for _, p := range in.cfg.Pools {
		pools[p.Name] = true
	}
	known := func(name string) bool { return backends[name] != nil || pools[name] }
	in.router = &auth.Chain{Default: r.Default}
	for _, rs := range r.sources() {
		s, err := rs.build(in, known)
		if err != nil {
			return fmt.Errorf("%s: %w", rs.key, err)
		}
		in.router.Sources = append(in.router.Sources, s)
	}
	return nil
}

// routeSource is one routing source of [route], before it is built.
type routeSource struct {
	key string // its configuration key
	// domains: the source routes whole domains (an auth.DomainSource),
	// which tls.acme.domains_from_routes can take names from.
	domains bool
	// build makes the source; known reports whether a backend name is
	// configured. It may keep parts of it in in (a file to watch,
	// metrics).
	build func(in *instance, known func(backend string) bool) (auth.Source, error)
}

// sources lists the routing sources r configures, in the lookup order of
// the README's "Routing and authentication": users, domains, map file, SQL
// query, LDAP directory, HTTP service (route.default comes after them
// all). The directories come before the HTTP service, which never lets a
// later source decide. It is the one place a source is added; the checks
// of [route], the chain that routes logins, popgate route and ACME's
// domains_from_routes all take them from here.
func (r *routeSettings) sources() []routeSource {
	var ss []routeSource
	if len(r.Users) > 0 || len(r.Domains) > 0 {
		ss = append(ss, routeSource{"route.users and route.domains", len(r.Domains) > 0, r.buildStatic})
	}
	if r.MapFile != "" {
		ss = append(ss, routeSource{"route.map_file", true, r.buildMapFile})
	}
	if r.SQL != nil {
		ss = append(ss, routeSource{"route.sql", false, r.SQL.build})
	}
	if r.LDAP != nil {
		ss = append(ss, routeSource{"route.ldap", false, r.LDAP.build})
	}
	if r.HTTP != nil {
		ss = append(ss, routeSource{"route.http", false, r.HTTP.build})
	}
	return ss
}

// buildStatic makes route.users and route.domains one auth.Static, without
// a default: route.default comes after every source.
func (r *routeSettings) buildStatic(*instance, func(string) bool) (auth.Source, error) {
	return auth.NewStatic(r.Users, r.Domains, ""), nil
}

// buildMapFile loads route.map_file; the runner watches it (in.mapFile).
func (r *routeSettings) buildMapFile(in *instance, known func(string) bool) (auth.Source, error) {
	mf, err := auth.LoadMapFile(r.MapFile, known)
	if err != nil {
		return nil, err
	}
	in.mapFile = mf
	return mf, nil
}

// build makes the lookup service's client, behind a cache unless
// cache_ttl is 0 (in.caches, for the metrics).
func (h *httpRouteSettings) build(in *instance, known func(string) bool) (auth.Source, error) {
	lookup := &auth.HTTP{
		URL:          h.URL,
		Backend:      h.Backend,
		KnownBackend: known,
		Timeout:      h.Timeout,
	}
	if h.CacheTTL <= 0 {
		return lookup, nil
	}
	c := auth.NewCache(lookup, h.CacheSize, h.CacheTTL, h.NegativeCacheTTL, nil)
	in.caches = append(in.caches, sourceCache{"route.http", c})
	return c, nil
}

// maxDSNLen bounds route.sql.dsn_file: a DSN is a line.
const maxDSNLen = 16 << 10

// build connects to the database (auth.OpenSQL checks the query against
// it), behind a cache unless cache_ttl is 0. A database that cannot be
// reached is logged at ERROR and the source made all the same: its logins
// fail with [SYS/TEMP] until the database answers, so that popgate (and
// the other sources' logins) need not wait for it.
func (q *sqlRouteSettings) build(in *instance, known func(string) bool) (auth.Source, error) {
	dsn := q.DSN
	if q.DSNFile != "" {
		// Private: whoever can write the file can send every login,
		// with its password, to a server of theirs.
		b, err := safefile.ReadFile(q.DSNFile, safefile.Options{Limit: maxDSNLen, Private: true})
		switch {
		case errors.Is(err, safefile.ErrNotPrivate):
			return nil, fmt.Errorf("dsn_file: %w (another user could point popgate at a database of theirs, which would route every login; "+
				"make it owned by popgate's user or root and writable by its owner only)", err)
		case err != nil:
			return nil, fmt.Errorf("dsn_file: %w", err)
		}
		if dsn = strings.TrimSpace(string(b)); dsn == "" {
			return nil, fmt.Errorf("dsn_file: %s is empty", q.DSNFile)
		}
	}
	hashes, err := in.passwordHashes()
	if err != nil {
		return nil, err
	}
	src, err := auth.OpenSQL(context.Background(), auth.SQLConfig{
		Driver:         q.Driver,
		DSN:            dsn,
		Query:          q.Query,
		MaxConnections: q.MaxConnections,
		Timeout:        q.Timeout,
		Directory: auth.Directory{
			Source:       "route.sql",
			Backend:      q.Backend,
			KnownBackend: known,
			Hashes:       hashes,
		},
		Observe: in.lookups.observe,
	})
	switch {
	case errors.Is(err, auth.ErrDirectoryUnavailable):
		in.log.Error("route.sql: the database cannot be reached; the logins it routes fail with [SYS/TEMP] until it answers "+
			"(the query's columns are checked then, on every lookup)", "driver", q.Driver, "err", err)
	case err != nil:
		return nil, err
	}
	if src.UsesClientIP() && q.CacheTTL > 0 {
		src.Close()
		return nil, errors.New("query: uses :client_ip, and the lookup cache keeps answers by user, not by address; " +
			"set route.sql.cache_ttl = \"0s\" or leave :client_ip out")
	}
	if src.PlaintextRemote() {
		in.log.Warn("route.sql: the database is reached without TLS on a host that is not this one: its password and the rows "+
			"(password hashes, master passwords) cross the network in clear text; use sslmode=verify-full (postgres) or tls=true (mysql)",
			"driver", q.Driver)
	}
	in.pools = append(in.pools, sourcePool{"route.sql", src})
	if q.CacheTTL <= 0 {
		return src, nil
	}
	c := auth.NewCache(src, q.CacheSize, q.CacheTTL, q.NegativeCacheTTL, nil)
	in.caches = append(in.caches, sourceCache{"route.sql", c})
	return c, nil
}

// sourceCache is a routing source's lookup cache, for the metrics.
type sourceCache struct {
	source string // "route.http"
	cache  *auth.Cache
}

// sourcePool is a directory source's connection pool, for the metrics.
type sourcePool struct {
	source string // "route.sql"
	pool   auth.Pooled
}

// lookupRelay passes the queries of an instance's directory sources to
// the metrics (an auth.LookupObserver) once the runner sets it; before,
// they are not counted.
type lookupRelay struct {
	o atomic.Pointer[auth.LookupObserver]
}

func (r *lookupRelay) observe(source, result string, took time.Duration) {
	if o := r.o.Load(); o != nil {
		(*o)(source, result, took)
	}
}

func (r *lookupRelay) set(o auth.LookupObserver) { r.o.Store(&o) }

// passwordHashes checks the password_hash column (attribute) of the
// directory sources with in.hashes, made here with passhash's defaults (as
// many expensive verifications at once as there are cores) unless a
// previous instance handed it on.
func (in *instance) passwordHashes() (auth.HashChecker, error) {
	if in.hashes == nil {
		v, err := passhash.New(passhash.Config{})
		if err != nil {
			return nil, err
		}
		in.hashes = v
	}
	return hashChecker{in.hashes}, nil
}

// hashChecker adapts a passhash.Verifier to auth.HashChecker.
type hashChecker struct{ v *passhash.Verifier }

func (h hashChecker) Check(ctx context.Context, hash string, pw auth.Password) error {
	err := h.v.Verify(ctx, hash, string(pw))
	if errors.Is(err, passhash.ErrMismatch) {
		return auth.ErrPasswordMismatch
	}
	return err
}

// adminTLSConfig is the admin address's TLS (metrics.tls): the POP3
// listeners' certificates and their SNI selection, which reloads and ACME
// renewals update in place, but a browser's TLS: 1.2 at least, whatever
// tls.min_version keeps for old mail clients; HTTP/1.1 as its only
// protocol; and no session tickets, which would resume across the POP3
// and admin services.
func adminTLSConfig(pop *tls.Config) *tls.Config {
	tc := pop.Clone()
	tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
	tc.CipherSuites = nil
	tc.NextProtos = []string{"http/1.1"}
	tc.SessionTicketsDisabled = true
	tc.WrapSession, tc.UnwrapSession = nil, nil
	return tc
}
