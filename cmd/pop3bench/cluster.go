package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/popgate/popgate/internal/dirrun"
)

// redisPool is the most connections popgate's Redis client keeps open.
const redisPool = 4

// clusterSide is -cluster's side: a private Redis and a popgate with
// [cluster] on it.
type clusterSide struct {
	redis  *dirrun.Redis
	pg     *popgateProc
	fdBase int
}

// startCluster starts a private redis-server and a popgate named name
// with [cluster] in front of the current backend.
func (b *bench) startCluster(ctx context.Context, name string, rep *Report) (err error) {
	cs := &clusterSide{}
	if cs.redis, err = dirrun.StartRedis(); err != nil {
		return fmt.Errorf("-cluster needs redis-server (Debian package redis-server): %w", err)
	}
	b.cluster = cs
	rep.Meta.Cluster = fmt.Sprintf("redis-server %s (private, 127.0.0.1, pid %d)", cs.redis.Version, cs.redis.PID())
	key := make([]byte, 32)
	rand.Read(key)
	pwFile, keyFile := filepath.Join(b.dir, name+"-redis-password"), filepath.Join(b.dir, name+".key")
	if err := os.WriteFile(pwFile, []byte(dirrun.Password+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	section := fmt.Sprintf("\n[cluster]\nredis = \"redis://%s/0\"\nuser = \"popgate\"\npassword_file = %q\nkey_file = %q\nnode_name = %q\n",
		cs.redis.Addr(), pwFile, keyFile, name)
	if cs.pg, err = b.startPopgate(ctx, name, b.back.PlainAddr, section, nil); err != nil {
		return err
	}
	cs.fdBase, err = settledFDs(cs.pg.PID, 0)
	return err
}

// check tells whether the cluster popgate kept its counts in Redis
// throughout: Redis up at the end, no throttle fallback.
func (cs *clusterSide) check(name string) Check {
	c := Check{Name: name + ": Redis up, no failed-login count fell back to local state"}
	m, err := cs.pg.scrape()
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	// With [cluster], every series carries the replica's node_name.
	up, ok := m[fmt.Sprintf(`popgate_cluster_up{node=%q}`, name)]
	fb := m[fmt.Sprintf(`popgate_cluster_fallbacks_total{feature="throttle",node=%q}`, name)]
	c.OK = ok && up == 1 && fb == 0
	c.Detail = fmt.Sprintf("popgate_cluster_up %.0f, throttle fallbacks %.0f", up, fb)
	return c
}

// close stops the Redis; the popgate is among b.procs, stopped before.
func (cs *clusterSide) close() error {
	if cs == nil || cs.redis == nil {
		return nil
	}
	return cs.redis.Close()
}
