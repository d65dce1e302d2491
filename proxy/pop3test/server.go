// Package pop3test provides an in-memory POP3 server for tests and demos,
// in the spirit of net/http/httptest.
//
// The server speaks RFC 1939 (POP3) with the RFC 2449 extension mechanism
// (CAPA, response codes, PIPELINING), STLS and implicit TLS (RFC 2595, RFC
// 8314) and SASL AUTH (RFC 5034; PLAIN and LOGIN). Mailboxes live in memory;
// deletions are committed only when a client QUITs from the TRANSACTION
// state. Knobs on [Server] inject the faults popgate's tests need: a slow or
// silent greeting, a refused login with a response code, bytes injected after
// STLS, and a connection dropped in the middle of a RETR.
//
// Typical use:
//
//	srv := &pop3test.Server{
//		Mailboxes: map[string]*pop3test.Mailbox{"alice": pop3test.SampleMailbox()},
//	}
//	addr, err := srv.Start("127.0.0.1:0")
//	if err != nil { ... }
//	defer srv.Close()
//	// dial addr, log in as alice with pop3test.SamplePassword, ...
//
// The package does not import "testing", so `popgate demo` uses it as its
// built-in sample mailbox.
package pop3test

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"sync"
	"time"
)

// MaxLineLength is the longest command line the server accepts, in octets,
// including the terminating CRLF (RFC 2449 §4). Longer lines are answered
// with "-ERR line too long" and discarded without being buffered.
const MaxLineLength = 255

// maxSASLLine bounds a SASL continuation line (RFC 5034 lets responses to
// "+ " challenges exceed the command limit; 12288 is the figure RFC 4954
// suggests for SMTP).
const maxSASLLine = 12288

// ErrServerClosed is returned by [Server.Serve] after [Server.Close].
var ErrServerClosed = errors.New("pop3test: server closed")

// Mailbox is one user's maildrop.
type Mailbox struct {
	// Password is the cleartext password USER/PASS and AUTH must present.
	Password string
	// Messages are raw RFC 5322 messages with CRLF line endings. The server
	// dot-stuffs them on RETR and TOP; sizes reported by STAT and LIST are
	// their lengths in octets. The server never modifies them.
	Messages [][]byte
}

// Server is an in-memory POP3 server. Set its exported fields before calling
// [Server.Start], [Server.Serve] or [Server.ServeConn] and do not change them
// afterwards. The zero value serves no mailboxes over cleartext with
// USER/PASS offered. All methods are safe for concurrent use.
type Server struct {
	// Mailboxes maps a user name (compared exactly) to its mailbox. The
	// map and mailboxes are read, never written: committed deletions are
	// kept inside the Server and reported by [Server.Messages].
	Mailboxes map[string]*Mailbox

	// TLSConfig is used for STLS and for Implicit. Nil disables both.
	TLSConfig *tls.Config

	// Implicit makes every connection TLS from the first byte (POP3S).
	Implicit bool

	// STLS offers and accepts the STLS command (RFC 2595); it needs
	// TLSConfig.
	STLS bool

	// NoUSER hides USER from CAPA and refuses USER and PASS with -ERR.
	NoUSER bool

	// SASL lists the mechanisms offered in CAPA and accepted by AUTH.
	// PLAIN and LOGIN are implemented; other names are offered but refused.
	// Nil offers no SASL.
	SASL []string

	// Greeting is the text after "+OK " in the greeting. Empty means
	// "POP3 server ready <unique-timestamp@pop3test>".
	Greeting string

	// LoginError, when set, answers every otherwise-correct login with
	// "-ERR " + LoginError, e.g. "[IN-USE] mailbox locked". Wrong
	// credentials still get "-ERR [AUTH] Authentication failed".
	LoginError string

	// AuthFailureDelay is waited before refusing wrong credentials, plus
	// a random part below AuthFailureJitter (Dovecot's
	// auth_failure_delay, and the spread of a real backend).
	AuthFailureDelay, AuthFailureJitter time.Duration

	// GreetingDelay is waited before the greeting (after the TLS handshake
	// when Implicit). Zero means no delay.
	GreetingDelay time.Duration

	// Silent accepts connections but never sends anything, not even a TLS
	// ServerHello when Implicit; input is read and discarded until the peer
	// or Close ends the connection.
	Silent bool

	// InjectAfterSTLS is written in the same write right after the
	// "+OK Begin TLS negotiation" line, before the handshake, to test that
	// clients do not trust bytes received before TLS (RFC 2595 §3.1).
	InjectAfterSTLS string

	// DropAfterBytes, when positive, closes the connection abruptly (no
	// TLS close_notify) after that many octets of a RETR response, status
	// line included, have been written.
	DropAfterBytes int

	// MasterUsers maps master user names to passwords: AUTH PLAIN with an
	// authorization identity naming a mailbox and a master user's
	// credentials opens that mailbox (as Dovecot's master users do).
	MasterUsers map[string]string

	// MasterSeparator, when set, lets a master user log in as
	// "user" + MasterSeparator + "master" with the master's password
	// (Dovecot's auth_master_user_separator), with USER/PASS, AUTH LOGIN
	// or AUTH PLAIN; with AUTH PLAIN an authorization identity, when
	// given, names the mailbox instead, as Dovecot does.
	MasterSeparator string

	// XCLIENT accepts Dovecot's XCLIENT command in the AUTHORIZATION
	// state, answering "+OK Updated" (or "-ERR " + XCLIENTError when that
	// is set), and lists XCLIENT in CAPA unless Greeting starts with
	// "[XCLIENT]", Dovecot's way of advertising it. The line shows in
	// Commands.
	XCLIENT bool

	// XCLIENTError, when set, refuses XCLIENT with "-ERR " + XCLIENTError.
	XCLIENTError string

	// ProxyHeader requires a PROXY protocol v1 or v2 header before
	// anything else on every connection (before TLS when Implicit). It
	// shows in Commands as "PROXY <source> <destination>", or
	// "PROXY LOCAL"; a connection without a valid header is closed.
	ProxyHeader bool

	// Logf, when set, receives debug lines (commands and status lines).
	// PASS arguments and SASL payloads are replaced with "***".
	Logf func(format string, args ...any)

	mu        sync.Mutex
	wg        sync.WaitGroup // accept loops started by Start and every connection handler
	closed    bool
	done      chan struct{}             // closed by Close
	listeners map[net.Listener]struct{} // open listeners
	conns     map[net.Conn]struct{}     // raw conns of live sessions
	drops     map[string]*maildrop      // committed state, created from Mailboxes on first use
	locked    map[string]bool           // users with a session in TRANSACTION
	commands  []string                  // redacted command lines
	logins    int                       // successful logins
	quits     int                       // QUITs from TRANSACTION
	nextID    uint64                    // connection ids
}

// maildrop is the committed state of one mailbox.
type maildrop struct {
	msgs [][]byte
	uids []string // unique-ids (RFC 1939 §7), stable across sessions
}

// initLocked creates the Server's internal maps. s.mu must be held.
func (s *Server) initLocked() {
	if s.done == nil {
		s.done = make(chan struct{})
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
		s.drops = make(map[string]*maildrop)
		s.locked = make(map[string]bool)
	}
}

// dropLocked returns user's committed maildrop, or nil when there is no such
// mailbox. s.mu must be held.
func (s *Server) dropLocked(user string) *maildrop {
	s.initLocked()
	if d := s.drops[user]; d != nil {
		return d
	}
	mb := s.Mailboxes[user]
	if mb == nil {
		return nil
	}
	d := &maildrop{msgs: slices.Clone(mb.Messages), uids: make([]string, len(mb.Messages))}
	for i, m := range mb.Messages {
		d.uids[i] = uniqueID(i, m)
	}
	s.drops[user] = d
	return d
}

// Start listens on addr (use "127.0.0.1:0" in tests) and serves in the
// background until [Server.Close]. It returns the listening address.
func (s *Server) Start(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if !s.addListener(ln, true) {
		return nil, ErrServerClosed
	}
	go s.backgroundServe(ln)
	return ln.Addr(), nil
}

// backgroundServe is the accept loop Start runs; Close waits for it.
func (s *Server) backgroundServe(ln net.Listener) {
	defer s.wg.Done()
	s.acceptLoop(ln)
}

// Serve accepts connections on ln and serves each in its own goroutine. It
// returns [ErrServerClosed] after [Server.Close], or the error that made ln
// unusable. ln is closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	if !s.addListener(ln, false) {
		return ErrServerClosed
	}
	return s.acceptLoop(ln)
}

// addListener registers ln for Close, counting a background loop in wg; it
// closes ln and reports false when the server is closed.
func (s *Server) addListener(ln net.Listener, background bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		ln.Close()
		return false
	}
	s.initLocked()
	s.listeners[ln] = struct{}{}
	if background {
		s.wg.Add(1)
	}
	return true
}

func (s *Server) acceptLoop(ln net.Listener) error {
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Transient failure (e.g. EMFILE): back off, capped, like
			// net/http.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logf("accept: %v; retrying in %v", err, backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go s.handleConn(c)
	}
}

// handleConn serves one accepted connection; track has been called.
func (s *Server) handleConn(c net.Conn) {
	defer s.untrack(c)
	s.serveSession(c)
}

// ServeConn serves the single connection c (for example one end of
// net.Pipe) and returns when the session ends. c is closed on return. After
// Close it closes c at once.
func (s *Server) ServeConn(c net.Conn) {
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	s.serveSession(c)
}

// track registers a live connection; it reports false when the server is
// closed. Adding to wg under mu after checking closed keeps Close's Wait
// from racing with Add.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.initLocked()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, closes every live connection and waits for all
// handlers and background accept loops to return. Uncommitted deletions are
// discarded. Committed state stays readable through [Server.Messages].
// Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.initLocked()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	var errs []error
	for ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(errs...)
}

// Messages returns user's committed messages: the mailbox's initial messages
// minus those deleted by sessions that ended with QUIT. It returns nil for an
// unknown user. The returned slice is a copy; its messages must not be
// modified.
func (s *Server) Messages(user string) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dropLocked(user)
	if d == nil {
		return nil
	}
	return slices.Clone(d.msgs)
}

// Commands returns every command line received so far, across connections,
// in order, without CRLF. PASS arguments and SASL payloads (initial responses
// and continuation lines) are replaced with "***", so "PASS ***",
// "AUTH PLAIN ***" and "***" appear instead. Over-long lines are not
// recorded; lines discarded after STLS were never received.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.commands)
}

// Logins returns the number of successful logins.
func (s *Server) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// Quits returns the number of QUIT commands that entered the UPDATE state,
// i.e. sessions that committed their deletions.
func (s *Server) Quits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quits
}

func (s *Server) record(line string) {
	s.mu.Lock()
	s.commands = append(s.commands, line)
	s.mu.Unlock()
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf("pop3test: "+format, args...)
	}
}
