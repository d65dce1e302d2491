package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"
)

// ACME on Redis. The fleet shares autocert's cache (ACMECache): the
// account key, every certificate with its private key, and the challenge
// answers autocert stores there while an order runs ("<token>+http-01"
// for HTTP-01, "<name>+token" for the TLS-ALPN-01 certificate), so that
// whichever replica the CA reaches answers, and a certificate one replica
// obtained is served by all. A lock per name (ACMELocks) makes one
// replica the one that orders or renews it; the others wait for the
// cache. Both sit behind tlsconf.ACMEConfig.Cache and OrderLock.

// maxACMEEntry bounds an entry read from Redis (sealed): autocert's
// entries are a few KiB; the cache directory allows 1 MiB.
const maxACMEEntry = 1<<20 + 64

// acmeTokenTTL bounds how long a challenge answer stays in Redis should
// the replica that stored it die before autocert deletes it.
const acmeTokenTTL = time.Hour

// acmePause is how long after Redis failed an ACME operation the next
// ones skip it and fail at once: during an outage, handshakes for names a
// replica has not loaded do not each wait for the dial timeout.
const acmePause = 2 * time.Second

// pause remembers a recent failure of Redis.
type pause struct {
	mu    sync.Mutex
	until time.Time
	err   error
}

// recent returns the failure if it is recent enough to skip Redis.
func (p *pause) recent() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Now().Before(p.until) {
		return p.err
	}
	return nil
}

// failed records a failure (nil: a success).
func (p *pause) failed(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.until, p.err = time.Time{}, nil
		return
	}
	p.until, p.err = time.Now().Add(acmePause), err
}

// isToken reports whether an autocert cache key holds a challenge answer.
func isToken(key string) bool {
	return strings.HasSuffix(key, "+http-01") || strings.HasSuffix(key, "+token")
}

// ACMECache is an autocert.Cache shared by the fleet through Redis; every
// value is sealed under <prefix>acme:<autocert's key>.
//
// While Redis answers it is the truth: an entry it does not hold is a
// miss, and one that does not open (sealed with another key_file,
// corrupted, too big, of another Redis type) is an error, never a miss:
// autocert orders a certificate only on a miss, so a replica with the
// wrong key_file neither serves nor replaces the fleet's certificates.
// Such an entry is logged once (ERROR, with its Redis key).
//
// The account key and the certificates are also kept in the local cache
// (tls.acme.cache_dir): written through, and refreshed when read from
// Redis. The local copy is read only when Redis does not answer: a
// replica restarted during an outage still serves the certificates it
// had. Challenge answers live in Redis only.
type ACMECache struct {
	c     *Cluster
	local autocert.Cache // nil: no local copy
	// valid checks a local copy for a key Redis does not hold (as
	// autocert would load it); nil: a miss in Redis is a miss.
	valid func(key string, data []byte) error
	pause pause

	mu      sync.Mutex
	refused refusals // entries refused and logged, by key and digest
}

// ACMECache returns the fleet's ACME cache (an *ACMECache), with local (may
// be nil) as the copy that serves while Redis is down: it is a
// tlsconf.ACMEConfig.Cache.
func (c *Cluster) ACMECache(local autocert.Cache) autocert.Cache {
	return c.ACMECacheRestoring(local, nil)
}

// ACMECacheRestoring is ACMECache whose local copy also stands in for an
// account key or certificate missing from Redis (deleted, or lost with
// a Redis without persistence) when valid accepts it: the copy is
// written back to Redis and returned, instead of the miss that makes
// autocert order again (every replica, each time the key is deleted,
// until the CA's duplicate-certificate limit). valid is autocert's own
// check of a cache entry (tlsconf.ValidCacheEntry); an expired or broken
// copy stays a miss.
func (c *Cluster) ACMECacheRestoring(local autocert.Cache, valid func(key string, data []byte) error) autocert.Cache {
	return &ACMECache{c: c, local: local, valid: valid, refused: map[string]bool{}}
}

func (a *ACMECache) name(key string) string { return a.c.key("acme:" + key) }

// errACMEUnreachable is the error of a read that Redis did not answer and
// that the local copy cannot serve: not a miss, so that autocert orders
// nothing.
type errACMEUnreachable struct{ err error }

func (e *errACMEUnreachable) Error() string {
	return "cluster: Redis is unreachable, and the local cache holds no copy: " + e.err.Error()
}

func (e *errACMEUnreachable) Unwrap() error { return e.err }

// RefusedError is an entry in Redis that does not open or is not one
// autocert could have written; Key is its Redis key.
type RefusedError struct {
	Key string
	Err error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("cluster: the ACME cache entry %s in Redis is refused: %v", e.Key, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// replyError reports whether err is an error Redis answered with (a wrong
// type, a script error), as opposed to Redis not answering.
func replyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// Get implements autocert.Cache.
func (a *ACMECache) Get(ctx context.Context, key string) ([]byte, error) {
	name := a.name(key)
	val, err := "", a.pause.recent()
	if err == nil {
		rctx, cancel := bounded(ctx, a.c)
		// GETRANGE reads at most maxACMEEntry+1 bytes, whatever Redis
		// holds; a missing key reads as "".
		val, err = a.c.client.GetRange(rctx, name, 0, maxACMEEntry).Result()
		cancel()
		if replyError(err) {
			a.c.done(nil)
			return nil, a.refuse(name, "", err)
		}
		a.c.done(err)
		a.pause.failed(err)
	}
	if err != nil {
		a.c.Fallback("acme")
		if a.local != nil && !isToken(key) {
			if data, lerr := a.local.Get(ctx, key); lerr == nil {
				return data, nil
			}
		}
		return nil, &errACMEUnreachable{err}
	}
	if val == "" {
		if data, ok := a.restore(ctx, key, name); ok {
			return data, nil
		}
		return nil, autocert.ErrCacheMiss
	}
	if len(val) > maxACMEEntry {
		return nil, a.refuse(name, val, fmt.Errorf("the entry is over %d bytes", maxACMEEntry))
	}
	plain, err := a.c.open(name, []byte(val))
	if err != nil {
		return nil, a.refuse(name, val, err)
	}
	a.keepLocal(ctx, key, plain)
	return plain, nil
}

// restore writes the local copy of key back to Redis (name), where it is
// missing, when the copy is one autocert would load, and returns it. The
// write is SET NX: an entry another replica stored meanwhile is kept
// (this replica's copy is as good for now, and the next read has the
// other). A replica whose key_file differs from the fleet's seals what
// it writes back with its own: the others refuse that entry (logged, as
// any entry that does not open) and order nothing for it.
func (a *ACMECache) restore(ctx context.Context, key, name string) ([]byte, bool) {
	if a.local == nil || a.valid == nil || isToken(key) {
		return nil, false
	}
	data, err := a.local.Get(ctx, key)
	if err != nil || len(data) > maxACMEEntry-64 {
		return nil, false
	}
	if err := a.valid(key, data); err != nil {
		return nil, false
	}
	rctx, cancel := bounded(ctx, a.c)
	err = a.c.client.SetNX(rctx, name, a.c.seal(name, data), 0).Err()
	cancel()
	a.c.done(err)
	a.pause.failed(err)
	if err != nil {
		a.c.Fallback("acme")
	}
	a.c.log.Warn("cluster: an ACME cache entry was missing from Redis (deleted, or Redis lost its data); "+
		"the valid local copy is served and written back instead of ordering again", "key", name, "write_err", err)
	return data, true
}

// keepLocal makes the local copy of key hold data, which Redis holds: a
// certificate another replica obtained is served from the copy too when
// this one restarts while Redis is down.
func (a *ACMECache) keepLocal(ctx context.Context, key string, data []byte) {
	if a.local == nil || isToken(key) {
		return
	}
	if old, err := a.local.Get(ctx, key); err == nil && bytes.Equal(old, data) {
		return
	}
	if err := a.local.Put(ctx, key, data); err != nil {
		a.c.log.Warn("cluster: the local copy of an ACME cache entry could not be written; it serves while Redis is down",
			"key", key, "err", err)
	}
}

// refuse logs a refused entry once and returns the error.
func (a *ACMECache) refuse(name, val string, err error) error {
	sum := sha256.Sum256([]byte(val))
	id := name + " " + hex.EncodeToString(sum[:8])
	a.mu.Lock()
	first := a.refused.first(id, 256)
	a.mu.Unlock()
	if first {
		a.c.log.Error("cluster: an ACME cache entry in Redis is refused: it is neither served nor replaced by a new order "+
			"(check that every replica has the same cluster.key_file; delete the key in Redis to have the certificate ordered anew)",
			"key", name, "err", err)
	}
	return &RefusedError{Key: name, Err: err}
}

// Put implements autocert.Cache. A certificate or the account key is
// also written to the local copy, even when Redis fails.
func (a *ACMECache) Put(ctx context.Context, key string, data []byte) error {
	name := a.name(key)
	var lerr error
	if a.local != nil && !isToken(key) {
		lerr = a.local.Put(ctx, key, data)
	}
	var ttl time.Duration
	if isToken(key) {
		ttl = acmeTokenTTL
	}
	err := a.pause.recent()
	if err == nil {
		rctx, cancel := bounded(ctx, a.c)
		err = a.c.client.Set(rctx, name, a.c.seal(name, data), ttl).Err()
		cancel()
		a.c.done(err)
		a.pause.failed(err)
	}
	if err != nil {
		a.c.Fallback("acme")
		return fmt.Errorf("cluster: store %s in Redis: %w", name, err)
	}
	return lerr
}

// Delete implements autocert.Cache.
func (a *ACMECache) Delete(ctx context.Context, key string) error {
	name := a.name(key)
	var lerr error
	if a.local != nil && !isToken(key) {
		lerr = a.local.Delete(ctx, key)
	}
	err := a.pause.recent()
	if err == nil {
		rctx, cancel := bounded(ctx, a.c)
		err = a.c.client.Del(rctx, name).Err()
		cancel()
		a.c.done(err)
		a.pause.failed(err)
	}
	if err != nil {
		return fmt.Errorf("cluster: delete %s in Redis: %w", name, err)
	}
	return lerr
}

// bounded is ctx bounded as one operation of c.
func bounded(ctx context.Context, c *Cluster) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, dialTimeout+2*ioTimeout)
}

// Lock times: a lock is taken for lockTTL and extended every lockExtend
// while its order runs, so that a replica that dies holding it blocks the
// name for lockTTL at most.
const (
	lockTTL    = time.Minute
	lockExtend = lockTTL / 4
)

// ACMELocks is a tlsconf.OrderLock shared by the fleet: the lock of a
// name is <prefix>acme-lock:<name>, taken (SET PX, in a script that reads
// the key first) with the node's name and a random token, extended while
// held, and released by compare-and-delete, so that a replica never
// releases a lock that expired and that another one took since. A
// replica whose order failed leaves "failed <node>" in its place for the
// back-off: the fleet places no order for the name meanwhile.
//
// When Redis does not answer, no lock is taken: orders and renewals wait
// (logged once per outage, counted as fallbacks of "acme"), certificates
// already loaded keep being served.
type ACMELocks struct {
	c          *Cluster
	ttl, every time.Duration
	pause      pause

	mu      sync.Mutex
	waiting bool     // an outage has been logged
	refused refusals // lock keys refused and logged
}

// ACMELocks returns the fleet's ACME order locks.
func (c *Cluster) ACMELocks() *ACMELocks {
	return &ACMELocks{c: c, ttl: lockTTL, every: lockExtend, refused: map[string]bool{}}
}

// The lock scripts, one key each. lockScript returns {1, 0} when it took
// the lock, {2, ms} while a failed order's back-off holds it, {0, 0} when
// another replica holds it. A lock that expires later than a replica's
// lock (ARGV[2]) or back-off (ARGV[3]) can last, or never, is no
// replica's (whoever can write to Redis, without key_file): it is made
// to expire within that, so that it cannot hold the name's renewals
// until the certificate expires.
var (
	lockScript = redis.NewScript(`local v = redis.call("GET", KEYS[1])
if not v then
	redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
	return {1, 0}
end
local failed = string.sub(v, 1, 7) == "failed "
local most = tonumber(ARGV[2])
if failed then most = tonumber(ARGV[3]) end
local ttl = redis.call("PTTL", KEYS[1])
if ttl < 0 or ttl > most then
	redis.call("PEXPIRE", KEYS[1], most)
	ttl = most
end
if failed then return {2, ttl} end
return {0, 0}`)
	unlockScript = redis.NewScript(`if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
	redis.call("SET", KEYS[1], ARGV[3], "PX", ARGV[2])
	return 1
end
return redis.call("DEL", KEYS[1])`)
	extendScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
)

// maxLockBackoff bounds the back-off a failed order leaves in the lock.
const maxLockBackoff = 24 * time.Hour

// TryLock implements tlsconf.OrderLock.
func (l *ACMELocks) TryLock(name string) (release func(backoff time.Duration), held bool, until time.Time, err error) {
	key := l.c.key("acme-lock:" + name)
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, false, time.Time{}, err
	}
	val := "order " + l.c.node + " " + hex.EncodeToString(tok)
	var res []int64
	err = l.pause.recent()
	if err == nil {
		ctx, cancel := l.c.ctx()
		res, err = lockScript.Run(ctx, l.c.client, []string{key}, val, l.ttl.Milliseconds(), maxLockBackoff.Milliseconds()).Int64Slice()
		cancel()
		if replyError(err) || err == nil && len(res) != 2 {
			// Redis answered, with something else than the script's.
			l.c.done(nil)
			l.refuse(key, err)
			return nil, false, time.Time{}, fmt.Errorf("cluster: Redis refused the ACME order lock %s (logged once at ERROR, with what to do): %v", key, err)
		}
		l.c.done(err)
		l.pause.failed(err)
	}
	l.mu.Lock()
	if err != nil {
		l.c.Fallback("acme")
		if !l.waiting {
			l.waiting = true
			l.c.log.Warn("cluster: Redis is unreachable: no ACME certificate is ordered or renewed until it is back; the certificates already loaded are served",
				"err", err)
		}
		l.mu.Unlock()
		return nil, false, time.Time{}, fmt.Errorf("cluster: Redis did not answer: %w", err)
	}
	l.waiting = false
	l.mu.Unlock()
	switch res[0] {
	case 1:
	case 2:
		if ms := min(time.Duration(res[1])*time.Millisecond, maxLockBackoff); ms > 0 {
			return nil, false, time.Now().Add(ms), nil
		}
		return nil, false, time.Time{}, nil
	default:
		return nil, false, time.Time{}, nil
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go l.keep(key, val, stop, done)
	var once sync.Once
	return func(backoff time.Duration) {
		once.Do(func() {
			close(stop)
			<-done
			backoff = min(backoff, maxLockBackoff)
			ctx, cancel := l.c.ctx()
			defer cancel()
			err := unlockScript.Run(ctx, l.c.client, []string{key}, val, backoff.Milliseconds(), "failed "+l.c.node).Err()
			l.c.done(err)
			if err != nil && !errors.Is(err, redis.Nil) {
				l.c.log.Warn("cluster: an ACME order lock could not be released; it expires on its own",
					"key", key, "expires_within", l.ttl.String(), "err", err)
			}
		})
	}, true, time.Time{}, nil
}

// refuse logs, once per key, a lock key Redis answered oddly for (not a
// string, a script error), or once a Redis user without the right to run
// scripts.
func (l *ACMELocks) refuse(key string, err error) {
	id := key
	if err != nil && strings.HasPrefix(err.Error(), "NOPERM") {
		id = "NOPERM" // one line, whatever the name
	}
	l.mu.Lock()
	first := l.refused.first(id, 256)
	l.mu.Unlock()
	switch {
	case !first:
	case err != nil && strings.HasPrefix(err.Error(), "NOPERM"):
		l.c.log.Error("cluster: the Redis user may not run the ACME order lock's script: no ACME certificate is ordered or renewed; grant it +@scripting (docs/fleet.md)",
			"key", key, "err", err)
	default:
		l.c.log.Error("cluster: an ACME order lock in Redis is refused: no order is placed for the name until it is gone (delete the key)",
			"key", key, "err", err)
	}
}

// keep extends the lock until stop is closed.
func (l *ACMELocks) keep(key, val string, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(l.every)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := l.c.ctx()
		n, err := extendScript.Run(ctx, l.c.client, []string{key}, val, l.ttl.Milliseconds()).Int64()
		cancel()
		l.c.done(err)
		if (err != nil || n == 0) && !warned {
			warned = true
			l.c.log.Warn("cluster: an ACME order lock could not be extended; if it expires, another replica may order the same name",
				"key", key, "err", err)
		}
	}
}
