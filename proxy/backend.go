package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// backendConn is a backend connection that completed the login.
type backendConn struct {
	raw  net.Conn      // the TCP socket
	conn net.Conn      // raw, or the TLS connection over it
	br   *bufio.Reader // holds any bytes the backend sent after its login reply
	tls  *tls.ConnectionState
	// reply is the backend's +OK to the login, CRLF included, relayed to
	// the client as it is.
	reply string
}

// backendRejected is a login the backend refused with -ERR. classify
// decides whether the client hears its reply or popgate's own words.
type backendRejected struct {
	backend string
	reply   string // the backend's -ERR line, CRLF included
}

func (e *backendRejected) Error() string {
	return fmt.Sprintf("backend %q refused the login: %s", e.backend, strings.TrimSuffix(e.reply, "\r\n"))
}

func isBackendRejected(err error) bool {
	var br *backendRejected
	return errors.As(err, &br)
}

// errNoSTLS is a backend configured for STLS that does not offer it.
var errNoSTLS = errors.New("backend does not offer STLS; refusing to log in over plaintext")

// errNoXCLIENT is a backend configured for XCLIENT that does not advertise
// it. Dovecot advertises it only to its login_trusted_networks; logging in
// without it would hide every client behind popgate's address, which the
// operator asked not to happen, so the login fails instead.
var errNoXCLIENT = errors.New("backend does not advertise XCLIENT (client_address = \"xclient\"); popgate's address is likely missing from the backend's login_trusted_networks")

// clientInfo is what a backend may be told about the client.
type clientInfo struct {
	remote netip.AddrPort // the client
	local  netip.AddrPort // the address the client connected to
	connID string
	tls    *tlsInfo // the client's TLS to popgate; nil: plaintext
	// logger returns the session's logger, for lines about its login.
	logger func() *slog.Logger
}

// maxBackendLine bounds a backend's response line.
const maxBackendLine = 2 * pop3.MaxResponseLen

// dialBackend connects to b, logs in with dec's credentials and returns the
// connection, which holds the backend's reply to the login. A login the
// backend refused returns a *backendRejected with the reply.
func (s *Server) dialBackend(ctx context.Context, cfg *Config, b *Backend, dec auth.Decision, ci clientInfo) (*backendConn, error) {
	start := time.Now()
	bc, err := s.dialLogin(ctx, cfg, b, dec, ci)
	result := BackendOK
	var de *dialError
	switch {
	case isBackendRejected(err):
		result = BackendRejected
	case errors.As(err, &de):
		result = BackendUnreachable
	case err != nil:
		result = BackendError
	}
	s.obs.BackendLogin(b.Name, time.Since(start), result)
	return bc, err
}

func (s *Server) dialLogin(ctx context.Context, cfg *Config, b *Backend, dec auth.Decision, ci clientInfo) (*backendConn, error) {
	// An address the route chose is the only one tried: the backend's
	// own list and its health order are not built for it.
	var addrs []string
	if dec.Address != "" {
		addrs = []string{dec.Address}
	} else {
		addrs = s.orderByHealth(b.Name, b.addresses())
	}
	// Addresses are tried in order while they cannot be reached; once a
	// connection stands, its answer is final: a login is never tried
	// twice.
	var raw net.Conn
	var addr string
	var errs []error
	for _, addr = range addrs {
		dctx, cancel := context.WithTimeout(ctx, b.connectTimeout())
		t := time.Now()
		c, err := dial(dctx, cfg, addr)
		cancel()
		s.obs.BackendConnect(b.Name, time.Since(t), err)
		if err == nil {
			raw = c
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	if raw == nil {
		return nil, &dialError{fmt.Errorf("dial backend %q: %w", b.Name, errors.Join(errs...))}
	}
	if len(errs) > 0 {
		ci.logger().Warn("backend address unreachable, used the next one", "backend", b.Name, "address", addr, "err", errors.Join(errs...))
	}
	// Cancelling ctx (shutdown, login_timeout) interrupts any read below.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	key := b.TLS.String() + " " + b.ClientAddress.String() + " " + addr
	bc, err := s.loginBackend(ctx, raw, b, key, dec, ci)
	if !stop() || err != nil {
		raw.Close()
		if err != nil {
			// Whatever went wrong, ask for the capabilities again
			// next time: the backend may have changed.
			s.caps.forget(key)
		}
		if err == nil {
			err = ctx.Err()
		}
		if isBackendRejected(err) {
			return nil, err
		}
		return nil, fmt.Errorf("backend %q (%s): %w", b.Name, addr, err)
	}
	raw.SetDeadline(time.Time{})
	return bc, nil
}

// dialError is a backend none of whose addresses could be connected to.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func dial(ctx context.Context, cfg *Config, addr string) (net.Conn, error) {
	if cfg.DialContext != nil {
		return cfg.DialContext(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// backendClient is the POP3 client side of a backend login.
type backendClient struct {
	b       *Backend
	conn    net.Conn
	br      *bufio.Reader
	timeout time.Duration
	ctx     context.Context
}

func (c *backendClient) deadline() {
	d := time.Now().Add(c.timeout)
	if cd, ok := c.ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	c.conn.SetDeadline(d)
}

// cmd sends lines (each without CRLF) in one write and reads one reply line.
func (c *backendClient) cmd(lines ...string) ([]byte, error) {
	c.deadline()
	n := 0
	for _, l := range lines {
		n += len(l) + 2
	}
	buf := make([]byte, 0, n)
	for _, l := range lines {
		buf = append(buf, l...)
		buf = append(buf, '\r', '\n')
	}
	if _, err := c.conn.Write(buf); err != nil {
		return nil, err
	}
	return c.readLine()
}

func (c *backendClient) readLine() ([]byte, error) {
	c.deadline()
	line, err := pop3.ReadLine(c.br, maxBackendLine)
	if err == pop3.ErrLineTooLong {
		return nil, errors.New("backend reply too long")
	}
	return line, err
}

// capa asks for the capabilities; nil means the backend does not know CAPA
// (RFC 1939-only servers), which is no error.
func (c *backendClient) capa() (map[string]string, error) {
	line, err := c.cmd("CAPA")
	if err != nil {
		return nil, fmt.Errorf("CAPA: %w", err)
	}
	if !pop3.IsOK(line) {
		return nil, nil
	}
	caps, err := pop3.ParseCapa(c.br, 100)
	if err != nil {
		return nil, fmt.Errorf("CAPA: %w", err)
	}
	return caps, nil
}

func (c *backendClient) handshake() (*tls.ConnectionState, error) {
	c.deadline()
	tc := tls.Client(newRecordConn(c.conn), c.b.TLSConfig)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	c.conn = tc
	c.br.Reset(tc)
	return &st, nil
}

func (s *Server) loginBackend(ctx context.Context, raw net.Conn, b *Backend, key string, dec auth.Decision, ci clientInfo) (*backendConn, error) {
	c := &backendClient{b: b, conn: raw, timeout: b.timeout(), ctx: ctx, br: s.getReader(raw)}
	ok := false
	defer func() {
		if !ok {
			s.putReader(c.br)
		}
	}()
	var st *tls.ConnectionState
	var err error
	if v := b.ClientAddress; v == ClientAddressProxyV1 || v == ClientAddressProxyV2 {
		// The PROXY header comes before anything else, TLS included
		// (haproxy doc/proxy-protocol.txt §2).
		version := byte(1)
		if v == ClientAddressProxyV2 {
			version = 2
		}
		hdr, err := proxyHeaderFor(version, ci.remote, ci.local, ci.tls)
		if err != nil {
			return nil, fmt.Errorf("PROXY header: %w", err)
		}
		c.deadline()
		if _, err := raw.Write(hdr); err != nil {
			return nil, fmt.Errorf("PROXY header: %w", err)
		}
	}
	if b.TLS == TLSImplicit {
		if st, err = c.handshake(); err != nil {
			return nil, err
		}
	}
	greeting, err := c.readLine()
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !pop3.IsOK(greeting) {
		return nil, fmt.Errorf("greeting is not +OK: %.80q", greeting)
	}
	// Decided now: greeting points into c.br, which later reads reuse.
	xclientGreeting := hasXCLIENTTag(greeting)
	// Capabilities seen on an earlier login save a round trip. For a
	// starttls backend the cache holds what it offered after STLS, and
	// an entry exists only if it offered STLS at all.
	caps, cached := s.caps.get(key)
	if !cached {
		if caps, err = c.capa(); err != nil {
			return nil, err
		}
	}
	if b.TLS == TLSStartTLS {
		if !cached && caps != nil {
			if _, ok := caps["STLS"]; !ok {
				return nil, errNoSTLS
			}
		}
		line, err := c.cmd("STLS")
		if err != nil {
			return nil, fmt.Errorf("STLS: %w", err)
		}
		if !pop3.IsOK(line) {
			return nil, fmt.Errorf("STLS refused: %.80q", line)
		}
		// Anything after the +OK and before the handshake did not come
		// through TLS: a response injection (CVE-2011-0411 class, the
		// client side of it). Abort.
		if c.br.Buffered() > 0 {
			return nil, errors.New("backend sent data after its STLS reply, before TLS: possible injection, aborting")
		}
		if st, err = c.handshake(); err != nil {
			return nil, err
		}
		// RFC 2595 §4: capabilities may differ after STLS.
		if !cached {
			if caps, err = c.capa(); err != nil {
				return nil, err
			}
		}
	}
	if !cached {
		s.caps.put(key, caps)
	}
	if b.ClientAddress == ClientAddressXCLIENT {
		if err := c.xclient(xclientGreeting, caps, ci); err != nil {
			return nil, err
		}
	}
	reply, err := c.login(caps, dec)
	if err != nil {
		return nil, err
	}
	ok = true
	return &backendConn{raw: raw, conn: c.conn, br: c.br, tls: st, reply: reply}, nil
}

// xclient tells a Dovecot backend the client's address, after STLS and
// before the login. Dovecot advertises XCLIENT by starting its greeting
// with "[XCLIENT]" (src/pop3-login/client.c); other servers may list it in
// CAPA. A +OK does not prove the backend trusted it: Dovecot answers +OK
// to untrusted senders too and ignores the command.
func (c *backendClient) xclient(inGreeting bool, caps map[string]string, ci clientInfo) error {
	if _, inCaps := caps["XCLIENT"]; !inCaps && !inGreeting {
		return errNoXCLIENT
	}
	line, err := c.cmd(xclientLine(ci.remote, ci.connID, ci.tls != nil))
	if err != nil {
		return fmt.Errorf("XCLIENT: %w", err)
	}
	if !pop3.IsOK(line) {
		return fmt.Errorf("backend refused XCLIENT (%.80q); popgate's address is likely missing from the backend's login_trusted_networks", line)
	}
	return nil
}

// hasXCLIENTTag reports whether a greeting's text starts with "[XCLIENT]".
func hasXCLIENTTag(greeting []byte) bool {
	text := bytes.TrimSpace(bytes.TrimPrefix(greeting, []byte("+OK")))
	return bytes.HasPrefix(text, []byte("[XCLIENT]"))
}

// login sends the credentials: AUTH PLAIN with an initial response for a
// backend that offers SASL PLAIN, one command and one round trip, else
// USER/PASS. AUTH PLAIN with the initial response on a line of its own
// (RFC 5034 §4) takes two round trips like USER/PASS, so it is used only
// when USER is not offered or an authorization identity is relayed. It
// returns the backend's +OK with CRLF, or a *backendRejected holding its
// -ERR.
func (c *backendClient) login(caps map[string]string, dec auth.Decision) (string, error) {
	_, hasUser := caps["USER"]
	plain := false
	for _, m := range strings.Fields(caps["SASL"]) {
		if strings.EqualFold(m, "PLAIN") {
			plain = true
		}
	}
	pass := string(dec.Password)
	var line []byte
	var err error
	// echo is how the backend's echo of the line that carried the
	// credentials starts, up to the first octets that give any of them
	// away: a backend that cuts its echo short leaves neither secret
	// whole in its reply, but the start of one.
	var echo string
	if dec.AuthzID != "" && !plain {
		return "", errors.New("backend offers no SASL PLAIN to relay an authorization identity with")
	}
	ir := ""
	if plain {
		ir = auth.EncodePlainAs(dec.AuthzID, dec.User, dec.Password)
	}
	oneLine := len("AUTH PLAIN ")+len(ir)+2 <= pop3.MaxCommandLen
	switch {
	case dec.AuthzID == "" && (caps == nil || !plain || hasUser && !oneLine):
		// USER and PASS are not pipelined even to a backend that
		// offers PIPELINING: Dovecot writes its two answers separately
		// without TCP_NODELAY, and Nagle then holds the second one for
		// our delayed ACK, 40 ms per login (measured with pop3bench).
		line, err = c.cmd("USER " + dec.User)
		if err != nil {
			return "", fmt.Errorf("USER: %w", err)
		}
		if !pop3.IsOK(line) {
			// An echo of USER gives away the name the route may
			// have rewritten the login to (a master user's).
			return c.verdict(line, dec.User)
		}
		if line, err = c.cmd("PASS " + pass); err != nil {
			return "", fmt.Errorf("PASS: %w", err)
		}
		echo = "PASS " + pass[:min(1, len(pass))]
	default:
		if oneLine {
			line, err = c.cmd("AUTH PLAIN " + ir)
			echo = "AUTH PLAIN " + ir[:1]
		} else {
			// RFC 5034 §4: an initial response that does not fit
			// in 255 octets goes on the continuation line.
			// Only "+ " is a continuation: a +OK or -ERR to the
			// bare command is the verdict, and the credentials
			// must not follow it as a command line of their own.
			line, err = c.cmd("AUTH PLAIN")
			if err == nil && isContinuation(line) {
				line, err = c.cmd(ir)
				echo = ir[:min(4, len(ir))]
			}
		}
		if err != nil {
			return "", fmt.Errorf("AUTH PLAIN: %w", err)
		}
	}
	return c.verdict(line, pass, ir, echo)
}

// isContinuation reports whether a backend's line is a SASL continuation
// ("+ " and a challenge, RFC 5034 §4; a bare "+" from a sloppy server).
func isContinuation(line []byte) bool {
	return len(line) >= 1 && line[0] == '+' && (len(line) == 1 || line[1] == ' ')
}

// verdict turns the backend's answer to the login into its +OK reply, or a
// *backendRejected with its -ERR. secrets are what was sent that must not
// come back (the password, the SASL payload, the user name of a refused
// USER): a backend that echoes a
// command it refuses ("-ERR Unknown command: AUTH PLAIN ...") would put
// them in the log and, relayed, before the client, who for a login the
// route rewrote would read a master user's password. secrets also hold
// the start of such an echo, for a backend that cuts it short. A reply
// holding one keeps only its status and response code.
func (c *backendClient) verdict(line []byte, secrets ...string) (string, error) {
	reply, clean := withoutSecrets(line, secrets)
	switch {
	case pop3.IsOK(line):
		return reply, nil
	case pop3.IsErr(line):
		return "", &backendRejected{backend: c.b.Name, reply: reply}
	case !clean:
		return "", errors.New("unexpected login reply, holding the credentials sent (not shown)")
	}
	return "", fmt.Errorf("unexpected login reply %.80q", line)
}

// withoutSecrets returns line with CRLF, or when it holds one of secrets,
// its status indicator and response code alone; clean is false then.
func withoutSecrets(line []byte, secrets []string) (reply string, clean bool) {
	reply = string(line) + "\r\n" // searched as it is: no copy per secret
	for _, s := range secrets {
		if s == "" || !strings.Contains(reply, s) {
			continue
		}
		status := "-ERR"
		if pop3.IsOK(line) {
			status = "+OK"
		}
		code := pop3.ResponseCode(reply)
		for _, s := range secrets {
			if s != "" && strings.Contains(strings.ToUpper(code), strings.ToUpper(s)) {
				code = ""
			}
		}
		if code != "" {
			status += " " + code
		}
		return status + "\r\n", false
	}
	return reply, true
}

// capsTTL is how long a backend's capabilities are trusted without asking
// again. Any failed login forgets them at once.
const capsTTL = time.Minute

// capsCache remembers backends' CAPA answers, keyed by TLS mode and address.
type capsCache struct {
	mu sync.Mutex
	m  map[string]capsEntry
}

type capsEntry struct {
	caps map[string]string // nil: the backend does not know CAPA
	at   time.Time
}

func (cc *capsCache) get(key string) (map[string]string, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	e, ok := cc.m[key]
	if !ok || time.Since(e.at) > capsTTL {
		return nil, false
	}
	return e.caps, true
}

func (cc *capsCache) put(key string, caps map[string]string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.m == nil || len(cc.m) >= 4096 {
		// Addresses from a lookup service can be many; stay bounded.
		cc.m = make(map[string]capsEntry)
	}
	cc.m[key] = capsEntry{caps: caps, at: time.Now()}
}

func (cc *capsCache) forget(key string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.m, key)
}
