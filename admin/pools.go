package admin

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/popgate/popgate/pool"
)

// Pools is what the admin endpoints change of the backend pools (a
// *pool.Director).
type Pools interface {
	Status(ctx context.Context, withUsers bool) []pool.PoolStatus
	Change(ctx context.Context, pool string, op pool.Op) error
	Move(ctx context.Context, pool, user, to string) (string, error)
}

// Option adds to the admin endpoints.
type Option func(*handler, *http.ServeMux)

// WithPools serves the pool endpoints:
//
//	GET  /pools                           the pools, their backends, weights, sessions (?users=1: and users)
//	POST /pools/{pool}/{action}?backend=B  drain, undrain, remove, add (&weight=N), weight (&weight=N), reset
//	POST /pools/{pool}/move?user=U         end U's sessions (no QUIT) and assign it anew (&backend=B: to B)
func WithPools(p Pools) Option {
	return func(h *handler, mux *http.ServeMux) {
		h.pools = p
		mux.HandleFunc("GET /pools", h.listPools)
		mux.HandleFunc("POST /pools/{pool}/{action}", h.changePool)
	}
}

const poolsIndex = `GET    /pools            the backend pools (JSON); ?users=1 lists each backend's users
POST   /pools/P/ACTION?backend=B  ACTION drain, undrain, remove, add (&weight=N),
                         weight (&weight=N) or reset (without backend: the whole pool)
POST   /pools/P/move?user=U  end U's sessions (no QUIT) and assign it anew (&backend=B)
`

func (h *handler) listPools(w http.ResponseWriter, r *http.Request) {
	st := h.pools.Status(r.Context(), r.URL.Query().Get("users") != "")
	if st == nil {
		st = []pool.PoolStatus{}
	}
	h.writeJSON(w, http.StatusOK, st)
}

// poolAnswer is the answer to a change.
type poolAnswer struct {
	Pool    string `json:"pool"`
	Action  string `json:"action"`
	Backend string `json:"backend,omitempty"`
	User    string `json:"user,omitempty"`
	// Ended counts the sessions a move ended; Partial says which
	// replicas it may have missed.
	Ended   int    `json:"ended,omitempty"`
	Partial string `json:"partial,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (h *handler) changePool(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ans := poolAnswer{Pool: r.PathValue("pool"), Action: r.PathValue("action"), Backend: q.Get("backend"), User: q.Get("user")}
	fail := func(code int, err error) {
		ans.Error = err.Error()
		h.writeJSON(w, code, ans)
	}
	weight := 0
	if v := q.Get("weight"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fail(http.StatusBadRequest, errors.New("weight: not a number"))
			return
		}
		weight = n
	}
	code := func(err error) int {
		if errors.Is(err, pool.ErrUnknown) {
			return http.StatusNotFound
		}
		return http.StatusConflict
	}
	if ans.Action == "move" {
		if ans.User == "" {
			fail(http.StatusBadRequest, errors.New("move: give user"))
			return
		}
		// The user's sessions end first, then the affinity moves, then
		// any session that slipped in between on the old backend ends
		// too: from then on every login goes to the new one.
		end := func() endResult {
			if h.sessions == nil {
				return endResult{}
			}
			return endAll(r.Context(), h.sessions, ans.User, "")
		}
		res := end()
		to, err := h.pools.Move(r.Context(), ans.Pool, ans.User, ans.Backend)
		if err != nil {
			fail(code(err), err)
			return
		}
		again := end()
		ans.Backend, ans.Ended, ans.Partial = to, res.Ended+again.Ended, res.Partial
		if again.Partial != "" && again.Partial != res.Partial {
			// The second round may miss replicas the first reached: a
			// session it left on the old backend is the operator's to
			// know of.
			ans.Partial = strings.TrimPrefix(res.Partial+"; "+again.Partial, "; ")
		}
		h.log.Info("admin: pool user moved", "pool", ans.Pool, "user", ans.User, "backend", to, "ended", ans.Ended, "remote", r.RemoteAddr)
		h.writeJSON(w, http.StatusOK, ans)
		return
	}
	if err := h.pools.Change(r.Context(), ans.Pool, pool.Op{Action: ans.Action, Backend: ans.Backend, Weight: weight}); err != nil {
		fail(code(err), err)
		return
	}
	h.log.Info("admin: pool changed", "pool", ans.Pool, "action", ans.Action, "backend", ans.Backend, "weight", weight, "remote", r.RemoteAddr)
	h.writeJSON(w, http.StatusOK, ans)
}

var (
	poolUsersDesc = prometheus.NewDesc("popgate_pool_users",
		"Users of a backend pool on each backend that this replica knows of: every affinity on one replica alone, the users with a session here with [cluster].", []string{"pool", "backend"}, nil)
	poolSessionsDesc = prometheus.NewDesc("popgate_pool_sessions",
		"Sessions of a backend pool's users on each backend, on this replica.", []string{"pool", "backend"}, nil)
	poolWeightDesc = prometheus.NewDesc("popgate_pool_weight",
		"Effective weight of each backend of a pool: 0 when drained.", []string{"pool", "backend"}, nil)
	poolMovesDesc = prometheus.NewDesc("popgate_pool_moves_total",
		"Users of the pools that this replica sent to another backend than before, by reason (rebalance, drain, down, removed, admin, conflict: sessions ended because the fleet held the user on another backend).", []string{"reason"}, nil)
	poolAffinityDesc = prometheus.NewDesc("popgate_pool_affinity_total",
		"Pool logins that found the user's affinity (hit), had to assign a backend (miss), or were refused for now because a replica of a fleet could not read the affinities in Redis (refused).", []string{"result"}, nil)
)

// collectPools sends the pools' series.
func collectPools(ch chan<- prometheus.Metric, st pool.Stats) {
	for p, bs := range st.Weights {
		for b, w := range bs {
			c := st.Counts[p][b]
			ch <- prometheus.MustNewConstMetric(poolWeightDesc, prometheus.GaugeValue, float64(w), p, b)
			ch <- prometheus.MustNewConstMetric(poolUsersDesc, prometheus.GaugeValue, float64(c.Users), p, b)
			ch <- prometheus.MustNewConstMetric(poolSessionsDesc, prometheus.GaugeValue, float64(c.Sessions), p, b)
		}
	}
	for _, r := range []string{pool.MoveRebalance, pool.MoveDrain, pool.MoveDown, pool.MoveRemoved, pool.MoveAdmin, pool.MoveConflict} {
		ch <- prometheus.MustNewConstMetric(poolMovesDesc, prometheus.CounterValue, float64(st.Moves[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(poolAffinityDesc, prometheus.CounterValue, float64(st.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(poolAffinityDesc, prometheus.CounterValue, float64(st.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(poolAffinityDesc, prometheus.CounterValue, float64(st.Refused), "refused")
}
