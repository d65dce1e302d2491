package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/proxy"
)

// How the fleet's session list is kept. Each replica writes the list of
// its sessions every SessionRefresh, and the entry expires after
// SessionTTL: a replica that dies drops out of the list on its own.
const (
	SessionRefresh = 5 * time.Second
	SessionTTL     = 3 * SessionRefresh
)

// Bounds of what is read from Redis and from the kick channel: a Redis
// that hands back more is refused rather than believed.
const (
	maxNodes       = 64       // replicas listed
	maxEntryBytes  = 16 << 20 // one replica's sealed list
	maxListed      = 50000    // sessions in one replica's list
	maxNodeName    = 255
	maxKickBytes   = 4096 // one sealed message on the kick channel
	maxSeenNonces  = 4096 // kick messages remembered against replays
	kickWindow     = 30 * time.Second
	ackWait        = time.Second // how long a kick waits for the replicas' answers
	subscribeRetry = time.Second
)

const (
	// maxListBytes bounds the sealed lists one List reads, all
	// replicas together (64 replicas at maxEntryBytes would be 1 GiB):
	// about 600,000 sessions at 220 bytes each.
	maxListBytes = 128 << 20
	// entrySlack is what an entry may grow by between its STRLEN and its
	// read (a refresh in between) and still be read whole.
	entrySlack = 64 << 10
)

// LocalSessions is what a replica knows of its own sessions:
// *proxy.Server.
type LocalSessions interface {
	SessionList() []proxy.SessionInfo
	EndSessions(user string) int
	EndSession(id string) bool
}

// Sessions lists and ends the sessions of the whole fleet. Each replica
// process keeps a sealed copy of its session list in Redis, at
// <prefix>{sessions}:node:<node_name>:<process>, refreshed every
// SessionRefresh and expiring after SessionTTL, and <node_name>:<process>
// in the sorted set <prefix>{sessions}:nodes (scored by the time of its
// last refresh). <process> is random, 16 hex digits: during an upgrade
// the old process, draining, and the new one share the node's name, and
// each keeps its own entry (neither overwrites the other's, and the old
// one's exit removes its own only), is listed, and ends its sessions on a
// kick. A
// kick is a sealed message on the channel <prefix>{sessions}:kick, which
// every replica reads; each answers on the same channel with how many
// sessions it ended. Messages carry the time they were sent and a random
// nonce, and a replica acts only on one it can open, sent within
// kickWindow, and whose nonce it has not seen: one recorded from Redis
// and published again does nothing.
//
// Session ids are "<node_name>:<connection id>" fleet-wide; a bare
// connection id (the form of the log lines) names a session of this
// replica.
type Sessions struct {
	c             *Cluster
	local         LocalSessions
	refresh, ttl  time.Duration
	inst          string // this process, so that it ignores its own messages
	member        string // this process in the index: <node>:<inst>
	entry, index  string // this process's entry; the sorted set of processes
	channel       string
	ackWait       time.Duration
	listed        int // maxListed
	listBytes     int // maxListBytes
	now           func() time.Time
	subscribed    chan struct{} // closed once the first subscription is up
	subscribeOnce sync.Once

	mu      sync.Mutex
	waiters map[string]chan kickMsg // nonce of a kick sent → its answers
	seen    map[string]time.Time    // nonces acted on, until they leave the window
	known   []string                // the other processes (members) at the last successful read
	refused map[string]time.Time    // entries and messages refused, when last logged
}

// NewSessions returns the fleet's view of the sessions, with local this
// replica's. [Sessions.Run] keeps its entry in Redis and answers kicks.
func (c *Cluster) NewSessions(local LocalSessions) *Sessions {
	var b [8]byte
	rand.Read(b[:])
	inst := hex.EncodeToString(b[:])
	return &Sessions{c: c, local: local, refresh: SessionRefresh, ttl: SessionTTL, inst: inst, member: c.node + ":" + inst,
		entry: c.key("{sessions}:node:" + c.node + ":" + inst), index: c.key("{sessions}:nodes"), channel: c.key("{sessions}:kick"),
		ackWait: ackWait, listed: maxListed, listBytes: maxListBytes, now: time.Now, subscribed: make(chan struct{}),
		waiters: map[string]chan kickMsg{}, seen: map[string]time.Time{}, refused: map[string]time.Time{}}
}

// nodeEntry is one replica's list as stored in Redis, sealed.
type nodeEntry struct {
	Node string `json:"node"`
	// Time is when it was written (Unix milliseconds): an entry older
	// than the TTL is stale, whatever Redis says of its expiry.
	Time      int64               `json:"time"`
	Sessions  []proxy.SessionInfo `json:"sessions"`
	Truncated bool                `json:"truncated,omitempty"`
}

// kickMsg is a message of the kick channel, sealed.
type kickMsg struct {
	Kind  string `json:"kind"` // "kick" or "ack"
	From  string `json:"from"` // node_name of the sender
	Inst  string `json:"inst"` // the sending process
	Nonce string `json:"nonce"`
	Time  int64  `json:"time"` // Unix milliseconds
	// A kick ends the sessions of User, or the session ID (a connection
	// id) of replica To.
	User string `json:"user,omitempty"`
	ID   string `json:"id,omitempty"`
	To   string `json:"to,omitempty"`
	// An ack answers the kick with nonce Re: Ended sessions ended.
	Re    string `json:"re,omitempty"`
	Ended int    `json:"ended,omitempty"`
}

// Run keeps this replica's entry in Redis and answers the fleet's kicks
// until ctx is done; then it removes the entry, so that the fleet's list
// drops this replica at once.
func (s *Sessions) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.subscribe(ctx) })
	// Listening before it registers: a replica the others list hears
	// their kicks. Redis down, it registers (tries) at once.
	select {
	case <-s.subscribed:
	case <-time.After(dialTimeout + 2*ioTimeout):
	case <-ctx.Done():
	}
	s.register()
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			s.unregister()
			return
		case <-t.C:
			s.register()
		}
	}
}

// register writes this replica's list and its place in the index.
func (s *Sessions) register() {
	now := s.now()
	list := s.local.SessionList()
	e := nodeEntry{Node: s.c.node, Time: now.UnixMilli(), Sessions: list}
	if len(list) > s.listed {
		e.Sessions, e.Truncated = list[:s.listed], true
	}
	plain, err := json.Marshal(e)
	// The readers refuse a larger entry: the oldest sessions that fit.
	for err == nil && len(plain) > maxEntryBytes-64 {
		e.Sessions, e.Truncated = e.Sessions[:len(e.Sessions)/2], true
		plain, err = json.Marshal(e)
	}
	if err != nil {
		s.c.log.Error("cluster: encoding the session list", "err", err)
		return
	}
	sealed := s.c.seal(s.entry, plain)
	clear(plain)
	ctx, cancel := s.c.ctx()
	defer cancel()
	var rng *redis.StringSliceCmd
	_, err = s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.entry, sealed, s.ttl)
		p.ZAdd(ctx, s.index, redis.Z{Score: float64(now.UnixMilli()), Member: s.member})
		p.PExpire(ctx, s.index, s.ttl)
		// The replicas a kick names unreached if Redis fails.
		oldest, latest := s.scores(now)
		rng = p.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.index, Start: latest, Stop: oldest, ByScore: true, Rev: true, Count: maxNodes})
		return nil
	})
	if err == nil {
		s.setKnown(rng.Val())
	}
	if replyError(err) {
		// Something else sits at the index's name: it goes, and the
		// replicas register again at their next refresh.
		s.refuse(s.index, "", "the index of the replicas' session lists is not a sorted set", err)
		err = s.c.client.Del(ctx, s.index).Err()
	}
	// A failure is counted as a fallback when a list or a kick makes
	// do without Redis, not here.
	s.c.done(err)
}

// unregister removes this replica's entry.
func (s *Sessions) unregister() {
	ctx, cancel := s.c.ctx()
	defer cancel()
	_, err := s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.entry)
		p.ZRem(ctx, s.index, s.member)
		return nil
	})
	s.c.done(err)
}

// nodes reads the processes registered within the TTL but this one (as
// index members: parse them with [nodeOf]), and forgets those that left
// it.
func (s *Sessions) nodes(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout+2*ioTimeout)
	defer cancel()
	now := s.now()
	oldest, latest := s.scores(now)
	var rng *redis.StringSliceCmd
	_, err := s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, s.index, "-inf", "("+oldest)
		// No replica registers in the future (but for its clock's
		// error): members scored there (whoever writes to Redis) would
		// come first and stay, and crowd the replicas out of the list.
		p.ZRemRangeByScore(ctx, s.index, "("+latest, "+inf")
		rng = p.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.index, Start: latest, Stop: oldest, ByScore: true, Rev: true, Count: maxNodes + 1})
		return nil
	})
	if replyError(err) {
		s.refuse(s.index, "", "the index of the replicas' session lists is not a sorted set", err)
		err = s.c.client.Del(ctx, s.index).Err()
	}
	s.c.done(err)
	if err != nil {
		return nil, err
	}
	if len(rng.Val()) > maxNodes {
		s.refuse(s.index, "", "more replicas registered than a list reads", fmt.Errorf("only the %d refreshed last are read", maxNodes))
	}
	return s.setKnown(rng.Val()), nil
}

// scores are the lowest and the highest score of a member of the index
// that is read at now: registered within the TTL, and not later than a
// clock apart by kickWindow would.
func (s *Sessions) scores(now time.Time) (oldest, latest string) {
	return strconv.FormatInt(now.Add(-s.ttl).UnixMilli(), 10), strconv.FormatInt(now.Add(kickWindow).UnixMilli(), 10)
}

// setKnown keeps the valid members, but this process's, as the
// processes known, and returns them.
func (s *Sessions) setKnown(members []string) []string {
	var nodes []string
	var bad []any
	for _, m := range members {
		if !validNode(nodeOf(m)) {
			// Remembered by its digest: a member may be megabytes.
			s.refuse(s.index, s.c.hashName("member", m), "a replica name in the index is refused; it is removed", errors.New("not a node_name (empty, too long or not printable UTF-8)"))
			bad = append(bad, m)
			continue
		}
		if m != s.member && len(nodes) < maxNodes-1 {
			nodes = append(nodes, m)
		}
	}
	if len(bad) > 0 {
		// No replica writes it: gone, it is not read again at every
		// refresh of every replica.
		ctx, cancel := s.c.ctx()
		s.c.client.ZRem(ctx, s.index, bad...)
		cancel()
	}
	s.mu.Lock()
	s.known = nodes
	s.mu.Unlock()
	// The replicas of the fleet, for the throttle's share while Redis
	// fails: node names, this one's included (an upgrading replica's two
	// processes are one).
	s.c.replicas.Store(int32(len(nodeNames(append(nodes, s.member)))))
	return nodes
}

// nodeOf is the node_name of an index member, <node_name>:<process>; a
// member without the process (written by hand) is the node_name itself,
// its entry at <prefix>{sessions}:node:<member> all the same.
func nodeOf(member string) string {
	i := strings.LastIndexByte(member, ':')
	if i < 0 || len(member)-i-1 != 16 {
		return member
	}
	for _, c := range member[i+1:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return member
		}
	}
	return member[:i]
}

// nodeNames is the node_names of members, each once, sorted.
func nodeNames(members []string) []string {
	var names []string
	for _, m := range members {
		names = append(names, nodeOf(m))
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func validNode(n string) bool {
	if n == "" || len(n) > maxNodeName || !utf8.ValidString(n) {
		return false
	}
	return !strings.ContainsFunc(n, func(r rune) bool { return r < ' ' || r == 0x7f })
}

// refuse logs an ERROR about something read from Redis that is not
// used: once an hour for each key and content, not at every read.
func (s *Sessions) refuse(key, content, msg string, err error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	id := key + "\x00" + content
	if t, ok := s.refused[id]; ok && now.Sub(t) < time.Hour {
		return
	}
	if len(s.refused) >= 256 {
		clear(s.refused)
	}
	s.refused[id] = now
	s.c.log.Error("cluster: "+msg+"; it is ignored", "key", key, "err", err)
}

// List returns the sessions of the fleet, oldest first, each naming its
// node, with the ids "<node>:<connection id>". partial is "" when every
// replica registered answered; else it says why the list is this
// replica's only or lacks some replica's sessions.
func (s *Sessions) List(ctx context.Context) (list []proxy.SessionInfo, partial string) {
	list = s.own()
	members, err := s.nodes(ctx)
	if err != nil {
		s.c.Fallback("sessions")
		return list, "Redis is unreachable: the sessions of this replica (" + s.c.node + ") only"
	}
	if len(members) == 0 {
		return list, ""
	}
	ctx, cancel := s.c.ctx()
	defer cancel()
	// The sizes first, so that what is read stays within listBytes
	// whatever the entries hold: the freshest replicas (the index's
	// order) are read first.
	lens := make([]*redis.IntCmd, len(members))
	_, err = s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			lens[i] = p.StrLen(ctx, s.c.key("{sessions}:node:"+m))
		}
		return nil
	})
	if replyError(err) {
		err = nil // a key of the wrong type: refused by its GETRANGE below
	}
	if err != nil {
		s.c.done(err)
		s.c.Fallback("sessions")
		return list, "Redis is unreachable: the sessions of this replica (" + s.c.node + ") only"
	}
	cmds := make([]*redis.StringCmd, len(members))
	var unread []string
	budget := s.listBytes
	_, err = s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			// At most one byte more than an entry may hold: a larger
			// one is refused without being read whole.
			if lens[i].Val() > maxEntryBytes {
				continue // refused below, unread
			}
			n := min(int(lens[i].Val())+entrySlack, maxEntryBytes+1)
			if n > budget {
				unread = append(unread, m)
				continue
			}
			budget -= n
			cmds[i] = p.GetRange(ctx, s.c.key("{sessions}:node:"+m), 0, int64(n-1))
		}
		return nil
	})
	if replyError(err) {
		// An entry's own (a key of the wrong type): refused below,
		// unless some command failed to reach Redis.
		err = nil
		for _, c := range cmds {
			if c == nil {
				continue
			}
			if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) && !replyError(e) {
				err = e
			}
		}
	}
	s.c.done(err)
	if err != nil {
		s.c.Fallback("sessions")
		return list, "Redis is unreachable: the sessions of this replica (" + s.c.node + ") only"
	}
	if len(unread) > 0 {
		s.refuse(s.index, "budget", "the replicas' session lists in Redis are larger than a list reads; the largest or oldest are not read",
			fmt.Errorf("%d lists left out past %d MiB", len(unread), s.listBytes>>20))
	}
	var missing, cut []string
	for i, m := range members {
		n := nodeOf(m)
		if lens[i].Val() > maxEntryBytes {
			s.refuse(s.c.key("{sessions}:node:"+m), "size", "a replica's session list in Redis is refused", fmt.Errorf("more than %d bytes", maxEntryBytes))
			missing = append(missing, n)
			continue
		}
		if cmds[i] == nil {
			continue // unread: said below
		}
		if err := cmds[i].Err(); err != nil && !errors.Is(err, redis.Nil) {
			s.refuse(s.c.key("{sessions}:node:"+m), "type", "a replica's session list in Redis is refused", err)
			missing = append(missing, n)
			continue
		}
		e, ok := s.openEntry(m, cmds[i].Val())
		if !ok {
			missing = append(missing, n)
			continue
		}
		for _, si := range e.Sessions {
			si.Node, si.ID = n, n+":"+si.ID
			list = append(list, si)
		}
		if e.Truncated {
			cut = append(cut, "the list of "+n+" holds its "+strconv.Itoa(len(e.Sessions))+" oldest sessions only")
		}
	}
	if len(missing) > 0 {
		cut = append(cut, "the lists of "+strings.Join(nodeNames(missing), ", ")+" were refused (see the log)")
	}
	if len(unread) > 0 {
		cut = append(cut, "the lists of "+strings.Join(nodeNames(unread), ", ")+" were not read: all the lists together exceed "+
			strconv.Itoa(s.listBytes>>20)+" MiB")
	}
	partial = strings.Join(cut, "; ")
	slices.SortFunc(list, func(a, b proxy.SessionInfo) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return list, partial
}

// own is this replica's list with fleet-wide ids.
func (s *Sessions) own() []proxy.SessionInfo {
	list := s.local.SessionList()
	for i := range list {
		list[i].Node, list[i].ID = s.c.node, s.c.node+":"+list[i].ID
	}
	return list
}

// openEntry opens the entry of index member m as read from Redis; false
// (and logged) if it is refused. An empty one is an entry that expired
// between the index and the read: the process is gone, nothing is said.
func (s *Sessions) openEntry(m, raw string) (nodeEntry, bool) {
	var e nodeEntry
	if raw == "" {
		return e, true
	}
	n, key := nodeOf(m), s.c.key("{sessions}:node:"+m)
	// Refusals are logged by key and kind, not by content: a replica
	// whose entries are refused writes a new one every refresh.
	const msg = "a replica's session list in Redis is refused"
	if len(raw) > maxEntryBytes {
		s.refuse(key, "size", msg, fmt.Errorf("more than %d bytes", maxEntryBytes))
		return e, false
	}
	plain, err := s.c.open(key, []byte(raw))
	if err != nil {
		s.refuse(key, "open", msg, err)
		return e, false
	}
	err = json.Unmarshal(plain, &e)
	clear(plain)
	kind, now := "json", s.now()
	switch {
	case err != nil:
	case e.Node != n:
		kind, err = "node", errors.New("the entry is the list of another replica")
	case len(e.Sessions) > s.listed:
		kind, err = "count", fmt.Errorf("the entry lists %d sessions, more than %d", len(e.Sessions), s.listed)
	case now.Sub(time.UnixMilli(e.Time)) > s.ttl+kickWindow || time.UnixMilli(e.Time).Sub(now) > kickWindow:
		kind, err = "time", fmt.Errorf("the entry was written at %s, not within the last %s (an old entry written again, or clocks apart)", time.UnixMilli(e.Time).UTC().Format(time.RFC3339), s.ttl)
	}
	if err != nil {
		s.refuse(key, kind, msg, err)
		return nodeEntry{}, false
	}
	return e, true
}

// Ended is what a kick did across the fleet.
type Ended struct {
	// Nodes counts the sessions ended by replica, this one included;
	// a replica that answered with none is there with 0.
	Nodes map[string]int
	// Unreached are the replicas that did not answer (registered
	// within the TTL, or known at the last read when Redis fails).
	Unreached []string
	// Partial is "" when every replica registered answered; else why
	// not.
	Partial string
}

// Total is the number of sessions ended.
func (e Ended) Total() int {
	n := 0
	for _, v := range e.Nodes {
		n += v
	}
	return n
}

// End ends the sessions of user (id "") or the session id on every
// replica, and says how many each ended. id is "<node>:<connection id>",
// or a bare connection id of this replica.
func (s *Sessions) End(ctx context.Context, user, id string) Ended {
	res := Ended{Nodes: map[string]int{}}
	to := ""
	if id != "" {
		node, conn, fleet := splitID(id)
		if !fleet || node == s.c.node {
			// A session of this process: nothing to ask the fleet.
			res.Nodes[s.c.node] = 0
			if s.local.EndSession(conn) {
				res.Nodes[s.c.node] = 1
				return res
			}
			if !fleet {
				return res
			}
			// Perhaps one of the other process of this node_name,
			// which drains after an upgrade.
		}
		to, id = node, conn
	} else {
		res.Nodes[s.c.node] = s.local.EndSessions(user)
	}

	members, err := s.nodes(ctx)
	if err != nil {
		return s.unreached(res, to)
	}
	// The processes that must answer, by member: a node_name may be
	// two processes' during an upgrade.
	expect := map[string]string{}
	for _, m := range members {
		if n := nodeOf(m); to == "" || n == to {
			expect[m] = n
		}
	}
	if len(expect) == 0 {
		// Not registered: gone, or never was; nothing to end.
		return res
	}
	msg := kickMsg{Kind: "kick", User: user, ID: id, To: to}
	acks := make(chan kickMsg, maxNodes)
	nonce := s.stamp(&msg)
	s.mu.Lock()
	s.waiters[nonce] = acks
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiters, nonce)
		s.mu.Unlock()
	}()
	if err := s.publish(ctx, msg); err != nil {
		return s.unreached(res, to)
	}
	wait := time.NewTimer(s.ackWait)
	defer wait.Stop()
	for len(expect) > 0 {
		select {
		case a := <-acks:
			m := a.From + ":" + a.Inst
			if _, ok := expect[m]; !ok {
				m = a.From // a member written without its process
			}
			res.Nodes[a.From] += a.Ended
			delete(expect, m)
		case <-wait.C:
			var left []string
			for m := range expect {
				left = append(left, m)
			}
			res.Unreached = nodeNames(left)
			res.Partial = "some replicas did not answer within " + s.ackWait.String()
			return res
		case <-ctx.Done():
			return res
		}
	}
	return res
}

// unreached completes res when Redis fails: the replicas known at the
// last read did not hear of the kick.
func (s *Sessions) unreached(res Ended, to string) Ended {
	s.c.Fallback("sessions")
	s.mu.Lock()
	known := nodeNames(s.known)
	s.mu.Unlock()
	for _, n := range known {
		if to == "" || n == to {
			res.Unreached = append(res.Unreached, n)
		}
	}
	if to != "" && len(res.Unreached) == 0 {
		res.Unreached = []string{to}
	}
	res.Partial = "Redis is unreachable: only the sessions of this replica (" + s.c.node + ") were ended"
	return res
}

// splitID splits a fleet-wide session id at its last colon (connection
// ids have none); fleet is false for a bare connection id.
func splitID(id string) (node, conn string, fleet bool) {
	i := strings.LastIndexByte(id, ':')
	if i < 0 {
		return "", id, false
	}
	return id[:i], id[i+1:], true
}

// stamp gives msg its sender, time and a new nonce, which it returns.
func (s *Sessions) stamp(msg *kickMsg) string {
	var b [16]byte
	rand.Read(b[:])
	msg.From, msg.Inst, msg.Nonce, msg.Time = s.c.node, s.inst, hex.EncodeToString(b[:]), s.now().UnixMilli()
	return msg.Nonce
}

func (s *Sessions) publish(ctx context.Context, msg kickMsg) error {
	plain, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout+2*ioTimeout)
	defer cancel()
	err = s.c.client.Publish(ctx, s.channel, s.c.seal(s.channel, plain)).Err()
	s.c.done(err)
	return err
}

// subscribe reads the kick channel until ctx is done, subscribing again
// on a new connection after a failure (once a second while Redis is
// down).
func (s *Sessions) subscribe(ctx context.Context) {
	for ctx.Err() == nil {
		s.listen(ctx)
		if !sleep(ctx, subscribeRetry) {
			return
		}
	}
}

// listen subscribes on a connection of its own and reads it until ctx is
// done or the connection fails: an error, or no answer to a ping sent
// after a quiet refresh period (a Redis gone without closing it).
func (s *Sessions) listen(ctx context.Context) {
	ps := s.c.client.Subscribe(ctx, s.channel)
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	defer ps.Close()
	pinged := false
	for {
		m, err := ps.ReceiveTimeout(ctx, s.refresh)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			pinged = false
			switch msg := m.(type) {
			case *redis.Subscription:
				s.subscribeOnce.Do(func() { close(s.subscribed) })
			case *redis.Message:
				s.receive(ctx, msg.Payload)
			}
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !pinged && ps.Ping(ctx) == nil {
			pinged = true
			continue
		}
		return
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// receive acts on one message of the kick channel: a kick for this
// replica ends its sessions and is answered; an answer to a kick of this
// process reaches it. Anything else is dropped, what does not open or is
// not fresh with a log line.
func (s *Sessions) receive(ctx context.Context, payload string) {
	msg, err := s.openKick(payload)
	if err != nil {
		// Logged by kind of refusal, not by message: a flood of them
		// makes one line an hour each.
		s.refuse(s.channel, err.Error(), "a message on the kick channel is refused", err)
		return
	}
	if msg.Inst == s.inst {
		return // its own
	}
	switch msg.Kind {
	case "ack":
		s.mu.Lock()
		w := s.waiters[msg.Re]
		s.mu.Unlock()
		if w != nil {
			select {
			case w <- msg:
			default:
			}
		}
	case "kick":
		if msg.To != "" && msg.To != s.c.node {
			return
		}
		n := 0
		if msg.User != "" {
			n = s.local.EndSessions(msg.User)
			s.c.log.Info("admin: sessions ended", "user", msg.User, "ended", n, "by_node", msg.From)
		} else {
			if s.local.EndSession(msg.ID) {
				n = 1
			}
			s.c.log.Info("admin: sessions ended", "conn", msg.ID, "ended", n, "by_node", msg.From)
		}
		ack := kickMsg{Kind: "ack", Re: msg.Nonce, Ended: n}
		s.stamp(&ack)
		if err := s.publish(ctx, ack); err != nil {
			s.c.log.Warn("cluster: could not answer a kick", "by_node", msg.From, "err", err)
		}
	}
}

// openKick opens and checks a message: sealed with the fleet's key,
// well-formed, sent within kickWindow, and with a nonce not seen before.
func (s *Sessions) openKick(payload string) (kickMsg, error) {
	var msg kickMsg
	if len(payload) > maxKickBytes {
		return msg, fmt.Errorf("more than %d bytes", maxKickBytes)
	}
	plain, err := s.c.open(s.channel, []byte(payload))
	if err != nil {
		return msg, err
	}
	if err := json.Unmarshal(plain, &msg); err != nil {
		return msg, errors.New("a malformed kick message")
	}
	sent := time.UnixMilli(msg.Time)
	now := s.now()
	switch {
	case msg.Kind != "kick" && msg.Kind != "ack",
		!validNode(msg.From), len(msg.Nonce) != 32, msg.Inst == "",
		msg.Kind == "kick" && ((msg.User == "") == (msg.ID == "") || (msg.ID != "") != (msg.To != "")),
		msg.Kind == "ack" && (len(msg.Re) != 32 || msg.Ended < 0 || msg.Ended > 1<<30):
		return msg, errors.New("a malformed kick message")
	case now.Sub(sent) > kickWindow || sent.Sub(now) > kickWindow:
		return msg, fmt.Errorf("not sent within %s of now (an old message replayed, or clocks apart)", kickWindow)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[msg.Nonce]; dup {
		return msg, errors.New("a kick message already received (replayed)")
	}
	if len(s.seen) >= maxSeenNonces {
		for n, t := range s.seen {
			if now.Sub(t) > kickWindow {
				delete(s.seen, n)
			}
		}
		if len(s.seen) >= maxSeenNonces {
			return msg, errors.New("too many kick messages within the window; refused")
		}
	}
	s.seen[msg.Nonce] = sent
	return msg, nil
}
