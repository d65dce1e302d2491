package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a [[pool]] as configured.
type Pool struct {
	Name    string
	Members []Member
	// AffinityTTL is how long a user stays on its backend after its last
	// session ended.
	AffinityTTL time.Duration
	// Outage is what a fleet's replica does with a login while it cannot
	// reach the shared affinities (Redis): OutageRefuse (""), or
	// OutageHash.
	Outage string
}

// Pool.Outage values.
const (
	// OutageRefuse assigns, while the shared affinities cannot be read,
	// only a user this replica holds a live session of (to that
	// session's backend), and refuses the others with [ErrUnavailable]:
	// the fleet may hold them on another backend.
	OutageRefuse = "refuse"
	// OutageHash assigns on the replica's own memory and the hash: the
	// logins go on, at the risk of a mailbox open on two backends while
	// the fleet holds the user elsewhere.
	OutageHash = "hash"
)

// ErrUnavailable is a login a store cannot assign for now (the shared
// affinities cannot be read): the client is to try again later.
var ErrUnavailable = errors.New("the pool's affinities cannot be read now (Redis unreachable); try again later")

// Override is an operator's change to one backend of a pool, kept across
// configuration reloads until reset.
type Override struct {
	// Weight replaces the configured weight; nil keeps it.
	Weight *int `json:"weight,omitempty"`
	// Drained takes no new users; the backend's users move as their
	// affinity ends.
	Drained bool `json:"drained,omitempty"`
	// Removed takes the backend out of the pool (a configured one);
	// Added puts one in that the configuration does not list.
	Removed bool `json:"removed,omitempty"`
	Added   bool `json:"added,omitempty"`
}

// Overrides are the operator's changes to every pool: pool, then backend.
type Overrides map[string]map[string]Override

// AdminStore keeps the [Overrides], in memory on one replica or in Redis
// for a fleet, so that a change made through one replica holds on all.
type AdminStore interface {
	// Load returns the overrides as they are.
	Load(ctx context.Context) (Overrides, error)
	// Update changes them with f, atomically against other replicas'
	// updates, and returns the result.
	Update(ctx context.Context, f func(Overrides) error) (Overrides, error)
}

// memAdmin is the AdminStore of one replica.
type memAdmin struct {
	mu sync.Mutex
	o  Overrides
}

func (m *memAdmin) Load(context.Context) (Overrides, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.o.clone(), nil
}

func (m *memAdmin) Update(_ context.Context, f func(Overrides) error) (Overrides, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.o.clone()
	if err := f(o); err != nil {
		return nil, err
	}
	m.o = o
	return o.clone(), nil
}

func (o Overrides) clone() Overrides {
	c := Overrides{}
	for p, bs := range o {
		c[p] = maps.Clone(bs)
	}
	return c
}

// Move reasons, the popgate_pool_moves_total{reason} label.
const (
	MoveRebalance = "rebalance" // the pool changed (weights, a backend joined)
	MoveDrain     = "drain"     // the backend was drained
	MoveDown      = "down"      // health checks took the backend down
	MoveRemoved   = "removed"   // the backend left the pool
	MoveAdmin     = "admin"     // an operator moved the user
	// MoveConflict: the fleet's affinity named another backend than
	// this replica's sessions of the user (its holds had not reached the
	// fleet in time); those sessions ended.
	MoveConflict = "conflict"
)

// Director assigns the users of the configured pools. It is safe for
// concurrent use.
type Director struct {
	log   *slog.Logger
	store Store
	admin AdminStore
	// down reports whether health checks took a backend down; nil: none
	// is.
	down atomic.Pointer[func(backend string) bool]
	// key is SetKey's.
	key atomic.Pointer[func(user string) string]
	// end is SetEnd's.
	end atomic.Pointer[func(pool, user, backend string) int]

	mu       sync.Mutex
	pools    map[string]Pool // the configuration's
	backends map[string]bool // every [[backend]]
	over     Overrides
	eff      atomic.Pointer[map[string]effective]

	hits, misses atomic.Uint64
	refused      atomic.Uint64 // logins refused with ErrUnavailable
	refreshed    atomic.Int64  // when refreshStale last read the changes (UnixNano)
	movesMu      sync.Mutex
	moves        map[string]uint64
}

// effective is a pool with the overrides applied.
type effective struct {
	pool    Pool
	members []Member          // weight 0 for a drained backend
	in      map[string]Member // by backend: those that hold an affinity
}

// Config sets a Director up.
type Config struct {
	// Pools are the configured pools; Backends names every backend a
	// pool may hold (an operator's add must name one).
	Pools    []Pool
	Backends []string
	// Store keeps the affinities; nil keeps them in memory.
	Store Store
	// Admin keeps the operator's changes; nil keeps them in memory.
	Admin AdminStore
	// Logger receives the Director's lines; nil discards them.
	Logger *slog.Logger
}

// New returns a Director.
func New(cfg Config) *Director {
	d := &Director{store: cfg.Store, admin: cfg.Admin, log: cfg.Logger, moves: map[string]uint64{}, over: Overrides{}}
	if d.store == nil {
		d.store = NewMemoryStore(nil)
	}
	if d.admin == nil {
		d.admin = &memAdmin{o: Overrides{}}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.Reconfigure(cfg.Pools, cfg.Backends)
	return d
}

// SetKey installs the form an operator's move names a user's affinity
// by, the one logins key it by (the proxy's: behind a route that compares
// local parts only, the local part); nil: the name as given.
func (d *Director) SetKey(key func(user string) string) { d.key.Store(&key) }

func (d *Director) keyOf(user string) string {
	if f := d.key.Load(); f != nil && *f != nil {
		user = (*f)(user)
	}
	return Fold(user)
}

// SetEnd installs what ends this replica's sessions of user (folded) of
// pool on backend, without QUIT, as a move does: see [Director.Conflict].
func (d *Director) SetEnd(end func(pool, user, backend string) int) { d.end.Store(&end) }

// Conflict is a store's report that the fleet holds user (folded) of
// pool on another backend than this replica's sessions on backend: they
// end, counted as a move (reason conflict), so that the mailbox is open
// on one backend only.
func (d *Director) Conflict(pool, user, backend string) {
	d.countMove(MoveConflict)
	n := 0
	if f := d.end.Load(); f != nil && *f != nil {
		n = (*f)(pool, user, backend)
	}
	d.log.Error("pool user's sessions ended: the fleet holds the user on another backend", "pool", pool, "user", user, "backend", backend, "ended", n)
}

// SetDown installs the health checks' verdict: a backend down takes no
// new users, and its users move at their next login.
func (d *Director) SetDown(down func(backend string) bool) { d.down.Store(&down) }

func (d *Director) isDown(b string) bool {
	if f := d.down.Load(); f != nil && *f != nil {
		return (*f)(b)
	}
	return false
}

// Reconfigure takes a reloaded configuration's pools. The operator's
// overrides stay: a reload does not undo a drain. An override of a
// backend the configuration no longer defines is ignored while it does
// not.
func (d *Director) Reconfigure(pools []Pool, backends []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pools = map[string]Pool{}
	for _, p := range pools {
		d.pools[p.Name] = p
	}
	d.backends = map[string]bool{}
	for _, b := range backends {
		d.backends[b] = true
	}
	d.rebuild()
}

// Refresh loads the overrides from the AdminStore: other replicas'
// changes. The cluster calls it periodically.
func (d *Director) Refresh(ctx context.Context) error {
	o, err := d.admin.Load(ctx)
	if err != nil {
		return err
	}
	d.setOverrides(o)
	return nil
}

func (d *Director) setOverrides(o Overrides) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.over = o
	d.rebuild()
}

// rebuild computes the effective pools. d.mu is held.
func (d *Director) rebuild() {
	eff := map[string]effective{}
	for name, p := range d.pools {
		ov := d.over[name]
		e := effective{pool: p, in: map[string]Member{}}
		for _, m := range p.Members {
			o := ov[m.Backend]
			if o.Removed || !d.backends[m.Backend] {
				continue
			}
			e.members = append(e.members, o.apply(m))
		}
		for _, b := range slices.Sorted(maps.Keys(ov)) {
			o := ov[b]
			if !o.Added || o.Removed || !d.backends[b] || slices.ContainsFunc(e.members, func(m Member) bool { return m.Backend == b }) {
				continue
			}
			e.members = append(e.members, o.apply(Member{Backend: b, Weight: 1}))
		}
		for _, m := range e.members {
			e.in[m.Backend] = m
		}
		eff[name] = e
	}
	d.eff.Store(&eff)
}

// apply returns m with the weight o gives it: 0 when drained.
func (o Override) apply(m Member) Member {
	if o.Weight != nil {
		m.Weight = *o.Weight
	}
	if o.Drained {
		m.Weight = 0
	}
	return m
}

// IsPool reports whether name is a configured pool.
func (d *Director) IsPool(name string) bool {
	_, ok := (*d.eff.Load())[name]
	return ok
}

// Assign returns the backend of pool for user's new session and release,
// to call once that session ended (loggedIn false: it never logged in).
// ok is false when pool is no pool. A pool with no backend to take the
// user returns an error.
func (d *Director) Assign(ctx context.Context, pool, user string) (backend string, release func(loggedIn bool), ok bool, err error) {
	e, ok := (*d.eff.Load())[pool]
	if !ok {
		return "", nil, false, nil
	}
	user = Fold(user)
	keep := func(b string, live bool, idle time.Duration) bool {
		_, in := e.in[b]
		if !in && d.defined(b) && d.refreshStale(ctx) {
			// Another replica's affinity to a backend this one does
			// not have in the pool: a change made there that this
			// replica has not read yet, most likely (a backend
			// added). Read the changes now, rather than undo it.
			e, _ = (*d.eff.Load())[pool]
			_, in = e.in[b]
		}
		if live {
			// While the user has a session, it stays where that
			// session is, whatever happened to the backend (drained,
			// removed, down by its checks), as long as the
			// configuration defines it: a mailbox is never open on
			// two backends.
			return in || d.defined(b)
		}
		if in && d.isDown(b) && idle < min(e.pool.AffinityTTL, DownGrace) {
			// A backend the checks took down right after the user's
			// last session ended may still be finishing it (a check
			// fails as well on a backend that is only slow): the
			// user waits a moment before it moves.
			return true
		}
		return in && !d.isDown(b)
	}
	choose := func() string { return Pick(user, e.members, d.isDown) }
	b, hit, prev, err := d.store.Acquire(ctx, Acquire{Pool: pool, User: user, TTL: e.pool.AffinityTTL, Outage: e.pool.Outage, Keep: keep, Choose: choose})
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			d.refused.Add(1)
		}
		return "", nil, true, err
	}
	if b == "" {
		return "", nil, true, errNoBackend(pool)
	}
	if hit {
		d.hits.Add(1)
	} else {
		d.misses.Add(1)
		if prev != "" && prev != b {
			d.countMove(d.moveReason(e, prev))
		}
	}
	var once atomic.Bool
	release = func(loggedIn bool) {
		if once.CompareAndSwap(false, true) {
			d.store.Release(pool, user, b, e.pool.AffinityTTL, !loggedIn && !hit)
		}
	}
	return b, release, true, nil
}

// errNoBackend is a pool none of whose backends can take a user.
func errNoBackend(pool string) error {
	return fmt.Errorf("pool %q has no backend to take a user: every one is drained, down or removed (undrain or add one)", pool)
}

// defined reports whether b is a [[backend]].
func (d *Director) defined(b string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.backends[b]
}

// staleAfter bounds how often a login reads the operator's changes from
// the AdminStore (refreshStale).
const staleAfter = 500 * time.Millisecond

// refreshStale reads the operator's changes unless that was done within
// staleAfter; it reports whether it read them.
func (d *Director) refreshStale(ctx context.Context) bool {
	now := time.Now().UnixNano()
	last := d.refreshed.Load()
	if now-last < int64(staleAfter) || !d.refreshed.CompareAndSwap(last, now) {
		return false
	}
	return d.Refresh(ctx) == nil
}

// moveReason says why a user left backend prev of pool e.
func (d *Director) moveReason(e effective, prev string) string {
	m, in := e.in[prev]
	switch {
	case !in:
		return MoveRemoved
	case d.isDown(prev):
		return MoveDown
	case m.Weight == 0:
		return MoveDrain
	}
	return MoveRebalance
}

func (d *Director) countMove(reason string) {
	d.movesMu.Lock()
	d.moves[reason]++
	d.movesMu.Unlock()
}

// DownGrace is how long after its last session ended a user stays on a
// backend that health checks took down (affinity_ttl when shorter): a
// backend that is only slow, not dead, may still be finishing that
// session. A user with a session stays as long as it lives.
const DownGrace = 5 * time.Second

// ErrUnknown is an operation that names no pool or no backend of it.
var ErrUnknown = errors.New("unknown pool or backend")

// Op is an operator's change to one backend of a pool.
type Op struct {
	// Action is "drain", "undrain", "weight", "add", "remove" or "reset"
	// (forget the operator's changes to the backend, or to the whole pool
	// when Backend is "").
	Action  string `json:"action"`
	Backend string `json:"backend"`
	Weight  int    `json:"weight"`
}

// Change applies op to pool, in the AdminStore (so on every replica of a
// fleet) and here at once.
func (d *Director) Change(ctx context.Context, pool string, op Op) error {
	d.mu.Lock()
	p, known := d.pools[pool]
	defined := d.backends[op.Backend]
	d.mu.Unlock()
	if !known {
		return fmt.Errorf("%w: no pool %q", ErrUnknown, pool)
	}
	if op.Backend != "" && !defined {
		return fmt.Errorf("%w: no [[backend]] %q", ErrUnknown, op.Backend)
	}
	configured := slices.ContainsFunc(p.Members, func(m Member) bool { return m.Backend == op.Backend })
	if op.Backend == "" && op.Action != "reset" {
		return fmt.Errorf("%s: name a backend", op.Action)
	}
	o, err := d.admin.Update(ctx, func(o Overrides) error {
		bs := o[pool]
		if bs == nil {
			bs = map[string]Override{}
			o[pool] = bs
		}
		cur := bs[op.Backend]
		in := (configured || cur.Added) && !cur.Removed
		switch op.Action {
		case "drain", "undrain":
			if !in {
				return fmt.Errorf("%w: backend %q is not in pool %q", ErrUnknown, op.Backend, pool)
			}
			cur.Drained = op.Action == "drain"
		case "weight":
			if !in {
				return fmt.Errorf("%w: backend %q is not in pool %q", ErrUnknown, op.Backend, pool)
			}
			if op.Weight < 0 || op.Weight > MaxWeight {
				return fmt.Errorf("weight %d: must be 0 to %d", op.Weight, MaxWeight)
			}
			w := op.Weight
			cur.Weight = &w
		case "add":
			if in {
				return fmt.Errorf("backend %q is in pool %q already", op.Backend, pool)
			}
			cur = Override{Added: !configured}
			if op.Weight > 0 {
				w := min(op.Weight, MaxWeight)
				cur.Weight = &w
			}
		case "remove":
			if !in {
				return fmt.Errorf("%w: backend %q is not in pool %q", ErrUnknown, op.Backend, pool)
			}
			cur = Override{Removed: configured}
		case "reset":
			if op.Backend == "" {
				delete(o, pool)
				return nil
			}
			cur = Override{}
		default:
			return fmt.Errorf("unknown action %q (want drain, undrain, weight, add, remove or reset)", op.Action)
		}
		if cur == (Override{}) {
			delete(bs, op.Backend)
		} else {
			bs[op.Backend] = cur
		}
		if len(bs) == 0 {
			delete(o, pool)
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.setOverrides(o)
	d.log.Info("pool changed", "pool", pool, "action", op.Action, "backend", op.Backend, "weight", op.Weight)
	return nil
}

// MaxWeight bounds a weight.
const MaxWeight = 10000

// Move assigns user of pool to backend to at once ("" lets the hash pick
// again). The caller ends the user's sessions, without QUIT: the next
// login goes to the new backend.
func (d *Director) Move(ctx context.Context, pool, user, to string) (string, error) {
	e, ok := (*d.eff.Load())[pool]
	if !ok {
		return "", fmt.Errorf("%w: no pool %q", ErrUnknown, pool)
	}
	user = d.keyOf(user)
	if to == "" {
		to = Pick(user, e.members, d.isDown)
		if to == "" {
			return "", errNoBackend(pool)
		}
	} else if _, in := e.in[to]; !in {
		return "", fmt.Errorf("%w: backend %q is not in pool %q", ErrUnknown, to, pool)
	}
	// The move holds for affinity_ttl, and at least a minute: the
	// user's next login must find it, also with affinity_ttl 0.
	if err := d.store.Set(ctx, pool, user, to, max(e.pool.AffinityTTL, time.Minute)); err != nil {
		return "", err
	}
	d.countMove(MoveAdmin)
	d.log.Info("pool user moved", "pool", pool, "user", user, "backend", to)
	return to, nil
}

// BackendStatus is one backend of a pool, as Status reports it.
type BackendStatus struct {
	Backend    string   `json:"backend"`
	Weight     int      `json:"weight"` // the effective one: 0 when drained
	Configured int      `json:"configured_weight"`
	Drained    bool     `json:"drained"`
	Down       bool     `json:"down"`
	Override   Override `json:"override"`
	// Sessions are this replica's. Users are those whose affinity holds,
	// listed when asked for; NUsers counts them, or without the list
	// the users this replica knows of (see [Store.Counts]).
	Sessions int      `json:"sessions"`
	Users    []string `json:"users,omitempty"`
	NUsers   int      `json:"user_count"`
}

// PoolStatus is a pool as Status reports it.
type PoolStatus struct {
	Name        string          `json:"name"`
	AffinityTTL string          `json:"affinity_ttl"`
	Backends    []BackendStatus `json:"backends"`
	// Partial says which affinities could not be read (Redis trouble).
	Partial string `json:"partial,omitempty"`
}

// Status describes every pool; withUsers lists the users of each backend
// too (with Redis, a scan of every affinity: an operator's request).
func (d *Director) Status(ctx context.Context, withUsers bool) []PoolStatus {
	d.mu.Lock()
	pools := maps.Clone(d.pools)
	over := d.over
	d.mu.Unlock()
	eff := *d.eff.Load()
	counts := d.store.Counts()
	var out []PoolStatus
	for _, name := range slices.Sorted(maps.Keys(pools)) {
		p, e := pools[name], eff[name]
		ps := PoolStatus{Name: name, AffinityTTL: p.AffinityTTL.String()}
		var users map[string][]string
		if withUsers {
			users, ps.Partial = d.store.Users(ctx, name)
		}
		configured := map[string]int{}
		for _, m := range p.Members {
			configured[m.Backend] = m.Weight
		}
		for _, m := range e.members {
			o := over[name][m.Backend]
			bs := BackendStatus{Backend: m.Backend, Weight: m.Weight, Configured: configured[m.Backend], Drained: o.Drained, Down: d.isDown(m.Backend), Override: o, Sessions: counts[name][m.Backend].Sessions, NUsers: counts[name][m.Backend].Users}
			if withUsers {
				u := users[m.Backend]
				slices.Sort(u)
				bs.Users, bs.NUsers = u, len(u)
			}
			ps.Backends = append(ps.Backends, bs)
		}
		out = append(out, ps)
	}
	return out
}

// Stats are the Director's counters for metrics.
type Stats struct {
	Hits, Misses uint64
	// Refused counts the logins refused with [ErrUnavailable].
	Refused uint64
	Moves   map[string]uint64
	// Counts are this replica's sessions and users by pool and backend
	// ([Store.Counts]).
	Counts map[string]map[string]Count
	// Weights are the effective weights by pool and backend.
	Weights map[string]map[string]int
}

// Stats returns the counters.
func (d *Director) Stats() Stats {
	d.movesMu.Lock()
	moves := maps.Clone(d.moves)
	d.movesMu.Unlock()
	st := Stats{Hits: d.hits.Load(), Misses: d.misses.Load(), Refused: d.refused.Load(), Moves: moves, Counts: d.store.Counts(), Weights: map[string]map[string]int{}}
	for name, e := range *d.eff.Load() {
		w := map[string]int{}
		for _, m := range e.members {
			w[m.Backend] = m.Weight
		}
		st.Weights[name] = w
	}
	return st
}
