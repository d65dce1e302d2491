package tlsconf

import (
	"container/list"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults of [ChallengeLimits].
const (
	// DefaultChallengeConns is ChallengeLimits.MaxConns when it is 0.
	DefaultChallengeConns = 256
	// DefaultChallengeConnsPerIP is ChallengeLimits.MaxConnsPerIP when it
	// is 0.
	DefaultChallengeConnsPerIP = 16
)

// Timeouts of the challenge answerers. A CA sends its ClientHello or its
// request line as soon as the TCP connection stands (RFC 8737 §3, RFC
// 8555 §8.3), so the first deadline is short; what follows is one
// handshake or one small response.
const (
	// challengeHelloTimeout bounds the wait for a ClientHello (TLS-ALPN-01)
	// or a request header (HTTP-01) after the accept.
	challengeHelloTimeout = 5 * time.Second
	// challengeAnswerTimeout bounds the rest: the handshake after the
	// ClientHello, or reading the request and writing the response.
	challengeAnswerTimeout = 10 * time.Second
)

// ChallengeLimits bound the connections the ACME challenge answerers
// (HTTP-01 and TLS-ALPN-01 together) hold at once, each of which is a file
// descriptor: without a bound, idle connections to them exhaust the
// process's descriptors, and the POP3 listeners can no longer accept.
//
// A connection is idle until it has sent what a CA sends: a TLS-ALPN-01
// ClientHello for a name in the policy, or an HTTP-01 GET or HEAD of a
// token path, without a body, for a name in the policy. Then it is busy,
// for busyGrace: a CA's validation is over by then. When a cap is reached,
// a new connection takes the place of the oldest idle one: of its own
// client network at MaxConnsPerIP, else of the network holding the most
// connections at MaxConns; when none is idle, of the one busy the longest,
// if that is longer than busyGrace. A connection is refused only when
// every candidate was busy for less. So silent connections, from any
// number of addresses, cannot keep the CA out: its connection gets in and
// sends its ClientHello or request at once, after which it is not
// displaced while it is answered; nor can connections that look like a
// CA's and then stall, since they are displaced in turn.
// An attacker sharing the CA's address (which a real CA's addresses do
// not allow) can still displace the CA's connection in the moment before
// its first bytes arrive, by opening more than MaxConnsPerIP connections
// in that moment; a CA validating from several addresses (Let's Encrypt's
// multi-perspective validation) reaches popgate from the others.
type ChallengeLimits struct {
	// MaxConns caps the connections of both answerers together; 0 means
	// DefaultChallengeConns.
	MaxConns int
	// MaxConnsPerIP caps those from one client network (see ClientNet);
	// 0 means DefaultChallengeConnsPerIP. It is at most MaxConns.
	MaxConnsPerIP int
	// ClientNet maps a client address to the network that counts as one
	// client, as the POP3 listeners' per-address limits do; nil means
	// the address itself for IPv4 and its /64 for IPv6.
	ClientNet func(netip.Addr) (netip.Prefix, bool)
	// Listen binds an answerer's address; nil means net.Listen. A
	// process that took its sockets over from the one it replaces (an
	// upgrade) or from systemd hands them out here.
	Listen func(addr string) (net.Listener, error)
}

func (l ChallengeLimits) listen(addr string) (net.Listener, error) {
	if l.Listen != nil {
		return l.Listen(addr)
	}
	return net.Listen("tcp", addr)
}

func (l ChallengeLimits) maxConns() int {
	if l.MaxConns > 0 {
		return l.MaxConns
	}
	return DefaultChallengeConns
}

func (l ChallengeLimits) maxConnsPerIP() int {
	n := DefaultChallengeConnsPerIP
	if l.MaxConnsPerIP > 0 {
		n = l.MaxConnsPerIP
	}
	return min(n, l.maxConns())
}

// defaultClientNet is ChallengeLimits.ClientNet when nil.
func defaultClientNet(ip netip.Addr) (netip.Prefix, bool) {
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// gateWarnEvery spaces the WARN lines of a gate at its caps.
const gateWarnEvery = time.Minute

// busyGrace is how long a busy connection is not displaced. A CA's
// validation takes a round trip or two after its first bytes (a TLS
// handshake, one HTTP response); a connection still there after this
// long is stalling, and may make room for a newcomer again.
const busyGrace = time.Second

// connGate admits connections within ChallengeLimits (see there). It is
// safe for concurrent use.
type connGate struct {
	max, maxPerNet int
	clientNet      func(netip.Addr) (netip.Prefix, bool)
	log            *slog.Logger
	now            func() time.Time

	mu    sync.Mutex
	total int                       // connections held
	nets  map[netip.Prefix]*gateNet // by client network; none without connections
	// evicted and refused count what the caps did since the last WARN
	// (warned).
	evicted, refused int
	warned           time.Time
}

// gateNet is one client network's connections.
type gateNet struct {
	n    int       // connections held
	idle list.List // its idle *gatedConns, oldest first
	busy list.List // its busy *gatedConns, busy the longest first
}

func newConnGate(lim ChallengeLimits, log *slog.Logger) *connGate {
	g := &connGate{
		max:       lim.maxConns(),
		maxPerNet: lim.maxConnsPerIP(),
		clientNet: lim.ClientNet,
		log:       log,
		now:       time.Now,
		nets:      make(map[netip.Prefix]*gateNet),
	}
	if g.clientNet == nil {
		g.clientNet = defaultClientNet
	}
	return g
}

// gatedConn is a connection the gate holds. Close gives its place back.
// Its fields but Conn are guarded by g.mu.
type gatedConn struct {
	net.Conn
	g      *connGate
	key    netip.Prefix
	elem   *list.Element // in the network's idle list, or its busy list once busy; nil once released
	isBusy bool
	since  time.Time // when it became busy
	held   bool      // counted by the gate; false once released
}

// Close releases the connection's place and closes it.
func (c *gatedConn) Close() error {
	c.g.release(c)
	return c.Conn.Close()
}

// busy marks the connection as sending what a CA sends: for busyGrace
// from now, it is not displaced by new connections. Only the first call
// counts.
func (c *gatedConn) busy() {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if !c.held || c.isBusy {
		return
	}
	n := g.nets[c.key]
	n.idle.Remove(c.elem)
	c.isBusy, c.since = true, g.now()
	c.elem = n.busy.PushBack(c)
}

// stale reports whether c, busy, has been so for longer than busyGrace.
func (c *gatedConn) stale(now time.Time) bool {
	return now.Sub(c.since) > busyGrace
}

// key returns the client network a remote address counts in; addresses
// that are not IP addresses all count in the zero prefix.
func (g *connGate) key(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
			ip = ap.Addr()
		}
	}
	if p, ok := g.clientNet(ip); ok {
		return p
	}
	return netip.Prefix{}
}

// admit registers c, displacing an idle connection when a cap is reached,
// and returns it wrapped; or, when it cannot be admitted, closes it and
// returns nil.
func (g *connGate) admit(c net.Conn) *gatedConn {
	key := g.key(c.RemoteAddr())
	g.mu.Lock()
	n := g.nets[key]
	var victim *gatedConn
	full := false
	now := g.now()
	switch {
	case n != nil && n.n >= g.maxPerNet:
		full = true
		if e := n.idle.Front(); e != nil {
			victim = e.Value.(*gatedConn)
		} else if e := n.busy.Front(); e != nil && e.Value.(*gatedConn).stale(now) {
			victim = e.Value.(*gatedConn)
		}
	case g.total >= g.max:
		full = true
		if victim = g.busiestIdleLocked(); victim == nil {
			victim = g.longestBusyLocked(now)
		}
	}
	if full && victim == nil {
		g.refused++
		g.warnLocked()
		g.mu.Unlock()
		c.Close()
		return nil
	}
	if victim != nil {
		g.evicted++
		g.warnLocked()
		g.releaseLocked(victim)
	}
	if n = g.nets[key]; n == nil { // releasing the victim may have removed it
		n = &gateNet{}
		g.nets[key] = n
	}
	gc := &gatedConn{Conn: c, g: g, key: key, held: true}
	gc.elem = n.idle.PushBack(gc)
	n.n++
	g.total++
	g.mu.Unlock()
	if victim != nil {
		// Its owner's read fails now; its Close releases nothing more.
		victim.Conn.Close()
	}
	return gc
}

// busiestIdleLocked returns the oldest idle connection of the network
// holding the most connections among those with an idle one; nil when
// none is idle.
func (g *connGate) busiestIdleLocked() *gatedConn {
	var best *gateNet
	for _, n := range g.nets {
		if n.idle.Len() > 0 && (best == nil || n.n > best.n) {
			best = n
		}
	}
	if best == nil {
		return nil
	}
	return best.idle.Front().Value.(*gatedConn)
}

// longestBusyLocked returns the connection busy the longest, if that is
// longer than busyGrace; else nil.
func (g *connGate) longestBusyLocked(now time.Time) *gatedConn {
	var best *gatedConn
	for _, n := range g.nets {
		if e := n.busy.Front(); e != nil {
			if c := e.Value.(*gatedConn); best == nil || c.since.Before(best.since) {
				best = c
			}
		}
	}
	if best == nil || !best.stale(now) {
		return nil
	}
	return best
}

func (g *connGate) release(c *gatedConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.releaseLocked(c)
}

func (g *connGate) releaseLocked(c *gatedConn) {
	if !c.held {
		return
	}
	c.held = false
	n := g.nets[c.key]
	if c.isBusy {
		n.busy.Remove(c.elem)
	} else {
		n.idle.Remove(c.elem)
	}
	c.elem = nil
	g.total--
	if n.n--; n.n == 0 {
		delete(g.nets, c.key)
	}
}

// warnLocked logs, at most every gateWarnEvery, that the caps act.
func (g *connGate) warnLocked() {
	now := g.now()
	if !g.warned.IsZero() && now.Sub(g.warned) < gateWarnEvery {
		return
	}
	g.log.Warn("acme challenge answerers at their connection cap: closing idle connections",
		"evicted", g.evicted, "refused", g.refused, "connections", g.total, "networks", len(g.nets),
		"max_challenge_connections", g.max, "max_challenge_connections_per_ip", g.maxPerNet)
	g.warned, g.evicted, g.refused = now, 0, 0
}

// held returns the number of connections held, and from key's network.
func (g *connGate) held(key netip.Prefix) (total, fromNet int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.nets[key]; n != nil {
		fromNet = n.n
	}
	return g.total, fromNet
}

// gateListener admits accepted connections through a gate; those it
// refuses are closed and never returned.
type gateListener struct {
	net.Listener
	g *connGate
}

// Accept returns the next connection the gate admits.
func (l *gateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if gc := l.g.admit(c); gc != nil {
			return gc, nil
		}
	}
}
