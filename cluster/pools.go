package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/pool"
)

// PoolRetry is how long a replica keeps the affinities of pool users on
// its own state after Redis failed before it asks Redis again, so that
// not every login pays a dead Redis's timeout.
const PoolRetry = 2 * time.Second

// maxPoolEntry bounds an affinity's sealed value; maxPoolAdmin the
// operator's changes. Anything larger is not this fleet's.
const (
	maxPoolEntry = 4 << 10
	maxPoolAdmin = 1 << 20
)

// PoolStore keeps the affinities of pool users in Redis (pool.Store), so
// that every replica sends a user to the same backend, also while the
// pool changes.
//
// An affinity is one key, <prefix>{pool:<hash>}, named by a keyed hash
// of the pool and the folded user name, holding the sealed backend, pool
// and user (the names, for the operator's list). Its expiry is the
// affinity's end: a replica with a session of the user pushes it to at
// least hold ahead (three heartbeats) every heartbeat, and when its last
// session of the user ends, to at least affinity_ttl ahead; only PEXPIRE
// GT is used, so that no replica shortens another's hold. A replica that
// dies with sessions lets their hold run out. A user's first login
// writes the key with SET NX: replicas that race agree on whichever came
// first.
//
// When Redis fails the replica cannot know where the fleet holds a
// user: it assigns only the users it holds a live session of, to that
// session's backend, and refuses the others for now ([pool.ErrUnavailable],
// [SYS/TEMP]), logged once per outage and counted in
// popgate_cluster_fallbacks_total{feature="pools"}; a pool with outage =
// "hash" assigns on the replica's own memory instead (the same hash, so
// the same backend unless an affinity or a health view differs). An
// entry that does not open is replaced.
type PoolStore struct {
	c         *Cluster
	local     *pool.MemoryStore
	heartbeat time.Duration
	hold      time.Duration
	// holder names this process's holds in an affinity (n:<holder>):
	// the node and a random instance, since during an upgrade two
	// processes run as one node, and the new one's last session of a
	// user ending must not end the old one's hold.
	holder string

	mu       sync.Mutex
	leases   map[string]*lease // this replica's sessions, by key
	down     bool
	retryAt  time.Time
	refusing bool     // a refusal of this outage was logged
	unusable refusals // keys logged as unusable
	conflict func(pool, user, backend string)
}

// OnConflict installs what ends this replica's sessions of a user on
// backend when the fleet's affinity names another one (see renew).
func (s *PoolStore) OnConflict(f func(pool, user, backend string)) {
	s.mu.Lock()
	s.conflict = f
	s.mu.Unlock()
}

// lease is this replica's sessions of one user.
type lease struct {
	pool, user string
	backend    string
	val        []byte // the sealed affinity, to write again if it vanished
	n          int
}

// NewPoolStore returns the fleet's affinity store. heartbeat is how often
// the affinities of users with a session are renewed.
func (c *Cluster) NewPoolStore(heartbeat time.Duration) *PoolStore {
	inst := make([]byte, 6)
	rand.Read(inst)
	s := &PoolStore{c: c, local: pool.NewMemoryStore(nil), heartbeat: heartbeat, hold: 3 * heartbeat,
		holder: c.Node() + "/" + hex.EncodeToString(inst), leases: map[string]*lease{}, unusable: map[string]bool{}}
	c.background(s.renew)
	return s
}

// poolEntry is an affinity's sealed value.
type poolEntry struct {
	Backend string `json:"b"`
	Pool    string `json:"p"`
	User    string `json:"u"`
}

func (s *PoolStore) name(pool, user string) string {
	return s.c.key("{pool:" + s.c.hashName("pool", pool+"\x00"+user) + "}")
}

// The affinity scripts. An affinity is a hash: v, the sealed backend;
// n:<node>/<instance>, for each process with a session of the user, when
// its hold ends (ms of the replica's clock). The key expires when the last hold
// ends, or affinity_ttl after the last session ended, whichever is later.
// A key of another type is not this fleet's: acquire deletes it and says
// so; the others leave it to acquire.
const poolLuaCommon = `
local function ms(v) return string.format('%.0f', v) end
local function kind() return redis.call('TYPE', KEYS[1]).ok end
`

// acquireScript: ARGV node, now, hold, max. It returns {0} without an
// affinity, {1, v, live, pttl} with one (and holds it for node; live is
// 1 when a replica held it already: the user has a session; pttl is what
// was left of it, ms), {2} for a key of another type, deleted, {3} for a
// v longer than max, which no replica wrote and none reads.
var acquireScript = redis.NewScript(poolLuaCommon + `
local t = kind()
if t == 'none' then return {0} end
if t ~= 'hash' then redis.call('DEL', KEYS[1]) return {2} end
if redis.call('HSTRLEN', KEYS[1], 'v') > tonumber(ARGV[4]) then return {3} end
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {0} end
local now, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local live = 0
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 'n:' then
    local d = tonumber(h[i + 1])
    if d and d > now then live = 1 end
  end
end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], ms(now + hold))
redis.call('PEXPIRE', KEYS[1], hold, 'GT')
return {1, v, live, pttl}
`)

// assignScript: ARGV node, now, hold, v, nx. It writes the affinity v,
// held for node, unless nx is 1 and one exists; 1 when it wrote.
var assignScript = redis.NewScript(poolLuaCommon + `
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'n:' .. ARGV[1], ms(now + hold))
redis.call('PEXPIRE', KEYS[1], hold)
return 1
`)

// releaseScript: ARGV node, now, ttl. node's last session of the user
// ended: the affinity lasts ttl more, or while another replica holds it.
var releaseScript = redis.NewScript(poolLuaCommon + `
if kind() ~= 'hash' then return 0 end
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
local now = tonumber(ARGV[2])
local last = now + tonumber(ARGV[3])
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 'n:' then
    local d = tonumber(h[i + 1])
    if d and d > now then
      if d > last then last = d end
    else
      redis.call('HDEL', KEYS[1], h[i])
    end
  end
end
if last <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('PEXPIRE', KEYS[1], ms(last - now))
return 1
`)

// renewScript: ARGV node, now, hold, v, was, max. node still has a
// session: its hold goes on, as long as the affinity is v (or was, which
// it then replaces with v: a value this replica read and judged); an
// affinity that vanished (Redis lost it: a restart without persistence,
// a failover) is written again. It returns {1} when it held, {0} for a
// key of another type, {2, v} for another affinity, which it does not
// hold (the replica decides: the same backend sealed anew, or another
// one: a conflict), {3} for a v longer than max.
var renewScript = redis.NewScript(poolLuaCommon + `
local t = kind()
local now, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
if t == 'none' then
  redis.call('HSET', KEYS[1], 'v', ARGV[4], 'n:' .. ARGV[1], ms(now + hold))
  redis.call('PEXPIRE', KEYS[1], hold)
  return {1}
end
if t ~= 'hash' then return {0} end
if redis.call('HSTRLEN', KEYS[1], 'v') > tonumber(ARGV[6]) then return {3} end
local v = redis.call('HGET', KEYS[1], 'v')
if v and v ~= ARGV[4] then
  if ARGV[5] == '' or v ~= ARGV[5] then return {2, v} end
  v = false
end
if not v then redis.call('HSET', KEYS[1], 'v', ARGV[4]) end
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], ms(now + hold))
redis.call('PEXPIRE', KEYS[1], hold, 'GT')
return {1}
`)

// try reports whether to ask Redis now; false while backing off.
func (s *PoolStore) try() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.down {
		return true
	}
	now := time.Now()
	if now.Before(s.retryAt) {
		return false
	}
	s.retryAt = now.Add(PoolRetry)
	return true
}

// failed records a Redis failure: the next PoolRetry works locally.
func (s *PoolStore) failed(err error) {
	s.c.done(err)
	s.mu.Lock()
	s.down, s.retryAt = true, time.Now().Add(PoolRetry)
	s.mu.Unlock()
}

func (s *PoolStore) ok() {
	s.c.done(nil)
	s.mu.Lock()
	s.down, s.refusing = false, false
	s.mu.Unlock()
}

// refuse logs, once per key, an entry that cannot be used.
func (s *PoolStore) refuse(key, msg string, err error) {
	s.mu.Lock()
	first := s.unusable.first(key, maxUnusable)
	s.mu.Unlock()
	if first {
		s.c.log.Error("cluster: unusable pool affinity in Redis; replacing it", "key", key, "problem", msg, "err", err)
	}
}

// read opens a raw affinity of key; ok false logs why it is unusable.
func (s *PoolStore) read(key string, raw []byte, a pool.Acquire) (string, bool) {
	if len(raw) > maxPoolEntry {
		s.refuse(key, fmt.Sprintf("%d bytes, more than an affinity", len(raw)), nil)
		return "", false
	}
	plain, err := s.c.open(key, raw)
	if err != nil {
		s.refuse(key, "does not open", err)
		return "", false
	}
	var e poolEntry
	if err := json.Unmarshal(plain, &e); err != nil || e.Pool != a.Pool || e.User != a.User || e.Backend == "" {
		s.refuse(key, "not an affinity of this key's user", err)
		return "", false
	}
	return e.Backend, true
}

func (s *PoolStore) seal(key, backend, poolName, user string) []byte {
	plain, _ := json.Marshal(poolEntry{Backend: backend, Pool: poolName, User: user})
	return s.c.seal(key, plain)
}

// Acquire implements pool.Store.
func (s *PoolStore) Acquire(ctx context.Context, a pool.Acquire) (b string, hit bool, prev string, err error) {
	key := s.name(a.Pool, a.User)
	defer func() {
		if err != nil || b == "" {
			return
		}
		// Also a session assigned on local state holds its user's
		// backend: the heartbeat writes the hold once Redis answers
		// again, so that other replicas see the session from then on.
		s.mu.Lock()
		l := s.leases[key]
		if l == nil || l.backend != b {
			l = &lease{pool: a.Pool, user: a.User, backend: b, val: s.seal(key, b, a.Pool, a.User)}
			s.leases[key] = l
		}
		l.n++
		s.mu.Unlock()
	}()
	if !s.try() {
		return s.fallback(key, a)
	}
	ctx, cancel := context.WithTimeout(ctx, throttleTimeout)
	defer cancel()
	b, hit, prev, err = s.acquire(ctx, key, a)
	if err != nil {
		s.failed(err)
		return s.fallback(key, a)
	}
	s.ok()
	return b, hit, prev, nil
}

// fallback assigns a login while Redis does not answer. The fleet may
// hold the user on another backend than this replica's memory and the
// hash say (a session on another replica after a pool change, a move, a
// health view that differs): unless the pool says outage = "hash", only a
// user this process holds a live session of is assigned, to that
// session's backend, and the others are refused for now.
func (s *PoolStore) fallback(key string, a pool.Acquire) (string, bool, string, error) {
	s.c.Fallback("pools")
	if a.Outage == pool.OutageHash {
		return s.local.Acquire(context.Background(), a)
	}
	s.mu.Lock()
	l := s.leases[key]
	held := l != nil && l.n > 0
	first := !held && !s.refusing
	if first {
		s.refusing = true
	}
	s.mu.Unlock()
	if held {
		return l.backend, true, "", nil
	}
	if first {
		s.c.log.Warn("cluster: Redis is unreachable; pool logins of users without a session on this replica are refused with [SYS/TEMP] until it answers (outage = \"hash\" in a [[pool]] assigns them by the hash instead)", "pool", a.Pool)
	}
	return "", false, "", pool.ErrUnavailable
}

func (s *PoolStore) acquire(ctx context.Context, key string, a pool.Acquire) (string, bool, string, error) {
	var prev string
	node := s.holder
	for try := 0; ; try++ {
		now := time.Now().UnixMilli()
		res, err := acquireScript.Run(ctx, s.c.client, []string{key}, node, now, s.hold.Milliseconds(), maxPoolEntry).Slice()
		if err != nil {
			return "", false, "", err
		}
		exists := false
		switch {
		case len(res) == 1 && res[0] == int64(2):
			s.refuse(key, "not a hash", nil)
		case len(res) == 1 && res[0] == int64(3):
			exists = true
			s.refuse(key, fmt.Sprintf("more than %d bytes, more than an affinity", maxPoolEntry), nil)
		case len(res) == 4 && res[0] == int64(1):
			exists = true
			raw, _ := res[1].(string)
			// Without a session the affinity ends affinity_ttl after
			// the last one ended: what is left of it dates that end.
			pttl, _ := res[3].(int64)
			idle := max(a.TTL-time.Duration(pttl)*time.Millisecond, 0)
			if b, ok := s.read(key, []byte(raw), a); ok {
				if a.Keep(b, res[2] == int64(1), idle) {
					return b, true, "", nil
				}
				prev = b
			}
		}
		b := a.Choose()
		if b == "" {
			return "", false, prev, nil
		}
		// An affinity that no longer holds is replaced: every replica
		// that finds it so chooses alike. A user's first affinity is
		// written only if no replica wrote one meanwhile.
		nx := "1"
		if exists {
			nx = "0"
		}
		set, err := assignScript.Run(ctx, s.c.client, []string{key}, node, now, s.hold.Milliseconds(), s.seal(key, b, a.Pool, a.User), nx).Int()
		if err != nil || set == 1 || try > 0 {
			return b, false, prev, err
		}
		// Another replica assigned the user meanwhile: take its answer.
	}
}

// Release implements pool.Store.
func (s *PoolStore) Release(poolName, user, backend string, ttl time.Duration, fresh bool) {
	s.local.Release(poolName, user, backend, ttl, fresh)
	key := s.name(poolName, user)
	s.mu.Lock()
	l := s.leases[key]
	if l == nil || l.backend != backend {
		s.mu.Unlock()
		return // a session of an old affinity
	}
	l.n--
	last := l.n <= 0
	if last {
		delete(s.leases, key)
	}
	s.mu.Unlock()
	if !last || !s.try() {
		return
	}
	// A session that never logged in keeps no affinity: a made-up name
	// costs no entry (another replica's hold keeps it, if any).
	if fresh {
		ttl = 0
	}
	ctx, cancel := s.c.ctx()
	defer cancel()
	if err := releaseScript.Run(ctx, s.c.client, []string{key}, s.holder, time.Now().UnixMilli(), ttl.Milliseconds()).Err(); err != nil && !errors.Is(err, redis.Nil) {
		s.failed(err)
		return
	}
	s.ok()
}

// renew pushes the end of the affinities of users with a session here
// forward, every heartbeat.
func (s *PoolStore) renew(ctx context.Context) {
	t := time.NewTicker(s.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		keys := make([]string, 0, len(s.leases))
		ls := make([]*lease, 0, len(s.leases))
		for k, l := range s.leases {
			keys = append(keys, k)
			ls = append(ls, l)
		}
		s.mu.Unlock()
		if len(keys) == 0 || !s.try() {
			continue
		}
		s.renewAll(keys, ls)
	}
}

// renewAll renews the holds of leases ls, of keys. An affinity that
// names another backend than a lease's was written by another replica
// while this one's holds did not reach Redis (a stalled replica, a
// partition, Redis that lost its data and a login that came meanwhile):
// the fleet sends the user there now, so this replica's sessions of the
// user end, rather than hold (or take back) the affinity.
func (s *PoolStore) renewAll(keys []string, ls []*lease) {
	octx, cancel := s.c.ctx()
	defer cancel()
	was := make([][]byte, len(keys))
	for range 2 {
		var cmds []*redis.Cmd
		renew := func() error {
			cmds = cmds[:0]
			_, err := s.c.client.Pipelined(octx, func(p redis.Pipeliner) error {
				now := time.Now().UnixMilli()
				s.mu.Lock()
				for i, k := range keys {
					cmds = append(cmds, renewScript.EvalSha(octx, p, []string{k}, s.holder, now, s.hold.Milliseconds(), ls[i].val, was[i], maxPoolEntry))
				}
				s.mu.Unlock()
				return nil
			})
			return err
		}
		err := renew()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			// Scripts run in a pipeline are not loaded on demand: load
			// it (a restarted Redis forgot it) and go again.
			if err = renewScript.Load(octx, s.c.client).Err(); err == nil {
				err = renew()
			}
		}
		if err != nil {
			s.failed(err)
			return
		}
		s.ok()
		var again []int
		for i, cmd := range cmds {
			res, _ := cmd.Slice()
			if len(res) != 2 || res[0] != int64(2) {
				continue
			}
			raw, _ := res[1].(string)
			l := ls[i]
			b, ok := s.read(keys[i], []byte(raw), pool.Acquire{Pool: l.pool, User: l.user})
			if ok && b != l.backend {
				s.conflicted(keys[i], l, b)
				continue
			}
			// The same backend, sealed by another replica, or an entry
			// that does not open (logged): hold it, as this lease's.
			was[i] = []byte(raw)
			again = append(again, i)
		}
		if len(again) == 0 {
			return
		}
		k2, l2, w2 := make([]string, len(again)), make([]*lease, len(again)), make([][]byte, len(again))
		for j, i := range again {
			k2[j], l2[j], w2[j] = keys[i], ls[i], was[i]
		}
		keys, ls, was = k2, l2, w2
	}
}

// conflicted ends lease l of key: the fleet's affinity names backend
// other.
func (s *PoolStore) conflicted(key string, l *lease, other string) {
	s.mu.Lock()
	mine := s.leases[key] == l
	if mine {
		delete(s.leases, key)
	}
	f := s.conflict
	s.mu.Unlock()
	if !mine {
		return // a later session of the user took the lease meanwhile
	}
	s.c.log.Error("cluster: a pool user's affinity in Redis names another backend than this replica's sessions of the user (its holds did not reach Redis in time); ending those sessions, so that the mailbox is not open on two backends",
		"pool", l.pool, "user", l.user, "backend", l.backend, "fleet_backend", other, "key", key)
	if f != nil {
		f(l.pool, l.user, l.backend)
	}
}

// Set implements pool.Store: an operator's move, on every replica.
func (s *PoolStore) Set(ctx context.Context, poolName, user, backend string, ttl time.Duration) error {
	s.local.Set(ctx, poolName, user, backend, ttl)
	key := s.name(poolName, user)
	ctx, cancel := context.WithTimeout(ctx, dialTimeout+2*ioTimeout)
	defer cancel()
	var err error
	if backend == "" {
		err = s.c.client.Del(ctx, key).Err()
	} else {
		// Held by no replica: it lasts ttl (or a hold), and any
		// session's login renews it.
		_, err = s.c.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, key)
			p.HSet(ctx, key, "v", s.seal(key, backend, poolName, user))
			p.PExpire(ctx, key, max(ttl, s.hold))
			return nil
		})
	}
	s.c.done(err)
	if err != nil {
		return fmt.Errorf("cluster: the move is not stored in Redis, so other replicas do not know it: %w", err)
	}
	return nil
}

// maxPoolListed bounds the affinities Users reads.
const maxPoolListed = 1_000_000

// Users implements pool.Store: a scan of every affinity in Redis.
func (s *PoolStore) Users(ctx context.Context, poolName string) (map[string][]string, string) {
	users := map[string][]string{}
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, s.c.key("{pool:*"), 1000).Iterator()
		for it.Next(ctx) {
			if len(keys) >= maxPoolListed {
				return errors.New("too many affinities to list")
			}
			keys = append(keys, it.Val())
		}
		return it.Err()
	}
	var err error
	var mu sync.Mutex
	switch cl := s.c.client.(type) {
	case *redis.ClusterClient:
		err = cl.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, c)
		})
	case *redis.Client:
		err = scan(ctx, cl)
	default:
		err = errors.New("unknown Redis client")
	}
	if err != nil {
		s.c.done(err)
		return users, "the affinities in Redis could not all be read: " + err.Error()
	}
	cmds, err := s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.HGet(ctx, k, "v")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		s.c.done(err)
		return users, "the affinities in Redis could not all be read: " + err.Error()
	}
	for i, c := range cmds {
		raw, err := c.(*redis.StringCmd).Bytes()
		if err != nil || len(raw) > maxPoolEntry {
			continue
		}
		plain, err := s.c.open(keys[i], raw)
		if err != nil {
			continue
		}
		var e poolEntry
		if json.Unmarshal(plain, &e) == nil && e.Pool == poolName && s.name(e.Pool, e.User) == keys[i] {
			users[e.Backend] = append(users[e.Backend], e.User)
		}
	}
	return users, ""
}

// Counts implements pool.Store: this replica's sessions, and the users
// it has a session of (the fleet's users are counted by a scan, Users).
func (s *PoolStore) Counts() map[string]map[string]pool.Count {
	out := s.local.Counts()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.leases {
		if out[l.pool] == nil {
			out[l.pool] = map[string]pool.Count{}
		}
		c := out[l.pool][l.backend]
		c.Users++
		c.Sessions += l.n
		out[l.pool][l.backend] = c
	}
	return out
}

// PoolAdmin keeps the operator's changes to the pools in Redis
// (pool.AdminStore): one sealed key, <prefix>pools:admin, so that a drain
// made through one replica holds on every one. Replicas read it every
// few seconds ([Cluster.WatchPools]).
type PoolAdmin struct {
	c       *Cluster
	mu      sync.Mutex
	refused bool
}

// PoolAdmin returns the store of the operator's changes to the pools.
func (c *Cluster) PoolAdmin() *PoolAdmin { return &PoolAdmin{c: c} }

func (a *PoolAdmin) key() string { return a.c.key("pools:admin") }

func (a *PoolAdmin) decode(raw []byte) (pool.Overrides, error) {
	if len(raw) > maxPoolAdmin {
		return nil, fmt.Errorf("%d bytes, more than the pools' changes can be", len(raw))
	}
	plain, err := a.c.open(a.key(), raw)
	if err != nil {
		return nil, err
	}
	o := pool.Overrides{}
	if err := json.Unmarshal(plain, &o); err != nil {
		return nil, fmt.Errorf("not the pools' changes: %w", err)
	}
	return o, nil
}

// Load implements pool.AdminStore.
func (a *PoolAdmin) Load(ctx context.Context) (pool.Overrides, error) {
	raw, err := getBounded(ctx, a.c.client, a.key(), maxPoolAdmin)
	if errors.Is(err, redis.Nil) {
		a.c.done(nil)
		return pool.Overrides{}, nil
	}
	a.c.done(err)
	if err != nil {
		return nil, err
	}
	o, err := a.decode(raw)
	a.mu.Lock()
	first := err != nil && !a.refused
	a.refused = err != nil
	a.mu.Unlock()
	if first {
		a.c.log.Error("cluster: the pools' changes in Redis are unusable; keeping the last ones read (popgate pool reset POOL writes them anew)", "key", a.key(), "err", err)
	}
	return o, err
}

// getBounded reads the string at key, but no more than max+1 bytes of
// it: every replica reads the pools' changes every PoolRefresh, and a
// hostile Redis's huge value must not cost each of them its size each
// time (decode refuses what is longer than max). A missing key, or an
// empty value, which no replica writes, is redis.Nil.
func getBounded(ctx context.Context, c redis.Cmdable, key string, max int) ([]byte, error) {
	raw, err := c.GetRange(ctx, key, 0, int64(max)).Bytes()
	if err == nil && len(raw) == 0 {
		return nil, redis.Nil
	}
	return raw, err
}

// Update implements pool.AdminStore, with WATCH: replicas that change the
// pools at once each see the other's change.
func (a *PoolAdmin) Update(ctx context.Context, f func(pool.Overrides) error) (pool.Overrides, error) {
	key := a.key()
	var out pool.Overrides
	for range 5 {
		err := a.c.client.Watch(ctx, func(tx *redis.Tx) error {
			raw, err := getBounded(ctx, tx, key, maxPoolAdmin)
			o := pool.Overrides{}
			switch {
			case errors.Is(err, redis.Nil):
			case err != nil:
				return err
			default:
				if o, err = a.decode(raw); err != nil {
					// Unusable: the change starts over from none, which
					// is what a reset asks for.
					a.c.log.Error("cluster: the pools' changes in Redis are unusable; writing them anew", "key", key, "err", err)
					o = pool.Overrides{}
				}
			}
			if err := f(o); err != nil {
				return &opError{err}
			}
			plain, err := json.Marshal(o)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, key, a.c.seal(key, plain), 0)
				return nil
			})
			out = o
			return err
		}, key)
		var oe *opError
		switch {
		case errors.As(err, &oe):
			return nil, oe.err
		case errors.Is(err, redis.TxFailedErr):
			continue
		case err != nil:
			a.c.done(err)
			return nil, fmt.Errorf("cluster: Redis is unreachable; the change was not made (it must reach every replica): %w", err)
		}
		a.c.done(nil)
		return out, nil
	}
	return nil, errors.New("cluster: the pools changed on other replicas five times meanwhile; try again")
}

// opError is the operation's own refusal inside a WATCH.
type opError struct{ err error }

func (e *opError) Error() string { return e.err.Error() }

// PoolRefresh is how often a replica reads the operator's changes to the
// pools from Redis.
const PoolRefresh = 2 * time.Second

// WatchPools reads the operator's changes to the pools into d every
// PoolRefresh until Close; with Redis failing, d keeps what it had.
func (c *Cluster) WatchPools(d *pool.Director) {
	c.background(func(ctx context.Context) {
		t := time.NewTicker(PoolRefresh)
		defer t.Stop()
		for {
			octx, cancel := c.ctx()
			d.Refresh(octx)
			cancel()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}
