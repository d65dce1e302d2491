package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Access says who may use the admin endpoints. The zero Access lets
// every request in: the address alone protects them (loopback).
type Access struct {
	// Token, when not empty, must come as "Authorization: Bearer TOKEN"
	// with every request to /sessions (whatever the method), to /metrics
	// when ProtectMetrics is set, and to any path that is not an
	// endpoint. A request without it, or with another token, gets 401
	// and a "WWW-Authenticate: Bearer" challenge. /healthz, /readyz and
	// the index stay open: probes carry no token. Empty: no token is
	// asked for anywhere.
	Token string
	// ProtectMetrics asks for Token on /metrics as well. Without a Token
	// it changes nothing.
	ProtectMetrics bool
	// CheckHost refuses, with 421 Misdirected Request and before the
	// token is looked at, a request whose Host header (port ignored) is
	// neither "localhost", a loopback IP address nor one of Hosts. It
	// stops DNS rebinding: a web page whose name its owner points at
	// 127.0.0.1 reaches a loopback address from a browser on this host,
	// but the browser sends the page's own name as Host. A request with
	// no Host at all (an HTTP/1.0 client) is let through: browsers
	// always send one. So are /healthz and /readyz, which tell nothing
	// worth a rebinding and are asked by probes that use whatever
	// address they know (a pod's IP).
	CheckHost bool
	// Hosts are the further names and IP addresses CheckHost accepts
	// (the bound address, names the address is reached by). Names are
	// compared without regard to case or a trailing dot, IP addresses
	// by value.
	Hosts []string
}

// guard applies the access rules of the moment to every request before
// the endpoints see it.
type guard struct {
	next   http.Handler
	access func() Access
	log    *slog.Logger
	// Refusals are logged at most once per refusalLogEvery each, with
	// the number left out since: a flood of them must not flood the log.
	hostRefusals, tokenRefusals, budgetRefusals refusalLog
	// fails counts wrong tokens by address, shared with the console.
	fails *failBudget
}

// refusalLogEvery is how often a kind of refusal may be logged.
const refusalLogEvery = 10 * time.Second

// refusalLog rate-limits one kind of log line.
type refusalLog struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// take reports whether a line may be logged now and how many were left
// out before it.
func (l *refusalLog) take(now time.Time) (ok bool, skipped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) < refusalLogEvery {
		l.skipped++
		return false, 0
	}
	l.last, skipped, l.skipped = now, l.skipped, 0
	return true, skipped
}

// realm names the protection space in the 401 challenge (RFC 6750 §3).
const realm = `Bearer realm="popgate admin"`

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := g.access()
	if a.CheckHost && !probe(r.URL.Path) && !hostAllowed(r.Host, a.Hosts) {
		if ok, skipped := g.hostRefusals.take(time.Now()); ok {
			g.log.Warn("admin: request for another host name refused (DNS rebinding?)",
				"host", r.Host, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "refused_before", skipped)
		}
		w.Header().Set("Connection", "close")
		writeText(w, http.StatusMisdirectedRequest, "misdirected request: this address does not answer to that host name\n")
		return
	}
	if a.Token != "" && needsToken(r.URL.Path, a.ProtectMetrics) {
		tok, given := bearerToken(r)
		right := given && sameToken(tok, a.Token)
		// Whether the token was right is answered only within the
		// address's budget of wrong ones.
		if ok, wait := g.fails.attempt(r.RemoteAddr, time.Now(), given && !right); given && !ok {
			if ok, skipped := g.budgetRefusals.take(time.Now()); ok {
				g.log.Warn("admin: request from an address with too many wrong tokens refused",
					"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "refused_before", skipped)
			}
			w.Header().Set("Retry-After", retryAfter(wait))
			w.Header().Set("Connection", "close")
			writeText(w, http.StatusTooManyRequests, tooManyFailures(wait)+"\n")
			return
		}
		if !right {
			challenge := realm
			if given {
				challenge += `, error="invalid_token"`
			}
			if ok, skipped := g.tokenRefusals.take(time.Now()); ok {
				g.log.Warn("admin: request without a valid token refused",
					"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "token_given", given, "refused_before", skipped)
			}
			w.Header().Set("WWW-Authenticate", challenge)
			w.Header().Set("Connection", "close")
			writeText(w, http.StatusUnauthorized, "unauthorized: send the admin token as \"Authorization: Bearer TOKEN\"\n")
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// probe reports whether path is a liveness or readiness probe's.
func probe(path string) bool { return path == "/healthz" || path == "/readyz" }

// needsToken reports whether a request for path must carry the token:
// every path but the open ones, so that a path the endpoints would
// answer in some other spelling is never open by mistake.
func needsToken(path string, protectMetrics bool) bool {
	switch {
	case path == "/" || probe(path):
		return false
	case path == "/metrics":
		return protectMetrics
	case strings.HasPrefix(path, consolePrefix):
		// The console checks the token itself: its login form takes
		// it, and its pages accept the session cookie that sets.
		return false
	}
	return true
}

// bearerToken returns the token of an "Authorization: Bearer TOKEN"
// header; the scheme is case-insensitive (RFC 9110 §11.1).
func bearerToken(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(tok, " "), true
}

// sameToken compares in time independent of where the tokens differ and
// of their lengths: it compares their SHA-256 digests.
func sameToken(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// hostAllowed reports whether the Host header hostport names this
// server: localhost, a loopback IP address, or one of extra.
func hostAllowed(hostport string, extra []string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = normalHost(host)
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.IsLoopback() {
			return true
		}
		for _, e := range extra {
			if eip, err := netip.ParseAddr(normalHost(e)); err == nil && eip.Unmap() == ip {
				return true
			}
		}
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	for _, e := range extra {
		if strings.EqualFold(normalHost(e), host) {
			return true
		}
	}
	return false
}

// normalHost drops the brackets of an IPv6 literal and a name's trailing
// dot.
func normalHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(h, ".")
}
