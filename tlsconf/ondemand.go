package tlsconf

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// DefaultOrderRetry is ACMEConfig.OrderRetry when it is 0: how long after a
// failed order for an on-demand name (ACMEConfig.AllowHost) popgate places
// no new order for that name and key type.
const DefaultOrderRetry = 10 * time.Minute

// maxFailedNames bounds how many certificates (name and key type) with a
// failed order are remembered; the least recently failed is forgotten first
// (and may then be retried before its retry period has passed).
const maxFailedNames = 4096

// DomainPlaceholder is what a route name pattern holds once, at its end:
// "pop.{domain}" with the routed domain "example.com" is
// "pop.example.com".
const DomainPlaceholder = "{domain}"

// CheckNamePattern checks a route name pattern: one or more DNS labels, each
// followed by a dot, then [DomainPlaceholder] ("pop.{domain}",
// "mail.{domain}"). No wildcards, no bare "{domain}" (list such names in
// ACMEConfig.Domains).
func CheckNamePattern(p string) error {
	if strings.Count(p, DomainPlaceholder) != 1 {
		return fmt.Errorf("must contain %s exactly once", DomainPlaceholder)
	}
	prefix, ok := strings.CutSuffix(p, DomainPlaceholder)
	if !ok {
		return fmt.Errorf("%s must come last (\"pop.%s\")", DomainPlaceholder, DomainPlaceholder)
	}
	if prefix == "" {
		return fmt.Errorf("needs a prefix such as \"pop.\"; list bare domains in tls.acme.domains")
	}
	prefix, ok = strings.CutSuffix(prefix, ".")
	if !ok {
		return fmt.Errorf("the part before %s must end with a dot", DomainPlaceholder)
	}
	for l := range strings.SplitSeq(prefix, ".") {
		if !validLabel(strings.ToLower(l)) {
			return fmt.Errorf("%q is not a DNS label (letters, digits, hyphens; no wildcards)", l)
		}
	}
	return nil
}

// RouteNames returns a policy for ACMEConfig.AllowHost: name is allowed
// when it is one of patterns (see [CheckNamePattern]) with the placeholder
// replaced by a domain for which hasDomain returns true. hasDomain gets the
// domain lower-cased without a trailing dot; it is called on handshakes, so
// it must be fast and safe for concurrent use (a lookup in the live routing
// table).
func RouteNames(patterns []string, hasDomain func(domain string) bool) (func(name string) bool, error) {
	if hasDomain == nil {
		return nil, errors.New("tlsconf: route names: no domain lookup")
	}
	prefixes := make([]string, 0, len(patterns))
	for _, p := range patterns {
		if err := CheckNamePattern(p); err != nil {
			return nil, fmt.Errorf("tlsconf: route name pattern %q: %w", p, err)
		}
		prefixes = append(prefixes, strings.ToLower(strings.TrimSuffix(p, DomainPlaceholder)))
	}
	return func(name string) bool {
		name = normalizeName(name)
		for _, p := range prefixes {
			if d, ok := strings.CutPrefix(name, p); ok && strings.Contains(d, ".") && hasDomain(d) {
				return true
			}
		}
		return false
	}, nil
}

// validLabel reports whether l is a lower-case LDH label (RFC 1123 §2.1).
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validHostName reports whether name (normalized) is a DNS name of at
// least two LDH labels; only such names are offered to AllowHost.
func validHostName(name string) bool {
	if len(name) > 253 || !strings.Contains(name, ".") {
		return false
	}
	for l := range strings.SplitSeq(name, ".") {
		if !validLabel(l) {
			return false
		}
	}
	return true
}

// orderLimiter remembers the certificates (name and key type) whose last
// order failed, so that each is ordered at most once per retry period after
// a failure. It only withholds new orders: a certificate that exists is
// served whatever the limiter says.
type orderLimiter struct {
	retry time.Duration    // for on-demand names
	now   func() time.Time // time.Now; replaced by tests

	mu     sync.Mutex
	failed *simplelru.LRU[seenKey, time.Time] // → when a new order may be placed
}

func newOrderLimiter(retry time.Duration) *orderLimiter {
	if retry <= 0 {
		retry = DefaultOrderRetry
	}
	lru, _ := simplelru.NewLRU[seenKey, time.Time](maxFailedNames, nil) // err only for size <= 0
	return &orderLimiter{retry: retry, now: time.Now, failed: lru}
}

// blocked returns when k may be ordered again, if that is later than now.
func (l *orderLimiter) blocked(k seenKey) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	next, ok := l.failed.Peek(k)
	if !ok {
		return time.Time{}, false
	}
	if !l.now().Before(next) {
		l.failed.Remove(k)
		return time.Time{}, false
	}
	return next, true
}

// fail records a failed order for k and returns when k may be ordered
// again: retry from now.
func (l *orderLimiter) fail(k seenKey, retry time.Duration) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := l.now().Add(retry)
	l.failed.Add(k, next)
	return next
}

// ok records a successful order for k.
func (l *orderLimiter) ok(k seenKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed.Remove(k)
}

// onDemand reports whether name (normalized, not one of the explicit
// domains) is in the on-demand policy.
func (a *acmeState) onDemand(name string) bool {
	return a.allowHost != nil && !a.allowed[name] && validHostName(name) && a.allowHost(name)
}

// inPolicy reports whether popgate may hold a certificate for name: an
// explicit domain or an on-demand one.
func (a *acmeState) inPolicy(name string) bool {
	name = normalizeName(name)
	return a.allowed[name] || a.onDemand(name)
}

// onDemandCertificate returns the certificate for the on-demand name (see
// [acmeState.serve]).
func (a *acmeState) onDemandCertificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	return a.serve(hello, name, true)
}
