package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// instance is a configuration turned into running parts, before listening.
type instance struct {
	cfg       *Config
	certs     *tlsconf.Server
	server    *proxy.Server
	listeners []proxy.Listener
	addrs     []string // listen addresses, by index of listeners
	router    *auth.Chain
	mapFile   *auth.MapFile // nil without route.map_file
	lookup    *auth.HTTP    // nil without [route.http]
}

// build loads certificates and backend trust and makes the proxy server.
func build(c *Config, log *slog.Logger) (*instance, error) {
	in := &instance{cfg: c}
	certs := make([]tlsconf.CertFile, len(c.TLS.Certificates))
	for i, cf := range c.TLS.Certificates {
		certs[i] = tlsconf.CertFile{Cert: cf.Cert, Key: cf.Key}
	}
	needTLS := false
	for _, l := range c.Listen {
		needTLS = needTLS || l.TLS != "none"
	}
	if needTLS {
		// The map file loads later (buildRouter); the policy reads
		// in.mapFile on handshakes only, after build has returned.
		acme, err := c.TLS.ACME.tlsconf(routeDomains(c, func() *auth.MapFile { return in.mapFile }))
		if err != nil {
			return nil, err
		}
		ts, err := tlsconf.NewServer(tlsconf.ServerConfig{
			Certificates:      certs,
			ACME:              acme,
			DefaultServerName: c.TLS.DefaultServerName,
			MinVersion:        c.TLS.MinVersion,
			Logger:            log,
		})
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
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
	in.router = router
	lim := c.Limits
	var throttle proxy.Throttle
	if th := auth.NewThrottle(intOr(lim.MaxFailuresPerIP, defaultMaxFailuresIP), intOr(lim.MaxFailuresPerUser, defaultMaxFailuresUser),
		lim.FailureWindow.or(defaultFailureWindow), 0, nil); th != nil {
		throttle = th
	}
	if lim.IdleTimeout.Set && lim.IdleTimeout.Duration < defaultIdleTimeout {
		log.Warn("limits.idle_timeout is below the 10 minutes RFC 1939 §3 asks for", "idle_timeout", lim.IdleTimeout.Duration)
	}
	var trusted []netip.Prefix
	for _, p := range lim.TrustedProxies {
		pfx, _ := parsePrefix(p)
		trusted = append(trusted, pfx)
	}
	srv, err := proxy.New(proxy.Config{
		Router:              router,
		Backends:            backends,
		Throttle:            throttle,
		Greeting:            c.POP3.Greeting,
		ExtraCapabilities:   c.POP3.Capabilities,
		HideBackendErrors:   c.POP3.HideBackendErrors,
		LoginTimeout:        lim.LoginTimeout.or(defaultLoginTimeout),
		IdleTimeout:         lim.IdleTimeout.or(defaultIdleTimeout),
		MaxLoginFailures:    intOr(lim.MaxLoginFailures, defaultMaxFailures),
		FailureDelay:        lim.FailureDelay.or(defaultFailureDelay),
		MaxConnections:      intOr(lim.MaxConnections, defaultMaxConns),
		MaxConnectionsPerIP: intOr(lim.MaxConnectionsPerIP, defaultMaxConnsPerIP),
		TrustedProxies:      trusted,
		Logger:              log,
	})
	if err != nil {
		return nil, err
	}
	in.server = srv
	return in, nil
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
			chain.HTTP = auth.NewCache(lookup, intOr(h.CacheSize, defaultHTTPCacheSize), ttl, h.NegativeCacheTTL.or(defaultHTTPNegativeTTL))
		}
	}
	return chain, nil
}
