package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// Server is a POP3 proxy. Build it with [New]; it serves listeners passed to
// [Server.Serve] until [Server.Shutdown] or [Server.Close].
type Server struct {
	cfg    atomic.Pointer[Config] // the current configuration; each session keeps the one it started with
	log    *slog.Logger
	obs    Observer
	legacy LegacyObserver // obs, if it implements it; else nil
	idBase string         // random per process, so connection IDs differ across restarts
	nextID atomic.Uint64

	// failTimes holds recent backend refusals' durations, which
	// popgate's own refusals imitate.
	failTimes failureTimes

	ctx    context.Context // cancelled by Close and at the end of Shutdown
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]*atomic.Pointer[Listener]
	sessions  map[*session]struct{}
	perIP     map[netip.Prefix]int // sessions per client network (auth.ClientNet)
	closing   bool
	// handingOver: closing for HandOver, which serves what the
	// listeners still accept instead of refusing it.
	handingOver bool
	accepting   sync.WaitGroup // Serve loops
	endedIn     int64          // octets relayed client→backend by ended sessions
	endedOut    int64          // octets relayed backend→client by ended sessions
	relaying    int            // sessions past the login
	wg          sync.WaitGroup // live connections
	idle        chan struct{}  // closed when sessions drops to zero while closing

	bufs      bufPool   // large splice buffers of TLS sources, borrowed only while data flows
	rawBufs   bufPool   // the same for plain TCP sources
	batchBufs bufPool   // TLS records of one write to a client, borrowed for that write
	readers   sync.Pool // *bufio.Reader for AUTHORIZATION and backend logins
	writers   sync.Pool // *bufio.Writer for AUTHORIZATION
	caps      capsCache // backends' capabilities
	health    healthChecks

	// parker holds idle splice directions without goroutines; nil
	// where epoll is not available.
	parker    *parker
	parkAfter time.Duration // idle time before a direction parks
	smallBufs sync.Pool     // *[]byte of smallBufSize for TLS reads
}

// Sizes of the AUTHORIZATION buffers. The reader holds any command line
// (255 octets) with room for pipelined ones; longer SASL lines are
// assembled by pop3.ReadLine.
const (
	readerSize = 1024
	writerSize = 512
)

func (s *Server) getReader(r io.Reader) *bufio.Reader {
	if br, ok := s.readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, readerSize)
}

func (s *Server) putReader(br *bufio.Reader) {
	br.Reset(nil)
	s.readers.Put(br)
}

func (s *Server) getWriter(w io.Writer) *bufio.Writer {
	if bw, ok := s.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, writerSize)
}

func (s *Server) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	s.writers.Put(bw)
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rb [3]byte
	rand.Read(rb[:])
	ctx, cancel := context.WithCancel(context.Background())
	pk, err := newParker()
	if err != nil {
		log.Debug("idle sessions keep their goroutines", "err", err)
		pk = nil
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	s := &Server{
		parker:    pk,
		parkAfter: parkAfter,
		log:       log,
		obs:       obs,
		idBase:    hex.EncodeToString(rb[:]),
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]*atomic.Pointer[Listener]),
		sessions:  make(map[*session]struct{}),
		perIP:     make(map[netip.Prefix]int),
	}
	s.legacy, _ = obs.(LegacyObserver)
	s.rawBufs.size = rawBufSize
	s.batchBufs.size = batchBufSize
	s.cfg.Store(&cfg)
	return s, nil
}

// config returns the current configuration.
func (s *Server) config() *Config { return s.cfg.Load() }

// Reconfigure makes cfg the configuration of the connections accepted from
// now on: routes, backends, limits, timeouts, the throttle, the greeting.
// Running sessions keep the configuration they started with. An invalid
// cfg is refused and the current one stays. Logger and Observer are
// those New was given; cfg's are ignored.
func (s *Server) Reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfg.Store(&cfg)
	s.health.mu.Lock()
	s.updateHealthChecks()
	s.health.mu.Unlock()
	return nil
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln and serves them as l says, until ctx is
// done, Shutdown or Close is called, or ln fails. It closes ln when it
// returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, l Listener) error {
	if l.TLS != TLSNone && l.TLSConfig == nil {
		return fmt.Errorf("proxy: listener %q: TLS %s needs a TLSConfig", l.Name, l.TLS)
	}
	if l.ProxyProtocol && len(s.config().TrustedProxies) == 0 {
		return fmt.Errorf("proxy: listener %q: ProxyProtocol needs Config.TrustedProxies", l.Name)
	}
	if l.Name == "" {
		l.Name = ln.Addr().String()
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	spec := s.listeners[ln]
	if spec == nil {
		spec = new(atomic.Pointer[Listener])
		spec.Store(&l)
		s.listeners[ln] = spec
	}
	// else UpdateListener came first: its settings are the newer ones.
	s.accepting.Add(1)
	defer s.accepting.Done()
	s.mu.Unlock()
	s.startHealthChecks()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosing() || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				// EMFILE and friends: back off, capped, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "listener", l.Name, "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("proxy: listener %q: %w", l.Name, err)
		}
		backoff = 0
		s.accept(c, *spec.Load())
	}
}

// UpdateListener changes how connections accepted from now on by ln are
// served; connections already accepted keep the settings they were
// accepted with. The socket stays open throughout, so no connection is
// refused while the settings change. Called before Serve has started on
// ln, it takes the place of Serve's Listener.
func (s *Server) UpdateListener(ln net.Listener, l Listener) error {
	if l.TLS != TLSNone && l.TLSConfig == nil {
		return fmt.Errorf("proxy: listener %q: TLS %s needs a TLSConfig", l.Name, l.TLS)
	}
	if l.Name == "" {
		l.Name = ln.Addr().String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return ErrServerClosed
	}
	spec := s.listeners[ln]
	if spec == nil {
		spec = new(atomic.Pointer[Listener])
		s.listeners[ln] = spec
	}
	spec.Store(&l)
	return nil
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// accept registers c and starts its session, or refuses it when a limit is
// reached. On a PROXY protocol listener the client address is not known
// yet: the per-IP limit is applied by the session once it has read the
// header (see session.readProxyHeader), and here only the source is checked
// against the trusted proxies, which costs no read.
func (s *Server) accept(c net.Conn, l Listener) {
	ip := addrPort(c.RemoteAddr()).Addr()
	cfg := s.config()
	s.obs.Accepted(l.Name)
	if l.ProxyProtocol && !cfg.trustedProxy(ip) {
		s.obs.Refused(l.Name, "untrusted_proxy")
		s.log.Warn("connection refused", "listener", l.Name, "remote", c.RemoteAddr().String(), "reason", "not from a trusted proxy (limits.trusted_proxies)")
		c.Close()
		return
	}
	ipNet, hasIP := cfg.clientNet(ip)
	s.mu.Lock()
	refuse, reason := "", ""
	switch {
	case s.closing && !s.handingOver:
		refuse, reason = "shutting down", "shutting_down"
	case cfg.MaxConnections > 0 && len(s.sessions) >= cfg.MaxConnections:
		refuse, reason = "max_connections reached", "max_connections"
	case !l.ProxyProtocol && hasIP && cfg.MaxConnectionsPerIP > 0 && s.perIP[ipNet] >= cfg.MaxConnectionsPerIP:
		refuse, reason = "max_connections_per_ip reached", "max_connections_per_ip"
	}
	if refuse != "" {
		s.mu.Unlock()
		s.obs.Refused(l.Name, reason)
		s.log.Warn("connection refused", "listener", l.Name, "remote", c.RemoteAddr().String(), "reason", refuse)
		go refuseConn(c, l)
		return
	}
	sess := s.newSession(c, l, cfg)
	s.sessions[sess] = struct{}{}
	if !l.ProxyProtocol && hasIP {
		s.perIP[ipNet]++
		sess.ipNet = ipNet
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go sess.serve()
}

// countIP registers the session's client address, learnt from a PROXY
// header, with the per-IP limit; false means the limit is reached.
func (s *Server) countIP(sess *session, client netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ipNet, ok := sess.cfg.clientNet(client.Addr())
	if !ok {
		sess.remote = client
		return true
	}
	if limit := sess.cfg.MaxConnectionsPerIP; limit > 0 && s.perIP[ipNet] >= limit {
		return false
	}
	sess.remote = client
	s.perIP[ipNet]++
	sess.ipNet = ipNet
	return true
}

// refuseConn tells a client popgate is busy and closes. On a TLS listener
// the client would not understand plaintext, so the connection is just
// closed.
func refuseConn(c net.Conn, l Listener) {
	if l.TLS != TLSImplicit {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte("-ERR " + pop3.CodeSysTemp + " Too many connections, try again later\r\n"))
	}
	c.Close()
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
	// Under s.mu, with the delete: Stats never counts these octets twice
	// or not at all.
	s.endedIn += sess.sp.in.Load()
	s.endedOut += sess.sp.out.Load()
	if sess.relaying {
		s.relaying--
	}
	if sess.ipNet.IsValid() {
		if s.perIP[sess.ipNet]--; s.perIP[sess.ipNet] <= 0 {
			delete(s.perIP, sess.ipNet)
		}
	}
	if s.closing && len(s.sessions) == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.wg.Done()
}

// Shutdown stops accepting, waits for running sessions to end until ctx is
// done, then closes the rest (both sockets; no QUIT is sent to any backend)
// and returns ctx's error. It returns nil as soon as the last session has
// ended. Logged-in sessions are left alone until then: whatever the client
// sends, QUIT included, reaches the backend as before. Sessions still in
// the AUTHORIZATION state are closed at once, and a login they wait on (a
// lookup, a backend login, the failed-login delay) is abandoned: they have
// nothing to lose, and would hold the drain up.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.shutdown(ctx, true)
}

// HandOver is Shutdown for a process whose listening sockets another one
// serves now (an upgrade): it stops accepting, and waits for every
// session, also those still in the AUTHORIZATION state. A client that
// connected a moment before the handover logs in and is served here, as if
// nothing happened; login_timeout bounds the wait for it.
func (s *Server) HandOver(ctx context.Context) error {
	return s.shutdown(ctx, false)
}

func (s *Server) shutdown(ctx context.Context, closeLogins bool) error {
	s.stopHealthChecks()
	s.mu.Lock()
	s.closing = true
	s.handingOver = !closeLogins
	for ln := range s.listeners {
		ln.Close()
	}
	if !closeLogins {
		// A connection the kernel gave to an Accept just before the
		// close is this process's alone: the other one never sees it.
		// It is served; once the accept loops have returned, the
		// sessions are all known.
		s.mu.Unlock()
		s.accepting.Wait()
		s.mu.Lock()
	}
	var idle chan struct{}
	if len(s.sessions) > 0 {
		idle = make(chan struct{})
		s.idle = idle
	}
	if closeLogins {
		for sess := range s.sessions {
			sess.closeIfNotSpliced()
		}
	}
	s.mu.Unlock()
	var err error
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	s.Close()
	return err
}

// Close closes all listeners and all sessions at once and waits for their
// goroutines to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	// Outside s.mu: closing a parked session ends it right here, and
	// ending takes s.mu.
	for _, sess := range sessions {
		sess.endBy(endedByShutdown)
	}
	s.cancel()
	s.stopHealthChecks()
	s.wg.Wait()
	if s.parker != nil {
		s.parker.close()
	}
	return nil
}

// Accepted returns the number of client connections accepted so far.
func (s *Server) Accepted() uint64 { return s.nextID.Load() }

// Parked returns the number of splice directions that wait for data
// without a goroutine.
func (s *Server) Parked() int64 {
	if s.parker == nil {
		return 0
	}
	return s.parker.parked.Load()
}

// Sessions returns the number of live client connections.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Stats are the server's numbers at one moment, for metrics.
type Stats struct {
	// Active counts open client connections by listener name, in the
	// AUTHORIZATION state and relaying; every served listener is there,
	// with 0 when it has none.
	Active map[string]int
	// Relaying counts logged-in sessions being relayed.
	Relaying int
	// BytesIn and BytesOut count the octets relayed client→backend and
	// backend→client since the server started, by ended and live
	// sessions. They only grow.
	BytesIn, BytesOut int64
}

// Stats returns the current numbers. It costs a walk over the live
// sessions.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Active: make(map[string]int), Relaying: s.relaying, BytesIn: s.endedIn, BytesOut: s.endedOut}
	for _, spec := range s.listeners {
		st.Active[spec.Load().Name] = 0
	}
	for sess := range s.sessions {
		st.Active[sess.l.Name]++
		st.BytesIn += sess.sp.in.Load()
		st.BytesOut += sess.sp.out.Load()
	}
	return st
}

// SessionList describes the live client connections, oldest first.
func (s *Server) SessionList() []SessionInfo {
	s.mu.Lock()
	list := make([]SessionInfo, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess.info())
	}
	s.mu.Unlock()
	slices.SortFunc(list, func(a, b SessionInfo) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return list
}

// EndSessions ends every session of user (the name the client logged in
// with, compared as [auth.FoldUser] folds: every spelling the directory
// takes for the same entry, every domain of it when the Router compares
// local parts only), and every session of a pool that opens user's
// mailbox (a master user's, an authorization identity's), logged in or
// still logging in:
// both sockets are closed, no QUIT is sent. It returns how many it ended.
// Moving a mailbox: change its route, reload, then end its sessions so
// that the client's next login goes to the new backend.
func (s *Server) EndSessions(user string) int {
	match := sessionsOf(user)
	if match == nil {
		return 0
	}
	return s.endWhere(match)
}

// sessionsOf returns the test EndSessions tells user's sessions by; nil
// for an empty user.
func sessionsOf(user string) func(*session) bool {
	k := auth.FoldUser(user)
	if k == "" {
		return nil
	}
	// Behind a Router that compares local parts only, a pool keys the
	// mailbox by its local part (poolKey).
	local := auth.FoldUser(localPart(user))
	return func(sess *session) bool {
		blind := domainBlind(sess.cfg.Router)
		if userMatches(user, sess.userName(), blind) {
			return true
		}
		// A pool session of user's mailbox is user's, whoever logged in
		// (a master user, an authorization identity): a move that missed
		// it would leave the mailbox open on its old backend.
		m := sess.poolMailboxName()
		return m != "" && (m == k || blind && m == local)
	}
}

// EndPoolSessions ends, without QUIT, the sessions of this process that
// a pool assigned to mailbox (folded) on backend, as a move does: the
// fleet holds the mailbox on another backend now ([pool.Director.SetEnd]).
// pool is the pool's name; a mailbox on backend is the same mailbox
// whichever pool assigned it.
func (s *Server) EndPoolSessions(pool, mailbox, backend string) int {
	if mailbox == "" {
		return 0
	}
	return s.endWhere(func(sess *session) bool {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		return sess.poolMailbox == mailbox && sess.backend == backend
	})
}

// UserMatcher returns the test that tells the sessions of user, by their
// user name ([SessionInfo.User]), as [Server.EndSessions] tells them under
// the current configuration: the one function that a list filtered by
// user (the admin endpoints, the console, the fleet's list) and the
// sessions that end agree on. It matches nothing for an empty user.
func (s *Server) UserMatcher(user string) func(sessionUser string) bool {
	blind := domainBlind(s.config().Router)
	return func(u string) bool { return userMatches(user, u, blind) }
}

// domainBlind reports whether r compares the local parts of user names
// only ([auth.DomainBlind]).
func domainBlind(r auth.Router) bool {
	db, ok := r.(auth.DomainBlind)
	return ok && db.IgnoresDomain()
}

// userMatches reports whether a session logged in as u is one of user's:
// the same name folded ([auth.FoldUser]), or, with a Router that compares
// local parts only (blind), the same entry, every domain of the name
// being the entry's (and logging in with its password).
func userMatches(user, u string, blind bool) bool {
	k := auth.FoldUser(user)
	if k == "" || u == "" {
		return false
	}
	if auth.FoldUser(u) == k {
		return true
	}
	if !blind {
		return false
	}
	e := auth.FoldUser(localPart(user))
	return e != "" && auth.FoldUser(localPart(u)) == e
}

// localPart is user without its domain (what follows the last @).
func localPart(user string) string {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		return user[:i]
	}
	return user
}

// EndSession ends the session with connection id id, as EndSessions does,
// and reports whether there was one.
func (s *Server) EndSession(id string) bool {
	return s.endWhere(func(sess *session) bool { return sess.id == id }) > 0
}

func (s *Server) endWhere(match func(*session) bool) int {
	s.mu.Lock()
	var ended []*session
	for sess := range s.sessions {
		if match(sess) {
			ended = append(ended, sess)
		}
	}
	s.mu.Unlock()
	// Outside s.mu, as in Close: ending a parked session takes it. A
	// session already closed (by an earlier call, whose end is still
	// under way) is not counted again.
	n := 0
	for _, sess := range ended {
		if !sess.isClosed() {
			n++
		}
		sess.endBy(endedByAdmin)
	}
	return n
}

func (s *Server) newConnID() string {
	return fmt.Sprintf("%s%06x", s.idBase, s.nextID.Add(1))
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap
	}
	return netip.AddrPort{}
}
