package tlsconf

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Session tickets let a client that comes back (a mail client polls every
// few minutes) resume its TLS session: no certificate signature, no
// certificate to send and check. crypto/tls would keep its ticket keys in
// each *tls.Config, so a configuration reload that builds a new one would
// make every ticket issued before it useless at once. [Tickets] keeps them
// for the process instead, and every config made with it seals and opens
// tickets with the same, rotating keys.

// Bounds of the ticket key periods.
const (
	// MinTicketRotation is the shortest rotation period: each accepted
	// key is tried on a ticket, so that their number stays small.
	MinTicketRotation = time.Minute
	// MaxTicketLifetime is the longest a key may be accepted: RFC 8446
	// §4.6.1 caps a ticket's lifetime at 7 days, and crypto/tls refuses
	// older tickets anyway.
	MaxTicketLifetime = 7 * 24 * time.Hour
	// MaxTicketKeys caps how many keys are accepted at once
	// (lifetime / rotation, rounded up).
	MaxTicketKeys = 32
	// ticketRetry is how soon a key source that failed is asked again.
	ticketRetry = 10 * time.Second
)

// CheckTicketPeriods reports what is wrong with a rotation period and a
// key lifetime, naming the problem and the way out; nil if they are fine.
func CheckTicketPeriods(rotation, lifetime time.Duration) error {
	switch {
	case rotation < MinTicketRotation:
		return fmt.Errorf("the rotation period %v is shorter than %v (each key still accepted is tried on every ticket)", rotation, MinTicketRotation)
	case lifetime <= rotation:
		return fmt.Errorf("the key lifetime %v must be longer than the rotation period %v, or a ticket issued just before a rotation would never resume (twice the rotation period or more is better)", lifetime, rotation)
	case lifetime > MaxTicketLifetime:
		return fmt.Errorf("the key lifetime %v is longer than the 7 days (168h) a TLS 1.3 ticket may live (RFC 8446 §4.6.1)", lifetime)
	case (lifetime+rotation-1)/rotation > MaxTicketKeys:
		return fmt.Errorf("the key lifetime %v is more than %d rotation periods of %v: that many keys would be tried on every ticket; rotate less often", lifetime, MaxTicketKeys, rotation)
	}
	return nil
}

// TicketKeySource supplies the session ticket keys of a [Tickets]. The
// default, [LocalTicketKeys], makes them in this process; a source shared
// by several popgate processes can take its place, so that a ticket issued
// by one resumes on any.
type TicketKeySource interface {
	// TicketKeys returns the keys in force at now, the one that seals new
	// tickets first; every one of them opens tickets. refresh is when to
	// ask again at the latest: when the first key stops sealing or another
	// stops being accepted. It is called from handshakes, never
	// concurrently, and at most once per refresh period while it succeeds.
	// On an error the keys in use stay, and the source is asked again
	// after a few seconds.
	TicketKeys(now time.Time) (keys [][32]byte, refresh time.Time, err error)
}

// TicketsConfig configures a [Tickets].
type TicketsConfig struct {
	// Source supplies the keys; nil means a [LocalTicketKeys] with
	// Rotation and Lifetime.
	Source TicketKeySource
	// Rotation is how long a new key seals tickets; Lifetime how long
	// after its making a key is still accepted, which bounds how long a
	// ticket resumes. See [CheckTicketPeriods]. Used only by the local
	// source.
	Rotation, Lifetime time.Duration
	// Inherited seeds the local source with keys of the process this one
	// replaces (an upgrade), so that its tickets keep resuming; see
	// [Tickets.LocalKeys]. Keys past Lifetime are dropped.
	Inherited []TicketKey
	// Logger receives the key source's errors. nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests set another.
	Now func() time.Time
}

// Tickets seals and opens session tickets with keys from a
// [TicketKeySource]. Set on a tls.Config by [Tickets.Apply], it outlives
// that config: every config it is applied to, clones included, uses the
// keys in force now. It is safe for concurrent use.
//
// A ticket is bound to the server name (SNI) of the handshake that issued
// it: presented with another name (or without one, when it had one) it
// does not resume, and a full handshake follows, which picks the
// certificate for the name asked (RFC 6066 §3: a server "MUST NOT accept
// the request to resume the session if the server_name extension contains
// a different name"). crypto/tls itself makes sure a ticket resumes only
// with its own protocol version and a cipher suite the config allows.
type Tickets struct {
	src   TicketKeySource
	local *LocalTicketKeys // src when it is the local one; nil otherwise
	log   *slog.Logger
	now   func() time.Time

	cur atomic.Pointer[ticketCodec]
	mu  sync.Mutex // orders calls to src
}

// ticketCodec is one set of keys, held by a tls.Config used only for its
// EncryptTicket and DecryptTicket: crypto/tls's own ticket format
// (AES-CTR, HMAC-SHA256), with the keys set by SetSessionTicketKeys.
type ticketCodec struct {
	conf    *tls.Config
	refresh time.Time
}

// NewTickets asks cfg's key source for its first keys.
func NewTickets(cfg TicketsConfig) (*Tickets, error) {
	t := &Tickets{src: cfg.Source, log: cfg.Logger, now: cfg.Now}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.src == nil {
		if err := CheckTicketPeriods(cfg.Rotation, cfg.Lifetime); err != nil {
			return nil, fmt.Errorf("tlsconf: session tickets: %w", err)
		}
		t.local = NewLocalTicketKeys(cfg.Rotation, cfg.Lifetime)
		now := t.now()
		for _, k := range cfg.Inherited {
			if k.Made.After(now) {
				// Made "later": it would seal tickets until then
				// and be accepted a lifetime after, rotation or
				// not. Not taken.
				t.log.Warn("session ticket keys: an inherited key made after now is not taken; tickets it sealed do not resume", "made", k.Made)
				continue
			}
			t.local.keys = append(t.local.keys, localTicketKey{key: k.Key, made: k.Made})
		}
		slices.SortFunc(t.local.keys, func(a, b localTicketKey) int { return b.made.Compare(a.made) })
		if len(t.local.keys) > MaxTicketKeys {
			t.local.keys = t.local.keys[:MaxTicketKeys]
		}
		t.src = t.local
	}
	keys, refresh, err := t.src.TicketKeys(t.now())
	if err == nil && len(keys) == 0 {
		err = errors.New("no keys")
	}
	if err != nil {
		return nil, fmt.Errorf("tlsconf: session ticket keys: %w", err)
	}
	t.cur.Store(newTicketCodec(keys, refresh))
	return t, nil
}

func newTicketCodec(keys [][32]byte, refresh time.Time) *ticketCodec {
	conf := new(tls.Config)
	conf.SetSessionTicketKeys(keys)
	return &ticketCodec{conf: conf, refresh: refresh}
}

// SetPeriods changes the local source's rotation period and key lifetime
// (a configuration reload): the keys stay, and the new periods apply from
// the next handshake on. With another source it does nothing.
func (t *Tickets) SetPeriods(rotation, lifetime time.Duration) {
	if t.local == nil || !t.local.SetPeriods(rotation, lifetime) {
		return
	}
	t.refreshNow()
}

// refreshNow makes the next handshake ask the key source again; the keys
// in use stay until then.
func (t *Tickets) refreshNow() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cur.Store(&ticketCodec{conf: t.cur.Load().conf})
}

// Apply makes conf seal and open session tickets with t's keys, so that
// they survive conf (a reload that builds a new config) and rotate in it.
// A conf.Clone() keeps them: it copies WrapSession and UnwrapSession.
func (t *Tickets) Apply(conf *tls.Config) {
	conf.WrapSession = t.wrap
	conf.UnwrapSession = t.unwrap
}

// codec returns the keys in force, asking the source when they are due.
func (t *Tickets) codec() *ticketCodec {
	c := t.cur.Load()
	now := t.now()
	if now.Before(c.refresh) {
		return c
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c = t.cur.Load(); now.Before(c.refresh) {
		return c
	}
	keys, refresh, err := t.src.TicketKeys(now)
	if err == nil && len(keys) == 0 {
		err = errors.New("no keys")
	}
	if err != nil {
		t.log.Warn("session ticket keys: the key source failed; the keys in use stay", "err", err, "retry_in", ticketRetry)
		c = &ticketCodec{conf: c.conf, refresh: now.Add(ticketRetry)}
	} else {
		c = newTicketCodec(keys, refresh)
	}
	t.cur.Store(c)
	return c
}

// sniExtra marks the SessionState.Extra entry that holds the server name
// a ticket was issued for.
const sniExtra = "popgate-sni\x00"

// wrap is the WrapSession of a config t is applied to.
func (t *Tickets) wrap(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	// A TLS 1.2 session resumed and sealed again still has the entry.
	extra := ss.Extra[:0:0]
	for _, e := range ss.Extra {
		if !strings.HasPrefix(string(e), sniExtra) {
			extra = append(extra, e)
		}
	}
	ss.Extra = append(extra, []byte(sniExtra+normalizeName(cs.ServerName)))
	return t.codec().conf.EncryptTicket(cs, ss)
}

// unwrap is the UnwrapSession of a config t is applied to. A ticket it
// cannot open (a key no longer accepted, another server's) or one issued
// for another server name gives nil: a full handshake.
func (t *Tickets) unwrap(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	ss, err := t.codec().conf.DecryptTicket(identity, cs)
	if ss == nil || err != nil {
		return nil, err
	}
	want := sniExtra + normalizeName(cs.ServerName)
	for _, e := range ss.Extra {
		if string(e) == want {
			return ss, nil
		}
	}
	return nil, nil
}

// LocalTicketKeys is the [TicketKeySource] of one process: keys from
// crypto/rand, a new one every rotation period, each accepted until it is
// lifetime old and then forgotten (at the next handshake). The keys live
// in memory only and are never logged. It is safe for concurrent use.
type LocalTicketKeys struct {
	mu                 sync.Mutex
	rotation, lifetime time.Duration
	keys               []localTicketKey // newest first
	rand               io.Reader
	// held: no new key while the newest is still accepted (HoldRotation).
	held bool
}

type localTicketKey struct {
	key  [32]byte
	made time.Time
}

// TicketKey is a key of the local source and when it was made.
type TicketKey struct {
	Key  [32]byte
	Made time.Time
}

// LocalKeys returns the local source's keys, for the process that takes
// over from this one ([TicketsConfig.Inherited]); nil with another
// source, whose keys the new process gets from it.
func (t *Tickets) LocalKeys() []TicketKey {
	if t == nil || t.local == nil {
		return nil
	}
	l := t.local
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]TicketKey, len(l.keys))
	for i, k := range l.keys {
		keys[i] = TicketKey{Key: k.key, Made: k.made}
	}
	return keys
}

// HoldRotation makes the local source seal with the keys it has, past
// the rotation period (never past a key's lifetime), until release is
// called: an upgrade hands [Tickets.LocalKeys] to the new process, and
// until that one serves, tickets this one seals must resume there. With
// another source it does nothing.
func (t *Tickets) HoldRotation() (release func()) {
	if t == nil || t.local == nil {
		return func() {}
	}
	t.local.mu.Lock()
	t.local.held = true
	t.local.mu.Unlock()
	return func() {
		t.local.mu.Lock()
		t.local.held = false
		t.local.mu.Unlock()
		t.refreshNow()
	}
}

// NewLocalTicketKeys returns a local key source; its first key is made
// when it is first asked. The periods must pass [CheckTicketPeriods].
func NewLocalTicketKeys(rotation, lifetime time.Duration) *LocalTicketKeys {
	return &LocalTicketKeys{rotation: rotation, lifetime: lifetime, rand: rand.Reader}
}

// SetPeriods changes the periods and reports whether they changed; the
// keys made so far stay, and are dropped at the next call of TicketKeys if
// the new lifetime has passed for them.
func (l *LocalTicketKeys) SetPeriods(rotation, lifetime time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	changed := l.rotation != rotation || l.lifetime != lifetime
	l.rotation, l.lifetime = rotation, lifetime
	return changed
}

// TicketKeys implements [TicketKeySource].
func (l *LocalTicketKeys) TicketKeys(now time.Time) ([][32]byte, time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.keys[:0]
	for _, k := range l.keys {
		if now.Sub(k.made) < l.lifetime {
			kept = append(kept, k)
		}
	}
	clear(l.keys[len(kept):]) // forget the dropped keys' bytes
	l.keys = kept
	due := len(l.keys) == 0 || now.Sub(l.keys[0].made) >= l.rotation
	heldOver := due && l.held && len(l.keys) > 0
	if due && !heldOver {
		k := localTicketKey{made: now}
		if _, err := io.ReadFull(l.rand, k.key[:]); err != nil {
			return nil, time.Time{}, fmt.Errorf("making a key: %w", err)
		}
		l.keys = append([]localTicketKey{k}, l.keys...)
	}
	keys := make([][32]byte, len(l.keys))
	refresh := l.keys[0].made.Add(l.rotation)
	if heldOver {
		refresh = now.Add(ticketRetry) // whether the hold is over
	}
	for i, k := range l.keys {
		keys[i] = k.key
		if end := k.made.Add(l.lifetime); end.Before(refresh) {
			refresh = end
		}
	}
	return keys, refresh, nil
}
