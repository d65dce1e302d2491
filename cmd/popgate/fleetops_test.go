package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/dirrun"
)

// TestFleetSentinelNodes: two popgate processes share one Redis, one
// finding it through a Sentinel ([cluster] addresses and
// sentinel_master), the other by its URL. Each reaches it
// (popgate_cluster_up 1), every series of each one's /metrics carries
// its node label, and every log line its node attribute.
func TestFleetSentinelNodes(t *testing.T) {
	f := newFleet(t)
	s := dirrun.SentinelFor(t, f.redis, "")
	backend := mailbox(t, messages(1)...)
	sections := []string{
		f.tokenLine() + fmt.Sprintf(`
[cluster]
addresses = [%q]
sentinel_master = %q
user = "popgate"
password_file = %q
key_file = %q
node_name = "node0"
`, s.Addr(), dirrun.SentinelMaster, f.pwFile, f.keyFile),
		f.section(1),
	}
	var ps []*process
	for i, sec := range sections {
		ps = append(ps, startPopgate(t, writeConfig(t, oneBackend(backend, "")+sec), "plain"))
		c := ps[i].dial("plain")
		if got := c.login(procUser, procPass); !strings.HasPrefix(got, "+OK") {
			t.Fatalf("node%d: STAT = %q", i, got)
		}
		c.cmd("QUIT")
	}
	label := regexp.MustCompile(`node="([^"]*)"`)
	for i, p := range ps {
		node := fmt.Sprintf("node%d", i)
		m := p.metrics()
		if v, ok := m[fmt.Sprintf(`popgate_cluster_up{node=%q}`, node)]; !ok || v != 1 {
			t.Errorf("%s: popgate_cluster_up{node=%q} = %v (present: %v)", node, node, v, ok)
		}
		for series := range m {
			if got := label.FindStringSubmatch(series); got == nil || got[1] != node {
				t.Errorf("%s: series %s does not carry node=%q", node, series, node)
			}
		}
		p.waitLog("session end")
		lines := strings.Split(strings.TrimSpace(p.logs.String()), "\n")
		for _, line := range lines {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%s: a log line is not JSON: %q", node, line)
			}
			if rec["node"] != node {
				t.Errorf("%s: a log line has node %v: %s", node, rec["node"], line)
			}
		}
		if len(lines) < 3 {
			t.Errorf("%s: %d log lines", node, len(lines))
		}
		if strings.Contains(p.logs.String(), "Redis is unreachable") {
			t.Errorf("%s: Redis unreachable:\n%s", node, p.logs)
		}
	}
}

// TestClusterConfigAddresses: [cluster] with addresses (Sentinels or a
// Redis Cluster) instead of redis, and its mistakes.
func TestClusterConfigAddresses(t *testing.T) {
	const base = "[log]\n[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:110\"\ntls = \"none\"\n[route]\ndefault = \"b\"\n[metrics]\naddress = \"\"\n[cluster]\nkey_file = \"/k\"\n"
	for _, ok := range []string{
		"addresses = [\"s1:26379\", \"s2:26379\"]\nsentinel_master = \"m\"\n",
		"addresses = [\"s1:26379\"]\nsentinel_master = \"m\"\nsentinel_user = \"u\"\nsentinel_password_file = \"/sp\"\ntls = true\nca_file = \"/ca\"\n",
		"addresses = [\"n1:6379\", \"n2:6379\", \"n3:6379\"]\nuser = \"popgate\"\npassword_file = \"/p\"\n",
	} {
		c, err := ParseConfig("cluster", []byte(base+ok))
		if err != nil {
			t.Errorf("%q: %v", ok, err)
			continue
		}
		if len(c.Cluster.Addresses) == 0 {
			t.Errorf("%q: no addresses in %+v", ok, c.Cluster)
		}
	}
	for _, tc := range []struct{ section, want string }{
		{"redis = \"redis://r:1/0\"\naddresses = [\"s:1\"]\n", "set one, not both"},
		{"addresses = [\"s\"]\n", `cluster.addresses: "s" is not host:port`},
		{"redis = \"redis://r:1/0\"\ntls = true\n", "cluster.tls: set only with cluster.addresses"},
		{"redis = \"redis://r:1/0\"\nsentinel_master = \"m\"\n", "cluster.sentinel_master: set with cluster.addresses"},
		{"addresses = [\"s:1\"]\nsentinel_password_file = \"/sp\"\n", "set only with cluster.sentinel_master"},
		{"addresses = [\"s:1\"]\nsentinel_master = \"m\"\nsentinel_user = \"u\"\n", "cluster.sentinel_user: set with cluster.sentinel_password_file"},
		{"addresses = [\"s:1\"]\nca_file = \"/ca\"\n", "cluster.ca_file: set only with TLS"},
	} {
		_, err := ParseConfig("cluster", []byte(base+tc.section))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("[cluster] %q: err = %v, want %q", tc.section, err, tc.want)
		}
	}
}
