package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Session results, as logged in the session's last line ("result"). A
// session that ended after failed logins, and for none of these reasons,
// ends with its last failure's login result (LoginAuthFailed, LoginNoRoute,
// LoginThrottled, LoginBackendError or LoginLookupError; see classify).
const (
	resultOK          = LoginOK     // logged in and spliced
	resultQuit        = "quit"      // client sent QUIT before logging in
	resultTimeout     = "timeout"   // login_timeout passed
	resultClosed      = "closed"    // client went away before logging in
	resultTLSError    = "tls_error" // TLS handshake failed
	resultProtoError  = "protocol_error"
	resultShutdown    = "shutdown"
	resultProxyHeader = "proxy_header_error" // PROXY header missing, invalid or late
	resultProxyLocal  = "proxy_local"        // PROXY LOCAL: the load balancer's health check
	resultPerIPLimit  = "per_ip_limit"       // max_connections_per_ip, for a client behind a PROXY header
	resultACMEALPN    = "acme_tls_alpn"      // a handshake that negotiated acme-tls/1: a CA's TLS-ALPN-01 validation, closed without a greeting
)

// session is one client connection. Its goroutine reads the PROXY header,
// runs the TLS handshake and the AUTHORIZATION state, and after the login
// hands the session to the splice (splice.go), whose last direction to
// finish ends it.
//
// The fields are grouped by who may touch them.
type session struct {
	// Set before the session's goroutine starts; never written after.
	srv   *Server
	cfg   *Config // the server's configuration when the session started
	l     Listener
	id    string
	raw   net.Conn // the accepted socket
	start time.Time
	// deadline ends the AUTHORIZATION state (login_timeout).
	deadline time.Time

	// The session's goroutine's, then the splice's: no lock.
	conn  net.Conn       // raw, or the TLS connection over it
	br    *bufio.Reader  // client input during AUTHORIZATION
	bw    *bufio.Writer  // client output during AUTHORIZATION, flushed when input runs dry
	local netip.AddrPort // the address the client connected to
	// proxy is the load balancer's address when a PROXY header named the
	// client, else invalid.
	proxy netip.AddrPort
	// pendingUser is the USER argument awaiting PASS.
	pendingUser string
	// backendUser is the name popgate logs in to the backend as, when it
	// is not clientUser: a route rewrote the login, or "user as authzid"
	// with a SASL authorization identity. Logged as login_user.
	backendUser string
	failures    int // failed logins
	badCmds     int // commands that were not understood
	result      string
	lastErr     error // cause of the last failure, for the log
	// poolRelease ends the session's hold on its pool backend
	// (Config.Pools), once the backend socket is closed; nil when the
	// login named no pool.
	poolRelease func(loggedIn bool)
	// pool is the pool the login's route named, when it named one;
	// logged as pool.
	pool string

	// Guarded by srv.mu: the Server reads them under it (SessionList,
	// the per-client limits, removeSession). remote is written only by
	// the session's goroutine, which reads it without the lock.
	remote netip.AddrPort // the client; from the PROXY header when there is one
	// ipNet is the client network (auth.ClientNet) counted against
	// max_connections_per_ip; invalid while not counted.
	ipNet netip.Prefix
	// relaying is true once the session counts in srv.relaying.
	relaying bool

	// mu guards the fields below it, which SessionList, EndSessions and
	// the closers read from other goroutines. tls, clientUser and backend
	// are written only by the session's goroutine, which reads them
	// without the lock.
	mu  sync.Mutex
	tls *tlsInfo // nil until TLS is up
	// clientUser is the user name the client logged in with (its last
	// attempt while in AUTHORIZATION); "" before any. Logged as user.
	clientUser string
	backend    string // the backend of the last attempt, once routed
	// poolMailbox is the mailbox, folded ([auth.FoldUser]), that a pool
	// assigned the last attempt's backend to, when a pool did: a master
	// user's or an authorization identity's session is the mailbox's
	// too, and EndSessions of that mailbox's user must end it.
	poolMailbox string
	spliced     bool
	closed      bool
	stopLogin   context.CancelFunc // ends the AUTHORIZATION state's waits (router, backend login, failure delay); nil outside it
	endedBy     string             // endedByAdmin or endedByShutdown when popgate closed the session, else ""
	bconn       net.Conn           // the backend socket, once dialed for the splice

	sp splice // the copy after the login; see its own guards
}

func (s *Server) newSession(c net.Conn, l Listener, cfg *Config) *session {
	sess := &session{
		srv:    s,
		cfg:    cfg,
		l:      l,
		id:     s.newConnID(),
		raw:    c,
		conn:   c,
		remote: addrPort(c.RemoteAddr()),
		local:  addrPort(c.LocalAddr()),
		start:  cfg.now(),
	}
	sess.deadline = sess.start.Add(cfg.loginTimeout())
	return sess
}

// info describes the session for SessionList; the caller holds srv.mu.
func (sess *session) info() SessionInfo {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	in := SessionInfo{
		ID:       sess.id,
		User:     sess.clientUser,
		Client:   sess.remote,
		Listener: sess.l.Name,
		State:    "authorization",
		Started:  sess.start,
		BytesIn:  sess.sp.in.Load(),
		BytesOut: sess.sp.out.Load(),
	}
	if sess.spliced {
		in.State = "relaying"
		in.Backend = sess.backend
	}
	if sess.tls != nil {
		in.TLSVersion = tls.VersionName(sess.tls.version)
		in.SNI = sess.tls.serverName
	}
	return in
}

// poolMailboxName is the folded mailbox a pool assigned the session's
// backend to, or "".
func (sess *session) poolMailboxName() string {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.poolMailbox
}

func (sess *session) setPoolMailbox(m string) {
	sess.mu.Lock()
	sess.poolMailbox = m
	sess.mu.Unlock()
}

// userName is the user name of the session's (last) login attempt.
func (sess *session) userName() string {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.clientUser
}

// setLogin records the user name and backend of a login attempt.
func (sess *session) setLogin(user, backend string) {
	sess.mu.Lock()
	sess.clientUser, sess.backend = user, backend
	sess.mu.Unlock()
}

// Who closed a session, when popgate did rather than a peer or a timeout,
// as its last log line says ("ended_by").
const (
	endedByAdmin    = "admin"    // EndSessions or EndSession (DELETE /sessions)
	endedByShutdown = "shutdown" // the drain: at once before the login, at its deadline after
)

// endBy ends the session at once on by's behalf: both sockets are closed,
// no QUIT is sent, and the session's last log line says who ended it.
func (sess *session) endBy(by string) {
	sess.mu.Lock()
	if sess.endedBy == "" {
		sess.endedBy = by
	}
	sess.mu.Unlock()
	sess.close()
}

// logger returns the session's logger. It is built on demand rather than
// kept: an idle session should not hold a handler's worth of memory.
func (sess *session) logger() *slog.Logger {
	if sess.proxy.IsValid() {
		return sess.srv.log.With("conn", sess.id, "remote", sess.remote.String(), "listener", sess.l.Name, "proxy", sess.proxy.String())
	}
	return sess.srv.log.With("conn", sess.id, "remote", sess.remote.String(), "listener", sess.l.Name)
}

// debug logs at DEBUG level, without building a logger when that level is
// off.
func (sess *session) debug(msg string, args ...any) {
	if sess.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		sess.logger().Debug(msg, args...)
	}
}

// close ends the session at once: both sockets are closed, no QUIT is sent.
func (sess *session) close() {
	sess.mu.Lock()
	sess.closed = true
	sess.raw.Close()
	if sess.stopLogin != nil {
		sess.stopLogin()
	}
	if sess.bconn != nil {
		sess.bconn.Close()
	}
	sess.mu.Unlock()
	// Parked directions wait on sockets that are closed now.
	sess.dirDone(nil, nil, true)
}

// closeIfNotSpliced closes a session still in AUTHORIZATION (shutdown),
// and abandons the login it may be waiting on: closing the socket ends a
// read from the client, cancelling stopLogin a lookup, a backend login or
// the failed-login delay, so that the session ends now and does not hold
// the drain up.
func (sess *session) closeIfNotSpliced() {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if !sess.spliced {
		sess.closed = true
		if sess.endedBy == "" {
			sess.endedBy = endedByShutdown
		}
		sess.raw.Close()
		if sess.stopLogin != nil {
			sess.stopLogin()
		}
	}
}

func (sess *session) isClosed() bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.closed
}

func (sess *session) serve() {
	// Cancelled when the session is closed (shutdown, an operator,
	// Close) before it is spliced; the login deadline is added where it
	// applies.
	ctx, cancel := context.WithCancel(sess.srv.ctx)
	sess.mu.Lock()
	sess.stopLogin = cancel
	if sess.closed {
		cancel()
	}
	sess.mu.Unlock()
	bc := sess.open(ctx)
	sess.mu.Lock()
	sess.stopLogin = nil
	sess.mu.Unlock()
	cancel()
	if bc == nil {
		sess.end()
		return
	}
	sess.result = resultOK
	// From here the two splice goroutines own the session; this one
	// returns, and with it the stack the TLS handshake grew.
	sess.startSplice(bc)
}

// open runs the session up to the splice: the PROXY header, the TLS
// handshake and the AUTHORIZATION state. It returns the logged-in backend
// connection, or nil when the session is to end.
func (sess *session) open(ctx context.Context) *backendConn {
	sess.raw.SetDeadline(sess.deadline)
	if sess.l.ProxyProtocol && !sess.readProxyHeader() {
		return nil
	}
	if sess.l.TLS == TLSImplicit {
		if !sess.startTLS(ctx) {
			return nil
		}
	}
	sess.br = sess.srv.getReader(sess.conn)
	sess.bw = sess.srv.getWriter(sess.conn)
	sess.bw.WriteString("+OK " + sess.cfg.greeting() + "\r\n")
	return sess.authorize(ctx)
}

// end closes the client connection, logs the session's line and releases
// it. It runs once, from whichever goroutine finishes the session.
func (sess *session) end() {
	sess.raw.Close()
	if sess.poolRelease != nil {
		// The backend socket is closed: the user may move once its
		// other sessions are gone too.
		sess.poolRelease(sess.result == resultOK)
		sess.poolRelease = nil
	}
	sess.releaseBuffers()
	sess.logEnd()
	if sess.result == resultOK {
		sess.srv.obs.SessionEnd(sess.l.Name, sess.cfg.now().Sub(sess.start), sess.sp.in.Load(), sess.sp.out.Load())
	}
	sess.srv.removeSession(sess)
}

// releaseBuffers returns the AUTHORIZATION buffers to their pools.
func (sess *session) releaseBuffers() {
	if sess.br != nil {
		sess.srv.putReader(sess.br)
		sess.br = nil
	}
	if sess.bw != nil {
		sess.srv.putWriter(sess.bw)
		sess.bw = nil
	}
}

// readProxyHeader reads the PROXY protocol header that must open the
// connection (haproxy doc/proxy-protocol.txt §2: before the TLS handshake
// and before the greeting) and makes its client address the session's. It
// runs in the session's goroutine, so a slow sender holds up nobody else,
// and reads no octet past the header, so the raw socket stays what TLS and
// the splice read from. It reports false when the session is to end.
func (sess *session) readProxyHeader() bool {
	sess.raw.SetReadDeadline(minTime(sess.deadline, sess.cfg.now().Add(sess.cfg.proxyHeaderTimeout())))
	hdr, err := readProxyHeader(sess.raw)
	var info proxyInfo
	if err == nil {
		info, err = parseProxyHeader(hdr)
	}
	if err != nil {
		sess.result = resultProxyHeader
		switch {
		case sess.isClosed():
			sess.result = resultShutdown
		case isTimeout(err):
			err = errors.New("no PROXY header before the timeout")
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			err = errors.New("connection closed before a complete PROXY header")
		}
		sess.lastErr = err
		if sess.result == resultProxyHeader {
			sess.logger().Warn("PROXY header missing or invalid, closing", "err", err)
		}
		return false
	}
	if info.local {
		// The load balancer's own connection, a health check: nothing
		// to serve, nothing worth a log line above DEBUG.
		sess.result = resultProxyLocal
		return false
	}
	sess.proxy = sess.remote
	if !sess.srv.countIP(sess, info.source) {
		sess.srv.mu.Lock()        // SessionList reads remote under it
		sess.remote = info.source // for the log lines only
		sess.srv.mu.Unlock()
		sess.srv.obs.Refused(sess.l.Name, "max_connections_per_ip")
		sess.result = resultPerIPLimit
		sess.logger().Warn("connection refused", "reason", "max_connections_per_ip reached")
		refuseConn(sess.raw, sess.l)
		return false
	}
	if info.dest.IsValid() {
		sess.local = info.dest
	}
	sess.raw.SetReadDeadline(sess.deadline)
	return true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// startTLS runs the server handshake on the raw connection.
func (sess *session) startTLS(ctx context.Context) bool {
	tc := tls.Server(newRecordConn(sess.raw), sess.l.TLSConfig)
	ctx, cancel := context.WithDeadline(ctx, sess.deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		sess.result = resultTLSError
		sess.lastErr = err
		if isTimeout(err) {
			sess.result = resultTimeout
		}
		sess.srv.obs.TLSHandshakeFailed(sess.l.Name)
		return false
	}
	st := tc.ConnectionState()
	sess.srv.obs.TLSHandshake(sess.l.Name, st.Version, st.CipherSuite, st.DidResume)
	sess.mu.Lock()
	sess.tls = &tlsInfo{version: st.Version, cipherSuite: st.CipherSuite, serverName: st.ServerName}
	sess.mu.Unlock()
	sess.conn = tc
	if st.NegotiatedProtocol == alpnACME {
		// RFC 8737 §3: the connection exists for the handshake alone;
		// no POP3 byte follows (a client that offers acme-tls/1
		// beside a foreign protocol gets here too).
		sess.result = resultACMEALPN
		return false
	}
	return true
}

// tlsInfo is what a session keeps of its client's TLS handshake: a
// tls.ConnectionState would cost every idle session 192 octets instead of
// 32.
type tlsInfo struct {
	version, cipherSuite uint16
	serverName           string // SNI
}

// alpnACME is the ALPN protocol of ACME TLS-ALPN-01 validations (RFC 8737
// §6.2), which a TLS config offers where it answers them.
const alpnACME = "acme-tls/1"

func (sess *session) logEnd() {
	lvl := slog.LevelInfo
	if sess.result == resultProxyLocal {
		lvl = slog.LevelDebug
	}
	// Below the configured level the line's fields are not even built:
	// a dozen allocations per session, for nothing.
	if !sess.srv.log.Enabled(context.Background(), lvl) {
		return
	}
	attrs := []slog.Attr{
		slog.String("result", sess.result),
		slog.String("dur", sess.cfg.now().Sub(sess.start).Round(time.Microsecond).String()),
	}
	if sess.clientUser != "" {
		attrs = append(attrs, slog.String("user", sess.clientUser))
	}
	if sess.backendUser != "" {
		attrs = append(attrs, slog.String("login_user", sess.backendUser))
	}
	if sess.backend != "" {
		attrs = append(attrs, slog.String("backend", sess.backend))
	}
	if sess.pool != "" {
		attrs = append(attrs, slog.String("pool", sess.pool))
	}
	if sess.tls != nil {
		attrs = append(attrs,
			slog.String("tls_version", tls.VersionName(sess.tls.version)),
			slog.String("tls_cipher", cipherSuiteName(sess.tls.cipherSuite)))
		if sess.tls.serverName != "" {
			attrs = append(attrs, slog.String("sni", sess.tls.serverName))
		}
	}
	if sess.result == resultOK {
		attrs = append(attrs, slog.Int64("bytes_in", sess.sp.in.Load()), slog.Int64("bytes_out", sess.sp.out.Load()))
		if sess.sp.endReason != "" {
			attrs = append(attrs, slog.String("end", sess.sp.endReason))
		}
	} else if sess.failures > 0 {
		attrs = append(attrs, slog.Int("failures", sess.failures))
	}
	sess.mu.Lock()
	endedBy := sess.endedBy
	sess.mu.Unlock()
	if endedBy != "" {
		attrs = append(attrs, slog.String("ended_by", endedBy))
	}
	if sess.lastErr != nil && sess.result != resultOK {
		attrs = append(attrs, slog.String("err", sess.lastErr.Error()))
	}
	sess.logger().LogAttrs(context.Background(), lvl, "session end", attrs...)
}

func isTimeout(err error) bool {
	if err == nil || err == io.EOF {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func quote(s string) string { return "\"" + s + "\"" }

// cipherSuiteNames maps the IDs of the cipher suites crypto/tls knows to
// their names. tls.CipherSuiteName builds the list of every suite anew on
// each call, which cost each TLS login some 28 allocations.
var cipherSuiteNames = sync.OnceValue(func() map[uint16]string {
	m := make(map[uint16]string)
	for _, c := range tls.CipherSuites() {
		m[c.ID] = c.Name
	}
	for _, c := range tls.InsecureCipherSuites() {
		m[c.ID] = c.Name
	}
	return m
})

// cipherSuiteName is tls.CipherSuiteName without its allocations.
func cipherSuiteName(id uint16) string {
	if name, ok := cipherSuiteNames()[id]; ok {
		return name
	}
	return tls.CipherSuiteName(id)
}

// noteLegacy tells the LegacyObserver, if there is one, of a login attempt
// as user by a TLS client older than TLS 1.2 or without SNI. Plaintext
// clients are not legacy TLS clients: min_version does not concern them.
func (sess *session) noteLegacy(user string) {
	t := sess.tls
	if sess.srv.legacy == nil || t == nil || (t.version >= tls.VersionTLS12 && t.serverName != "") {
		return
	}
	sess.srv.legacy.LegacyClient(sess.l.Name, sess.remote.Addr(), user, t.version, t.serverName)
}
