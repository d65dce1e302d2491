package main

// The harness of the fleet tests that run popgate replicas as separate
// processes sharing one private Redis ([cluster]).

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/internal/dirrun"
)

// fleet is a private Redis and the files every replica's [cluster] names.
type fleet struct {
	t       *testing.T
	redis   *dirrun.Redis
	dir     string
	pwFile  string
	keyFile string
	// token is the admin token of every replica (metrics.token_file,
	// which [cluster] requires while the admin endpoints are on).
	token, tokenFile string
}

// newFleet starts a private Redis (stopped at the end of the test) and
// writes the password and key files.
func newFleet(t *testing.T) *fleet {
	t.Helper()
	f := &fleet{t: t, redis: dirrun.RedisFor(t), dir: t.TempDir()}
	f.pwFile, f.keyFile = filepath.Join(f.dir, "redis-password"), filepath.Join(f.dir, "cluster.key")
	key := make([]byte, 32)
	rand.Read(key)
	writeFile(t, f.pwFile, []byte(dirrun.Password+"\n"))
	writeFile(t, f.keyFile, []byte(hex.EncodeToString(key)+"\n"))
	tok := make([]byte, 16)
	rand.Read(tok)
	f.token, f.tokenFile = hex.EncodeToString(tok), filepath.Join(f.dir, "admin-token")
	writeFile(t, f.tokenFile, []byte(f.token+"\n"))
	return f
}

// tokenLine is metrics.token_file, for a configuration that ends in
// [metrics] (as oneBackend's does).
func (f *fleet) tokenLine() string {
	return fmt.Sprintf("token_file = %q\n", f.tokenFile)
}

// section is the admin token (the configuration before it must end in
// [metrics]) and the [cluster] section of replica i ("node<i>").
func (f *fleet) section(i int) string {
	return f.tokenLine() + fmt.Sprintf(`
[cluster]
redis = "redis://%s/0"
user = "popgate"
password_file = %q
key_file = %q
node_name = "node%d"
`, f.redis.Addr(), f.pwFile, f.keyFile, i)
}

// start runs n popgate processes; config(i) is replica i's configuration
// without [cluster], which start appends. Each waits for the listeners
// names and its admin address (config must set [metrics] address).
func (f *fleet) start(n int, config func(i int) string, names ...string) []*process {
	f.t.Helper()
	ps := make([]*process, n)
	for i := range n {
		ps[i] = startPopgate(f.t, writeConfig(f.t, config(i)+f.section(i)), names...)
	}
	return ps
}
