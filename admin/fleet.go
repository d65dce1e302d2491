package admin

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/popgate/popgate/proxy"
)

// FleetSessions is a [Sessions] that also answers for the other replicas
// of a fleet ([cluster]): GET /sessions lists, and DELETE /sessions ends,
// through it, as the console does. Its ids are "<node>:<connection id>".
type FleetSessions interface {
	Sessions
	// FleetList returns the fleet's sessions, oldest first, each with
	// its Node; partial is "" when every replica answered, else why
	// the list is not whole.
	FleetList(ctx context.Context) (list []proxy.SessionInfo, partial string)
	// FleetEnd ends the sessions of user, or the session id, on every
	// replica: ended counts them by node, unreached names the replicas
	// that did not answer, partial says why not all did.
	FleetEnd(ctx context.Context, user, id string) (ended map[string]int, unreached []string, partial string)
}

// PartialHeader is set on the answers of /sessions that are not the whole
// fleet's (Redis unreachable, a replica that did not answer), with why.
const PartialHeader = "Popgate-Partial"

// listAll is the list of GET /sessions and of the console: the fleet's
// with a FleetSessions.
func listAll(ctx context.Context, s Sessions) ([]proxy.SessionInfo, string) {
	if f, ok := s.(FleetSessions); ok {
		return f.FleetList(ctx)
	}
	return s.SessionList(), ""
}

// endResult is the answer of DELETE /sessions.
type endResult struct {
	Ended int `json:"ended"`
	// Nodes, Unreached and Partial are set in a fleet only.
	Nodes     map[string]int `json:"nodes,omitempty"`
	Unreached []string       `json:"unreached,omitempty"`
	Partial   string         `json:"partial,omitempty"`
}

// endAll ends the sessions of user, or the session id, on this replica or
// across the fleet.
func endAll(ctx context.Context, s Sessions, user, id string) endResult {
	if f, ok := s.(FleetSessions); ok {
		nodes, unreached, partial := f.FleetEnd(ctx, user, id)
		r := endResult{Nodes: nodes, Unreached: unreached, Partial: partial}
		for _, n := range nodes {
			r.Ended += n
		}
		return r
	}
	if user != "" {
		return endResult{Ended: s.EndSessions(user)}
	}
	if s.EndSession(id) {
		return endResult{Ended: 1}
	}
	return endResult{}
}

// logEnded logs what ending the sessions of user (or the one with id)
// did; attrs (remote, ...) come before the fleet's part.
func (r endResult) logEnded(log *slog.Logger, user, id string, attrs ...any) {
	a := []any{"user", user}
	if user == "" {
		a = []any{"conn", id}
	}
	a = append(append(append(a, "ended", r.Ended), attrs...), r.logAttrs()...)
	log.Info("admin: sessions ended", a...)
}

// logAttrs are the fleet's part of the "sessions ended" log line.
func (r endResult) logAttrs() []any {
	if r.Nodes == nil {
		return nil
	}
	var by []string
	for _, n := range slices.Sorted(maps.Keys(r.Nodes)) {
		by = append(by, n+"="+strconv.Itoa(r.Nodes[n]))
	}
	a := []any{"nodes", strings.Join(by, " ")}
	if len(r.Unreached) > 0 {
		a = append(a, "unreached", strings.Join(r.Unreached, " "))
	}
	return a
}
