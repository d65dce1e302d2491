package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// Session results, as logged in the session's last line ("result").
const (
	resultOK           = LoginOK           // logged in and spliced
	resultAuthFailed   = LoginAuthFailed   // last failure: bad credentials
	resultNoRoute      = LoginNoRoute      // last failure: nothing routes the user
	resultBackendError = LoginBackendError // last failure: backend unreachable or broken
	resultLookupError  = LoginLookupError  // last failure: the router failed
	resultQuit         = "quit"            // client sent QUIT before logging in
	resultTimeout      = "timeout"         // login_timeout passed
	resultClosed       = "closed"          // client went away before logging in
	resultTLSError     = "tls_error"       // TLS handshake failed
	resultProtoError   = "protocol_error"
	resultShutdown     = "shutdown"
	resultThrottled    = LoginThrottled       // last failure: too many failed logins
	resultProxyHeader  = "proxy_header_error" // PROXY header missing, invalid or late
	resultProxyLocal   = "proxy_local"        // PROXY LOCAL: the load balancer's health check
	resultPerIPLimit   = "per_ip_limit"       // max_connections_per_ip, for a client behind a PROXY header
	resultACMEALPN     = "acme_tls_alpn"      // a handshake that negotiated acme-tls/1: a CA's TLS-ALPN-01 validation, closed without a greeting
)

// maxBadCommands closes a connection that keeps sending what is not POP3 (an
// HTTP request, a port scanner), as go-imap and Dovecot do.
const maxBadCommands = 10

// session is one client connection. Its goroutine runs the AUTHORIZATION
// state and then copies client→backend; a second goroutine copies
// backend→client once the login succeeded.
type session struct {
	srv    *Server
	cfg    *Config // the server's configuration when the session started
	l      Listener
	id     string
	raw    net.Conn       // the accepted socket
	conn   net.Conn       // raw, or the TLS connection over it
	br     *bufio.Reader  // client input during AUTHORIZATION
	bw     *bufio.Writer  // client output during AUTHORIZATION, flushed when input runs dry
	remote netip.AddrPort // the client; from the PROXY header when there is one
	local  netip.AddrPort // the address the client connected to
	// proxy is the load balancer's address when a PROXY header named the
	// client, else invalid.
	proxy netip.AddrPort
	// ipNet is the client network (auth.ClientNet) counted against
	// max_connections_per_ip; invalid while not counted. Guarded by
	// srv.mu.
	ipNet netip.Prefix
	// relaying is true once the session counts in srv.relaying; guarded
	// by srv.mu.
	relaying bool
	start    time.Time
	// deadline ends the AUTHORIZATION state (login_timeout).
	deadline time.Time

	tls      *tls.ConnectionState // nil until TLS is up; written under mu
	user     string               // USER argument awaiting PASS
	failures int                  // failed logins
	badCmds  int                  // commands that were not understood
	result   string
	lastErr  error // cause of the last failure, for the log

	// Known once a login was tried. user0 and backend are written under
	// mu, for SessionList.
	user0     string // the user name the client gave (last attempt)
	loginUser string // the name sent to the backend, when a router rewrote it
	backend   string

	mu        sync.Mutex
	spliced   bool
	closed    bool
	stopLogin context.CancelFunc // ends the AUTHORIZATION state's waits (router, backend login, failure delay); nil outside it
	endedBy   string             // endedByAdmin or endedByShutdown when popgate closed the session, else ""
	bconn     net.Conn           // the backend socket, once dialed for the splice

	sp splice
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
		User:     sess.user0,
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
		in.TLSVersion = tls.VersionName(sess.tls.Version)
	}
	return in
}

// userName is the user name of the session's (last) login attempt.
func (sess *session) userName() string {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.user0
}

// setLogin records the user name and backend of a login attempt.
func (sess *session) setLogin(user, backend string) {
	sess.mu.Lock()
	sess.user0, sess.backend = user, backend
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
	sess.srv.obs.TLSHandshake(sess.l.Name, st.Version, st.CipherSuite)
	sess.mu.Lock()
	sess.tls = &st
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

// alpnACME is the ALPN protocol of ACME TLS-ALPN-01 validations (RFC 8737
// §6.2), which a TLS config offers where it answers them.
const alpnACME = "acme-tls/1"

// loginAllowed reports whether credentials may be sent on this connection:
// on TLS, on a plaintext listener, or from a network allowed plaintext.
func (sess *session) loginAllowed() bool {
	if sess.tls != nil || sess.l.TLS == TLSNone {
		return true
	}
	ip := sess.remote.Addr().Unmap()
	for _, p := range sess.l.AllowPlaintextFrom {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (sess *session) reply(s string) {
	sess.bw.WriteString(s)
	sess.bw.WriteString("\r\n")
}

// authorize runs the AUTHORIZATION state until a backend login succeeds
// (returned) or the session ends (nil).
func (sess *session) authorize(ctx context.Context) *backendConn {
	first := true
	for {
		// Answers to pipelined commands go out together; nothing waits
		// on a delayed ACK because the answer to the last complete
		// command flushes.
		if !sess.lineBuffered() {
			if err := sess.bw.Flush(); err != nil {
				sess.endRead(err)
				return nil
			}
		}
		if first && sess.tls == nil {
			first = false
			if sess.tlsOnPlaintext() {
				return nil
			}
		}
		line, err := pop3.ReadLine(sess.br, pop3.MaxCommandLen)
		if err == pop3.ErrLineTooLong {
			if !sess.badCommand("Line too long") {
				return nil
			}
			continue
		}
		if err != nil {
			sess.endRead(err)
			return nil
		}
		cmd, err := pop3.ParseCommand(line)
		if err != nil {
			if !sess.badCommand("Unknown command") {
				return nil
			}
			continue
		}
		sess.debug("command", "cmd", cmd.Name)
		switch cmd.Name {
		case "CAPA":
			sess.capa()
		case "NOOP":
			sess.reply("+OK")
		case "QUIT":
			sess.reply("+OK Bye")
			sess.bw.Flush()
			sess.result = resultQuit
			return nil
		case "STLS":
			if !sess.stls(ctx) {
				return nil
			}
		case "USER":
			sess.cmdUser(cmd.Arg)
		case "PASS":
			if sess.user == "" {
				sess.reply("-ERR USER first")
				continue
			}
			creds := auth.Credentials{User: sess.user, Password: auth.Password(cmd.Arg), Method: "USER"}
			sess.user = ""
			if bc, done := sess.login(ctx, creds); bc != nil || done {
				return bc
			}
		case "AUTH":
			creds, ok, done := sess.cmdAuth(cmd.Arg)
			if done {
				return nil
			}
			if !ok {
				continue
			}
			if bc, done := sess.login(ctx, creds); bc != nil || done {
				return bc
			}
		case "APOP":
			// The digest is bound to a greeting timestamp the backend
			// never sent (RFC 1939 §7); not offered, not relayed.
			sess.reply("-ERR APOP not supported, use USER/PASS or AUTH")
		default:
			if !sess.badCommand("Unknown command in AUTHORIZATION state") {
				return nil
			}
		}
	}
}

// tlsOnPlaintext reports whether the client opened with a TLS handshake
// record (type 22, version 3.x) on a plaintext port: a client configured
// for POP3S on port 110. It cannot understand a POP3 answer, so the
// connection is closed with a log line that says what happened.
func (sess *session) tlsOnPlaintext() bool {
	b, err := sess.br.Peek(1)
	if err != nil || b[0] != 0x16 {
		return false
	}
	if b, err = sess.br.Peek(2); err != nil || b[1] != 0x03 {
		return false
	}
	sess.result = resultProtoError
	sess.lastErr = errors.New("TLS handshake on a plaintext listener (client expects implicit TLS, port 995?)")
	sess.logger().Info("TLS handshake on a plaintext listener, closing")
	return true
}

// lineBuffered reports whether a complete command line is already buffered.
func (sess *session) lineBuffered() bool {
	n := sess.br.Buffered()
	if n == 0 {
		return false
	}
	p, _ := sess.br.Peek(n)
	return bytes.IndexByte(p, '\n') >= 0
}

// endRead records why reading from the client stopped.
func (sess *session) endRead(err error) {
	switch {
	case sess.isClosed():
		sess.result = resultShutdown
	case isTimeout(err):
		sess.result = resultTimeout
		sess.raw.SetWriteDeadline(time.Now().Add(time.Second))
		// A flush that failed at the deadline left its error in bw;
		// start afresh so that the client learns why it is closed.
		sess.bw.Reset(sess.conn)
		sess.bw.WriteString("-ERR [SYS/TEMP] Login timeout\r\n")
		sess.bw.Flush()
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
		sess.result = resultClosed
	default:
		sess.result = resultClosed
		sess.lastErr = err
	}
}

// badCommand answers a line that is not understood; it reports false when
// the connection is to be closed.
func (sess *session) badCommand(msg string) bool {
	sess.badCmds++
	sess.debug("bad command", "reason", msg, "count", sess.badCmds)
	if sess.badCmds >= maxBadCommands {
		sess.reply("-ERR Too many bad commands, closing")
		sess.bw.Flush()
		sess.result = resultProtoError
		sess.lastErr = errors.New("too many bad commands")
		sess.logger().Info("too many bad commands, closing", "count", sess.badCmds)
		return false
	}
	sess.reply("-ERR " + msg)
	return true
}

func (sess *session) capa() {
	var b strings.Builder
	b.WriteString("+OK Capability list follows\r\n")
	if sess.loginAllowed() {
		b.WriteString("USER\r\nSASL PLAIN LOGIN\r\n")
	}
	if sess.l.TLS == TLSStartTLS && sess.tls == nil {
		b.WriteString("STLS\r\n")
	}
	for _, c := range sess.cfg.ExtraCapabilities {
		b.WriteString(c)
		b.WriteString("\r\n")
	}
	b.WriteString("RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION popgate\r\n.")
	sess.reply(b.String())
}

// stls upgrades the connection (RFC 2595 §4). Bytes the client sent behind
// STLS are discarded with the old reader: they were sent in plaintext and
// could have been injected by anyone on the path (CVE-2011-0411).
func (sess *session) stls(ctx context.Context) bool {
	switch {
	case sess.tls != nil:
		sess.reply("-ERR Already using TLS")
		return true
	case sess.l.TLS != TLSStartTLS:
		sess.reply("-ERR STLS not available")
		return true
	}
	sess.reply("+OK Begin TLS negotiation")
	if err := sess.bw.Flush(); err != nil {
		sess.endRead(err)
		return false
	}
	if n := sess.br.Buffered(); n > 0 {
		sess.logger().Warn("discarded bytes sent after STLS before the TLS handshake", "bytes", n)
	}
	// Dropping the reader drops what it buffered.
	sess.releaseBuffers()
	if !sess.startTLS(ctx) {
		return false
	}
	// RFC 2595 §4: the session starts over; a USER given before STLS
	// is forgotten.
	sess.user = ""
	sess.br = sess.srv.getReader(sess.conn)
	sess.bw = sess.srv.getWriter(sess.conn)
	return true
}

const msgPlaintextRefused = "-ERR [AUTH] Plaintext login is not allowed here, use STLS first"

func (sess *session) cmdUser(arg string) {
	if !sess.loginAllowed() {
		sess.reply(msgPlaintextRefused)
		return
	}
	if arg == "" {
		sess.reply("-ERR Missing user name")
		return
	}
	if len(arg) > auth.MaxCredentialLen {
		sess.reply("-ERR User name too long")
		return
	}
	sess.user = arg
	sess.reply("+OK")
}

// Base64 prompts of AUTH LOGIN: "Username:" and "Password:".
const (
	promptUser = "+ VXNlcm5hbWU6"
	promptPass = "+ UGFzc3dvcmQ6"
)

// cmdAuth runs AUTH (RFC 5034) up to the decoded credentials. ok is false
// when the exchange failed and was answered; done is true when the
// connection ended.
func (sess *session) cmdAuth(arg string) (creds auth.Credentials, ok, done bool) {
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech == "" {
		// Not in RFC 5034; Outlook-era clients ask this way.
		if sess.loginAllowed() {
			sess.reply("+OK\r\nPLAIN\r\nLOGIN\r\n.")
		} else {
			sess.reply("+OK\r\n.")
		}
		return creds, false, false
	}
	if !sess.loginAllowed() {
		sess.reply(msgPlaintextRefused)
		return creds, false, false
	}
	switch mech {
	case "PLAIN":
		resp, ok, done := sess.saslResponse(ir, hasIR, "+ ")
		if !ok {
			return creds, false, done
		}
		creds, err := auth.ParsePlain(resp)
		if err != nil {
			sess.reply("-ERR Malformed SASL PLAIN response")
			return creds, false, false
		}
		return creds, true, false
	case "LOGIN":
		user, ok, done := sess.saslResponse(ir, hasIR, promptUser)
		if !ok {
			return creds, false, done
		}
		pass, ok, done := sess.saslResponse("", false, promptPass)
		if !ok {
			return creds, false, done
		}
		return auth.Credentials{User: string(user), Password: auth.Password(pass), Method: "LOGIN"}, true, false
	default:
		sess.reply("-ERR Unsupported SASL mechanism")
		return creds, false, false
	}
}

// saslResponse returns the decoded response: the initial response if the
// command carried one, else the line after a continuation prompt.
func (sess *session) saslResponse(ir string, hasIR bool, prompt string) (resp []byte, ok, done bool) {
	if !hasIR {
		sess.reply(prompt)
		if err := sess.bw.Flush(); err != nil {
			sess.endRead(err)
			return nil, false, true
		}
		line, err := pop3.ReadLine(sess.br, auth.MaxSASLLen+2)
		if err == pop3.ErrLineTooLong {
			sess.debug("SASL response too long", "limit", auth.MaxSASLLen)
			sess.reply("-ERR SASL response too long")
			return nil, false, false
		}
		if err != nil {
			sess.endRead(err)
			return nil, false, true
		}
		ir = string(line)
	}
	switch ir {
	case "*":
		sess.reply("-ERR Authentication cancelled")
		return nil, false, false
	case "=":
		return []byte{}, true, false
	}
	b, err := auth.DecodeBase64(ir)
	if err != nil {
		sess.reply("-ERR Invalid base64 in SASL response")
		return nil, false, false
	}
	return b, true, false
}

// login routes creds and logs in to the backend. It returns the backend
// connection on success; done is true when the session is to end.
func (sess *session) login(ctx context.Context, creds auth.Credentials) (bc *backendConn, done bool) {
	attempt := sess.failures + 1
	sess.setLogin(creds.User, "")
	sess.debug("login", "user", creds.User, "method", creds.Method, "attempt", attempt)
	var reply string
	// Unusable credentials are refused before anything else; they count
	// against the client's address only, so that an over-long name never
	// becomes a throttle key.
	err := creds.Check()
	throttleUser := sess.throttleUser(creds.User)
	if err != nil {
		reply, err = msgAuthFailed, &auth.DeniedError{Reason: err.Error()}
		throttleUser = ""
	}
	// The attempt holds its place in the throttle's budgets from before
	// the lookup until its outcome is known, so that attempts sent at
	// once cannot race past the limit.
	th := sess.cfg.Throttle
	var tk auth.Ticket
	if th != nil {
		bctx, cancel := context.WithDeadline(ctx, sess.deadline)
		var ok bool
		var wait time.Duration
		tk, ok, wait = th.Begin(bctx, sess.remote.Addr().Unmap(), throttleUser)
		cancel()
		if !ok {
			reply, err = "-ERR [SYS/TEMP] Too many failed logins, try again later\r\n", &throttledError{wait}
		}
	}
	// The attempt's time counts from here: a wait for a place in the
	// throttle says nothing of the name, and must not become a backend's
	// refusal time (failureTimes).
	start := time.Now()
	if err == nil {
		bc, reply, err = sess.tryLogin(ctx, creds, attempt)
	}
	th.End(tk, attemptResult(err))
	if err == nil {
		sess.srv.obs.Login(sess.l.Name, LoginOK)
		sess.bw.WriteString(reply)
		return bc, false
	}
	if ctx.Err() != nil {
		// The session was closed (shutdown, an operator) while the
		// login was under way: no failure of the client's, the
		// router's or the backend's; nothing to count or throttle.
		sess.result = resultShutdown
		sess.lastErr = err
		return nil, true
	}
	sess.failures++
	sess.lastErr = err
	lvl := slog.LevelInfo
	switch {
	case isThrottled(err):
		sess.result = resultThrottled
	case errors.Is(err, auth.ErrNoRoute):
		sess.result = resultNoRoute
	case isDenied(err):
		sess.result = resultAuthFailed
	case isLookupError(err):
		sess.result = resultLookupError
		lvl = slog.LevelWarn
	case isBackendRejected(err):
		sess.result = resultAuthFailed
	default:
		sess.result = resultBackendError
		lvl = slog.LevelWarn
	}
	sess.srv.obs.Login(sess.l.Name, sess.result)
	sess.logger().Log(context.Background(), lvl, "login failed", "user", creds.User, "backend", sess.backend, "attempt", attempt, "reason", sess.result, "err", err)
	if !sess.sleep(ctx, sess.failureWait(err, time.Since(start))) {
		sess.result = resultShutdown
		return nil, true
	}
	sess.bw.WriteString(reply)
	if sess.failures >= sess.cfg.maxLoginFailures() {
		sess.bw.Flush()
		sess.logger().Info("too many failed logins, closing", "failures", sess.failures)
		return nil, true
	}
	return nil, false
}

// verdictGrace is how long past the login deadline a lookup's or a
// backend's verdict on credentials already sent is awaited (see tryLogin).
const verdictGrace = 15 * time.Second

// msgAuthFailed answers every refusal of credentials, whatever its reason.
const msgAuthFailed = "-ERR [AUTH] Authentication failed\r\n"

// throttleUser returns the name a login counts under in the throttle: the
// user, or with MasterUserSeparator the master user a "user*master" name
// logs in as, so that guesses at the master's password spread over many
// user names share one budget, the one of the master's own logins
// ("master", or AUTH PLAIN with "master" as the authentication identity).
func (sess *session) throttleUser(user string) string {
	if sep := sess.cfg.MasterUserSeparator; sep != "" {
		if i := strings.LastIndex(user, sep); i >= 0 {
			return user[i+len(sep):]
		}
	}
	return user
}

// tryLogin returns the line to send to the client (CRLF included) and, on
// success, the logged-in backend connection.
func (sess *session) tryLogin(ctx context.Context, creds auth.Credentials, attempt int) (*backendConn, string, error) {
	const authFailed = msgAuthFailed
	const tempFail = "-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
	// A verdict on credentials already sent is awaited a little past the
	// login deadline, so that it counts: a backend answers a right
	// password at once and a wrong one after its failure delay, and a
	// guess timed to be cut off by login_timeout would otherwise tell a
	// right password (+OK) from a wrong one (closed) without the wrong
	// ones ever counting. The client, past its deadline, hears nothing.
	ctx, cancel := context.WithDeadline(ctx, sess.deadline.Add(verdictGrace))
	defer cancel()
	req := &auth.Request{
		Credentials: creds,
		Client:      sess.remote,
		Local:       sess.local,
		Listener:    sess.l.Name,
		TLS:         sess.tls != nil,
		Attempt:     attempt,
	}
	if sess.tls != nil {
		req.TLSVersion = auth.TLSVersionName(sess.tls.Version)
		req.TLSCipher = tls.CipherSuiteName(sess.tls.CipherSuite)
	}
	dec, err := sess.cfg.Router.Route(ctx, req)
	if err != nil {
		if errors.Is(err, auth.ErrNoRoute) || isDenied(err) {
			return nil, authFailed, err
		}
		return nil, tempFail, &lookupError{err}
	}
	sess.setLogin(creds.User, dec.Backend)
	b := sess.cfg.Backends[dec.Backend]
	switch {
	case b == nil && dec.Backend == "" && dec.Address != "":
		// A bare address from a lookup service with no backend
		// settings to apply: plaintext, as nginx does.
		b = &Backend{Name: "(lookup)", Address: dec.Address}
		sess.setLogin(creds.User, dec.Address)
	case b == nil:
		return nil, tempFail, &lookupError{errors.New("route names unknown backend " + quote(dec.Backend))}
	}
	if dec.User == "" {
		dec.User, dec.Password = creds.User, creds.Password
	}
	authz, err := authorizationID(creds, dec, b)
	if err != nil {
		if isDenied(err) {
			return nil, authFailed, err
		}
		return nil, tempFail, err
	}
	dec.AuthzID = authz
	switch {
	case authz != "":
		sess.loginUser = dec.User + " as " + authz
	case dec.User != creds.User:
		sess.loginUser = dec.User
	}
	// A router may rewrite the login; hold the result to the same rule.
	if err := (auth.Credentials{User: dec.User, Password: dec.Password, AuthzID: dec.AuthzID}).Check(); err != nil {
		return nil, tempFail, &lookupError{errors.New("router returned unusable credentials: " + err.Error())}
	}
	ci := clientInfo{remote: sess.remote, local: sess.local, connID: sess.id, tls: sess.tls, logger: sess.logger}
	bc, reply, err := sess.srv.dialBackend(ctx, sess.cfg, b, dec, ci)
	if err != nil {
		if isBackendRejected(err) {
			// A refusal of the credentials gets popgate's own words,
			// the same as an unknown name's: a backend that words
			// "no such user" apart from "wrong password" (or only
			// ends its sentence differently) would give names away.
			// Answers that come only after the password was checked
			// ([IN-USE], [LOGIN-DELAY]) and the backend's own trouble
			// ([SYS/...]) are relayed as they are.
			if !sess.cfg.RelayBackendErrors && isCredentialFailure(err) {
				reply = authFailed
			}
			return nil, reply, err
		}
		return nil, tempFail, err
	}
	return bc, reply, nil
}

// authorizationID returns the SASL authorization identity to send to
// backend b with the login dec, or an error that refuses the login. A login
// acts as another identity only when someone who may decide said so
// explicitly:
//
//   - the route names the identity (Decision.AuthzID, auth_http's
//     Auth-Authzid answer): it is sent, and must be the one the client
//     asked for when the client asked for one;
//   - the route logs in with the client's own credentials and b relays
//     authorization identities (relay_authzid): the client's is sent, and
//     the backend checks with the client's own password whether the client
//     may act as it.
//
// A route that rewrote the login (a master user's name and password) and
// did not name the identity refuses one the client asked for: the master
// credentials would let any user act as any other (a client's authzid
// relayed with a lookup's master login). A *auth.DeniedError refuses the
// login as bad credentials; any other error is the configuration's fault.
func authorizationID(creds auth.Credentials, dec auth.Decision, b *Backend) (string, error) {
	asked := creds.AuthzID
	if strings.EqualFold(asked, creds.User) {
		asked = "" // acting as oneself is no request to act as another
	}
	if dec.AuthzID != "" {
		if asked != "" && dec.AuthzID != asked {
			return "", &auth.DeniedError{Reason: "SASL authorization identity " + quote(asked) + " differs from the one the route named"}
		}
		if !b.RelayAuthzID {
			return "", &lookupError{errors.New("route names an authorization identity but backend " + quote(b.Name) + " does not relay one (relay_authzid)")}
		}
		return dec.AuthzID, nil
	}
	if asked == "" {
		return "", nil
	}
	if !b.RelayAuthzID {
		return "", &auth.DeniedError{Reason: "SASL authorization identity differs from the user and backend " + quote(b.Name) + " does not relay it"}
	}
	if dec.User != creds.User || dec.Password != creds.Password {
		return "", &auth.DeniedError{Reason: "SASL authorization identity differs from the user and the route rewrote the login without naming it"}
	}
	return asked, nil
}

// sleep waits d unless ctx is done first (the session was closed).
func (sess *session) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if until := time.Until(sess.deadline); d > until {
		d = max(until, 0)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// failureWait returns how long to wait before answering a login that
// failed with err after took. A refusal of credentials, whoever gave it,
// first waits until it took the floor of failureTimes, so that timing
// tells no name apart; a backend's refusal is recorded there first. Then
// every failure waits failure_delay, or the lookup's Auth-Wait when longer.
func (sess *session) failureWait(err error, took time.Duration) time.Duration {
	var pad time.Duration
	if attemptResult(err) == auth.AttemptFailed {
		var br *backendRejected
		if errors.As(err, &br) {
			sess.srv.failTimes.add(br.backend, took, sess.cfg.assumedFailureTime())
		}
		pad = max(sess.srv.failTimes.floor(sess.cfg.assumedFailureTime())-took, 0)
	}
	d := sess.cfg.FailureDelay
	var de *auth.DeniedError
	if errors.As(err, &de) && de.Wait > d {
		d = de.Wait
	}
	return pad + d
}

func (sess *session) logEnd() {
	attrs := []slog.Attr{
		slog.String("result", sess.result),
		slog.String("dur", sess.cfg.now().Sub(sess.start).Round(time.Microsecond).String()),
	}
	if sess.user0 != "" {
		attrs = append(attrs, slog.String("user", sess.user0))
	}
	if sess.loginUser != "" {
		attrs = append(attrs, slog.String("login_user", sess.loginUser))
	}
	if sess.backend != "" {
		attrs = append(attrs, slog.String("backend", sess.backend))
	}
	if sess.tls != nil {
		attrs = append(attrs,
			slog.String("tls_version", tls.VersionName(sess.tls.Version)),
			slog.String("tls_cipher", tls.CipherSuiteName(sess.tls.CipherSuite)))
		if sess.tls.ServerName != "" {
			attrs = append(attrs, slog.String("sni", sess.tls.ServerName))
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
	lvl := slog.LevelInfo
	if sess.result == resultProxyLocal {
		lvl = slog.LevelDebug
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

func isDenied(err error) bool {
	var de *auth.DeniedError
	return errors.As(err, &de)
}

// throttledError is a login refused by the Throttle before any lookup.
type throttledError struct{ wait time.Duration }

func (e *throttledError) Error() string {
	return "too many failed logins; refused for " + e.wait.Round(time.Second).String()
}

func isThrottled(err error) bool {
	var te *throttledError
	return errors.As(err, &te)
}

// attemptResult tells the throttle how a login attempt ended.
func attemptResult(err error) auth.AttemptResult {
	switch {
	case err == nil:
		return auth.AttemptSucceeded
	case isCredentialFailure(err):
		return auth.AttemptFailed
	}
	return auth.AttemptAborted
}

// isCredentialFailure reports failures that count against the throttle:
// wrong credentials and unknown users, not broken backends or lookups.
func isCredentialFailure(err error) bool {
	var br *backendRejected
	if errors.As(err, &br) {
		// A locked mailbox or a backend in trouble is no guess. The
		// code counts only where RFC 2449 puts it, so that a backend
		// echoing the user name cannot make a guess uncounted.
		switch code := pop3.ResponseCode(br.reply); {
		case code == pop3.CodeInUse, code == pop3.CodeLoginDelay, strings.HasPrefix(code, "[SYS/"):
			return false
		}
		return true
	}
	return errors.Is(err, auth.ErrNoRoute) || isDenied(err)
}

// lookupError wraps a Router failure that is not a refusal.
type lookupError struct{ err error }

func (e *lookupError) Error() string { return "route lookup: " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

func isLookupError(err error) bool {
	var le *lookupError
	return errors.As(err, &le)
}

func quote(s string) string { return "\"" + s + "\"" }
