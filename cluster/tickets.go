package cluster

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TicketPoll is how often a replica reads the shared ticket keys again
// (at its next handshake after that), so that the fleet converges within
// a few seconds of a Redis restart or of a replica's first key.
const TicketPoll = 5 * time.Second

// TicketKeys is a tlsconf.TicketKeySource shared by the fleet through
// Redis. Time is cut into epochs of one rotation period; the key of epoch
// n lives at <prefix>{tickets:<rotation seconds>}:<n>, sealed, and expires
// with its lifetime. The first replica to need it creates it (SET NX, so
// that one wins and every replica reads the winner's), and every replica
// seals with the current epoch's key and opens with every epoch's still
// accepted. Replicas must share the rotation period, or they use
// different keys (the period is in the key names, so they do not clash).
//
// When Redis does not answer, or an entry does not open, the keys already
// held stay and a key made here seals new tickets: logins and resumption
// on this replica keep working, and the fleet converges again once Redis
// answers. A key this replica used and the fleet no longer has (made
// while Redis was down, or lost with a Redis restart) stays accepted here
// for its lifetime, so that its tickets still resume where they were
// issued.
type TicketKeys struct {
	c                  *Cluster
	rotation, lifetime time.Duration
	poll               time.Duration

	mu      sync.Mutex
	shared  map[int64][32]byte // epoch → key read from Redis
	own     []heldKey          // keys held outside the shared set, newest first
	refused map[string]bool    // entries refused and logged
}

type heldKey struct {
	key  [32]byte
	made time.Time
}

// NewTicketKeys returns the shared key source for periods that pass
// tlsconf.CheckTicketPeriods.
func (c *Cluster) NewTicketKeys(rotation, lifetime time.Duration) *TicketKeys {
	return &TicketKeys{c: c, rotation: rotation, lifetime: lifetime, poll: min(TicketPoll, rotation),
		shared: map[int64][32]byte{}, refused: map[string]bool{}}
}

func (t *TicketKeys) name(epoch int64) string {
	// The braces are a Redis Cluster hash tag: one MGET reads them all.
	return t.c.key("{tickets:" + strconv.FormatInt(int64(t.rotation/time.Second), 10) + "}:" + strconv.FormatInt(epoch, 10))
}

// TicketKeys implements tlsconf.TicketKeySource. Without Redis it answers
// with the keys held (and one made here if it holds none for now).
func (t *TicketKeys) TicketKeys(now time.Time) ([][32]byte, time.Time, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rot := int64(t.rotation)
	cur := now.UnixNano() / rot
	start := func(e int64) time.Time { return time.Unix(0, e*rot) }
	var epochs []int64 // accepted at now, newest first
	for e := cur; now.Sub(start(e)) < t.lifetime; e-- {
		epochs = append(epochs, e)
	}

	if fresh, ok := t.fetch(cur, epochs); ok {
		// A key the fleet replaced or lost stays accepted here.
		for e, k := range t.shared {
			if f, have := fresh[e]; !have || f != k {
				t.own = append(t.own, heldKey{key: k, made: start(e)})
			}
		}
		t.shared = fresh
	}
	t.own = slices.DeleteFunc(t.own, func(k heldKey) bool { return now.Sub(k.made) >= t.lifetime })
	for e := range t.shared {
		if now.Sub(start(e)) >= t.lifetime {
			delete(t.shared, e)
		}
	}
	slices.SortFunc(t.own, func(a, b heldKey) int { return b.made.Compare(a.made) })

	var keys [][32]byte
	if k, have := t.shared[cur]; have {
		keys = append(keys, k)
	} else {
		if len(t.own) == 0 || now.Sub(t.own[0].made) >= t.rotation {
			k := heldKey{made: now}
			if _, err := rand.Read(k.key[:]); err != nil {
				return nil, time.Time{}, fmt.Errorf("making a key: %w", err)
			}
			t.own = append([]heldKey{k}, t.own...)
		}
		keys = append(keys, t.own[0].key)
	}
	for _, e := range epochs {
		if k, have := t.shared[e]; have && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, k := range t.own {
		if !slices.Contains(keys, k.key) {
			keys = append(keys, k.key)
		}
	}
	if len(keys) > 32 { // tlsconf.MaxTicketKeys; the oldest go first
		keys = keys[:32]
	}
	return keys, now.Add(t.poll), nil
}

// fetch makes sure the current epoch's key exists and reads the accepted
// ones; false if Redis failed.
func (t *TicketKeys) fetch(cur int64, epochs []int64) (map[int64][32]byte, bool) {
	ctx, cancel := t.c.ctx()
	defer cancel()
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, false
	}
	name := t.name(cur)
	sealed := t.c.seal(name, k[:])
	clear(k[:])
	// It expires when no ticket it sealed is accepted any more.
	ttl := time.Until(time.Unix(0, cur*int64(t.rotation)).Add(t.lifetime)) + time.Minute
	ttl = min(max(ttl, time.Minute), t.lifetime+time.Minute)
	names := make([]string, len(epochs))
	for i, e := range epochs {
		names[i] = t.name(e)
	}
	var get *redis.SliceCmd
	_, err := t.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SetArgs(ctx, name, sealed, redis.SetArgs{Mode: "NX", TTL: ttl})
		get = p.MGet(ctx, names...)
		return nil
	})
	if err == redis.Nil { // the SET NX of a key that exists
		err = get.Err()
	}
	t.c.done(err)
	if err != nil {
		t.c.Fallback("tickets")
		return nil, false
	}
	fresh := make(map[int64][32]byte, len(epochs))
	for i, v := range get.Val() {
		s, isStr := v.(string)
		if !isStr {
			continue // expired, or never made
		}
		plain, err := t.c.open(names[i], []byte(s))
		if err == nil && len(plain) != 32 {
			err = fmt.Errorf("the entry holds %d bytes, not a 32-byte key", len(plain))
		}
		if err != nil {
			if !t.refused[names[i]+s] {
				if len(t.refused) >= 64 {
					clear(t.refused)
				}
				t.refused[names[i]+s] = true
				t.c.log.Error("cluster: a session ticket key in Redis is refused and not used; this replica seals tickets with a key of its own meanwhile", "node", t.c.node, "key", names[i], "err", err)
			}
			continue
		}
		var k [32]byte
		copy(k[:], plain)
		clear(plain)
		fresh[epochs[i]] = k
	}
	return fresh, true
}
