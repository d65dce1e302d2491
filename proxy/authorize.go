package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// maxBadCommands closes a connection that keeps sending what is not POP3 (an
// HTTP request, a port scanner), as go-imap and Dovecot do.
const maxBadCommands = 10

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
		limit := pop3.MaxCommandLen
		if sess.oauthAllowed() {
			// Clients send a bearer token's initial response on the
			// AUTH line whatever its length (RFC 5034 §4 allows a
			// longer one there); other commands keep the limit.
			limit = maxTokenAuthLine
		}
		line, err := pop3.ReadLine(sess.br, limit)
		if err == nil && len(line) > pop3.MaxCommandLen-2 && !isTokenAuth(line) {
			err = pop3.ErrLineTooLong
		}
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
			if sess.pendingUser == "" {
				sess.reply("-ERR USER first")
				continue
			}
			creds := auth.Credentials{User: sess.pendingUser, Password: auth.Password(cmd.Arg), Method: "USER"}
			sess.pendingUser = ""
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
		sess.bw.WriteString("-ERR " + pop3.CodeSysTemp + " Login timeout\r\n")
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
		b.WriteString("USER\r\nSASL PLAIN LOGIN")
		if sess.oauthAllowed() {
			b.WriteString(" OAUTHBEARER XOAUTH2")
		}
		b.WriteString("\r\n")
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
	sess.pendingUser = ""
	sess.br = sess.srv.getReader(sess.conn)
	sess.bw = sess.srv.getWriter(sess.conn)
	return true
}

const msgPlaintextRefused = "-ERR " + pop3.CodeAuth + " Plaintext login is not allowed here, use STLS first"

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
	sess.pendingUser = arg
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
		switch {
		case sess.oauthAllowed():
			sess.reply("+OK\r\nPLAIN\r\nLOGIN\r\nOAUTHBEARER\r\nXOAUTH2\r\n.")
		case sess.loginAllowed():
			sess.reply("+OK\r\nPLAIN\r\nLOGIN\r\n.")
		default:
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
	case auth.MethodOAuthBearer, auth.MethodXOAuth2:
		if !sess.oauthAllowed() {
			sess.reply("-ERR Unsupported SASL mechanism")
			return creds, false, false
		}
		resp, ok, done := sess.saslResponse(ir, hasIR, "+ ")
		if !ok {
			return creds, false, done
		}
		parse := auth.ParseOAuthBearer
		if mech == auth.MethodXOAuth2 {
			parse = auth.ParseXOAuth2
		}
		creds, err := parse(resp)
		if err != nil {
			sess.reply("-ERR Malformed SASL " + mech + " response")
			return creds, false, false
		}
		return creds, true, false
	default:
		sess.reply("-ERR Unsupported SASL mechanism")
		return creds, false, false
	}
}

// maxTokenAuthLine bounds "AUTH XOAUTH2 " and a bearer token's initial
// response: the SASL message limit, the command and CRLF.
const maxTokenAuthLine = auth.MaxSASLLen + len("AUTH OAUTHBEARER ") + 2

// isTokenAuth reports whether line is AUTH OAUTHBEARER or AUTH XOAUTH2
// with an initial response.
func isTokenAuth(line []byte) bool {
	verb, rest, _ := bytes.Cut(line, []byte{' '})
	mech, _, ok := bytes.Cut(rest, []byte{' '})
	return ok && bytes.EqualFold(verb, []byte("AUTH")) &&
		(bytes.EqualFold(mech, []byte(auth.MethodOAuthBearer)) || bytes.EqualFold(mech, []byte(auth.MethodXOAuth2)))
}

// oauthAllowed reports whether AUTH OAUTHBEARER and XOAUTH2 are offered:
// on a listener that enables them, once the connection is encrypted (a
// bearer token opens the mailbox like a password, and unlike one is not
// tied to this server).
func (sess *session) oauthAllowed() bool {
	return sess.l.OAuth && sess.tls != nil
}

// oauthErrorExchange carries out RFC 7628 §3.2.2's failure: the error
// status as a base64 JSON continuation, which the client answers with a
// dummy response ("AQ==", a lone 0x01) or a cancel ("*"); the caller
// then sends the -ERR. It reports false when the connection ended.
func (sess *session) oauthErrorExchange() bool {
	msg := sess.cfg.OAuthError
	if msg == nil {
		msg = auth.OAuthErrorChallenge("", "")
	}
	sess.reply("+ " + base64.StdEncoding.EncodeToString(msg))
	if err := sess.bw.Flush(); err != nil {
		sess.endRead(err)
		return false
	}
	// Whatever the client answers ends the exchange; it is not read
	// further, nor logged.
	_, err := pop3.ReadLine(sess.br, auth.MaxSASLLen+2)
	if err != nil && err != pop3.ErrLineTooLong {
		sess.endRead(err)
		return false
	}
	return true
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
