package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Cache remembers the answers of a [Router] (an auth_http service, say) so
// that a burst of logins does not reach it each time.
//
// The key is the user name as sent, the SASL authorization identity, the
// listener name, whether the client used TLS, and an HMAC-SHA256 of the
// password under a key drawn at random for each Cache: a cached success
// never lets a different password in, and the cache holds no password nor
// anything from which one could be checked offline once the process is
// gone. The client's address and the attempt number are not in the key: a
// service whose answer depends on Client-IP (or Auth-Login-Attempt) must be
// used without a Cache (cache_ttl = 0), or one client's answer is given to
// another.
//
// A Decision whose Password is the client's own is stored without it and
// filled from the request on a hit. A rewritten password (a master password
// from auth_http's Auth-Pass) has to be stored to be of use: it is kept in
// memory for the TTL, like the service's other answers.
//
// Successes are kept for ttl, refusals (*[DeniedError]) and [ErrNoRoute]
// for negativeTTL, usually shorter; other errors (the service is down) are
// never cached. A ttl or negativeTTL <= 0 disables that half; a size <= 0
// disables both. Each half holds at most size entries, evicting the least
// recently used.
//
// A Cache starts no goroutine and needs no Close to free its memory
// ([Cache.Close] is for a [Chain], which closes its sources): an answer
// past its TTL is dropped when it is next looked up, or when it is the
// least recently used as a new answer comes in, and size bounds the memory
// of those not looked up again. It is garbage like any value once unreferenced, so a
// configuration reload may make a new one each time. It is safe for
// concurrent use.
type Cache struct {
	r      Router
	key    []byte
	now    func() time.Time
	mu     sync.Mutex // guards pos and neg; never held while r answers
	pos    *ttlLRU[cachedDecision]
	neg    *ttlLRU[cachedDenial]
	hits   atomic.Int64
	misses atomic.Int64
}

type cachedDecision struct {
	d          Decision
	clientPass bool // d.Password was the client's and is not stored
}

type cachedDenial struct {
	denied  *DeniedError // nil: ErrNoRoute
	noRoute bool
}

// ttlLRU is an LRU whose entries expire ttl after they were added. It
// starts no goroutine: expired entries are removed where they are met (by
// get, and at the least recently used end by add), not by a timer.
// golang-lru's expirable.LRU runs a cleanup goroutine that nothing stops
// (v2.0.7 has no Close), two per Cache, which every configuration reload
// leaked. A ttlLRU is not safe for concurrent use.
type ttlLRU[V any] struct {
	ttl time.Duration
	lru *simplelru.LRU[string, expiring[V]]
}

type expiring[V any] struct {
	v       V
	expires time.Time
}

func newTTLLRU[V any](size int, ttl time.Duration) *ttlLRU[V] {
	lru, _ := simplelru.NewLRU[string, expiring[V]](size, nil) // err only for size <= 0
	return &ttlLRU[V]{ttl: ttl, lru: lru}
}

// get returns key's value unless it is missing or expired at now (past
// its add plus ttl); an expired one is removed. A hit does not extend the
// TTL.
func (c *ttlLRU[V]) get(key string, now time.Time) (V, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		var zero V
		return zero, false
	}
	if now.After(e.expires) {
		c.lru.Remove(key)
		var zero V
		return zero, false
	}
	return e.v, true
}

// add stores v under key until now+ttl, first dropping expired entries
// from the least recently used end.
func (c *ttlLRU[V]) add(key string, v V, now time.Time) {
	for {
		_, e, ok := c.lru.GetOldest()
		if !ok || !now.After(e.expires) {
			break
		}
		c.lru.RemoveOldest()
	}
	c.lru.Add(key, expiring[V]{v: v, expires: now.Add(c.ttl)})
}

// addUntil stores v under key until expires, whatever the ttl.
func (c *ttlLRU[V]) addUntil(key string, v V, now, expires time.Time) {
	c.add(key, v, now)
	c.lru.Add(key, expiring[V]{v: v, expires: expires})
}

// NewCache returns a Cache in front of r. now is the clock (nil:
// time.Now).
func NewCache(r Router, size int, ttl, negativeTTL time.Duration, now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	c := &Cache{r: r, key: make([]byte, 32), now: now}
	if _, err := rand.Read(c.key); err != nil {
		panic("auth: no randomness for the cache key: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	if size > 0 && ttl > 0 {
		c.pos = newTTLLRU[cachedDecision](size, ttl)
	}
	if size > 0 && negativeTTL > 0 {
		c.neg = newTTLLRU[cachedDenial](size, negativeTTL)
	}
	return c
}

// Hits returns how many Routes were answered from the cache.
func (c *Cache) Hits() int64 { return c.hits.Load() }

// Misses returns how many Routes asked the wrapped Router.
func (c *Cache) Misses() int64 { return c.misses.Load() }

// Len returns the number of cached answers, successes and refusals,
// counting expired ones not dropped yet.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	if c.pos != nil {
		n += c.pos.lru.Len()
	}
	if c.neg != nil {
		n += c.neg.lru.Len()
	}
	return n
}

// Lookup implements [Source] for a Cache in front of one (an [HTTP]): it
// is the wrapped source's Lookup, not cached. In front of another Router,
// it says that router would decide.
func (c *Cache) Lookup(ctx context.Context, user string) (backend, rule string, found bool, err error) {
	if s, ok := c.r.(Source); ok {
		return s.Lookup(ctx, user)
	}
	return "", "would ask the lookup service, which decides", true, nil
}

// IgnoresDomain implements [DomainBlind] for the wrapped source.
func (c *Cache) IgnoresDomain() bool {
	db, ok := c.r.(DomainBlind)
	return ok && db.IgnoresDomain()
}

// Decide implements [Decider]: it is Route.
func (c *Cache) Decide(ctx context.Context, req *Request) (Decision, error) { return c.Route(ctx, req) }

// Close implements [Source]: it forgets every cached answer and closes the
// wrapped Router when that is an [io.Closer] (an [HTTP]). The Cache still
// answers after Close, starting over empty.
func (c *Cache) Close() error {
	c.Purge()
	if cl, ok := c.r.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// Purge forgets every cached answer (after a configuration reload, say).
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pos != nil {
		c.pos.lru.Purge()
	}
	if c.neg != nil {
		c.neg.lru.Purge()
	}
}

func (c *Cache) cacheKey(req *Request) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(req.Password))
	sum := m.Sum(nil)
	// Lengths first, so that no two different tuples make one key.
	b := make([]byte, 0, 24+len(req.User)+len(req.AuthzID)+len(req.Listener)+len(sum))
	b = strconv.AppendInt(b, int64(len(req.User)), 10)
	b = append(b, ':')
	b = append(b, req.User...)
	b = strconv.AppendInt(b, int64(len(req.AuthzID)), 10)
	b = append(b, ':')
	b = append(b, req.AuthzID...)
	b = strconv.AppendInt(b, int64(len(req.Listener)), 10)
	b = append(b, ':')
	b = append(b, req.Listener...)
	if req.TLS {
		b = append(b, 'T')
	} else {
		b = append(b, 'P')
	}
	b = append(b, sum...)
	return string(b)
}

// Route implements [Router].
func (c *Cache) Route(ctx context.Context, req *Request) (Decision, error) {
	if c.pos == nil && c.neg == nil {
		c.misses.Add(1)
		return c.r.Route(ctx, req)
	}
	key := c.cacheKey(req)
	if d, ok, err := c.lookup(key, req); ok {
		c.hits.Add(1)
		return d, err
	}
	c.misses.Add(1)
	d, err := c.r.Route(ctx, req)
	c.store(key, req, d, err)
	return d, err
}

// lookup returns the cached answer for key; ok is false on a miss.
func (c *Cache) lookup(key string, req *Request) (d Decision, ok bool, err error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pos != nil {
		if e, ok := c.pos.get(key, now); ok {
			d := e.d
			if e.clientPass {
				d.Password = req.Password
			}
			return d, true, nil
		}
	}
	if c.neg != nil {
		if e, ok := c.neg.get(key, now); ok {
			if e.noRoute {
				return Decision{}, true, ErrNoRoute
			}
			de := *e.denied    // a copy: callers may not share one
			de.Checked = false // answered at once, nothing checked
			return Decision{}, true, &de
		}
	}
	return Decision{}, false, nil
}

// store caches the wrapped Router's answer d, err to req, if it is one
// that is cached.
func (c *Cache) store(key string, req *Request, d Decision, err error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var de *DeniedError
	switch {
	case err == nil:
		if c.pos != nil {
			e := cachedDecision{d: d}
			if d.Password == req.Password {
				e.d.Password, e.clientPass = "", true
			}
			c.pos.add(key, e, now)
		}
	case errors.Is(err, ErrNoRoute):
		if c.neg != nil {
			c.neg.add(key, cachedDenial{noRoute: true}, now)
		}
	case errors.As(err, &de):
		if c.neg != nil {
			cp := *de
			c.neg.add(key, cachedDenial{denied: &cp}, now)
		}
	}
}
