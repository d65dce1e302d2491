package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/auth"
)

// ThrottleRetry is how long a replica counts failed logins on its own
// state after Redis failed before it asks Redis again, so that not every
// login pays a dead Redis's timeout. One login then asks while the others
// go on locally until it has the answer.
const ThrottleRetry = 2 * time.Second

// throttleTimeout bounds one operation of the throttle's, dial included:
// a login waits for it, and Redis answers within a millisecond when it
// answers at all.
const throttleTimeout = 500 * time.Millisecond

// ThrottleStore keeps the failed-login budgets of the fleet in Redis
// (auth.ThrottleStore): the failures and the attempts in flight of a
// client network or a user name count on every replica at once, so that
// guesses spread over N replicas get the budget of one.
//
// Each budget is two keys in one hash slot, named by a keyed hash of the
// network or the folded user name (neither is in clear in Redis):
// <prefix>{throttle:ip:<hash>}:n and ...:r for a network,
// <prefix>{throttle:user:<hash>}:n and ...:r for a user. The first (a
// hash) holds the count: failures, the start of their window, the end of
// a lock, the keyed hash of the network the failures came from (for
// users) and whether they came from several; it expires when its window
// or its lock ends. The second (a sorted set) holds the attempts in flight,
// each with the time its reservation ends: a replica that dies with
// attempts in flight holds their places until then, no longer. A Lua
// script per key checks and reserves (Place) or releases and counts
// (End), atomically, so that attempts on several replicas at once cannot
// race past a budget; Place asks both of an attempt's keys in one round
// trip and gives back what it reserved when either has no room.
//
// The replicas' clocks time the windows (NTP keeps them within far less
// than a window). When Redis fails, or holds what the scripts cannot
// read (a count that is no number, a key of another type), the store
// says so and the auth.Throttle counts on its own state (logged once per
// outage, or once per unusable key; popgate_cluster_fallbacks_total
// {feature="throttle"}).
type ThrottleStore struct {
	c    *Cluster
	hold atomic.Int64  // time.Duration; SetHold changes it
	ids  string        // this process's prefix of reservation ids
	seq  atomic.Uint64 // the rest of them

	mu       sync.Mutex
	down     bool      // Redis failed and has not answered since
	retryAt  time.Time // when down: when to ask again
	unusable refusals  // budgets logged as unusable
	refused  bool      // logged that Redis refuses the scripts
}

// maxUnusable bounds the unusable keys remembered so as to log each once.
const maxUnusable = 1024

// NewThrottleStore returns the fleet's store of failed-login budgets. hold
// bounds the time an attempt may be in flight (from the throttle's Begin
// to its End): a reservation that outlives it expires.
func (c *Cluster) NewThrottleStore(hold time.Duration) *ThrottleStore {
	b := make([]byte, 6)
	rand.Read(b) // crypto/rand does not fail (Go 1.24+)
	s := &ThrottleStore{c: c, ids: hex.EncodeToString(b) + ":", unusable: map[string]bool{}}
	s.hold.Store(int64(hold))
	return s
}

// SetHold changes the bound of an attempt's time in flight, for the
// attempts placed from now on (a reload that lengthens the login
// deadline must lengthen the reservations too, or they would expire
// while their attempts go on and let others past the budget).
func (s *ThrottleStore) SetHold(hold time.Duration) {
	s.hold.Store(int64(hold))
}

// Replicas implements auth.ThrottleStoreReplicas: the replicas in the
// sessions index at its last read (every 5 s), this one included. While
// Redis fails, each replica counts failed logins against its share of the
// limits, so that N replicas let no more than the limit through between
// them (docs/fleet.md).
func (s *ThrottleStore) Replicas() int {
	return int(s.c.replicas.Load())
}

// Hold is the bound SetHold (or NewThrottleStore) set.
func (s *ThrottleStore) Hold() time.Duration {
	return time.Duration(s.hold.Load())
}

// The scripts read and validate a budget's count. KEYS[1] is the count (a
// hash: n failures, s start of their window, l end of the lock, f network,
// m several networks), KEYS[2] the attempts in flight (a sorted set:
// reservation id, end of the reservation). Times are in milliseconds of
// the replica's clock. A field that is not a count is an error starting
// with POPGATE-CORRUPT, which the replica takes for a Redis failure.
const throttleLuaCommon = `
local function int(v, what)
  if not v then return 0 end
  if #v > 16 or not string.match(v, '^%d+$') then
    error({err = 'POPGATE-CORRUPT ' .. what .. ' is not a count'})
  end
  return tonumber(v)
end
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- count is the failures of the current window: none once the window or
-- the lock has passed.
local function count(n, s, l)
  if l > 0 then
    if now < l then return n end
    return 0
  end
  if n == 0 or now - s >= window then return 0 end
  return n
end
-- No replica locks a key for longer than a window from now, nor starts
-- a window later than now (but for the clocks' error): such values,
-- written by something else (which could lock every user with recent
-- failures out for a day) or under a longer window before a reload, are
-- cut to that.
local function clamp(s, l)
  if l > now + window then
    l = now + window
    redis.call('HSET', KEYS[1], 'l', string.format('%.0f', l))
  end
  if s > now then
    s = now
    redis.call('HSET', KEYS[1], 's', string.format('%.0f', s))
  end
  return s, l
end
`

// placeScript: ARGV now, window, limit, reservation id, its end, and the
// latest end a reservation can have (later ones are not this fleet's).
// It returns {0, 0} when it reserved, {1, ms} when the key is locked for
// ms, {2, 0} when failures and attempts in flight fill the budget.
var placeScript = redis.NewScript(throttleLuaCommon + `
local h = redis.call('HMGET', KEYS[1], 'n', 's', 'l')
local n, s, l = int(h[1], 'n'), int(h[2], 's'), int(h[3], 'l')
s, l = clamp(s, l)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '(' .. ARGV[6], '+inf')
local inflight = redis.call('ZCARD', KEYS[2])
local c = count(n, s, l)
if l > now then return {1, l - now} end
if c >= limit then return {1, s + window - now} end
if c + inflight >= limit then return {2, 0} end
local ends = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], ends, ARGV[4])
local ttl = ends - now + 1000
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {0, 0}
`)

// endScript: ARGV now, window, limit, reservation id, the result (f
// failed, s succeeded, a aborted), the keyed hash of the client's network
// (users; "" for addresses).
var endScript = redis.NewScript(throttleLuaCommon + `
redis.call('ZREM', KEYS[2], ARGV[4])
local r, from = ARGV[5], ARGV[6]
if limit <= 0 or window <= 0 or r == 'a' then return 0 end
local h = redis.call('HMGET', KEYS[1], 'n', 's', 'l', 'f', 'm')
local n, s, l = int(h[1], 'n'), int(h[2], 's'), int(h[3], 'l')
s, l = clamp(s, l)
local f, m = h[4] or '', h[5] == '1'
if #f > 64 then error({err = 'POPGATE-CORRUPT f is not a network'}) end
if r == 'f' then
  if l > now then return 0 end -- locked: the lock does not grow
  if count(n, s, l) == 0 then
    n, s, l, f, m = 0, now, 0, from, false
  elseif from ~= f then
    m = true
  end
  n = n + 1
  if n >= limit then l = now + window end
  redis.call('HSET', KEYS[1], 'n', string.format('%.0f', n), 's', string.format('%.0f', s),
    'l', string.format('%.0f', l), 'f', f, 'm', m and '1' or '0')
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(l, s + window) - now + 1000))
elseif r == 's' and from ~= '' and not m and (n == 0 or f == from) then
  redis.call('DEL', KEYS[1])
end
return 0
`)

// names returns the Redis keys of k's budget: its count and its
// attempts in flight.
func (s *ThrottleStore) names(k auth.StoreKey) (count, flight string) {
	kind := "ip"
	if k.User {
		kind = "user"
	}
	tag := s.c.key("{throttle:" + kind + ":" + s.c.hashName("throttle "+kind, k.Name) + "}")
	return tag + ":n", tag + ":r"
}

// errBackingOff is the answer while Redis is failing, between tries.
var errBackingOff = errors.New("cluster: Redis failed a moment ago; counting on this replica")

// try reports whether to ask Redis now; false while backing off after a
// failure.
func (s *ThrottleStore) try() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.down {
		return true
	}
	now := time.Now()
	if now.Before(s.retryAt) {
		s.c.Fallback("throttle")
		return false
	}
	// This call asks; the others stay local until it has the answer.
	s.retryAt = now.Add(ThrottleRetry)
	return true
}

// run runs script for every key, in one round trip; args(i) are the
// arguments for keys[i]. It returns the replies and, when one failed, the
// error that makes the attempt count locally (after recording it); the
// replies are nil when nothing was sent.
func (s *ThrottleStore) run(parent context.Context, script *redis.Script, window time.Duration, keys []auth.StoreKey, args func(i int) []any) ([]*redis.Cmd, error) {
	if !s.try() {
		return nil, errBackingOff
	}
	ctx, cancel := context.WithTimeout(parent, throttleTimeout)
	defer cancel()
	cmds := make([]*redis.Cmd, len(keys))
	names := make([][]string, len(keys))
	for i, k := range keys {
		c, f := s.names(k)
		names[i] = []string{c, f}
	}
	s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range keys {
			cmds[i] = script.EvalSha(ctx, p, names[i], args(i)...)
		}
		return nil
	})
	// A Redis that restarted has forgotten the script: send it, for
	// those keys only (the others ran).
	var again []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range again {
				cmds[i] = script.Eval(ctx, p, names[i], args(i)...)
			}
			return nil
		})
	}

	if err := parent.Err(); err != nil {
		// The caller gave up (its login's time is up): says nothing
		// of Redis.
		return cmds, err
	}
	var failed, unusable error
	busy := false
	for i, cmd := range cmds {
		switch err := cmd.Err(); {
		case err == nil:
		case isUnusable(err):
			s.logUnusable(names[i][0], names[i][1], err)
			s.expireUnusable(names[i], window)
			unusable = err
		case errors.Is(err, redis.ErrPoolTimeout):
			// Every connection is busy: Redis answers, this replica
			// asks too much of it at once. Counting locally would
			// give this replica a budget of its own for ThrottleRetry
			// (and a flood could make that last); the attempt is
			// refused for now instead, as when the budget is full.
			busy = true
		case isRefused(err):
			s.logRefused(err)
			unusable = err
		default:
			failed = err
		}
	}
	if busy && failed == nil && unusable == nil {
		return cmds, auth.ErrStoreBusy
	}
	s.c.done(failed)
	s.mu.Lock()
	s.down = failed != nil
	if s.down {
		s.retryAt = time.Now().Add(ThrottleRetry)
	}
	s.mu.Unlock()
	if failed == nil {
		failed = unusable
	}
	if failed != nil {
		s.c.Fallback("throttle")
		return cmds, failed
	}
	return cmds, nil
}

// isUnusable tells an entry the scripts cannot read (Redis answered) from
// a Redis that failed.
func isUnusable(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := err.Error()
	return strings.HasPrefix(msg, "POPGATE-CORRUPT") || strings.HasPrefix(msg, "WRONGTYPE")
}

// isRefused tells a command Redis refuses (an ACL without the scripts,
// NOPERM) from a Redis that is unavailable: Redis answers, so the replica
// neither takes it for down nor backs off, but counts locally.
func isRefused(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "BUSY", "NOREPLICAS", "OOM"} {
		if redis.HasErrorPrefix(err, p) {
			return false
		}
	}
	return true
}

// logRefused logs once that Redis refuses the throttle's commands.
func (s *ThrottleStore) logRefused(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refused {
		return
	}
	s.refused = true
	s.c.log.Error("cluster: Redis refuses the failed-login counters' scripts; this replica counts failed logins on its own state "+
		"(the cluster.user's ACL needs +@scripting, see docs/fleet.md)", "err", err)
}

// expireScript gives KEYS an expiry of ARGV[1] ms where they have none
// or a later one.
var expireScript = redis.NewScript(`for _, k in ipairs(KEYS) do
  local t = redis.call('PTTL', k)
  if t == -1 or t > tonumber(ARGV[1]) then redis.call('PEXPIRE', k, ARGV[1]) end
end
return 0`)

// expireUnusable makes the unusable budget at names expire within a
// window: no replica writes one, and while it lasts each replica counts
// the key on its own state (N replicas, N budgets); whoever wrote it
// without an expiry would make that for ever. A failure leaves it as it
// is.
func (s *ThrottleStore) expireUnusable(names []string, window time.Duration) {
	ctx, cancel := s.c.ctx()
	defer cancel()
	expireScript.Run(ctx, s.c.client, names, max(window, time.Minute).Milliseconds())
}

// logUnusable logs once that the budget at name (its count; the attempts
// in flight are at flight) cannot be read: either key may be the one.
func (s *ThrottleStore) logUnusable(name, flight string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.unusable.first(name, maxUnusable) {
		return
	}
	s.c.log.Error("cluster: a failed-login count in Redis is unusable (corrupted, or written by something else); "+
		"this replica counts the attempts of its key on its own state until the key is deleted or expires",
		"key", name, "flight_key", flight, "err", err)
}

// errBadReply is a script's reply that is not what the scripts return.
var errBadReply = errors.New("cluster: the throttle's script gave an unexpected reply")

// Place implements auth.ThrottleStore.
func (s *ThrottleStore) Place(ctx context.Context, now time.Time, window time.Duration, keys []auth.StoreKey) (string, []auth.StoreVerdict, error) {
	id := s.ids + strconv.FormatUint(s.seq.Add(1), 36)
	ms := now.UnixMilli()
	hold := s.Hold()
	ends, latest := now.Add(hold).UnixMilli(), now.Add(2*hold).UnixMilli()
	cmds, err := s.run(ctx, placeScript, window, keys, func(i int) []any {
		return []any{ms, window.Milliseconds(), keys[i].Limit, id, ends, latest}
	})
	if err != nil {
		// A key that answered may have given a place: back, so that
		// a key that fails (one unusable entry) does not fill the
		// other's budget with places that wait to expire.
		if cmds != nil {
			placed := make([]bool, len(keys))
			for i, cmd := range cmds {
				r, err := cmd.Int64Slice()
				placed[i] = err == nil && len(r) == 2 && r[0] == 0
			}
			s.release(keys, placed, id)
		}
		return "", nil, err
	}
	// No lock lasts longer than a window (the scripts cut longer ones):
	// a longer answer is no script's.
	maxRetry := max(24*time.Hour, 2*window)
	vs := make([]auth.StoreVerdict, len(keys))
	placed := make([]bool, len(keys))
	all := true
	for i, cmd := range cmds {
		r, err := cmd.Int64Slice()
		if err != nil || len(r) != 2 {
			err = errBadReply
		} else {
			switch retry := time.Duration(r[1]) * time.Millisecond; {
			case r[0] == 0:
				placed[i] = true
			case r[0] == 1 && r[1] > 0 && r[1] <= maxRetry.Milliseconds():
				vs[i].RetryAfter = retry
			case r[0] == 2:
				vs[i].Full = true
			default:
				err = fmt.Errorf("%w: %v", errBadReply, r)
			}
		}
		if err != nil {
			c, f := s.names(keys[i])
			s.logUnusable(c, f, err)
			s.c.Fallback("throttle")
			s.release(keys, placed, id)
			return "", nil, err
		}
		all = all && placed[i]
	}
	if !all {
		s.release(keys, placed, id)
		return "", vs, nil
	}
	return id, vs, nil
}

// release gives back the places of id in the keys placed; a failure
// leaves them to expire.
func (s *ThrottleStore) release(keys []auth.StoreKey, placed []bool, id string) {
	if !slices.Contains(placed, true) {
		return
	}
	ctx, cancel := s.c.ctx()
	defer cancel()
	s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			if placed[i] {
				_, f := s.names(k)
				p.ZRem(ctx, f, id)
			}
		}
		return nil
	})
}

// End implements auth.ThrottleStore.
func (s *ThrottleStore) End(ctx context.Context, now time.Time, window time.Duration, keys []auth.StoreKey, id string, r auth.AttemptResult) error {
	result := "a"
	switch r {
	case auth.AttemptFailed:
		result = "f"
	case auth.AttemptSucceeded:
		result = "s"
	}
	_, err := s.run(ctx, endScript, window, keys, func(i int) []any {
		from := ""
		if keys[i].From != "" {
			from = s.c.hashName("throttle from", keys[i].From)
		}
		return []any{now.UnixMilli(), window.Milliseconds(), keys[i].Limit, id, result, from}
	})
	return err
}
