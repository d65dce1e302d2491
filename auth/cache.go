package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
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
type Cache struct {
	r      Router
	key    []byte
	pos    *expirable.LRU[string, cachedDecision]
	neg    *expirable.LRU[string, cachedDenial]
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

// NewCache returns a Cache in front of r. Note that each half with a TTL
// starts a goroutine of golang-lru's that runs for the life of the process:
// make one Cache per router, not one per request.
func NewCache(r Router, size int, ttl, negativeTTL time.Duration) *Cache {
	c := &Cache{r: r, key: make([]byte, 32)}
	if _, err := rand.Read(c.key); err != nil {
		panic("auth: no randomness for the cache key: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	if size > 0 && ttl > 0 {
		c.pos = expirable.NewLRU[string, cachedDecision](size, nil, ttl)
	}
	if size > 0 && negativeTTL > 0 {
		c.neg = expirable.NewLRU[string, cachedDenial](size, nil, negativeTTL)
	}
	return c
}

// Hits returns how many Routes were answered from the cache.
func (c *Cache) Hits() int64 { return c.hits.Load() }

// Misses returns how many Routes asked the wrapped Router.
func (c *Cache) Misses() int64 { return c.misses.Load() }

// Len returns the number of cached answers, successes and refusals.
func (c *Cache) Len() int {
	n := 0
	if c.pos != nil {
		n += c.pos.Len()
	}
	if c.neg != nil {
		n += c.neg.Len()
	}
	return n
}

// Purge forgets every cached answer (after a configuration reload, say).
func (c *Cache) Purge() {
	if c.pos != nil {
		c.pos.Purge()
	}
	if c.neg != nil {
		c.neg.Purge()
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
	if c.pos != nil {
		if e, ok := c.pos.Get(key); ok {
			c.hits.Add(1)
			d := e.d
			if e.clientPass {
				d.Password = req.Password
			}
			return d, nil
		}
	}
	if c.neg != nil {
		if e, ok := c.neg.Get(key); ok {
			c.hits.Add(1)
			if e.noRoute {
				return Decision{}, ErrNoRoute
			}
			de := *e.denied // a copy: callers may not share one
			return Decision{}, &de
		}
	}
	c.misses.Add(1)
	d, err := c.r.Route(ctx, req)
	var de *DeniedError
	switch {
	case err == nil:
		if c.pos != nil {
			e := cachedDecision{d: d}
			if d.Password == req.Password {
				e.d.Password, e.clientPass = "", true
			}
			c.pos.Add(key, e)
		}
	case errors.Is(err, ErrNoRoute):
		if c.neg != nil {
			c.neg.Add(key, cachedDenial{noRoute: true})
		}
	case errors.As(err, &de):
		if c.neg != nil {
			cp := *de
			c.neg.Add(key, cachedDenial{denied: &cp})
		}
	}
	return d, err
}
