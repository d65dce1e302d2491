package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/internal/dirrun"
)

// TestFleetTickets: three replicas sharing one Redis ([cluster]) resume
// each other's TLS sessions. With Redis stopped, logins and resumption on
// the replica that issued the ticket go on and popgate_cluster_up is 0;
// with Redis back (empty), the replicas share again without a restart.
func TestFleetTickets(t *testing.T) {
	rd := dirrun.RedisFor(t)
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "one", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	pwFile, keyFile := filepath.Join(dir, "redis-password"), filepath.Join(dir, "cluster.key")
	key := make([]byte, 32)
	rand.Read(key)
	writeFile(t, pwFile, []byte(dirrun.Password+"\n"))
	writeFile(t, keyFile, []byte(hex.EncodeToString(key)+"\n"))
	var rs []*runner
	var logs []*logSink
	for i := range 3 {
		path := writeConfig(t, pop3sConfig(cert, backend)+fmt.Sprintf(`[metrics]
address = ""
[cluster]
redis = "redis://%s/0"
user = "popgate"
password_file = %q
key_file = %q
node_name = "node%d"
`, rd.Addr(), pwFile, keyFile, i))
		r, l := startRunner(t, path)
		rs, logs = append(rs, r), append(logs, l)
	}
	session := func(i int, cli *tls.Config) bool {
		t.Helper()
		return popSession(t, rs[i].addrOf("pop3s"), false, cli)
	}
	up := func(i int) float64 {
		t.Helper()
		v, ok := scrapeRunner(t, rs[i])["popgate_cluster_up"]
		if !ok {
			t.Fatalf("node%d: no popgate_cluster_up", i)
		}
		return v
	}

	cli := resumingClient(tls.VersionTLS13)
	if session(0, cli) {
		t.Fatal("the first session resumed")
	}
	for _, i := range []int{1, 2} {
		if !session(i, cli) {
			t.Errorf("a session issued by node0 does not resume on node%d", i)
		}
	}
	for i := range rs {
		if up(i) != 1 {
			t.Errorf("node%d: popgate_cluster_up = %v with Redis running", i, up(i))
		}
	}

	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(cluster.TicketPoll + 200*time.Millisecond)
	down := resumingClient(tls.VersionTLS13)
	if session(1, down) || !session(1, down) {
		t.Error("with Redis down, node1 does not log in and resume its own sessions")
	}
	if up(1) != 0 {
		t.Errorf("node1: popgate_cluster_up = %v with Redis stopped", up(1))
	}
	if n := scrapeRunner(t, rs[1])[`popgate_cluster_fallbacks_total{feature="tickets"}`]; n < 1 {
		t.Errorf("node1: popgate_cluster_fallbacks_total{feature=\"tickets\"} = %v with Redis stopped", n)
	}
	if !strings.Contains(logs[1].String(), "Redis is unreachable") {
		t.Errorf("node1 did not log the outage:\n%s", logs[1])
	}

	if err := rd.Start(); err != nil {
		t.Fatal(err)
	}
	// Every replica's refresher has run since: the first wrote a key to
	// the empty Redis, the others read it.
	time.Sleep(cluster.TicketPoll + 200*time.Millisecond)
	again := resumingClient(tls.VersionTLS13)
	session(2, again)
	if !session(0, again) {
		t.Error("after Redis came back, a session issued by node2 does not resume on node0")
	}
	if !session(1, again) {
		t.Error("after Redis came back, a session issued by node2 does not resume on node1")
	}
	if up(1) != 1 {
		t.Errorf("node1: popgate_cluster_up = %v after Redis came back", up(1))
	}
	if !strings.Contains(logs[1].String(), "Redis is reachable again") {
		t.Errorf("node1 did not log the end of the outage:\n%s", logs[1])
	}
	for _, l := range logs {
		if strings.Contains(l.String(), dirrun.Password) {
			t.Fatal("the Redis password is in the log")
		}
	}
}

// TestClusterConfig: [cluster] is checked with errors that name the key
// and never quote the URL (it may hold a password).
func TestClusterConfig(t *testing.T) {
	const base = "[log]\n[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:110\"\ntls = \"none\"\n[route]\ndefault = \"b\"\n"
	c, err := ParseConfig("no cluster", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != nil {
		t.Error("a configuration without [cluster] has cluster settings")
	}
	c, err = ParseConfig("cluster", []byte(base+"[metrics]\naddress = \"\"\n[cluster]\nredis = \"rediss://r:6380/0\"\nkey_file = \"/k\"\nca_file = \"/ca\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster == nil || c.Cluster.KeyPrefix != "popgate:" {
		t.Errorf("cluster settings %+v, want key_prefix popgate:", c.Cluster)
	}
	for _, tc := range []struct{ section, want string }{
		{"key_file = \"/k\"\n", "cluster.redis: required"},
		{"redis = \"http://r:1\"\nkey_file = \"/k\"\n", "cluster.redis: not a URL"},
		{"redis = \"redis://u:s3cret@r:1/0\"\npassword_file = \"/p\"\nkey_file = \"/k\"\n", "keep the password in the file only"},
		{"redis = \"redis://r:1/0\"\nca_file = \"/ca\"\nkey_file = \"/k\"\n", "cluster.ca_file: set only with a rediss://"},
		{"redis = \"redis://r:1/0\"\n", "cluster.key_file: required"},
		{"redis = \"redis://r:1/0\"\nkey_file = \"/k\"\nkey_prefix = \"a{b}\"\n", "cluster.key_prefix"},
		{"redis = \"redis://r:1/0\"\nkey_file = \"/k\"\npassword = \"x\"\n", `unknown key "cluster.password"`},
	} {
		_, err := ParseConfig("cluster", []byte(base+"[cluster]\n"+tc.section))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("[cluster] %q: err = %v, want %q", tc.section, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error quotes the URL's password: %v", err)
		}
	}
}

// TestFleetReload: reloads keep the one Redis client and ticket keyring
// (no client, connection or goroutine per reload), and a reload that
// changes [cluster] is refused.
func TestFleetReload(t *testing.T) {
	rd := dirrun.RedisFor(t)
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "one", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	keyFile := filepath.Join(dir, "cluster.key")
	writeFile(t, keyFile, []byte(strings.Repeat("ab", 32)+"\n"))
	config := func(route, prefix string) string {
		return pop3sConfig(cert, backend) + fmt.Sprintf(`%s
[metrics]
address = ""
[cluster]
redis = %q
key_file = %q
key_prefix = %q
`, route, rd.URL(), keyFile, prefix)
	}
	path := writeConfig(t, config("", "popgate:"))
	r, _ := startRunner(t, path)
	cl, tk := r.current().cluster, r.current().tickets
	if cl == nil {
		t.Fatal("no cluster client with [cluster]")
	}
	cli := resumingClient(0)
	popSession(t, r.addrOf("pop3s"), false, cli)
	goroutines, _ := settled()

	const reloads = 20
	for i := range reloads {
		writeFile(t, path, []byte(config(fmt.Sprintf("users = { u%d = \"mbox\" }", i), "popgate:")))
		if err := r.reload(); err != nil {
			t.Fatal(err)
		}
		if !popSession(t, r.addrOf("pop3s"), false, cli) {
			t.Fatalf("reload %d: the session did not resume", i)
		}
	}
	if r.current().cluster != cl || r.current().tickets != tk {
		t.Error("a reload replaced the cluster client or the ticket keyring")
	}
	writeFile(t, path, []byte(config("", "other:")))
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), "restart popgate") {
		t.Errorf("a reload changing [cluster]: err = %v, want a refusal asking for a restart", err)
	}
	if r.current().cluster != cl {
		t.Error("the refused reload replaced the cluster client")
	}
	const slack = 2
	var now int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= goroutines+slack || time.Now().After(deadline) {
			break
		}
	}
	if now > goroutines+slack {
		t.Errorf("goroutines: %d before %d reloads, %d after\n%s", goroutines, reloads, now, goroutineDump())
	}
}
