package admin

import (
	"container/list"
	"crypto/tls"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxLegacyClients bounds the legacy clients remembered: beyond it the one
// seen longest ago is forgotten. An entry costs about 200 octets.
const maxLegacyClients = 1000

// legacyKeep is how long a legacy client is shown after it was last seen.
const legacyKeep = 14 * 24 * time.Hour

// LegacyClient is a client seen with TLS older than 1.2 or without SNI,
// by address and user name.
type LegacyClient struct {
	Client   netip.Addr
	User     string
	Listener string
	// TLSVersion is the version of its last login attempt ("TLS 1.0").
	TLSVersion string
	// NoSNI: its last login attempt sent no server name.
	NoSNI     bool
	FirstSeen time.Time
	LastSeen  time.Time
	// Attempts counts its login attempts since FirstSeen.
	Attempts int64
}

type legacyKey struct {
	addr netip.Addr
	user string
}

// legacyClients is an LRU of legacy clients: bounded memory whatever the
// clients send (user names are bounded by the proxy).
type legacyClients struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *LegacyClient, most recently seen first
	byKey map[legacyKey]*list.Element
}

func newLegacyClients(max int) *legacyClients {
	return &legacyClients{max: max, order: list.New(), byKey: make(map[legacyKey]*list.Element)}
}

func (l *legacyClients) add(now time.Time, listener string, addr netip.Addr, user string, version uint16, sni string) {
	k := legacyKey{addr.Unmap(), user}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.byKey[k]
	if e == nil {
		if l.order.Len() >= l.max {
			old := l.order.Back()
			c := old.Value.(*LegacyClient)
			delete(l.byKey, legacyKey{c.Client, c.User})
			l.order.Remove(old)
		}
		e = l.order.PushFront(&LegacyClient{Client: k.addr, User: user, FirstSeen: now})
		l.byKey[k] = e
	} else {
		l.order.MoveToFront(e)
	}
	c := e.Value.(*LegacyClient)
	c.Listener, c.TLSVersion, c.NoSNI, c.LastSeen = listener, tls.VersionName(version), sni == "", now
	c.Attempts++
}

// list returns the clients seen since after, most recently seen first.
func (l *legacyClients) list(after time.Time) []LegacyClient {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]LegacyClient, 0, l.order.Len())
	for e := l.order.Front(); e != nil; e = e.Next() {
		c := e.Value.(*LegacyClient)
		if c.LastSeen.Before(after) {
			break
		}
		out = append(out, *c)
	}
	return slices.Clip(out)
}

// LegacyClient implements [proxy.LegacyObserver].
func (m *Metrics) LegacyClient(listener string, client netip.Addr, user string, version uint16, sni string) {
	m.legacy.add(m.now(), listener, client, user, version, sni)
}

// LegacyClients returns the clients seen with TLS older than 1.2 or
// without SNI in the last 14 days (at most the last 1000 such address and
// user pairs), most recently seen first.
func (m *Metrics) LegacyClients() []LegacyClient {
	return m.legacy.list(m.now().Add(-legacyKeep))
}

// perMinute counts events by kind in the current and the previous
// minute of the clock, for the console's "logins in the last minute".
type perMinute struct {
	mu        sync.Mutex
	minute    int64 // Unix minute of cur
	cur, prev map[string]int64
}

func (p *perMinute) add(now time.Time, kind string) {
	m := now.Unix() / 60
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roll(m)
	if p.cur == nil {
		p.cur = make(map[string]int64)
	}
	p.cur[kind]++
}

// roll moves the counts on to minute m. p.mu is held.
func (p *perMinute) roll(m int64) {
	switch {
	case m == p.minute:
		return
	case m == p.minute+1:
		p.prev, p.cur = p.cur, nil
	default:
		p.prev, p.cur = nil, nil
	}
	p.minute = m
}

// last returns the counts of the last complete minute.
func (p *perMinute) last(now time.Time) map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roll(now.Unix() / 60)
	out := make(map[string]int64, len(p.prev))
	for k, v := range p.prev {
		out[k] = v
	}
	return out
}
