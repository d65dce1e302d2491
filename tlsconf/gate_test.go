package tlsconf

import (
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// gateConn is a connection as the gate sees it: a remote address and
// Close.
type gateConn struct {
	net.Conn // nil: the gate calls only RemoteAddr and Close
	remote   net.Addr
	closed   atomic.Bool
}

func (c *gateConn) RemoteAddr() net.Addr { return c.remote }
func (c *gateConn) Close() error         { c.closed.Store(true); return nil }

func newGateConn(ip string) *gateConn {
	return &gateConn{remote: net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 40000))}
}

// admitFrom offers a new connection from ip to g and returns it with what
// the gate made of it (nil: refused).
func admitFrom(g *connGate, ip string) (*gateConn, *gatedConn) {
	c := newGateConn(ip)
	return c, g.admit(c)
}

func testGate(maxConns, perIP int) *connGate {
	return newConnGate(ChallengeLimits{MaxConns: maxConns, MaxConnsPerIP: perIP}, slog.New(slog.DiscardHandler))
}

func checkHeld(t *testing.T, g *connGate, ip string, wantTotal, wantNet int) {
	t.Helper()
	key, _ := defaultClientNet(netip.MustParseAddr(ip))
	if total, n := g.held(key); total != wantTotal || n != wantNet {
		t.Errorf("gate holds %d connections, %d from %s; want %d, %d", total, n, ip, wantTotal, wantNet)
	}
}

// TestGatePerIP: at its per-address cap an address's newcomer displaces
// its oldest idle connection; when all of them are busy it is refused.
// Other addresses are unaffected.
func TestGatePerIP(t *testing.T) {
	g := testGate(100, 3)
	var raw []*gateConn
	var held []*gatedConn
	for range 3 {
		c, gc := admitFrom(g, "192.0.2.1")
		if gc == nil {
			t.Fatal("connection under the caps refused")
		}
		raw, held = append(raw, c), append(held, gc)
	}
	c4, gc4 := admitFrom(g, "192.0.2.1")
	if gc4 == nil || !raw[0].closed.Load() || raw[1].closed.Load() || c4.closed.Load() {
		t.Fatalf("fourth connection at the per-IP cap: admitted %v, oldest closed %v, second closed %v; want the oldest displaced",
			gc4 != nil, raw[0].closed.Load(), raw[1].closed.Load())
	}
	checkHeld(t, g, "192.0.2.1", 3, 3)
	// The displaced connection's owner closes it: nothing more is released.
	held[0].Close()
	checkHeld(t, g, "192.0.2.1", 3, 3)

	for _, gc := range []*gatedConn{held[1], held[2], gc4} {
		gc.busy()
	}
	c5, gc5 := admitFrom(g, "192.0.2.1")
	if gc5 != nil || !c5.closed.Load() {
		t.Errorf("connection at the per-IP cap with every one busy: admitted %v, closed %v; want refused", gc5 != nil, c5.closed.Load())
	}
	for _, c := range []*gateConn{raw[1], raw[2], c4} {
		if c.closed.Load() {
			t.Error("a busy connection was displaced")
		}
	}
	if _, gc := admitFrom(g, "192.0.2.2"); gc == nil {
		t.Error("another address refused while one is at its cap")
	}
	checkHeld(t, g, "192.0.2.1", 4, 3)

	// Closing gives the place back, once.
	held[1].Close()
	held[1].Close()
	checkHeld(t, g, "192.0.2.1", 3, 2)
	if _, gc := admitFrom(g, "192.0.2.1"); gc == nil {
		t.Error("connection refused after one of the address's closed")
	}
}

// TestGateTotal: at the total cap a newcomer displaces the oldest idle
// connection of the network holding the most; when every connection is
// busy it is refused.
func TestGateTotal(t *testing.T) {
	g := testGate(4, 4)
	a1, _ := admitFrom(g, "192.0.2.1")
	a2, _ := admitFrom(g, "192.0.2.1")
	a3, _ := admitFrom(g, "192.0.2.1")
	b1, gb1 := admitFrom(g, "192.0.2.2")
	c1, gc1 := admitFrom(g, "192.0.2.3")
	if gc1 == nil || !a1.closed.Load() || a2.closed.Load() || a3.closed.Load() || b1.closed.Load() {
		t.Fatalf("newcomer at the total cap: admitted %v; closed a1 %v a2 %v a3 %v b1 %v; want a1 (oldest of the busiest) displaced",
			gc1 != nil, a1.closed.Load(), a2.closed.Load(), a3.closed.Load(), b1.closed.Load())
	}
	checkHeld(t, g, "192.0.2.1", 4, 2)
	// b1 is busy: newcomers displace idle connections, never b1.
	gb1.busy()
	for i := range 20 {
		if _, gc := admitFrom(g, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()); gc == nil {
			t.Fatal("newcomer refused while idle connections are held")
		}
	}
	if b1.closed.Load() {
		t.Error("the busy connection was displaced")
	}
	if !a2.closed.Load() || !a3.closed.Load() || !c1.closed.Load() {
		t.Error("idle connections outlived 20 newcomers at the total cap")
	}
	checkHeld(t, g, "192.0.2.2", 4, 1)
}

// TestGateAllBusy: with every place taken by busy connections newcomers
// are refused and closed.
func TestGateAllBusy(t *testing.T) {
	g := testGate(2, 2)
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		_, gc := admitFrom(g, ip)
		gc.busy()
	}
	c, gc := admitFrom(g, "192.0.2.3")
	if gc != nil || !c.closed.Load() {
		t.Errorf("newcomer with every place busy: admitted %v, closed %v; want refused", gc != nil, c.closed.Load())
	}
	checkHeld(t, g, "192.0.2.3", 2, 0)
}

// TestGateSharedAddress: a CA that shares its address with a flood of
// silent connections gets in (displacing the oldest idle one), and once
// it has sent its first bytes, further newcomers from that address do not
// displace it.
func TestGateSharedAddress(t *testing.T) {
	g := testGate(100, 4)
	for range 50 {
		admitFrom(g, "192.0.2.1")
	}
	ca, gca := admitFrom(g, "192.0.2.1")
	if gca == nil {
		t.Fatal("the CA's connection was refused")
	}
	gca.busy()
	for range 50 {
		admitFrom(g, "192.0.2.1")
	}
	if ca.closed.Load() {
		t.Error("the CA's busy connection was displaced")
	}
	checkHeld(t, g, "192.0.2.1", 4, 4)
}

// TestGateClientNet: IPv6 clients count by /64 (or ClientNet's prefix),
// IPv4-mapped ones as IPv4.
func TestGateClientNet(t *testing.T) {
	g := testGate(100, 2)
	a, _ := admitFrom(g, "2001:db8:1:1::1")
	admitFrom(g, "2001:db8:1:1::2")
	admitFrom(g, "2001:db8:1:1:ffff::3")
	if !a.closed.Load() {
		t.Error("three addresses of one /64 were not counted together")
	}
	v4, _ := admitFrom(g, "192.0.2.9")
	admitFrom(g, "::ffff:192.0.2.9")
	admitFrom(g, "192.0.2.9")
	if !v4.closed.Load() {
		t.Error("an IPv4-mapped address was not counted as its IPv4 address")
	}

	g = newConnGate(ChallengeLimits{MaxConns: 100, MaxConnsPerIP: 1, ClientNet: func(ip netip.Addr) (netip.Prefix, bool) {
		p, err := ip.Prefix(ip.BitLen())
		return p, err == nil
	}}, slog.New(slog.DiscardHandler))
	b, _ := admitFrom(g, "2001:db8:1:1::1")
	admitFrom(g, "2001:db8:1:1::2")
	if b.closed.Load() {
		t.Error("ClientNet with /128: two addresses were counted together")
	}
}

// TestChallengeLimitsDefaults: zero values mean the defaults, and the
// per-address cap never exceeds the total.
func TestChallengeLimitsDefaults(t *testing.T) {
	for _, tc := range []struct {
		lim              ChallengeLimits
		wantMax, wantPer int
	}{
		{ChallengeLimits{}, DefaultChallengeConns, DefaultChallengeConnsPerIP},
		{ChallengeLimits{MaxConns: 8}, 8, 8},
		{ChallengeLimits{MaxConns: 100, MaxConnsPerIP: 3}, 100, 3},
	} {
		if got, per := tc.lim.maxConns(), tc.lim.maxConnsPerIP(); got != tc.wantMax || per != tc.wantPer {
			t.Errorf("%+v: caps %d, %d per address; want %d, %d", tc.lim, got, per, tc.wantMax, tc.wantPer)
		}
	}
}

// TestGateBusyExpires: a connection busy for longer than busyGrace (a CA's
// validation is over by then) may be displaced again, the one busy the
// longest first, at either cap; one busy for less may not.
func TestGateBusyExpires(t *testing.T) {
	clock := newFakeClock()
	g := testGate(3, 2)
	g.now = clock.now
	a1, ga1 := admitFrom(g, "192.0.2.1")
	ga1.busy()
	clock.add(busyGrace / 2)
	a2, ga2 := admitFrom(g, "192.0.2.1")
	ga2.busy()
	// Per-address cap, both busy for less than busyGrace: refused.
	if c, gc := admitFrom(g, "192.0.2.1"); gc != nil || !c.closed.Load() {
		t.Fatal("newcomer admitted while both of its address's connections were busy for less than busyGrace")
	}
	clock.add(busyGrace/2 + time.Millisecond) // a1 past busyGrace, a2 not
	a3, ga3 := admitFrom(g, "192.0.2.1")
	if ga3 == nil || !a1.closed.Load() || a2.closed.Load() {
		t.Fatalf("newcomer at the per-address cap: admitted %v, a1 (stalled) closed %v, a2 closed %v; want a1 displaced",
			ga3 != nil, a1.closed.Load(), a2.closed.Load())
	}
	checkHeld(t, g, "192.0.2.1", 2, 2)

	// Total cap: with none idle, the connection busy the longest goes,
	// once past busyGrace.
	ga3.busy()
	b1, gb1 := admitFrom(g, "192.0.2.2")
	gb1.busy()
	clock.add(busyGrace / 2) // a2 past busyGrace, a3 and b1 not
	if c, gc := admitFrom(g, "192.0.2.3"); gc == nil || !a2.closed.Load() || a3.closed.Load() || b1.closed.Load() || c.closed.Load() {
		t.Fatalf("newcomer at the total cap: admitted %v, a2 (busy the longest, stalled) closed %v, a3 %v, b1 %v; want a2 displaced",
			gc != nil, a2.closed.Load(), a3.closed.Load(), b1.closed.Load())
	}
	// The newcomer is idle: the next one displaces it.
	if c, gc := admitFrom(g, "192.0.2.4"); gc == nil || c.closed.Load() || a3.closed.Load() || b1.closed.Load() {
		t.Errorf("second newcomer at the total cap: admitted %v; a3 closed %v, b1 closed %v; want the idle newcomer displaced",
			gc != nil, a3.closed.Load(), b1.closed.Load())
	}
	// Then every place is busy for less than busyGrace: refused.
	_, gc := admitFrom(g, "192.0.2.5")
	gc.busy()
	if c, gc := admitFrom(g, "192.0.2.6"); gc != nil || !c.closed.Load() {
		t.Errorf("newcomer with every place busy for less than busyGrace: admitted %v; want refused", gc != nil)
	}
	checkHeld(t, g, "192.0.2.1", 3, 1)
}
