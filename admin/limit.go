package admin

import (
	"net"
	"net/netip"
	"sync"
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
