package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/safefile"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// instance is a configuration turned into running parts, before listening.
// A reload builds a new one from the new file; the proxy server and the
// bound sockets carry over.
type instance struct {
	cfg         *Config
	certs       *tlsconf.Server // nil without TLS listeners
	certsReused bool            // certs is the previous instance's; its files are re-read when this one goes live
	server      *proxy.Server   // set by build; a reload reconfigures the running one
	proxyConfig proxy.Config
	listeners   []proxy.Listener
	addrs       []string       // listen addresses, by index of listeners
	keys        []string       // the listeners' ListenConfig.key, by index
	mapFile     *auth.MapFile  // nil without route.map_file
	lookup      *auth.HTTP     // nil without [route.http]
	cache       *auth.Cache    // nil without [route.http] caching
	throttle    *auth.Throttle // nil when failures are not limited
	// hasDomain reports whether the routing table names a domain
	// (route.domains, the map file's "@domain" lines).
	hasDomain func(domain string) bool
}

// build loads certificates and backend trust and makes the proxy server.
func build(c *Config, log *slog.Logger) (*instance, error) {
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		return nil, err
	}
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		return nil, err
	}
	return in, nil
}

// errACMEChanged refuses a reload that changes [tls.acme].
var errACMEChanged = errors.New("tls.acme: ACME settings cannot change on a reload (one ACME client runs per process, so that renewals are not doubled); restart popgate to apply them")

// buildInstance turns c into running parts, without a proxy server. prev
// is the running instance on a reload (nil at start): its certificate
// store is kept when [tls] is unchanged, its ACME client always, its
// failure counts when the throttle's limits are unchanged. current
// returns the live instance for the ACME on-demand policy; nil means the
// one being built.
func buildInstance(c *Config, log *slog.Logger, prev *instance, current func() *instance) (*instance, error) {
	in := &instance{cfg: c}
	if current == nil {
		current = func() *instance { return in }
	}
	in.hasDomain = routeDomains(c, func() *auth.MapFile { return in.mapFile })
	certs := make([]tlsconf.CertFile, len(c.TLS.Certificates))
	for i, cf := range c.TLS.Certificates {
		certs[i] = tlsconf.CertFile{Cert: cf.Cert, Key: cf.Key}
	}
	needTLS := false
	for _, l := range c.Listen {
		needTLS = needTLS || l.TLS != "none"
	}
	var prevCerts *tlsconf.Server
	if prev != nil {
		prevCerts = prev.certs
		prevACME := prevCerts != nil && prevCerts.ACME()
		if (prevACME || c.TLS.ACME != nil) && (!prevACME || !reflect.DeepEqual(prev.cfg.TLS.ACME, c.TLS.ACME)) {
			return nil, errACMEChanged
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
		ts, err := tlsconf.NewServer(tlsconf.ServerConfig{
			Certificates:      certs,
			ACME:              acme,
			ShareACME:         prevCerts,
			Previous:          prevCerts,
			DefaultServerName: c.TLS.DefaultServerName,
			MinVersion:        c.TLS.MinVersion,
			Logger:            log,
		})
		if err != nil {
			return nil, tlsError(err)
		}
		in.certs = ts
	}

	for _, lc := range c.Listen {
		mode, _ := proxy.ParseTLSMode(lc.TLS)
		l := proxy.Listener{Name: lc.name(), TLS: mode, ProxyProtocol: lc.ProxyProtocol}
		if mode != proxy.TLSNone {
			tc := in.certs.TLSConfig()
			if lc.MinVersion != "" {
				v, _ := tlsconf.ParseVersion(lc.MinVersion)
				tc = tc.Clone()
				tc.MinVersion = v
				if v < tls.VersionTLS12 {
					tc.CipherSuites = tlsconf.LegacyCipherSuites()
				}
			}
			l.TLSConfig = tc
		}
		for _, p := range lc.AllowPlaintextFrom {
			pfx, _ := parsePrefix(p)
			l.AllowPlaintextFrom = append(l.AllowPlaintextFrom, pfx)
		}
		if mode == proxy.TLSNone && !isLoopback(lc.Address) {
			log.Warn("LISTENER WITHOUT TLS ON A NON-LOOPBACK ADDRESS: passwords will cross the network in clear text",
				"listener", l.Name, "address", lc.Address)
		}
		in.listeners = append(in.listeners, l)
		in.addrs = append(in.addrs, lc.Address)
		in.keys = append(in.keys, lc.key())
	}

	backends := make(map[string]*proxy.Backend, len(c.Backend))
	for _, bc := range c.Backend {
		mode, _ := proxy.ParseTLSMode(bc.TLS)
		var clientAddr proxy.ClientAddressMode
		if bc.ClientAddress != "" {
			clientAddr, _ = proxy.ParseClientAddressMode(bc.ClientAddress)
		}
		b := &proxy.Backend{
			Name:           bc.Name,
			Address:        bc.Address,
			Fallbacks:      bc.Fallbacks,
			RelayAuthzID:   bc.RelayAuthzID,
			ClientAddress:  clientAddr,
			TLS:            mode,
			ConnectTimeout: bc.ConnectTimeout.or(defaultConnectTimeout),
			Timeout:        bc.Timeout.Duration,
		}
		if mode != proxy.TLSNone {
			tc, err := tlsconf.Backend(tlsconf.BackendConfig{
				ServerName:         bc.ServerName,
				Address:            bc.Address,
				CAFile:             bc.CAFile,
				InsecureSkipVerify: bc.InsecureSkipVerify,
				MinVersion:         bc.MinVersion,
			})
			if err != nil {
				return nil, fmt.Errorf("backend %q: %w", bc.Name, err)
			}
			b.TLSConfig = tc
			if bc.InsecureSkipVerify {
				log.Warn("backend certificate is NOT verified (insecure_skip_verify): anyone on the path can read the passwords",
					"backend", bc.Name)
			}
		} else if !isLoopback(bc.Address) {
			log.Warn("backend is reached without TLS: passwords cross the network to it in clear text",
				"backend", bc.Name, "address", bc.Address)
		}
		backends[bc.Name] = b
	}

	router, err := buildRouter(in, c, backends)
	if err != nil {
		return nil, err
	}
	lim := c.Limits
	var throttle proxy.Throttle
	switch {
	case prev != nil && sameThrottle(prev.cfg.Limits, lim):
		// Failure counts survive a reload that keeps the limits.
		in.throttle = prev.throttle
	default:
		in.throttle = auth.NewThrottle(auth.ThrottleConfig{
			MaxPerIP:   intOr(lim.MaxFailuresPerIP, defaultMaxFailuresIP),
			MaxPerUser: intOr(lim.MaxFailuresPerUser, defaultMaxFailuresUser),
			Window:     lim.FailureWindow.or(defaultFailureWindow),
			IPv6Prefix: intOr(lim.IPv6Prefix, auth.DefaultIPv6Prefix),
		})
	}
	if in.throttle != nil {
		throttle = in.throttle
	}
	if lim.IdleTimeout.Set && lim.IdleTimeout.Duration < defaultIdleTimeout {
		log.Warn("limits.idle_timeout is below the 10 minutes RFC 1939 §3 asks for", "idle_timeout", lim.IdleTimeout.Duration)
	}
	var trusted []netip.Prefix
	for _, p := range lim.TrustedProxies {
		pfx, _ := parsePrefix(p)
		trusted = append(trusted, pfx)
	}
	in.proxyConfig = proxy.Config{
		Router:              router,
		Backends:            backends,
		Throttle:            throttle,
		Greeting:            c.POP3.Greeting,
		ExtraCapabilities:   c.POP3.Capabilities,
		RelayBackendErrors:  c.POP3.HideBackendErrors != nil && !*c.POP3.HideBackendErrors,
		LoginTimeout:        lim.LoginTimeout.or(defaultLoginTimeout),
		IdleTimeout:         lim.IdleTimeout.or(defaultIdleTimeout),
		MaxLoginFailures:    intOr(lim.MaxLoginFailures, defaultMaxFailures),
		FailureDelay:        lim.FailureDelay.or(defaultFailureDelay),
		MaxConnections:      intOr(lim.MaxConnections, defaultMaxConns),
		MaxConnectionsPerIP: intOr(lim.MaxConnectionsPerIP, defaultMaxConnsPerIP),
		IPv6Prefix:          intOr(lim.IPv6Prefix, auth.DefaultIPv6Prefix),
		TrustedProxies:      trusted,
		Logger:              log,
	}
	if err := in.proxyConfig.Validate(); err != nil {
		return nil, err
	}
	return in, nil
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

// sameThrottle reports whether two [limits] sections limit failed logins
// alike.
func sameThrottle(a, b LimitsConfig) bool {
	return intOr(a.MaxFailuresPerIP, defaultMaxFailuresIP) == intOr(b.MaxFailuresPerIP, defaultMaxFailuresIP) &&
		intOr(a.MaxFailuresPerUser, defaultMaxFailuresUser) == intOr(b.MaxFailuresPerUser, defaultMaxFailuresUser) &&
		a.FailureWindow.or(defaultFailureWindow) == b.FailureWindow.or(defaultFailureWindow) &&
		intOr(a.IPv6Prefix, auth.DefaultIPv6Prefix) == intOr(b.IPv6Prefix, auth.DefaultIPv6Prefix)
}

// isLoopback reports whether a listen or dial address stays on this host.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// buildRouter makes the lookup chain of DESIGN.md: exact user, domain, map
// file, HTTP service, default.
func buildRouter(in *instance, c *Config, backends map[string]*proxy.Backend) (*auth.Chain, error) {
	known := func(name string) bool { return backends[name] != nil }
	chain := &auth.Chain{
		Static:  auth.NewStatic(c.Route.Users, c.Route.Domains, ""),
		Default: c.Route.Default,
	}
	if c.Route.MapFile != "" {
		mf, err := auth.LoadMapFile(c.Route.MapFile, known)
		if err != nil {
			return nil, fmt.Errorf("route.map_file: %w", err)
		}
		chain.Map = mf
		in.mapFile = mf
	}
	if h := c.Route.HTTP; h != nil {
		lookup := &auth.HTTP{
			URL:          h.URL,
			Backend:      h.Backend,
			KnownBackend: known,
			Timeout:      h.Timeout.Duration,
		}
		in.lookup = lookup
		chain.HTTP = lookup
		if ttl := h.CacheTTL.or(defaultHTTPCacheTTL); ttl > 0 {
			in.cache = auth.NewCache(lookup, intOr(h.CacheSize, defaultHTTPCacheSize), ttl, h.NegativeCacheTTL.or(defaultHTTPNegativeTTL))
			chain.HTTP = in.cache
		}
	}
	return chain, nil
}
