package cluster

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/tlsconf"
)

// startRedis starts a private redis-server; the fleet's tests need one
// and fail without it (scripts/test installs it).
func startRedis(t *testing.T) *dirrun.Redis {
	t.Helper()
	r, err := dirrun.StartRedis()
	if err != nil {
		t.Fatalf("redis-server (Debian package redis-server) is needed: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// writeKey writes a new random key_file in hex and returns its path.
func writeKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	name := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(name, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// syncBuf is a log sink tests read.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// replica is one popgate's TLS side: its cluster, its ticket keyring and
// a server config sealing tickets with it.
type replica struct {
	c    *Cluster
	logs *syncBuf
	conf *tls.Config
}

var (
	certOnce sync.Once
	testCert tls.Certificate
)

func serverCert(t *testing.T) tls.Certificate {
	t.Helper()
	certOnce.Do(func() {
		ca, err := certgen.NewCA("test CA", certgen.ECDSA)
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := ca.Issue("pop.example.net", certgen.ECDSA)
		if err != nil {
			t.Fatal(err)
		}
		if testCert, err = tls.X509KeyPair(c, k); err != nil {
			t.Fatal(err)
		}
	})
	return testCert
}

func newReplica(t *testing.T, r *dirrun.Redis, node, keyFile string) *replica {
	t.Helper()
	return newReplicaConfig(t, Config{Redis: r.URL(), KeyFile: keyFile, NodeName: node})
}

func newReplicaConfig(t *testing.T, cfg Config) *replica {
	t.Helper()
	logs := new(syncBuf)
	c, err := Open(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := c.newTicketKeys(time.Minute, 3*time.Minute, 50*time.Millisecond)
	tk, err := tlsconf.NewTickets(tlsconf.TicketsConfig{Source: src, Logger: c.log})
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{serverCert(t)}}
	tk.Apply(conf)
	return &replica{c: c, logs: logs, conf: conf}
}

// firstTicket is a client session cache that keeps the first ticket it
// is given, so that a test can present it to several servers.
type firstTicket struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

func (f *firstTicket) Get(string) (*tls.ClientSessionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cs, f.cs != nil
}

func (f *firstTicket) Put(_ string, cs *tls.ClientSessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cs == nil && cs != nil {
		f.cs = cs
	}
}

func client(v uint16) *tls.Config {
	return &tls.Config{
		ServerName:         "pop.example.net",
		InsecureSkipVerify: true, // what is tested is resumption, not trust
		MinVersion:         v,
		MaxVersion:         v,
		ClientSessionCache: new(firstTicket),
	}
}

// resumes makes one TLS connection over loopback to srv and reports
// whether it resumed; the handshake must succeed.
func resumes(t *testing.T, srv, cli *tls.Config) bool {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			srvErr <- err
			return
		}
		_, err = tc.Write([]byte("+")) // a TLS 1.3 client takes its ticket in when it reads
		srvErr <- err
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(deadline)
	c := tls.Client(raw, cli)
	_, cliErr := io.ReadFull(c, make([]byte, 1))
	if err := errors.Join(cliErr, <-srvErr); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c.ConnectionState().DidResume
}

var versions = []struct {
	name string
	v    uint16
}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}}

// TestTicketsShared: a session issued by one replica resumes on the others.
func TestTicketsShared(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a, b, c := newReplica(t, r, "a", key), newReplica(t, r, "b", key), newReplica(t, r, "c", key)
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			cli := client(v.v)
			if resumes(t, a.conf, cli) {
				t.Fatal("the first connection resumed")
			}
			for _, rp := range []*replica{b, c, a} {
				if !resumes(t, rp.conf, cli) {
					t.Errorf("a ticket issued by a does not resume on %s", rp.c.Node())
				}
			}
		})
	}
	// The key in Redis is sealed: 12 bytes of nonce, 32 of key, 16 of tag.
	if n := ticketEntryLen(t, r); n != "60" {
		t.Errorf("the entry in Redis is %s bytes, want 60 (sealed)", n)
	}
	for _, rp := range []*replica{a, b, c} {
		if !rp.c.Up() {
			t.Errorf("%s: Up() = false with Redis running", rp.c.Node())
		}
	}
}

func ticketName(epoch int64) string {
	return "popgate:{tickets:60}:" + strconv.FormatInt(epoch, 10)
}

// ticketEntryLen returns the length of the current epoch's entry (or the
// previous one's, just past a boundary).
func ticketEntryLen(t *testing.T, r *dirrun.Redis) string {
	t.Helper()
	now := time.Now().Unix() / 60
	for _, e := range []int64{now, now - 1} {
		v, err := r.Do("--raw", "STRLEN", ticketName(e))
		if err != nil {
			t.Fatal(err)
		}
		if v = strings.TrimSpace(v); v != "0" {
			return v
		}
	}
	t.Fatal("no ticket key in Redis")
	return ""
}

// TestTicketsRedisDown: with Redis stopped, handshakes and resumption on
// the same replica keep working, a replica that starts meanwhile gets
// keys of its own, Up reports the outage once; with Redis back (empty),
// the replicas converge again without a restart.
func TestTicketsRedisDown(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	a := newReplica(t, r, "a", key)
	cli := client(tls.VersionTLS13)
	resumes(t, a.conf, cli)

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // past a's poll period
	if !resumes(t, a.conf, cli) {
		t.Error("with Redis down, a ticket a issued before does not resume on a")
	}
	if a.c.Up() {
		t.Error("Up() = true with Redis stopped")
	}
	b := newReplica(t, r, "b", key) // starts while Redis is down
	if b.c.Up() {
		t.Error("b: Up() = true with Redis stopped")
	}
	cliB := client(tls.VersionTLS13)
	if resumes(t, b.conf, cliB) || !resumes(t, b.conf, cliB) {
		t.Error("with Redis down, b does not resume its own tickets")
	}
	for _, rp := range []*replica{a, b} {
		if n := strings.Count(rp.logs.String(), "Redis is unreachable"); n != 1 {
			t.Errorf("%s logged the outage %d times, want once:\n%s", rp.c.Node(), n, rp.logs)
		}
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	// The first handshakes after the outage read Redis again.
	cli2 := client(tls.VersionTLS13)
	resumes(t, a.conf, cli2)
	resumes(t, b.conf, client(tls.VersionTLS13))
	time.Sleep(100 * time.Millisecond)
	if !resumes(t, b.conf, cli2) {
		t.Error("after Redis came back, a ticket issued by a does not resume on b")
	}
	if !resumes(t, b.conf, cliB) {
		t.Error("after Redis came back, b no longer resumes a ticket it issued during the outage")
	}
	for _, rp := range []*replica{a, b} {
		if !rp.c.Up() {
			t.Errorf("%s: Up() = false after Redis came back", rp.c.Node())
		}
		if !strings.Contains(rp.logs.String(), "Redis is reachable again") {
			t.Errorf("%s did not log the end of the outage:\n%s", rp.c.Node(), rp.logs)
		}
	}
}

// TestTicketsBadEntries: an entry sealed with another key_file, or
// corrupted, is refused with a log line and never used; the replica
// keeps working on its own key.
func TestTicketsBadEntries(t *testing.T) {
	r := startRedis(t)
	a := newReplica(t, r, "a", writeKey(t))
	cliA := client(tls.VersionTLS13)
	resumes(t, a.conf, cliA)

	// Another key_file: b cannot open a's key and does not use it.
	b := newReplica(t, r, "b", writeKey(t))
	if !strings.Contains(b.logs.String(), "refused") || !strings.Contains(b.logs.String(), "does not open") {
		t.Errorf("b did not log the refusal:\n%s", b.logs)
	}
	if resumes(t, b.conf, cliA) {
		t.Error("a ticket of a resumed on b, whose key_file differs")
	}
	cliB := client(tls.VersionTLS13)
	if resumes(t, b.conf, cliB) || !resumes(t, b.conf, cliB) {
		t.Error("b does not resume its own tickets")
	}
	time.Sleep(200 * time.Millisecond) // b's refresher reads the entries again
	// a made the current epoch's entry and the next one's: each is
	// logged once, not at each read.
	seen := map[string]bool{}
	for _, l := range strings.Split(b.logs.String(), "\n") {
		if _, key, ok := strings.Cut(l, " key="); ok && strings.Contains(l, "refused") {
			key, _, _ = strings.Cut(key, " ")
			if seen[key] {
				t.Errorf("b logged the refusal of %s more than once:\n%s", key, b.logs)
			}
			seen[key] = true
		}
	}

	// Corrupted entries: the shared keys replaced by junk of several
	// lengths (60 bytes is a sealed key's).
	now := time.Now().Unix() / 60
	names := []string{ticketName(now - 1), ticketName(now), ticketName(now + 1)}
	for i, n := range names {
		junk := []string{"x", strings.Repeat("y", 60), strings.Repeat("z", 500)}[i%3]
		if _, err := r.Do("SET", n, junk); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	c := newReplica(t, r, "c", writeKey(t))
	cliC := client(tls.VersionTLS13)
	if resumes(t, c.conf, cliC) || !resumes(t, c.conf, cliC) {
		t.Error("c does not resume its own tickets beside corrupted entries")
	}
	if !resumes(t, a.conf, cliA) {
		t.Error("a no longer resumes its own ticket after its shared entry was corrupted")
	}
	if !strings.Contains(a.logs.String(), "refused") || !strings.Contains(c.logs.String(), "refused") {
		t.Errorf("the corrupted entry was not logged:\na:\n%s\nc:\n%s", a.logs, c.logs)
	}

	// An entry that opens with a's key but holds 16 bytes, not 32.
	for _, n := range names {
		ctx, cancel := a.c.ctx()
		err := a.c.client.Set(ctx, n, a.c.seal(n, make([]byte, 16)), time.Minute).Err()
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if !resumes(t, a.conf, cliA) {
		t.Error("a no longer resumes its own ticket beside a short entry")
	}
	if !strings.Contains(a.logs.String(), "not a 32-byte key") {
		t.Errorf("the short entry was not logged:\n%s", a.logs)
	}
}

// TestOpenConfig: mistakes in [cluster] are refused naming the key, and no
// error quotes the URL's password.
func TestOpenConfig(t *testing.T) {
	key := writeKey(t)
	short := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(short, []byte("abcd\n"), 0o600)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Redis: "http://h:1", KeyFile: key}, "cluster.redis"},
		{Config{Redis: "redis://:s3cret@h:1/zz", KeyFile: key}, "cluster.redis"},
		{Config{Redis: "redis://h:1/0"}, "cluster.key_file: required"},
		{Config{Redis: "redis://h:1/0", KeyFile: short}, "32-byte key"},
		{Config{Redis: "redis://h:1/0", KeyFile: key, CAFile: key}, "rediss://"},
		{Config{Redis: "redis://h:1/0", KeyFile: key, PasswordFile: "/nonexistent"}, "cluster.password_file"},
		{Config{KeyFile: key}, "cluster.redis or cluster.addresses: required"},
		{Config{Redis: "redis://h:1/0", Addresses: []string{"h:2"}, KeyFile: key}, "set one, not both"},
		{Config{Addresses: []string{"h"}, KeyFile: key}, `"h" is not host:port`},
		{Config{Addresses: []string{"h:0"}, KeyFile: key}, `"h:0" is not host:port`},
		{Config{Addresses: []string{"h:1", "h:1"}, KeyFile: key}, "listed twice"},
		{Config{Redis: "redis://h:1/0", TLS: true, KeyFile: key}, "cluster.tls"},
		{Config{Redis: "redis://h:1/0", SentinelMaster: "m", KeyFile: key}, "cluster.sentinel_master"},
		{Config{Addresses: []string{"h:1"}, SentinelPasswordFile: key, KeyFile: key}, "set only with cluster.sentinel_master"},
		{Config{Addresses: []string{"h:1"}, SentinelMaster: "m", SentinelUser: "u", KeyFile: key}, "cluster.sentinel_user: set with cluster.sentinel_password_file"},
		{Config{Addresses: []string{"h:1"}, CAFile: key, KeyFile: key}, "cluster.ca_file: set only with TLS"},
		{Config{Addresses: []string{"h:1"}, SentinelMaster: "m", SentinelPasswordFile: "/nonexistent", KeyFile: key}, "cluster.sentinel_password_file"},
	} {
		_, err := Open(tc.cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.cfg, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error quotes the password: %v", err)
		}
	}
	b64 := filepath.Join(t.TempDir(), "b64.key")
	os.WriteFile(b64, []byte("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"), 0o600)
	c, err := Open(Config{Redis: "redis://127.0.0.1:1/0", KeyFile: b64}, nil)
	if err != nil {
		t.Fatalf("a base64 key: %v", err)
	}
	if c.prefix != "popgate:" || c.Node() == "" {
		t.Errorf("defaults: prefix %q, node %q", c.prefix, c.Node())
	}
	c.Close()
}

// TestNoLeak: replicas opened and closed leave no goroutine behind.
func TestNoLeak(t *testing.T) {
	r := startRedis(t)
	key := writeKey(t)
	before := runtime.NumGoroutine()
	for range 3 {
		rp := newReplica(t, r, "a", key)
		resumes(t, rp.conf, client(tls.VersionTLS13))
		rp.c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after closing, %d before", n, before)
	}
}
