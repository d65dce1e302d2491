// Package cluster connects a popgate replica to the Redis its fleet
// shares ([cluster] in the configuration). What popgate stores there is
// sealed with AES-GCM under a key of the operator's (key_file), so that
// Redis, its backups and its network never see a secret in clear; a
// replica with another key refuses the entries rather than using them.
//
// So far the fleet shares its TLS session-ticket keys ([TicketKeys]) and
// its failed-login budgets ([ThrottleStore]).
package cluster

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/internal/safefile"
)

// Timeouts of the Redis client: short, because logins ask Redis (the
// throttle, the sessions), and a Redis that does not answer must not hold
// them up.
const (
	dialTimeout = 500 * time.Millisecond
	ioTimeout   = 500 * time.Millisecond
)

// Config is the [cluster] section.
type Config struct {
	// Redis is a redis:// or rediss:// URL of one server. A password in
	// it is accepted but PasswordFile is better: the URL is never logged
	// whole, the file is read with the other secrets' rules.
	Redis string
	// Addresses (host:port), instead of Redis, are those of Sentinels
	// when SentinelMaster is set, else of nodes of a Redis Cluster.
	Addresses []string
	// SentinelMaster is the name of the master the Sentinels monitor.
	SentinelMaster string
	// TLS asks for TLS to every server of Addresses (with Redis, the
	// rediss:// scheme does).
	TLS bool
	// User is the Redis ACL user; it overrides the URL's.
	User string
	// PasswordFile holds the ACL user's password (one line).
	PasswordFile string
	// SentinelUser is the Sentinels' ACL user; empty means their default
	// user (requirepass).
	SentinelUser string
	// SentinelPasswordFile holds the Sentinels' password; empty means
	// the Sentinels are asked without authentication.
	SentinelPasswordFile string
	// CAFile verifies the servers over TLS; empty means the system
	// roots.
	CAFile string
	// KeyPrefix starts every key popgate writes ("popgate:" if empty),
	// so that several fleets can share one Redis.
	KeyPrefix string
	// NodeName names this replica (the hostname if empty).
	NodeName string
	// KeyFile holds the 32-byte key (64 hex digits or base64) that
	// seals what popgate stores in Redis. Required.
	KeyFile string
}

// Cluster is a replica's connection to the fleet's Redis. It is safe for
// concurrent use.
type Cluster struct {
	client redis.UniversalClient
	aead   cipher.AEAD
	names  sync.Pool // of hashName's HMACs, keyed with a key derived from key_file
	prefix string
	node   string
	log    *slog.Logger

	// life ends with Close, and with it the replica's background work
	// (the ticket key refresher); bg waits for that work to return.
	life context.Context
	end  context.CancelFunc
	bg   sync.WaitGroup

	mu        sync.Mutex
	up        bool // the last operation succeeded
	down      bool // an outage has been logged and not yet its end
	fallbacks map[string]uint64

	// replicas is the number of replicas registered in the sessions
	// index at its last read, this one included (0: not read yet).
	replicas atomic.Int32
}

// Open reads cfg's files and makes the client; it does not wait for
// Redis, which may be down when a replica starts: the first operation
// tells, and [Cluster.Up] follows.
func Open(cfg Config, log *slog.Logger) (*Cluster, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts, err := clientOptions(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.KeyFile == "" {
		return nil, errors.New("cluster.key_file: required: the key that seals what popgate stores in Redis (32 random bytes, e.g. `openssl rand -hex 32`)")
	}
	key, err := readKey(cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	// The key of hashName, apart from the sealing key.
	names, err := hkdf.Key(sha256.New, key, nil, "popgate cluster: key names", 32)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	c := &Cluster{aead: aead, prefix: cfg.KeyPrefix, node: cfg.NodeName, log: log, up: true, fallbacks: map[string]uint64{}}
	c.names.New = func() any { return hmac.New(sha256.New, names) }
	c.life, c.end = context.WithCancel(context.Background())
	if c.prefix == "" {
		c.prefix = "popgate:"
	}
	if c.node, err = cfg.Node(); err != nil {
		return nil, err
	}
	quietOnce.Do(func() { redis.SetLogger(quiet{}) })
	c.client = redis.NewUniversalClient(opts)
	// Tells at once (log, gauge) whether Redis answers.
	ctx, cancel := c.ctx()
	defer cancel()
	c.done(c.client.Ping(ctx).Err())
	return c, nil
}

// Node is the replica's name: NodeName, or the host name. The process
// logger carries it (node=…) on every line, and the metrics as a label:
// the cluster package's own log lines do not repeat it.
func (cfg Config) Node() (string, error) {
	if cfg.NodeName != "" {
		return cfg.NodeName, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", fmt.Errorf("cluster.node_name: no host name to default to (%v); set node_name", err)
	}
	return h, nil
}

// poolTimeout bounds the wait for one of the pool's connections, below
// the throttle's 500 ms per operation.
const poolTimeout = 250 * time.Millisecond

// clientOptions turns cfg into go-redis options. Its errors never quote
// the URL, which may hold a password.
func clientOptions(cfg Config) (*redis.UniversalOptions, error) {
	o := &redis.UniversalOptions{
		DialTimeout:  dialTimeout,
		ReadTimeout:  ioTimeout,
		WriteTimeout: ioTimeout,
		MaxRetries:   -1, // a retry would double the wait of a login
		// One dial per attempt: the next operation is the retry.
		DialerRetries: 1,
		PoolSize:      4,
		// A wait for a free connection longer than this is congestion
		// (a login flood), not an outage: go-redis says so with
		// redis.ErrPoolTimeout before the operation's own 500 ms run
		// out, and the throttle refuses that attempt for now instead of
		// taking Redis for down (see ThrottleStore.run).
		PoolTimeout: poolTimeout,
		// Pipelines (the throttle's, the tickets') share those 4
		// connections: go-redis would otherwise keep a second pool of
		// up to 10, with 256 KiB of buffers each.
		PipelinePoolSize: -1,
	}
	useTLS := cfg.TLS
	switch {
	case cfg.Redis != "" && len(cfg.Addresses) > 0:
		return nil, errors.New("cluster.redis and cluster.addresses: set one, not both: redis for one server, addresses for Sentinels (with sentinel_master) or the nodes of a Redis Cluster")
	case cfg.Redis != "":
		u, err := url.Parse(cfg.Redis)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return nil, errors.New(`cluster.redis: not a URL of the form redis://host:port/db or rediss://host:port/db`)
		}
		if cfg.TLS {
			return nil, errors.New("cluster.tls: set only with cluster.addresses; with cluster.redis, a rediss:// URL asks for TLS")
		}
		if cfg.SentinelMaster != "" {
			return nil, errors.New("cluster.sentinel_master: set with cluster.addresses (the Sentinels' addresses), not with cluster.redis")
		}
		po, err := redis.ParseURL(cfg.Redis)
		if err != nil {
			return nil, fmt.Errorf("cluster.redis: %s", strings.ReplaceAll(err.Error(), cfg.Redis, "<url>"))
		}
		o.Addrs, o.DB, o.Username, o.Password = []string{po.Addr}, po.DB, po.Username, po.Password
		useTLS = po.TLSConfig != nil
	case len(cfg.Addresses) > 0:
		seen := map[string]bool{}
		for _, a := range cfg.Addresses {
			host, port, err := net.SplitHostPort(a)
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("cluster.addresses: %q is not host:port", a)
			}
			if seen[a] {
				return nil, fmt.Errorf("cluster.addresses: %q is listed twice", a)
			}
			seen[a] = true
		}
		o.Addrs = slices.Clone(cfg.Addresses)
		if o.MasterName = cfg.SentinelMaster; o.MasterName == "" {
			// Even one address is a Redis Cluster node: the client
			// learns the others from it.
			o.IsClusterMode = true
		}
	default:
		return nil, errors.New("cluster.redis or cluster.addresses: required: one Redis (redis = \"redis://host:6379/0\"), or Sentinels (addresses and sentinel_master), or the nodes of a Redis Cluster (addresses)")
	}
	if (cfg.SentinelPasswordFile != "" || cfg.SentinelUser != "") && o.MasterName == "" {
		return nil, errors.New("cluster.sentinel_user and cluster.sentinel_password_file: set only with cluster.sentinel_master (Sentinels)")
	}
	if cfg.SentinelUser != "" && cfg.SentinelPasswordFile == "" {
		return nil, errors.New("cluster.sentinel_user: set with cluster.sentinel_password_file (the user's password)")
	}
	if cfg.User != "" {
		o.Username = cfg.User
	}
	if cfg.PasswordFile != "" {
		pw, err := readPassword("cluster.password_file", cfg.PasswordFile)
		if err != nil {
			return nil, err
		}
		o.Password = pw
	}
	if cfg.SentinelPasswordFile != "" {
		pw, err := readPassword("cluster.sentinel_password_file", cfg.SentinelPasswordFile)
		if err != nil {
			return nil, err
		}
		o.SentinelUsername, o.SentinelPassword = cfg.SentinelUser, pw
	}
	if useTLS {
		// With several addresses the server name to verify is each
		// one's host (tls.DialWithDialer fills it in).
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.Redis != "" {
			o.TLSConfig.ServerName, _, _ = net.SplitHostPort(o.Addrs[0])
		}
	}
	if cfg.CAFile != "" {
		if o.TLSConfig == nil {
			return nil, errors.New("cluster.ca_file: set only with TLS: a rediss:// URL, or tls = true with cluster.addresses")
		}
		pem, err := safefile.ReadFile(cfg.CAFile, safefile.Options{})
		if err != nil {
			return nil, fmt.Errorf("cluster.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
		o.TLSConfig.RootCAs = pool
	}
	return o, nil
}

// readPassword reads a password file (one line) for the key named.
func readPassword(key, name string) (string, error) {
	pw, err := safefile.ReadFile(name, safefile.Options{Limit: 4096, Private: true})
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	p := strings.TrimRight(string(pw), "\r\n")
	clear(pw)
	if p == "" {
		return "", fmt.Errorf("%s: the file is empty", key)
	}
	return p, nil
}

// quiet silences go-redis's own logger, which would print every failed
// dial to stderr while Redis is down; [Cluster.done] logs an outage once.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// readKey reads a 32-byte key written in hex or base64.
func readKey(name string) ([]byte, error) {
	b, err := safefile.ReadFile(name, safefile.Options{Limit: 1024, Private: true})
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(string(b))
	clear(b)
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == 32 {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%s does not hold a 32-byte key in hex (64 digits) or base64; make one with `openssl rand -hex 32`", name)
}

// Node is the replica's name.
func (c *Cluster) Node() string { return c.node }

// Up reports whether the last Redis operation succeeded (the
// popgate_cluster_up gauge); true before the first.
func (c *Cluster) Up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// Fallback counts one operation of feature ("tickets", "throttle",
// "sessions", "acme") that Redis failed and that this replica did on its
// own state instead (popgate_cluster_fallbacks_total{feature}).
func (c *Cluster) Fallback(feature string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fallbacks[feature]++
}

// Fallbacks returns the counts of [Cluster.Fallback] by feature.
func (c *Cluster) Fallbacks() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.fallbacks)
}

// Close stops the replica's background work, waiting for it, and closes
// the client's connections.
func (c *Cluster) Close() error {
	c.end()
	c.bg.Wait()
	return c.client.Close()
}

// background runs f until Close; f returns when ctx is done.
func (c *Cluster) background(f func(ctx context.Context)) {
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		f(c.life)
	}()
}

// key is a Redis key under the prefix.
func (c *Cluster) key(purpose string) string { return c.prefix + purpose }

// ctx bounds one operation; Close ends it too.
func (c *Cluster) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.life, dialTimeout+2*ioTimeout)
}

// done records the outcome of an operation: one WARN line when Redis
// becomes unreachable, one INFO line when it answers again.
func (c *Cluster) done(err error) {
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.up = err == nil
	switch {
	case err != nil && !c.down:
		c.down = true
		c.log.Warn("cluster: Redis is unreachable; this replica works on its own state until it is back", "err", err)
	case err == nil && c.down:
		c.down = false
		c.log.Info("cluster: Redis is reachable again; sharing resumes")
	}
}

// hashName is a keyed hash (HMAC-SHA256 under a key derived from
// key_file, 128 bits in hex) of a name that must not appear in clear in
// Redis: a user name, a client address. purpose keeps the hashes of
// different uses apart.
// It is on every login's path: the HMACs are reused.
func (c *Cluster) hashName(purpose, name string) string {
	m := c.names.Get().(hash.Hash)
	defer c.names.Put(m)
	m.Reset()
	io.WriteString(m, purpose)
	m.Write([]byte{0})
	io.WriteString(m, name)
	var sum [sha256.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0])[:16])
}

// seal encrypts plain for the Redis key name, which is the additional
// data: an entry copied under another key does not open.
func (c *Cluster) seal(name string, plain []byte) []byte {
	nonce := make([]byte, c.aead.NonceSize(), c.aead.NonceSize()+len(plain)+c.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand does not fail (Go 1.24+)
	}
	return c.aead.Seal(nonce, nonce, plain, []byte(name))
}

// errSealed is the error of an entry that does not open.
var errSealed = errors.New("the entry does not open with cluster.key_file (another key_file on some replica, or a corrupted entry)")

// open decrypts what seal made for name.
func (c *Cluster) open(name string, sealed []byte) ([]byte, error) {
	n := c.aead.NonceSize()
	if len(sealed) < n+c.aead.Overhead() {
		return nil, fmt.Errorf("the entry is %d bytes, too short to be sealed", len(sealed))
	}
	plain, err := c.aead.Open(nil, sealed[:n], sealed[n:], []byte(name))
	if err != nil {
		return nil, errSealed
	}
	return plain, nil
}
