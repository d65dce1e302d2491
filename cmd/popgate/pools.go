package main

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/pool"
)

// defaultAffinityTTL is pool.affinity_ttl's default: Dovecot's
// director_user_expire.
const defaultAffinityTTL = 15 * time.Minute

// defaultOutage is pool.outage's default: a replica that cannot reach
// Redis refuses the logins it cannot place safely.
const defaultOutage = pool.OutageRefuse

// PoolConfig is one [[pool]]: backends over one mail store that share a
// pool's users, each user on one backend at a time (docs/pools.md).
type PoolConfig struct {
	Name        string         `toml:"name"`
	Backends    []string       `toml:"backends"`
	Weights     map[string]int `toml:"weights"`
	AffinityTTL Duration       `toml:"affinity_ttl"`
	Outage      string         `toml:"outage"`
}

// pools checks [[pool]]; backends are the [[backend]] names. It returns
// the pools and adds their names to routes, the names a route may name.
func (c *Config) pools(backends, routes map[string]bool, add func(string, ...any)) []pool.Pool {
	var ps []pool.Pool
	for i, pc := range c.Pool {
		key := fmt.Sprintf("pool[%d]", i)
		switch {
		case pc.Name == "":
			add("%s.name: missing", key)
		case backends[pc.Name]:
			add("%s.name: %q is a backend's name too; a route must tell them apart", key, pc.Name)
		case routes[pc.Name]:
			add("%s.name: %q used twice", key, pc.Name)
		}
		routes[pc.Name] = true
		if len(pc.Backends) == 0 {
			add("%s.backends: missing (the [[backend]] names the pool's users are spread over)", key)
		}
		p := pool.Pool{Name: pc.Name, AffinityTTL: pc.AffinityTTL.or(defaultAffinityTTL)}
		for j, b := range pc.Backends {
			switch {
			case !backends[b]:
				add("%s.backends[%d]: backend %q is not defined", key, j, b)
			case slices.Contains(pc.Backends[:j], b):
				add("%s.backends[%d]: %q listed twice", key, j, b)
			}
			w, ok := pc.Weights[b]
			if !ok {
				w = 1
			}
			p.Members = append(p.Members, pool.Member{Backend: b, Weight: w})
		}
		for b, w := range pc.Weights {
			if !slices.Contains(pc.Backends, b) {
				add("%s.weights: %q is not in backends", key, b)
			} else if w < 0 || w > pool.MaxWeight {
				add("%s.weights.%s: %d, must be 0 to %d", key, b, w, pool.MaxWeight)
			}
		}
		if len(p.Members) > 0 && !slices.ContainsFunc(p.Members, func(m pool.Member) bool { return m.Weight > 0 }) {
			add("%s.weights: every backend has weight 0, so the pool takes no user; give at least one a weight above 0 (drain a backend with `popgate pool drain` instead)", key)
		}
		if pc.AffinityTTL.Set && pc.AffinityTTL.Duration < 0 {
			add("%s.affinity_ttl: must not be negative", key)
		}
		switch pc.Outage {
		case "", pool.OutageRefuse:
			p.Outage = pool.OutageRefuse
		case pool.OutageHash:
			p.Outage = pool.OutageHash
		default:
			add("%s.outage: %q, want %q or %q", key, pc.Outage, pool.OutageRefuse, pool.OutageHash)
		}
		ps = append(ps, p)
	}
	return ps
}

// poolHeartbeat is how often a replica of a fleet renews, in Redis, the
// affinities of its users with a session: the shortest affinity_ttl's
// third, within 1s and 5s. A session's affinity outlives a replica that
// died by three of them.
func poolHeartbeat(ps []pool.Pool) time.Duration {
	hb := 5 * time.Second
	for _, p := range ps {
		hb = min(hb, p.AffinityTTL/3)
	}
	return max(hb, time.Second)
}

// newDirector makes the process's pool director: with [cluster], its
// affinities and the operator's changes live in Redis.
func newDirector(c *settings, cl *cluster.Cluster, log *slog.Logger) *pool.Director {
	pc := pool.Config{Pools: c.Pools, Backends: backendNames(c.Backends), Logger: log}
	var ps *cluster.PoolStore
	if cl != nil {
		ps = cl.NewPoolStore(poolHeartbeat(c.Pools))
		pc.Store = ps
		pc.Admin = cl.PoolAdmin()
	}
	d := pool.New(pc)
	if cl != nil {
		ps.OnConflict(d.Conflict)
		cl.WatchPools(d)
	}
	return d
}

// backendNames returns the names of the [[backend]]s.
func backendNames(bs []backendSettings) []string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.Name
	}
	return names
}
