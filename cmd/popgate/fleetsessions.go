package main

import (
	"context"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/cluster"
	"github.com/popgate/popgate/proxy"
)

// fleetSessions is the admin endpoints' view of the sessions with
// [cluster]: the proxy's own, and the fleet's through Redis.
type fleetSessions struct {
	*proxy.Server
	fleet *cluster.Sessions
}

var _ admin.FleetSessions = fleetSessions{}

func (f fleetSessions) FleetList(ctx context.Context) ([]proxy.SessionInfo, string) {
	return f.fleet.List(ctx)
}

func (f fleetSessions) FleetEnd(ctx context.Context, user, id string) (map[string]int, []string, string) {
	e := f.fleet.End(ctx, user, id)
	return e.Nodes, e.Unreached, e.Partial
}

// adminSessions is what the admin endpoints list and end: the fleet's
// with [cluster] ([cluster] cannot change on a reload), else the proxy's.
func (r *runner) adminSessions() admin.Sessions {
	if r.fleet != nil {
		return fleetSessions{Server: r.srv, fleet: r.fleet}
	}
	return r.srv
}

// startFleet keeps this replica's sessions registered in Redis and
// answers the fleet's kicks until shutdown. r.mu is held.
func (r *runner) startFleet() {
	if r.fleet == nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	r.stopFleet = stop
	r.wg.Go(func() { r.fleet.Run(ctx) })
}
