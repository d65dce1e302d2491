package main

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// ACMEConfig is [tls.acme]: certificates from an ACME CA (Let's Encrypt by
// default) through autocert.
type ACMEConfig struct {
	Domains      []string `toml:"domains"`
	Email        string   `toml:"email"`
	CacheDir     string   `toml:"cache_dir"`
	DirectoryURL string   `toml:"directory_url"`
	CAFile       string   `toml:"ca_file"`
	// HTTPChallenge is the HTTP-01 answerer's address; omitted means
	// ":80", "" disables it.
	HTTPChallenge    *string  `toml:"http_challenge"`
	TLSALPNChallenge string   `toml:"tls_alpn_challenge"`
	RenewBefore      Duration `toml:"renew_before"`
	// DomainsFromRoutes also obtains certificates, on demand, for the
	// names RouteNamePatterns make of the routed domains (route.domains
	// and the map file's "@domain" lines).
	DomainsFromRoutes bool `toml:"domains_from_routes"`
	// RouteNamePatterns are the names per routed domain; omitted means
	// defaultRouteNamePatterns.
	RouteNamePatterns []string `toml:"route_name_patterns"`
	// MaxChallengeConnections caps the connections the challenge
	// answerers hold at once (both together); omitted means
	// defaultChallengeConns. The file descriptor limit may lower
	// it (see fdBudget).
	MaxChallengeConnections *int `toml:"max_challenge_connections"`
	// MaxChallengeConnectionsPerIP caps those from one client address
	// (limits.ipv6_prefix groups IPv6); omitted means
	// defaultChallengeConnsPerIP.
	MaxChallengeConnectionsPerIP *int `toml:"max_challenge_connections_per_ip"`
	// OrderBudget, OrderBudgetPeriod: at most this many orders with the
	// CA at once, refilled evenly over the period; omitted means
	// defaultOrderBudget per defaultOrderBudgetPeriod.
	OrderBudget       *int     `toml:"order_budget"`
	OrderBudgetPeriod Duration `toml:"order_budget_period"`
	// OrderBudgetReserve is the part of the budget on-demand names leave
	// to renewals and domains; omitted means a fifth of the budget.
	OrderBudgetReserve *int `toml:"order_budget_reserve"`
	// AskURL is the approval hook asked before each new order for an
	// on-demand name; "" means none. AskTimeout bounds its answer;
	// omitted means defaultAskTimeout.
	AskURL     string   `toml:"ask_url"`
	AskTimeout Duration `toml:"ask_timeout"`
	// InsecureCachePermissions serves from a cache_dir that other users
	// could write (tlsconf.ACMEConfig.InsecureCachePermissions).
	InsecureCachePermissions bool `toml:"insecure_cache_permissions"`
}

// challengeConns returns max_challenge_connections and
// max_challenge_connections_per_ip with their defaults.
func (a *ACMEConfig) challengeConns() (total, perIP int) {
	return intOr(a.MaxChallengeConnections, defaultChallengeConns),
		intOr(a.MaxChallengeConnectionsPerIP, defaultChallengeConnsPerIP)
}

// maxAskTimeout bounds tls.acme.ask_timeout: a handshake waits for the
// answer.
const maxAskTimeout = 30 * time.Second

// letsEncryptOrders is Let's Encrypt's limit of new orders per account:
// 300 per 3 hours (https://letsencrypt.org/docs/rate-limits/).
const (
	letsEncryptOrders       = 300
	letsEncryptOrdersPeriod = 3 * time.Hour
)

func (a *ACMEConfig) httpChallenge() string {
	if a.HTTPChallenge == nil {
		return defaultHTTPChallenge
	}
	return *a.HTTPChallenge
}

// settings checks [tls.acme] and returns it with its defaults; nil (no
// section) is valid and has none.
func (a *ACMEConfig) settings(add func(format string, args ...any)) *acmeSettings {
	if a == nil {
		return nil
	}
	validateACME(a, add)
	reserve := 0 // tlsconf's default, a fifth of the budget
	if a.OrderBudgetReserve != nil {
		if reserve = *a.OrderBudgetReserve; reserve == 0 {
			reserve = -1 // none
		}
	}
	s := &acmeSettings{
		ACME: tlsconf.ACMEConfig{
			Domains:            a.Domains,
			Email:              a.Email,
			CacheDir:           a.CacheDir,
			DirectoryURL:       cmp.Or(a.DirectoryURL, defaultACMEDirectoryURL),
			CAFile:             a.CAFile,
			HTTPChallenge:      a.httpChallenge(),
			TLSALPNChallenge:   a.TLSALPNChallenge,
			RenewBefore:        a.RenewBefore.or(defaultRenewBefore),
			OrderBudget:        intOr(a.OrderBudget, defaultOrderBudget),
			OrderBudgetPeriod:  a.OrderBudgetPeriod.or(defaultOrderBudgetPeriod),
			OrderBudgetReserve: reserve,
			AskURL:             a.AskURL,
			AskTimeout:         a.AskTimeout.or(defaultAskTimeout),

			InsecureCachePermissions: a.InsecureCachePermissions,
		},
		DomainsFromRoutes: a.DomainsFromRoutes,
		RouteNamePatterns: a.RouteNamePatterns,
	}
	if s.RouteNamePatterns == nil {
		s.RouteNamePatterns = defaultRouteNamePatterns
	}
	s.MaxChallengeConns, s.MaxChallengeConnsPerIP = a.challengeConns()
	return s
}

// answersChallenges reports whether popgate binds a challenge answerer.
func (a *acmeSettings) answersChallenges() bool {
	return a != nil && (a.ACME.HTTPChallenge != "" || a.ACME.TLSALPNChallenge != "")
}

// tlsconf returns the section for tlsconf (nil for none); hasDomain is the
// routing table's domain lookup, used with domains_from_routes.
func (a *acmeSettings) tlsconf(hasDomain func(string) bool) (*tlsconf.ACMEConfig, error) {
	if a == nil {
		return nil, nil
	}
	c := a.ACME
	if a.DomainsFromRoutes {
		allow, err := tlsconf.RouteNames(a.RouteNamePatterns, hasDomain)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.route_name_patterns: %w", err)
		}
		c.AllowHost = allow
	}
	return &c, nil
}

// validateACME checks [tls.acme].
func validateACME(a *ACMEConfig, add func(format string, args ...any)) {
	if len(a.Domains) == 0 {
		add("tls.acme.domains: missing; list the names to obtain certificates for")
	}
	for i, d := range a.Domains {
		switch n := strings.ToLower(strings.TrimSuffix(d, ".")); {
		case n == "":
			add("tls.acme.domains[%d]: empty", i)
		case strings.Contains(n, "*"):
			add("tls.acme.domains[%d]: %q: wildcards need DNS-01, which popgate does not do; use tls.certificates", i, d)
		case !strings.Contains(n, ".") || strings.ContainsAny(n, " /:@[]") || net.ParseIP(n) != nil:
			add("tls.acme.domains[%d]: %q is not a fully qualified host name", i, d)
		}
	}
	if a.CacheDir == "" {
		add("tls.acme.cache_dir: missing; without a cache every restart orders new certificates")
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		add("tls.acme.email: %q is not an email address", a.Email)
	}
	if a.DirectoryURL != "" {
		if u, err := url.Parse(a.DirectoryURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("tls.acme.directory_url: %q is not an https:// URL", a.DirectoryURL)
		}
	}
	checkAddr := func(key, addr string) {
		if addr == "" {
			return
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			add("tls.acme.%s: %q is not host:port (\":80\", \"192.0.2.1:443\")", key, addr)
			return
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			add("tls.acme.%s: %q: port must be 1-65535", key, addr)
		}
	}
	checkAddr("http_challenge", a.httpChallenge())
	checkAddr("tls_alpn_challenge", a.TLSALPNChallenge)
	if a.TLSALPNChallenge != "" && a.TLSALPNChallenge == a.httpChallenge() {
		add("tls.acme: http_challenge and tls_alpn_challenge are the same address %q", a.TLSALPNChallenge)
	}
	for _, k := range []struct {
		key string
		p   *int
	}{
		{"max_challenge_connections", a.MaxChallengeConnections},
		{"max_challenge_connections_per_ip", a.MaxChallengeConnectionsPerIP},
	} {
		if k.p != nil && *k.p < 1 {
			add("tls.acme.%s: must be at least 1 (the challenge answerers always have a cap; omit the key for the default)", k.key)
		}
	}
	if total, perIP := a.challengeConns(); total >= 1 && perIP > total {
		add("tls.acme.max_challenge_connections_per_ip: %d is more than max_challenge_connections (%d)", perIP, total)
	}
	if a.RouteNamePatterns != nil && !a.DomainsFromRoutes {
		add("tls.acme.route_name_patterns: set, but tls.acme.domains_from_routes is not true")
	}
	if a.RouteNamePatterns != nil && len(a.RouteNamePatterns) == 0 {
		add("tls.acme.route_name_patterns: empty; omit it for the default %q", defaultRouteNamePatterns)
	}
	for i, p := range a.RouteNamePatterns {
		if err := tlsconf.CheckNamePattern(p); err != nil {
			add("tls.acme.route_name_patterns[%d]: %q: %v", i, p, err)
		}
	}
	validateOrderBudget(a, add)
	if a.AskURL != "" {
		if !a.DomainsFromRoutes {
			add("tls.acme.ask_url: set, but tls.acme.domains_from_routes is not true (the hook approves on-demand names only)")
		}
		if err := tlsconf.CheckAskURL(a.AskURL); err != nil {
			add("tls.acme.ask_url: %v", err)
		}
	}
	if a.AskTimeout.Set {
		if a.AskURL == "" {
			add("tls.acme.ask_timeout: set, but tls.acme.ask_url is not")
		}
		if a.AskTimeout.Duration <= 0 || a.AskTimeout.Duration > maxAskTimeout {
			add("tls.acme.ask_timeout: %q; it must be more than 0 and at most %s (a handshake waits for the answer)", a.AskTimeout.Duration, maxAskTimeout)
		}
	}
}

// validateOrderBudget checks order_budget, order_budget_period and
// order_budget_reserve.
func validateOrderBudget(a *ACMEConfig, add func(format string, args ...any)) {
	budget := intOr(a.OrderBudget, defaultOrderBudget)
	period := a.OrderBudgetPeriod.or(defaultOrderBudgetPeriod)
	if budget < 1 {
		add("tls.acme.order_budget: %d; it must be at least 1 (every certificate, renewals included, needs an order)", budget)
	}
	if a.OrderBudgetPeriod.Set && period < time.Minute {
		add("tls.acme.order_budget_period: %q; it must be at least a minute (\"3h\")", period)
	}
	if r := a.OrderBudgetReserve; r != nil && (*r < 0 || *r >= budget) {
		add("tls.acme.order_budget_reserve: %d; it must be from 0 to order_budget - 1 (%d), or on-demand names could never order", *r, budget-1)
	}
	if dir := cmp.Or(a.DirectoryURL, defaultACMEDirectoryURL); dir == tlsconf.LetsEncryptURL && period >= time.Minute &&
		(budget > letsEncryptOrders || float64(budget)/period.Hours() > letsEncryptOrders/letsEncryptOrdersPeriod.Hours()) {
		add("tls.acme.order_budget: %d per %s is above Let's Encrypt's limit of %d new orders per account per %s; beyond it every order fails, renewals included",
			budget, period, letsEncryptOrders, letsEncryptOrdersPeriod)
	}
}

// checkRouteNames checks that tls.acme.domains_from_routes has a routing
// source to take domains from.
func checkRouteNames(s *settings, add func(format string, args ...any)) {
	if a := s.TLS.ACME; a == nil || !a.DomainsFromRoutes {
		return
	}
	for _, rs := range s.Route.sources() {
		if rs.domains {
			return
		}
	}
	add("tls.acme.domains_from_routes: no route.domains and no route.map_file to take domains from")
}

// checkDefaultName checks that tls.default_server_name is covered when
// ACME is the only certificate source.
func checkDefaultName(c *Config, add func(format string, args ...any)) {
	a := c.TLS.ACME
	name := strings.ToLower(strings.TrimSuffix(c.TLS.DefaultServerName, "."))
	if a == nil || name == "" || len(c.TLS.Certificates) > 0 {
		return // static certificates are checked when they load
	}
	for _, d := range a.Domains {
		if strings.ToLower(strings.TrimSuffix(d, ".")) == name {
			return
		}
	}
	add("tls.default_server_name: %q is not one of tls.acme.domains", c.TLS.DefaultServerName)
}
