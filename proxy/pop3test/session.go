package pop3test

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// state is a POP3 session state (RFC 1939 §3). UPDATE is entered and left
// inside the QUIT handler, so it needs no value of its own.
type state int

const (
	stateAuthorization state = iota
	stateTransaction
)

var (
	errQuit    = errors.New("quit")
	errDropped = errors.New("dropped mid-RETR")
)

const (
	authFailed = "-ERR [AUTH] Authentication failed"
	noSuchMsg  = "-ERR no such message"
)

// session is one POP3 connection.
type session struct {
	s    *Server
	id   uint64
	raw  net.Conn      // the accepted conn; closing it aborts everything
	conn net.Conn      // raw, or the TLS conn on top of it
	tls  bool          // TLS is active (Implicit or after STLS)
	br   *bufio.Reader // bounded by readLine, never ReadString
	bw   *bufio.Writer // flushed once per response (or batch of pipelined ones)

	state state
	user  string // AUTHORIZATION: name from the USER just before

	// TRANSACTION: a snapshot of the locked maildrop.
	mbox    string
	msgs    [][]byte
	uids    []string
	deleted []bool
}

func (s *Server) serveSession(c net.Conn) {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	done := s.done
	s.mu.Unlock()

	ss := &session{s: s, id: id, raw: c, conn: c}
	defer ss.unlock()
	ss.logf("connected from %v", c.RemoteAddr())
	if err := ss.run(done); err != nil && !errors.Is(err, errQuit) {
		ss.logf("closed: %v", err)
	}
}

func (c *session) run(done <-chan struct{}) error {
	if c.s.ProxyHeader {
		if err := c.readProxyHeader(); err != nil {
			return err
		}
	}
	if c.s.Silent {
		// Before any TLS handshake: not even a ServerHello is sent.
		_, err := io.Copy(io.Discard, c.conn)
		return err
	}
	if c.s.Implicit {
		if c.s.TLSConfig == nil {
			return errors.New("implicit TLS without TLSConfig")
		}
		tc := tls.Server(c.raw, c.s.TLSConfig)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c.conn, c.tls = tc, true
	}
	if d := c.s.GreetingDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-done:
			t.Stop()
			return ErrServerClosed
		}
	}
	c.br = bufio.NewReaderSize(c.conn, 4096)
	c.bw = bufio.NewWriterSize(c.conn, 32<<10)

	greeting := c.s.Greeting
	if greeting == "" {
		greeting = fmt.Sprintf("POP3 server ready <%d.%d@pop3test>", c.id, time.Now().UnixNano())
	}
	c.reply("+OK %s", greeting)
	if err := c.bw.Flush(); err != nil {
		return err
	}
	for {
		line, tooLong, err := c.readLine(MaxLineLength)
		if err != nil {
			return err
		}
		if tooLong {
			c.logf("C: (line too long)")
			c.user = "" // it was a command, so PASS no longer follows USER
			c.reply("-ERR line too long")
		} else {
			c.s.record(redact(line))
			c.logf("C: %s", redact(line))
			err = c.command(line)
		}
		if errors.Is(err, errDropped) {
			return err // already flushed and closed by retr
		}
		if ferr := c.flushIfIdle(err != nil); ferr != nil {
			return ferr
		}
		if err != nil {
			return err
		}
	}
}

// readLine reads one line of at most limit octets including its terminator.
// A longer line is consumed and discarded and reported with tooLong; at most
// limit octets are ever held. The returned line has CRLF (or LF) stripped.
func (c *session) readLine(limit int) (line string, tooLong bool, err error) {
	var buf []byte
	for {
		frag, err := c.br.ReadSlice('\n')
		if len(buf)+len(frag) <= limit {
			buf = append(buf, frag...)
		} else {
			tooLong = true
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && (len(buf) > 0 || tooLong) {
				err = io.ErrUnexpectedEOF
			}
			return "", false, err
		}
		break
	}
	if tooLong {
		return "", true, nil
	}
	buf = bytes.TrimSuffix(buf, []byte("\n"))
	buf = bytes.TrimSuffix(buf, []byte("\r"))
	return string(buf), false, nil
}

// flushIfIdle flushes unless another complete command is already buffered:
// pipelined commands (RFC 2449 §6.6) are answered in one write.
func (c *session) flushIfIdle(force bool) error {
	if !force {
		if n := c.br.Buffered(); n > 0 {
			if b, _ := c.br.Peek(n); bytes.IndexByte(b, '\n') >= 0 {
				return nil
			}
		}
	}
	return c.bw.Flush()
}

// reply writes one status line. Errors are sticky in bw and surface at
// flush.
func (c *session) reply(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	c.logf("S: %s", line)
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
}

func (c *session) logf(format string, args ...any) {
	c.s.logf("conn %d: "+format, append([]any{c.id}, args...)...)
}

// redact hides PASS arguments and SASL initial responses.
func redact(line string) string {
	verb, arg, ok := strings.Cut(line, " ")
	switch strings.ToUpper(verb) {
	case "PASS":
		if ok {
			return verb + " ***"
		}
	case "AUTH":
		if mech, _, ok := strings.Cut(arg, " "); ok {
			return verb + " " + mech + " ***"
		}
	}
	return line
}

// command runs one command line. A non-nil error ends the session.
func (c *session) command(line string) error {
	verb, rest, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	args := strings.Fields(rest)
	if c.state == stateAuthorization {
		// PASS must immediately follow USER (RFC 1939 §7).
		user := c.user
		c.user = ""
		switch verb {
		case "CAPA":
			c.capa()
		case "USER":
			if c.s.NoUSER {
				c.reply("-ERR USER not supported")
			} else if len(args) != 1 {
				c.reply("-ERR usage: USER name")
			} else {
				// Same answer for every name: names cannot be probed.
				c.user = args[0]
				c.reply("+OK send PASS")
			}
		case "PASS":
			if c.s.NoUSER {
				c.reply("-ERR PASS not supported")
			} else if user == "" {
				c.reply("-ERR send USER first")
			} else {
				c.login(user, rest)
			}
		case "AUTH":
			return c.auth(args)
		case "STLS":
			return c.stls()
		case "XCLIENT":
			switch {
			case !c.s.XCLIENT:
				c.reply("-ERR unknown command or not valid before login")
			case c.s.XCLIENTError != "":
				c.reply("-ERR %s", c.s.XCLIENTError)
			default:
				c.reply("+OK Updated")
			}
		case "QUIT":
			c.reply("+OK bye")
			return errQuit
		case "":
			c.reply("-ERR empty command")
		default:
			c.reply("-ERR unknown command or not valid before login")
		}
		return nil
	}

	switch verb {
	case "CAPA":
		c.capa()
	case "NOOP":
		c.reply("+OK")
	case "STAT":
		n, size := c.stat()
		c.reply("+OK %d %d", n, size)
	case "LIST", "UIDL":
		c.listing(verb, args)
	case "RETR":
		if i, ok := c.msgArg(args, 1); ok {
			return c.retr(i)
		}
	case "TOP":
		i, ok := c.msgArg(args, 2)
		if !ok {
			break
		}
		lines, err := strconv.Atoi(args[1])
		if err != nil || lines < 0 || !isDigits(args[1]) {
			c.reply("-ERR invalid line count")
			break
		}
		c.reply("+OK top of message follows")
		writeStuffed(c.bw, c.msgs[i], lines)
		c.bw.WriteString(".\r\n")
	case "DELE":
		if i, ok := c.msgArg(args, 1); ok {
			c.deleted[i] = true
			c.reply("+OK message %d deleted", i+1)
		}
	case "RSET":
		clear(c.deleted)
		n, size := c.stat()
		c.reply("+OK maildrop has %d messages (%d octets)", n, size)
	case "QUIT":
		left := c.commit()
		c.reply("+OK pop3test signing off (%d messages left)", left)
		return errQuit
	case "":
		c.reply("-ERR empty command")
	default:
		c.reply("-ERR unknown command or not valid in TRANSACTION state")
	}
	return nil
}

func (c *session) capa() {
	c.reply("+OK Capability list follows")
	if c.state == stateAuthorization {
		if !c.s.NoUSER {
			c.bw.WriteString("USER\r\n")
		}
		if len(c.s.SASL) > 0 {
			c.bw.WriteString("SASL " + strings.Join(c.s.SASL, " ") + "\r\n")
		}
		if c.stlsAvailable() {
			c.bw.WriteString("STLS\r\n")
		}
		if c.s.XCLIENT && !strings.HasPrefix(c.s.Greeting, "[XCLIENT]") {
			c.bw.WriteString("XCLIENT\r\n")
		}
	}
	c.bw.WriteString("RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nTOP\r\nUIDL\r\nIMPLEMENTATION pop3test\r\n.\r\n")
}

func (c *session) stlsAvailable() bool {
	return c.s.STLS && c.s.TLSConfig != nil && !c.tls
}

// stls upgrades to TLS (RFC 2595 §4). Bytes the client pipelined after STLS
// are still in br; Reset drops them so they never reach the parser.
func (c *session) stls() error {
	if !c.stlsAvailable() {
		c.reply("-ERR STLS not available")
		return nil
	}
	c.reply("+OK Begin TLS negotiation")
	c.bw.WriteString(c.s.InjectAfterSTLS)
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if n := c.br.Buffered(); n > 0 {
		c.logf("discarding %d octets received after STLS", n)
	}
	tc := tls.Server(c.raw, c.s.TLSConfig)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("STLS handshake: %w", err)
	}
	c.conn, c.tls = tc, true
	c.br.Reset(tc)
	c.bw.Reset(tc)
	c.user = ""
	return nil
}

// auth runs AUTH mechanism [initial-response] (RFC 5034).
func (c *session) auth(args []string) error {
	if len(args) < 1 || len(args) > 2 {
		c.reply("-ERR usage: AUTH mechanism [initial-response]")
		return nil
	}
	mech := strings.ToUpper(args[0])
	if !slices.ContainsFunc(c.s.SASL, func(m string) bool { return strings.EqualFold(m, mech) }) ||
		(mech != "PLAIN" && mech != "LOGIN") {
		c.reply("-ERR unsupported SASL mechanism")
		return nil
	}
	ir, hasIR := "", len(args) == 2
	if hasIR {
		ir = args[1]
	}
	switch mech {
	case "PLAIN":
		b, ok, err := c.saslResponse(ir, hasIR, "")
		if !ok {
			return err
		}
		// message = [authzid] NUL authcid NUL passwd (RFC 4616 §2)
		parts := strings.Split(string(b), "\x00")
		if len(parts) != 3 || parts[1] == "" {
			c.authFail()
			return nil
		}
		if parts[0] != "" && parts[0] != parts[1] {
			// A master user logs in to another user's mailbox, named
			// by the authorization identity; "user*master" as the
			// authentication identity names the master too.
			mu := parts[1]
			if u, m, ok := c.splitMaster(mu); ok && u != "" {
				mu = m
			}
			if !c.isMaster(mu, parts[2]) || c.s.Mailboxes[parts[0]] == nil {
				c.authFail()
				return nil
			}
			c.loginAs(parts[0])
			return nil
		}
		c.login(parts[1], parts[2])
	case "LOGIN":
		user, ok, err := c.saslResponse(ir, hasIR, base64.StdEncoding.EncodeToString([]byte("Username:")))
		if !ok {
			return err
		}
		pass, ok, err := c.saslResponse("", false, base64.StdEncoding.EncodeToString([]byte("Password:")))
		if !ok {
			return err
		}
		c.login(string(user), string(pass))
	}
	return nil
}

// saslResponse returns the client's decoded response: the initial response
// when given ("=" is empty, RFC 5034 §4), else the line read after sending
// "+ " challenge. ok is false when the exchange ended (already answered, or
// err is set).
func (c *session) saslResponse(ir string, hasIR bool, challenge string) (resp []byte, ok bool, err error) {
	if !hasIR {
		c.reply("+ %s", challenge)
		if err := c.bw.Flush(); err != nil {
			return nil, false, err
		}
		line, tooLong, err := c.readLine(maxSASLLine)
		if err != nil {
			return nil, false, err
		}
		c.s.record("***")
		c.logf("C: ***")
		if tooLong {
			c.reply("-ERR line too long")
			return nil, false, nil
		}
		if line == "*" {
			c.reply("-ERR AUTH cancelled")
			return nil, false, nil
		}
		ir = line
	} else if ir == "=" {
		return []byte{}, true, nil
	}
	b, derr := base64.StdEncoding.DecodeString(ir)
	if derr != nil {
		c.reply("-ERR invalid base64")
		return nil, false, nil
	}
	return b, true, nil
}

// login checks credentials and, if they are right, locks the maildrop and
// enters TRANSACTION.
func (c *session) login(user, pass string) {
	if u, m, ok := c.splitMaster(user); ok {
		if !c.isMaster(m, pass) || c.s.Mailboxes[u] == nil {
			c.authFail()
			return
		}
		c.loginAs(u)
		return
	}
	mb := c.s.Mailboxes[user]
	if mb == nil || subtle.ConstantTimeCompare([]byte(mb.Password), []byte(pass)) != 1 {
		c.authFail()
		return
	}
	c.loginAs(user)
}

// authFail refuses a login, after the server's AuthFailureDelay.
func (c *session) authFail() {
	if d := c.s.AuthFailureDelay; d > 0 {
		if j := c.s.AuthFailureJitter; j > 0 {
			d += rand.N(j)
		}
		time.Sleep(d)
	}
	c.reply(authFailed)
}

// splitMaster splits "user*master" at the server's MasterSeparator.
func (c *session) splitMaster(name string) (user, master string, ok bool) {
	if c.s.MasterSeparator == "" {
		return "", "", false
	}
	return strings.Cut(name, c.s.MasterSeparator)
}

// isMaster checks a master user's password.
func (c *session) isMaster(name, pass string) bool {
	want, ok := c.s.MasterUsers[name]
	return ok && subtle.ConstantTimeCompare([]byte(want), []byte(pass)) == 1
}

// loginAs opens user's mailbox after the credentials were checked.
func (c *session) loginAs(user string) {
	if c.s.LoginError != "" {
		c.reply("-ERR %s", c.s.LoginError)
		return
	}
	c.s.mu.Lock()
	if c.s.locked[user] {
		c.s.mu.Unlock()
		// RFC 2449 §8.1.2
		c.reply("-ERR [IN-USE] maildrop already locked by another session")
		return
	}
	d := c.s.dropLocked(user)
	c.s.locked[user] = true
	c.s.logins++
	c.msgs, c.uids = slices.Clone(d.msgs), slices.Clone(d.uids)
	c.s.mu.Unlock()

	c.mbox, c.state = user, stateTransaction
	c.deleted = make([]bool, len(c.msgs))
	n, size := c.stat()
	c.reply("+OK maildrop locked and ready, %d messages (%d octets)", n, size)
}

// commit applies deletions (the UPDATE state, RFC 1939 §6) and releases the
// lock. It returns the number of messages left.
func (c *session) commit() int {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	d := c.s.drops[c.mbox]
	var msgs [][]byte
	var uids []string
	for i := range c.msgs {
		if !c.deleted[i] {
			msgs = append(msgs, c.msgs[i])
			uids = append(uids, c.uids[i])
		}
	}
	d.msgs, d.uids = msgs, uids
	c.s.quits++
	delete(c.s.locked, c.mbox)
	c.state = stateAuthorization
	return len(msgs)
}

// unlock releases the maildrop of a session that ended without QUIT; its
// deletions are dropped.
func (c *session) unlock() {
	if c.state != stateTransaction {
		return
	}
	c.s.mu.Lock()
	delete(c.s.locked, c.mbox)
	c.s.mu.Unlock()
	c.state = stateAuthorization
}

func (c *session) stat() (n, size int) {
	for i, m := range c.msgs {
		if !c.deleted[i] {
			n++
			size += len(m)
		}
	}
	return n, size
}

// msgArg parses the message number in args[0] of a command taking want
// arguments; on failure it answers -ERR and reports false.
func (c *session) msgArg(args []string, want int) (int, bool) {
	if len(args) != want {
		c.reply("-ERR wrong number of arguments")
		return 0, false
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || !isDigits(args[0]) || n < 1 || n > len(c.msgs) {
		c.reply(noSuchMsg)
		return 0, false
	}
	if c.deleted[n-1] {
		c.reply("-ERR message %d already deleted", n)
		return 0, false
	}
	return n - 1, true
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// listing answers LIST and UIDL, with or without a message number.
func (c *session) listing(verb string, args []string) {
	item := func(i int) string {
		if verb == "UIDL" {
			return fmt.Sprintf("%d %s", i+1, c.uids[i])
		}
		return fmt.Sprintf("%d %d", i+1, len(c.msgs[i]))
	}
	if len(args) > 0 {
		if i, ok := c.msgArg(args, 1); ok {
			c.reply("+OK %s", item(i))
		}
		return
	}
	n, size := c.stat()
	c.reply("+OK %d messages (%d octets)", n, size)
	for i := range c.msgs {
		if !c.deleted[i] {
			c.bw.WriteString(item(i) + "\r\n")
		}
	}
	c.bw.WriteString(".\r\n")
}

// retr writes message i, honouring DropAfterBytes.
func (c *session) retr(i int) error {
	var w io.Writer = c.bw
	var dw *dropWriter
	if c.s.DropAfterBytes > 0 {
		dw = &dropWriter{w: c.bw, left: c.s.DropAfterBytes}
		w = dw
	}
	c.logf("S: +OK %d octets", len(c.msgs[i]))
	fmt.Fprintf(w, "+OK %d octets\r\n", len(c.msgs[i]))
	writeStuffed(w, c.msgs[i], -1)
	io.WriteString(w, ".\r\n")
	if dw != nil && dw.dropped {
		c.bw.Flush()
		// Close the raw conn: no TLS close_notify, like a crashed backend.
		c.raw.Close()
		return errDropped
	}
	return nil
}

// dropWriter passes through left octets, then fails.
type dropWriter struct {
	w       io.Writer
	left    int
	dropped bool
}

func (d *dropWriter) Write(p []byte) (int, error) {
	if d.dropped {
		return 0, errDropped
	}
	if len(p) <= d.left {
		d.left -= len(p)
		return d.w.Write(p)
	}
	n, _ := d.w.Write(p[:d.left])
	d.left, d.dropped = 0, true
	return n, errDropped
}

// writeStuffed writes msg dot-stuffed (RFC 1939 §3), ending with CRLF but
// without the terminating ".". With bodyLines >= 0 only the header, the
// blank line and that many body lines are written (TOP, RFC 1939 §7).
// Errors are left to the writer (bufio.Writer keeps them sticky).
func writeStuffed(w io.Writer, msg []byte, bodyLines int) {
	if bodyLines >= 0 {
		msg = topOf(msg, bodyLines)
	}
	if len(msg) == 0 {
		return
	}
	if msg[0] == '.' {
		io.WriteString(w, ".")
	}
	rest := msg
	for {
		i := bytes.Index(rest, []byte("\n."))
		if i < 0 {
			break
		}
		w.Write(rest[:i+1])
		io.WriteString(w, ".")
		rest = rest[i+1:]
	}
	w.Write(rest)
	if msg[len(msg)-1] != '\n' {
		io.WriteString(w, "\r\n")
	}
}

// topOf returns the prefix of msg holding the header, the blank line and n
// body lines.
func topOf(msg []byte, n int) []byte {
	end, inBody := 0, false
	for end < len(msg) {
		if inBody {
			if n == 0 {
				break
			}
			n--
		}
		nl := bytes.IndexByte(msg[end:], '\n')
		line := msg[end:]
		if nl >= 0 {
			line = msg[end : end+nl+1]
		}
		end += len(line)
		if !inBody && (string(line) == "\r\n" || string(line) == "\n") {
			inBody = true
		}
	}
	return msg[:end]
}

// readProxyHeader reads the PROXY header that must open the connection and
// records it. The header is read through a reader of its own; octets the
// peer sent behind it in the same segment are kept for the session.
func (c *session) readProxyHeader() error {
	c.raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.raw.SetReadDeadline(time.Time{})
	br := bufio.NewReaderSize(c.raw, 256)
	h, err := proxyproto.Read(br)
	if err != nil {
		c.s.record("PROXY (invalid)")
		return fmt.Errorf("PROXY header: %w", err)
	}
	if h.Command.IsLocal() {
		c.s.record("PROXY LOCAL")
	} else {
		c.s.record(fmt.Sprintf("PROXY %v %v", h.SourceAddr, h.DestinationAddr))
	}
	if br.Buffered() > 0 {
		rest, _ := br.Peek(br.Buffered())
		c.raw = &prefixConn{Conn: c.raw, prefix: bytes.Clone(rest)}
		c.conn = c.raw
	}
	return nil
}

// prefixConn returns prefix before reading from Conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
