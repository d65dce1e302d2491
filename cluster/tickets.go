package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TicketPoll is how often a replica's refresher reads the shared ticket
// keys again, so that the fleet converges within a few seconds of a Redis
// restart or of a replica's first key.
const TicketPoll = 5 * time.Second

// maxTicketKeys is tlsconf.MaxTicketKeys: no more keys are accepted at
// once.
const maxTicketKeys = 32

// ticketPickup is how long after the refresher's next run the keyring
// asks for the keys again: the run, on a Redis that answers, is done by
// then, and its keys are in the next handshakes.
const ticketPickup = 50 * time.Millisecond

// TicketKeys is a tlsconf.TicketKeySource shared by the fleet through
// Redis. Time is cut into epochs of one rotation period; the key of epoch
// n lives at <prefix>{tickets:<rotation seconds>}:<n>, sealed, and expires
// with its lifetime. A refresher in the background (one per TicketKeys,
// until [Cluster.Close]) reads the keys of the epochs still accepted and
// of the next one every TicketPoll; when the current or the next epoch's
// is missing it creates it (SET NX, so that one replica wins and every
// replica reads the winner's). The next epoch's key is so made one
// rotation ahead, and every replica holds it when its epoch begins.
// Handshakes only read what the refresher holds: none ever waits for
// Redis. Each replica seals with the current epoch's key and opens with
// every epoch's still accepted (and the next one's, for a replica whose
// clock runs a little ahead). Replicas must share the rotation period,
// or they use different keys (the period is in the key names, so they do
// not clash).
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
	refused refusals           // entries refused and logged
	next    time.Time          // when the refresher runs next
}

type heldKey struct {
	key  [32]byte
	made time.Time
}

// NewTicketKeys returns the shared key source for periods that pass
// tlsconf.CheckTicketPeriods. It reads Redis once before it returns (at
// most about a second and a half when Redis does not answer), and then
// in the background until c is closed.
func (c *Cluster) NewTicketKeys(rotation, lifetime time.Duration) *TicketKeys {
	return c.newTicketKeys(rotation, lifetime, min(TicketPoll, rotation))
}

func (c *Cluster) newTicketKeys(rotation, lifetime, poll time.Duration) *TicketKeys {
	t := &TicketKeys{c: c, rotation: rotation, lifetime: lifetime, poll: poll,
		shared: map[int64][32]byte{}, refused: map[string]bool{}}
	t.refresh(time.Now())
	c.background(t.run)
	return t
}

// run refreshes the keys every poll period until ctx ends.
func (t *TicketKeys) run(ctx context.Context) {
	timer := time.NewTimer(t.poll)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		t.refresh(time.Now())
		timer.Reset(t.poll)
	}
}

// refresh reads the shared keys at now and merges them into those held.
func (t *TicketKeys) refresh(now time.Time) {
	cur := t.epoch(now)
	fresh, ok := t.fetch(cur, append([]int64{cur + 1}, t.accepted(now)...))
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next = time.Now().Add(t.poll)
	if !ok {
		return
	}
	// A key the fleet replaced or lost stays accepted here, once: whoever
	// can write to Redis could replace the entries, or take one away
	// and put it back, at every run.
	for e, k := range t.shared {
		if f, have := fresh[e]; (!have || f != k) && !slices.ContainsFunc(t.own, func(h heldKey) bool { return h.key == k }) {
			t.own = append(t.own, heldKey{key: k, made: t.start(e)})
		}
	}
	// The newest maxTicketKeys only: TicketKeys never gives more.
	slices.SortFunc(t.own, func(a, b heldKey) int { return b.made.Compare(a.made) })
	if len(t.own) > maxTicketKeys {
		clear(t.own[maxTicketKeys:])
		t.own = t.own[:maxTicketKeys]
	}
	t.shared = fresh
}

func (t *TicketKeys) name(epoch int64) string {
	// The braces are a Redis Cluster hash tag: one pipeline to one node
	// reads them all.
	return t.c.key("{tickets:" + strconv.FormatInt(int64(t.rotation/time.Second), 10) + "}:" + strconv.FormatInt(epoch, 10))
}

func (t *TicketKeys) epoch(now time.Time) int64 { return now.UnixNano() / int64(t.rotation) }

func (t *TicketKeys) start(epoch int64) time.Time { return time.Unix(0, epoch*int64(t.rotation)) }

// accepted returns the epochs whose keys open tickets at now, newest
// first.
func (t *TicketKeys) accepted(now time.Time) []int64 {
	var epochs []int64
	for e := t.epoch(now); now.Sub(t.start(e)) < t.lifetime; e-- {
		epochs = append(epochs, e)
	}
	return epochs
}

// TicketKeys implements tlsconf.TicketKeySource. It reads only what the
// refresher holds, never Redis: without a shared key for now it answers
// with the keys held (and one made here if it holds none for now).
func (t *TicketKeys) TicketKeys(now time.Time) ([][32]byte, time.Time, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.epoch(now)
	t.own = slices.DeleteFunc(t.own, func(k heldKey) bool { return now.Sub(k.made) >= t.lifetime })
	for e := range t.shared {
		if now.Sub(t.start(e)) >= t.lifetime {
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
	for _, e := range append(t.accepted(now), cur+1) {
		if k, have := t.shared[e]; have && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, k := range t.own {
		if !slices.Contains(keys, k.key) {
			keys = append(keys, k.key)
		}
	}
	if len(keys) > maxTicketKeys { // the oldest go first
		keys = keys[:maxTicketKeys]
	}
	// Asked again just after the refresher's next run, and at the next
	// epoch, whose key the refresher already holds.
	refresh := t.next
	if refresh.Before(now) { // the run is under way
		refresh = now
	}
	refresh = refresh.Add(ticketPickup)
	if end := t.start(cur + 1); end.Before(refresh) {
		refresh = end
	}
	return keys, refresh, nil
}

// fetch reads the keys of epochs (the next one first, then the current
// one) and creates those two where missing; false if Redis failed.
func (t *TicketKeys) fetch(cur int64, epochs []int64) (map[int64][32]byte, bool) {
	ctx, cancel := t.c.ctx()
	defer cancel()
	names := make([]string, len(epochs))
	for i, e := range epochs {
		names[i] = t.name(e)
	}
	var cmds []*redis.StringCmd
	_, err := t.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		cmds = getTicketEntries(ctx, p, names)
		return nil
	})
	vals, err := ticketEntries(cmds, err)
	var missing []int64
	for i, e := range epochs[:2] {
		if err == nil && vals[i] == nil {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		vals, err = t.create(ctx, missing, names)
	}
	if t.c.life.Err() != nil {
		return nil, false // closing: not an outage
	}
	t.c.done(err)
	if err != nil {
		t.c.Fallback("tickets")
		return nil, false
	}
	fresh := make(map[int64][32]byte, len(epochs))
	for i, v := range vals {
		s, isStr := v.(string)
		if err, wrong := v.(error); wrong {
			t.refuse(names[i], "", err)
		}
		if !isStr {
			continue // expired, never made, or of another type
		}
		if k, ok := t.open(names[i], s); ok {
			fresh[epochs[i]] = k
		}
	}
	return fresh, true
}

// create writes a random key for each missing epoch unless another
// replica did first (SET NX), and reads names again.
func (t *TicketKeys) create(ctx context.Context, missing []int64, names []string) ([]any, error) {
	var get []*redis.StringCmd
	_, err := t.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range missing {
			var k [32]byte
			if _, err := rand.Read(k[:]); err != nil {
				return err
			}
			name := t.name(e)
			sealed := t.c.seal(name, k[:])
			clear(k[:])
			// It expires when no ticket it sealed is accepted any more.
			ttl := time.Until(t.start(e).Add(t.lifetime)) + time.Minute
			ttl = min(max(ttl, time.Minute), t.rotation+t.lifetime+time.Minute)
			p.SetArgs(ctx, name, sealed, redis.SetArgs{Mode: "NX", TTL: ttl})
		}
		get = getTicketEntries(ctx, p, names)
		return nil
	})
	return ticketEntries(get, err)
}

// maxTicketEntry bounds what is read of a ticket key's entry: a sealed
// 32-byte key is 60 bytes. Whoever writes to Redis could put hundreds of
// megabytes there, which every replica would read at every refresh.
const maxTicketEntry = 256

// getTicketEntries reads at most maxTicketEntry+1 bytes of each entry of
// names (GETRANGE: a missing key reads as "").
func getTicketEntries(ctx context.Context, p redis.Pipeliner, names []string) []*redis.StringCmd {
	cmds := make([]*redis.StringCmd, len(names))
	for i, n := range names {
		cmds[i] = p.GetRange(ctx, n, 0, maxTicketEntry)
	}
	return cmds
}

// ticketEntries is what cmds read: a string per entry, nil for one
// missing, the error for one of another type (which is never replaced:
// a SET NX does not set it); err is the pipeline's, which a reply of the
// entries' own (another type; a SET NX that did not set) does not make a
// failure of Redis.
func ticketEntries(cmds []*redis.StringCmd, err error) ([]any, error) {
	if err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, err
	}
	vals := make([]any, len(cmds))
	for i, c := range cmds {
		switch v, err := c.Result(); {
		case err == nil && v != "":
			vals[i] = v
		case err != nil && redis.HasErrorPrefix(err, "WRONGTYPE"):
			vals[i] = err
		case err != nil:
			return nil, err
		}
	}
	return vals, nil
}

// open opens the entry s of the Redis key name, logging a refusal once.
func (t *TicketKeys) open(name, s string) ([32]byte, bool) {
	var k [32]byte
	var plain []byte
	var err error
	if len(s) > maxTicketEntry {
		err = fmt.Errorf("the entry holds more than %d bytes, not a sealed 32-byte key", maxTicketEntry)
	} else {
		plain, err = t.c.open(name, []byte(s))
	}
	if err == nil && len(plain) != 32 {
		err = fmt.Errorf("the entry holds %d bytes, not a 32-byte key", len(plain))
	}
	if err != nil {
		t.refuse(name, s, err)
		return k, false
	}
	copy(k[:], plain)
	clear(plain)
	return k, true
}

// refuse logs once that the entry s of the Redis key name is not used.
func (t *TicketKeys) refuse(name, s string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.refused.first(name+s, 64) {
		return
	}
	t.c.log.Error("cluster: a session ticket key in Redis is refused and not used; this replica seals tickets with a key of its own meanwhile", "key", name, "err", err)
}
