package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/pop3test"
)

// TestFleetSessions: three popgate processes sharing one Redis. GET
// /sessions on replica 3 lists the sessions of all three, each naming
// its node; DELETE /sessions?user= on replica 1 ends the user's sessions
// on replicas 2 and 3 too, without a QUIT to their backends, and counts
// them by node. A kick recorded from Redis and published again, garbage
// on the kick channel and garbage entries do nothing but a log line.
// With Redis stopped the answers are this replica's, marked partial;
// with Redis started again they are the fleet's.
func TestFleetSessions(t *testing.T) {
	f := newFleet(t)
	var backends []*pop3test.Server
	var addrs []string
	for range 3 {
		b, addr := mailboxServer(t, messages(1)...)
		backends, addrs = append(backends, b), append(addrs, addr)
	}
	ps := f.start(3, func(i int) string { return oneBackend(addrs[i], "") }, "plain")
	ctx := context.Background()
	spy := redis.NewClient(&redis.Options{Addr: f.redis.Addr(), Username: "popgate", Password: dirrun.Password})
	defer spy.Close()
	const channel = "popgate:{sessions}:kick"
	sub := spy.Subscribe(ctx, channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	clients := make([]*popClient, 3)
	for i, p := range ps {
		clients[i] = loginRetry(t, p)
	}
	list := fleetList(t, ps[2], f.token, 3)
	var nodes []string
	for _, s := range list {
		nodes = append(nodes, s.Node)
		if s.User != procUser || s.State != "relaying" || !strings.HasPrefix(s.ID, s.Node+":") {
			t.Errorf("listed session %+v: want alice's, relaying, with an id NODE:ID", s)
		}
	}
	slices.Sort(nodes)
	if !slices.Equal(nodes, []string{"node0", "node1", "node2"}) {
		t.Errorf("GET /sessions on node2 lists the nodes %v, want node0, node1, node2", nodes)
	}

	resp := ps[0].request(http.MethodDelete, "/sessions?user=ALICE", "", f.token)
	var ended struct {
		Ended     int            `json:"ended"`
		Nodes     map[string]int `json:"nodes"`
		Unreached []string       `json:"unreached"`
		Partial   string         `json:"partial"`
	}
	if err := json.Unmarshal([]byte(resp.body), &ended); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE /sessions?user=ALICE = %d %q", resp.StatusCode, resp.body)
	}
	if ended.Ended != 3 || ended.Nodes["node0"] != 1 || ended.Nodes["node1"] != 1 || ended.Nodes["node2"] != 1 || len(ended.Unreached) != 0 || resp.Header.Get(admin.PartialHeader) != "" {
		t.Errorf("DELETE on node0 answered %s (%s %q), want one ended on each node", resp.body, admin.PartialHeader, resp.Header.Get(admin.PartialHeader))
	}
	for i, c := range clients {
		if !closedByProxy(c) {
			t.Errorf("node%d: the kicked client's connection did not end", i)
		}
	}
	ps[1].waitLog("admin: sessions ended")

	// The kick, recorded from Redis, published again; and garbage.
	var recorded string
	for recorded == "" {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		recorded = m.Payload // the kick comes first, the answers after
	}
	for i, p := range ps {
		clients[i] = loginRetry(t, p)
	}
	// The backends took the new logins: they were done with the kicked
	// sessions, and saw no QUIT from them.
	for i, b := range backends {
		if q := b.Quits(); q != 0 {
			t.Errorf("node%d's backend saw %d QUITs, want none for the kicked session", i, q)
		}
	}
	for _, payload := range []string{recorded, "garbage that does not open"} {
		if err := spy.Publish(ctx, channel, payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range ps[1:] {
		p.waitLog("cluster: a message on the kick channel is refused; it is ignored", 2)
	}
	for i, c := range clients {
		c.cmd("NOOP") // still logged in
		if n := len(ps[i].logs.records(t, "admin: sessions ended")); i > 0 && n != 1 {
			t.Errorf("node%d logged %d kicks, want the first only", i, n)
		}
	}
	logs := ps[1].logs.String()
	if !strings.Contains(logs, "already received (replayed)") || !strings.Contains(logs, "too short to be sealed") {
		t.Errorf("node1 did not say why it refused the messages:\n%s", logs)
	}

	// Garbage entries: refused, logged with their key, the answer partial.
	if _, err := f.redis.Do("SET", "popgate:{sessions}:node:node9", "garbage"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.redis.Do("ZADD", "popgate:{sessions}:nodes", fmt.Sprint(time.Now().Add(10*time.Second).UnixMilli()), "node9"); err != nil {
		t.Fatal(err)
	}
	resp = ps[2].request(http.MethodGet, "/sessions", "", f.token)
	if h := resp.Header.Get(admin.PartialHeader); !strings.Contains(h, "node9") {
		t.Errorf("with node9's entry garbage: %s %q, want it named", admin.PartialHeader, h)
	}
	if rec := ps[2].waitLog("cluster: a replica's session list in Redis is refused; it is ignored"); rec["key"] != "popgate:{sessions}:node:node9" {
		t.Errorf("the refusal names the key %v", rec["key"])
	}
	f.redis.Do("DEL", "popgate:{sessions}:node:node9")
	f.redis.Do("ZREM", "popgate:{sessions}:nodes", "node9")

	// Redis stopped: the answer is this replica's, marked partial.
	if err := f.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	resp = ps[2].request(http.MethodGet, "/sessions", "", f.token)
	var own []proxy.SessionInfo
	json.Unmarshal([]byte(resp.body), &own)
	if len(own) != 1 || own[0].Node != "node2" || !strings.Contains(resp.Header.Get(admin.PartialHeader), "unreachable") {
		t.Errorf("GET /sessions with Redis down = %s (%s %q), want node2's one, partial", resp.body, admin.PartialHeader, resp.Header.Get(admin.PartialHeader))
	}
	resp = ps[0].request(http.MethodDelete, "/sessions?id=node1:"+strings.TrimPrefix(list[0].ID, list[0].Node+":"), "", f.token)
	if !strings.Contains(resp.body, `"unreached":["node1"]`) || resp.Header.Get(admin.PartialHeader) == "" {
		t.Errorf("DELETE of a node1 session with Redis down = %s, want node1 unreached", resp.body)
	}
	if m := ps[2].metrics(); m[`popgate_cluster_fallbacks_total{feature="sessions",node="node2"}`] == 0 {
		t.Error("no sessions fallback counted on node2")
	}

	// Redis back, empty: the fleet's list again, without a restart.
	if err := f.redis.Start(); err != nil {
		t.Fatal(err)
	}
	list = fleetList(t, ps[2], f.token, 3)
	if len(list) != 3 {
		t.Errorf("with Redis back: %d sessions", len(list))
	}
	for _, p := range ps {
		checkLogs(t, p.logs)
	}
}

// loginRetry logs in as alice on p's listener "plain", again while the
// backend still holds the maildrop of a session just ended.
func loginRetry(t *testing.T, p *process) *popClient {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // against a hang
	for {
		c := p.dial("plain")
		c.cmd("USER " + procUser)
		io.WriteString(c.c, "PASS "+procPass+"\r\n")
		if line := c.line(); strings.HasPrefix(line, "+OK") {
			return c
		}
		c.c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no login on %s", p.admin)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fleetList waits until GET /sessions on p (with the admin token) lists
// n sessions, whole.
func fleetList(t *testing.T, p *process, token string, n int) []proxy.SessionInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // against a hang
	for {
		resp := p.request(http.MethodGet, "/sessions", "", token)
		var list []proxy.SessionInfo
		if err := json.Unmarshal([]byte(resp.body), &list); err != nil {
			t.Fatalf("GET /sessions = %d %q", resp.StatusCode, resp.body)
		}
		if len(list) == n && resp.Header.Get(admin.PartialHeader) == "" {
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /sessions lists %d sessions (%s %q), want %d: %s", len(list), admin.PartialHeader, resp.Header.Get(admin.PartialHeader), n, resp.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// closedByProxy reports whether the client's connection ends (EOF or a
// reset) without anything more from the proxy.
func closedByProxy(c *popClient) bool {
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}
