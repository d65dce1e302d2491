package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy"
)

// Handler returns the admin endpoints (see the package comment). A nil m
// serves no /metrics; a nil sessions no /sessions; a nil ready is always
// ready; a nil log discards. access is called for every request and says
// who may make it (a configuration reload can change the answer); nil
// lets everyone in, as the zero Access does. Other methods on a known
// path are answered 405 with an Allow header, unknown paths 404 (both
// after the Host and token checks of Access). With both m and access,
// the operator's console is served under /console/ (console.go): it asks
// for the token through its login form rather than a header.
func Handler(m *Metrics, sessions Sessions, ready func() error, access func() Access, log *slog.Logger, opts ...Option) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{sessions: sessions, ready: ready, log: log}
	mux := http.NewServeMux()
	// GET patterns also match HEAD.
	mux.HandleFunc("GET /{$}", h.index)
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	if sessions != nil {
		mux.HandleFunc("GET /sessions", h.listSessions)
		mux.HandleFunc("DELETE /sessions", h.endSessions)
	}
	for _, o := range opts {
		o(h, mux)
	}
	if access == nil {
		return mux
	}
	fails := &failBudget{}
	if m != nil {
		c := newConsole(m, sessions, access, log)
		c.fails = fails
		mux.Handle(consolePrefix, c)
	}
	return &guard{next: mux, access: access, log: log, fails: fails}
}

type handler struct {
	sessions Sessions
	pools    Pools // nil: no /pools (WithPools)
	ready    func() error
	log      *slog.Logger
}

const index = `popgate admin
GET    /metrics          Prometheus metrics
GET    /healthz          liveness
GET    /readyz           readiness
GET    /sessions         live sessions (JSON); ?user=U only those of user U
DELETE /sessions?user=U  end the sessions of user U
DELETE /sessions?id=ID   end the session with connection id ID
With [cluster], /sessions answers for the fleet: each session names its
node, ids are NODE:ID (a bare ID is one of this replica), DELETE ends
sessions on every replica and counts them by node; a header
Popgate-Partial says why an answer is not the whole fleet's.
GET    /console/         the operator's console in a browser (log in with
                         the admin token; needs metrics.token_file)
When an admin token is set, /sessions (and /metrics if protected) need
the header "Authorization: Bearer TOKEN".
`

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	if h.pools != nil {
		writeText(w, http.StatusOK, index+poolsIndex)
		return
	}
	writeText(w, http.StatusOK, index)
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusOK, "ok\n")
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	if h.ready != nil {
		if err := h.ready(); err != nil {
			writeText(w, http.StatusServiceUnavailable, err.Error()+"\n")
			return
		}
	}
	writeText(w, http.StatusOK, "ready\n")
}

// listSessions answers GET /sessions, and GET /sessions?user=NAME with
// that user's sessions only (compared without regard to case, as DELETE
// does).
//
// With a [FleetSessions] (a fleet), the list is the fleet's, each session
// naming its node; when it is not whole (Redis unreachable: this
// replica's only), the answer carries a [PartialHeader] saying why.
func (h *handler) listSessions(w http.ResponseWriter, r *http.Request) {
	list, partial := listAll(r.Context(), h.sessions)
	if user := r.URL.Query().Get("user"); user != "" {
		list = sessionsOf(h.sessions, list, user)
	}
	if list == nil {
		list = []proxy.SessionInfo{} // "[]", not "null"
	}
	if partial != "" {
		w.Header().Set(PartialHeader, partial)
	}
	h.writeJSON(w, http.StatusOK, list)
}

// sessionsOf keeps in list the sessions of user, compared as
// [proxy.Server.EndSessions] compares ([proxy.Server.UserMatcher]: folded,
// and without the domain under a Router that compares local parts only),
// so that what is listed is what would end. Sessions without a
// UserMatcher compare folded names ([auth.FoldUser]).
func sessionsOf(sessions Sessions, list []proxy.SessionInfo, user string) []proxy.SessionInfo {
	var match func(string) bool
	if m, ok := sessions.(interface {
		UserMatcher(user string) func(string) bool
	}); ok {
		match = m.UserMatcher(user)
	} else {
		k := auth.FoldUser(user)
		match = func(u string) bool { return k != "" && auth.FoldUser(u) == k }
	}
	return slices.DeleteFunc(list, func(s proxy.SessionInfo) bool { return !match(s.User) })
}

// endSessions ends the sessions of one user or the one session with an id:
// DELETE /sessions?user=NAME or DELETE /sessions?id=ID. In a fleet it
// ends them on every replica and the answer counts them by node.
func (h *handler) endSessions(w http.ResponseWriter, r *http.Request) {
	user, id, err := sessionQuery(r.URL.RawQuery)
	if err != nil {
		h.writeJSON(w, http.StatusBadRequest, struct {
			Error string `json:"error"`
		}{err.Error()})
		return
	}
	res := endAll(r.Context(), h.sessions, user, id)
	res.logEnded(h.log, user, id, "remote", r.RemoteAddr)
	if res.Partial != "" {
		w.Header().Set(PartialHeader, res.Partial)
	}
	h.writeJSON(w, http.StatusOK, res)
}

// sessionQuery returns the one non-empty user or id of a DELETE /sessions
// query.
func sessionQuery(raw string) (user, id string, err error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return "", "", fmt.Errorf("bad query: %w", err)
	}
	for k, v := range q {
		switch {
		case k != "user" && k != "id":
			return "", "", fmt.Errorf("unknown parameter %q: want user or id", k)
		case len(v) != 1:
			return "", "", fmt.Errorf("parameter %s given %d times", k, len(v))
		case v[0] == "":
			return "", "", fmt.Errorf("parameter %s is empty", k)
		}
	}
	_, hasUser := q["user"]
	_, hasID := q["id"]
	switch {
	case hasUser && hasID:
		return "", "", errors.New("give user or id, not both")
	case !hasUser && !hasID:
		return "", "", errors.New("give user or id")
	}
	return q.Get("user"), q.Get("id"), nil
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, s) // an error means the client went away
}

func (h *handler) writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		h.log.Error("admin: encode response", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(b, '\n')) // an error means the client went away
}

// Timeouts and limits of the admin HTTP server. Scrapes are small and
// local; WriteTimeout leaves room for a slow /metrics on a busy proxy.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 30 * time.Second
	maxHeaderBytes    = 16 << 10
	shutdownTimeout   = 5 * time.Second
)

// Serve serves h on ln until ctx is done, then shuts the server down,
// letting requests in progress finish for up to 5 seconds before closing
// their connections. It returns nil after ctx is done, else the error that
// stopped it. It closes ln. A nil log discards.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return ServeTLS(ctx, ln, h, nil, log)
}

// ServeTLS is Serve with HTTPS: tlsConfig is asked at every connection
// accepted, and the connection is served over TLS with the config it
// returns, in plain HTTP when it returns nil (or tlsConfig is nil). So a
// configuration reload switches TLS on or off for the next connection
// without binding the address again, and the config's GetCertificate
// serves the certificates of the moment. A plain HTTP request on a TLS
// connection gets 400 from net/http and the connection closes.
func ServeTLS(ctx context.Context, ln net.Listener, h http.Handler, tlsConfig func() *tls.Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	capped := newCapListener(ln, maxConns, maxConnsPerIP)
	var serveLn net.Listener = capped
	if tlsConfig != nil {
		serveLn = &tlsListener{Listener: capped, config: tlsConfig}
	}
	errc := make(chan error, 1)
	go serveHTTP(srv, serveLn, errc)
	go reportRefused(ctx, capped, log)
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("admin: shutdown: requests still running, closing them", "err", err)
		srv.Close() // its error is the listener's, already closed by Shutdown
	}
	<-errc // http.ErrServerClosed
	return nil
}

// reportRefused logs, at most once a minute, how many connections the caps
// refused.
func reportRefused(ctx context.Context, l *capListener, log *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := l.refused(); n > 0 {
				log.Warn("admin: connections refused at the connection caps", "refused", n, "max", maxConns, "max_per_ip", maxConnsPerIP)
			}
		}
	}
}

// tlsListener wraps each connection in TLS when config says so at the
// moment it is accepted. The handshake runs in net/http's connection
// goroutine, within the server's read timeouts.
type tlsListener struct {
	net.Listener
	config func() *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc := l.config(); tc != nil {
		return tls.Server(c, tc), nil
	}
	return c, nil
}

// serveHTTP runs srv on ln and reports why it stopped.
func serveHTTP(srv *http.Server, ln net.Listener, errc chan<- error) {
	errc <- srv.Serve(ln)
}
