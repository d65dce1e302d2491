package cluster

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dirrun"
)

// writeSecret writes a password file.
func writeSecret(t *testing.T, pw string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(name, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestSentinel: replicas that find the master through a Sentinel (which
// requires a password of its own) share ticket keys with a replica that
// names the master directly; the keys are on the master.
func TestSentinel(t *testing.T) {
	r := startRedis(t)
	const sentinelPass = "sentinel-secret"
	s := dirrun.SentinelFor(t, r, sentinelPass)
	key := writeKey(t)
	cfg := Config{
		Addresses:            []string{s.Addr()},
		SentinelMaster:       dirrun.SentinelMaster,
		User:                 "popgate",
		PasswordFile:         writeSecret(t, dirrun.Password),
		SentinelPasswordFile: writeSecret(t, sentinelPass),
		KeyFile:              key,
	}
	cfg.NodeName = "a"
	a := newReplicaConfig(t, cfg)
	cfg.NodeName = "b"
	b := newReplicaConfig(t, cfg)
	direct := newReplica(t, r, "direct", key)
	for _, rp := range []*replica{a, b} {
		if !rp.c.Up() {
			t.Fatalf("%s: Up() = false through the Sentinel:\n%s", rp.c.Node(), rp.logs)
		}
	}
	cli := client(tls.VersionTLS13)
	if resumes(t, a.conf, cli) {
		t.Fatal("the first connection resumed")
	}
	for _, rp := range []*replica{b, direct} {
		if !resumes(t, rp.conf, cli) {
			t.Errorf("a ticket issued by a (through the Sentinel) does not resume on %s", rp.c.Node())
		}
	}
	if n := ticketEntryLen(t, r); n != "60" {
		t.Errorf("the entry on the master is %s bytes, want 60", n)
	}

	// A wrong Sentinel password: the replica works alone, and says why.
	cfg.NodeName, cfg.SentinelPasswordFile = "c", writeSecret(t, "wrong")
	c := newReplicaConfig(t, cfg)
	if c.c.Up() {
		t.Error("Up() = true with a wrong Sentinel password")
	}
	if !strings.Contains(c.logs.String(), "Redis is unreachable") {
		t.Errorf("no outage logged with a wrong Sentinel password:\n%s", c.logs)
	}
	if strings.Contains(c.logs.String(), "wrong") || strings.Contains(a.logs.String(), sentinelPass) {
		t.Error("a Sentinel password is in the log")
	}
}

// TestRedisCluster: replicas on a Redis Cluster of three masters, each
// told one node, share ticket keys: the keys read together (one pipeline) are in
// one hash slot.
func TestRedisCluster(t *testing.T) {
	rc := dirrun.RedisClusterFor(t)
	key := writeKey(t)
	pw := writeSecret(t, dirrun.Password)
	var rs []*replica
	for i, addr := range rc.Addrs() {
		rp := newReplicaConfig(t, Config{Addresses: []string{addr}, User: "popgate", PasswordFile: pw, KeyFile: key, NodeName: string(rune('a' + i))})
		if !rp.c.Up() {
			t.Fatalf("%s: Up() = false on the Redis Cluster:\n%s", rp.c.Node(), rp.logs)
		}
		rs = append(rs, rp)
	}
	cli := client(tls.VersionTLS13)
	if resumes(t, rs[0].conf, cli) {
		t.Fatal("the first connection resumed")
	}
	for _, rp := range rs[1:] {
		if !resumes(t, rp.conf, cli) {
			t.Errorf("a ticket issued by a does not resume on %s", rp.c.Node())
		}
	}
	for _, rp := range rs {
		if strings.Contains(rp.logs.String(), "level=WARN") || strings.Contains(rp.logs.String(), "level=ERROR") {
			t.Errorf("%s logged a problem:\n%s", rp.c.Node(), rp.logs)
		}
	}
}

// TestClientOptionsTLS: with addresses, tls = true asks for TLS 1.2 or
// later to every server, verified against ca_file; the server name is
// left for each dial to fill in from its own address.
func TestClientOptionsTLS(t *testing.T) {
	ca, err := certgen.NewCA("redis CA", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := ca.WriteCert(caFile); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []Config{
		{Addresses: []string{"s1:26379", "s2:26379"}, SentinelMaster: "m", TLS: true, CAFile: caFile},
		{Addresses: []string{"n1:6379"}, TLS: true, CAFile: caFile},
	} {
		o, err := clientOptions(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if o.TLSConfig == nil || o.TLSConfig.MinVersion != tls.VersionTLS12 || o.TLSConfig.RootCAs == nil || o.TLSConfig.ServerName != "" {
			t.Errorf("%+v: TLS config %+v", cfg, o.TLSConfig)
		}
		if (cfg.SentinelMaster == "") != o.IsClusterMode || o.MasterName != cfg.SentinelMaster {
			t.Errorf("%+v: cluster mode %v, master %q", cfg, o.IsClusterMode, o.MasterName)
		}
	}
	o, err := clientOptions(Config{Redis: "rediss://redis.example.net:6380/0", CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.example.net" || o.IsClusterMode || o.MasterName != "" {
		t.Errorf("rediss://: options %+v", o)
	}
}
