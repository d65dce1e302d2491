package admin

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Connection caps of the admin address. Its clients are a scraper, a
// probe or two and an operator's curl; the caps keep anyone who reaches
// the port, token or not, from holding file descriptors that the POP3
// listeners need.
const (
	maxConns      = 64
	maxConnsPerIP = 16
)

// capListener refuses (closes at once) connections beyond a total and a
// per-address cap, counting those still open.
type capListener struct {
	net.Listener
	total, perIP int

	mu    sync.Mutex
	open  int
	byIP  map[netip.Addr]int
	extra int // connections refused since the last report
}

func newCapListener(ln net.Listener, total, perIP int) *capListener {
	return &capListener{Listener: ln, total: total, perIP: perIP, byIP: map[netip.Addr]int{}}
}

// Accept returns the next connection within the caps; those beyond are
// closed without a byte.
func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := netip.Addr{}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			ip = ap.Addr().Unmap()
		}
		l.mu.Lock()
		if l.open >= l.total || l.byIP[ip] >= l.perIP {
			l.extra++
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open++
		l.byIP[ip]++
		l.mu.Unlock()
		return &cappedConn{Conn: c, l: l, ip: ip}, nil
	}
}

// refused returns how many connections were refused since the last call.
func (l *capListener) refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.extra
	l.extra = 0
	return n
}

type cappedConn struct {
	net.Conn
	l    *capListener
	ip   netip.Addr
	once sync.Once
}

func (c *cappedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		if c.l.byIP[c.ip]--; c.l.byIP[c.ip] <= 0 {
			delete(c.l.byIP, c.ip)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// The budget of wrong admin tokens: an address (an IPv6 /64, which one
// host often holds whole) that has sent maxTokenFailures wrong tokens,
// as a bearer token or through the console's login form, within
// tokenFailureWindow of its first gets 429 for any token until the
// window ends, the right one included, else the budget would not stop
// guessing. Ten a minute lets an operator mistype and keeps a guesser to
// 14,400 tries a day. The table holds maxFailureAddrs addresses; when it
// is full of addresses still within their window, the others share one
// budget.
const (
	maxTokenFailures   = 10
	tokenFailureWindow = time.Minute
	maxFailureAddrs    = 4096
)

type failBudget struct {
	mu sync.Mutex
	by map[netip.Prefix]*failCount // the zero Prefix: the shared one
}

type failCount struct {
	n     int
	since time.Time // the window's start
}

// failKey is the budget's key for a request's RemoteAddr.
func failKey(remote string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// count returns remote's entry, nil when it has none. b.mu is held.
func (b *failBudget) count(remote string) (netip.Prefix, *failCount) {
	k := failKey(remote)
	f := b.by[k]
	if f == nil && len(b.by) >= maxFailureAddrs {
		k = netip.Prefix{}
		f = b.by[k]
	}
	return k, f
}

// blocked reports whether remote has used up its budget, and how long
// until its window ends. b.mu is held.
func (b *failBudget) blocked(remote string, now time.Time) (bool, time.Duration) {
	_, f := b.count(remote)
	if f == nil || f.n < maxTokenFailures || now.Sub(f.since) >= tokenFailureWindow {
		return false, 0
	}
	return true, f.since.Add(tokenFailureWindow).Sub(now)
}

// attempt decides whether a token from remote may be answered, and
// counts it when it was wrong, under one lock: a check and a count
// apart would let concurrent wrong tokens all pass the check before any
// was counted, past the budget. The caller compares the token first and
// answers whether it was right only when ok; otherwise it answers 429
// after wait. A nil b lets everything through.
func (b *failBudget) attempt(remote string, now time.Time, wrong bool) (ok bool, wait time.Duration) {
	if b == nil {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if blocked, wait := b.blocked(remote, now); blocked {
		return false, wait
	}
	if wrong {
		b.fail(remote, now)
	}
	return true, 0
}

// fail counts a wrong token from remote. b.mu is held.
func (b *failBudget) fail(remote string, now time.Time) {
	if b.by == nil {
		b.by = make(map[netip.Prefix]*failCount)
	}
	if b.by[failKey(remote)] == nil && len(b.by) >= maxFailureAddrs {
		// Full: forget the addresses whose window has passed.
		for k, f := range b.by {
			if now.Sub(f.since) >= tokenFailureWindow {
				delete(b.by, k)
			}
		}
	}
	k, f := b.count(remote)
	if f == nil {
		f = &failCount{since: now}
		b.by[k] = f
	}
	if now.Sub(f.since) >= tokenFailureWindow {
		f.n, f.since = 0, now
	}
	f.n++
}

// tooManyFailures is the text of a 429 for an address over its budget:
// when to try again, and where the right token is.
func tooManyFailures(wait time.Duration) string {
	return "too many wrong tokens from this address: try again in " + retryAfter(wait) +
		" s with the content of metrics.token_file"
}

// retryAfter is a Retry-After value for wait: whole seconds, at least 1.
func retryAfter(wait time.Duration) string {
	return strconv.Itoa(max(1, int((wait+time.Second-1)/time.Second)))
}
