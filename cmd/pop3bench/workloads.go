package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A session is one client connection: TCP connect, a full TLS handshake
// (the client keeps no session cache, so nothing is resumed; with
// target.Resume each worker keeps one and resumes its TLS session), the
// greeting, USER, PASS, STAT, optionally RETR 1, and QUIT, after which the
// client waits for the server to close. Commands are sent one at a time,
// as mail clients do.

// sessionTimeout bounds one whole session, RETR of 10 MiB included.
const sessionTimeout = 60 * time.Second

// account is a mailbox the benchmark logs in to.
type account struct {
	User, Pass string
}

// target is where a side's clients connect: the backend's POP3S port
// (direct) or popgate's.
type target struct {
	Side string // "direct", "popgate" or "nginx"
	Addr string
	TLS  *tls.Config // must have no ClientSessionCache
	// Resume gives each worker its own session cache: one unmeasured
	// session with a full handshake first, then every measured session
	// offers to resume (loadResult.Resumed counts those that did).
	Resume bool
	// Token, when set, gives the bearer token of each login: the session
	// logs in with AUTH XOAUTH2 and the token as the initial response
	// (one command, as getmail and Outlook send it) instead of USER and
	// PASS.
	Token func(a account) string
}

// wantMessage is what RETR 1 must return: its length in octets (as in
// "+OK n octets") and the CRC-32C of the unstuffed content.
type wantMessage struct {
	Size int
	CRC  uint32
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func newWantMessage(msg []byte) wantMessage {
	return wantMessage{Size: len(msg), CRC: crc32.Checksum(msg, crcTable)}
}

// sample is what one session measured.
type sample struct {
	Login   time.Duration // from dialing to PASS's +OK
	Session time.Duration // from dialing to the server's close after QUIT
	Bytes   int64         // octets of the RETR response (status line, dot-stuffed body, ".")
	Payload int64         // octets of the unstuffed message
	TLS     tls.ConnectionState
}

// popConn is a POP3 client connection.
type popConn struct {
	conn net.Conn
	tc   *tls.Conn
	br   *bufio.Reader
}

// dialPOP3 connects to t over TLS and reads the greeting.
func dialPOP3(ctx context.Context, t target) (*popConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	_ = raw.SetDeadline(time.Now().Add(sessionTimeout))
	tc := tls.Client(raw, t.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	c := &popConn{conn: raw, tc: tc, br: bufio.NewReaderSize(tc, 64<<10)}
	if _, err := c.expectOK("greeting"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection without QUIT.
func (c *popConn) Close() error { return c.tc.Close() }

// readLine returns one line without its CRLF.
func (c *popConn) readLine() (string, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("line longer than 64 KiB")
		}
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// expectOK reads a status line and fails unless it is +OK.
func (c *popConn) expectOK(what string) (string, error) {
	line, err := c.readLine()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return line, fmt.Errorf("%s: %.80q", what, line)
	}
	return line, nil
}

// cmd sends one command and reads its status line.
func (c *popConn) cmd(what, line string) (string, error) {
	if _, err := io.WriteString(c.tc, line+"\r\n"); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return c.expectOK(what)
}

// login sends USER and PASS.
func (c *popConn) login(a account) error {
	if _, err := c.cmd("USER", "USER "+a.User); err != nil {
		return err
	}
	_, err := c.cmd("PASS", "PASS "+a.Pass)
	return err
}

// loginToken sends AUTH XOAUTH2 with user and token as the initial
// response. A refusal comes as a "+ " challenge (the error's JSON), which
// is answered with an empty line for the -ERR; the token is in neither
// error.
func (c *popConn) loginToken(user, token string) error {
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	if _, err := io.WriteString(c.tc, "AUTH XOAUTH2 "+ir+"\r\n"); err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	line, err := c.readLine()
	if err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	if strings.HasPrefix(line, "+ ") {
		_, err := c.cmd("AUTH", "")
		if err == nil {
			err = errors.New("AUTH: +OK after the error challenge")
		}
		return err
	}
	if !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("AUTH: %.120q", line)
	}
	return nil
}

// quit sends QUIT and waits for the server to close the connection.
func (c *popConn) quit() error {
	if _, err := c.cmd("QUIT", "QUIT"); err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, c.br)
	if err != nil {
		return fmt.Errorf("after QUIT: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("after QUIT: %d unexpected octets", n)
	}
	return nil
}

// retr sends RETR 1 and checks the size announced in "+OK n octets", the
// unstuffed length and its CRC-32C against want. It returns the octets of
// the response as they crossed the wire and of the message.
func (c *popConn) retr(want wantMessage) (wire, payload int64, err error) {
	status, err := c.cmd("RETR", "RETR 1")
	if err != nil {
		return 0, 0, err
	}
	wire = int64(len(status) + 2)
	// RFC 1939 leaves the text after +OK free; Dovecot and pop3test both
	// say "+OK n octets".
	f := strings.Fields(status)
	if len(f) < 3 || f[2] != "octets" {
		return wire, 0, fmt.Errorf("RETR: status %.80q has no octet count", status)
	}
	announced, err := strconv.Atoi(f[1])
	if err != nil || announced != want.Size {
		return wire, 0, fmt.Errorf("RETR: status %.80q, want %d octets", status, want.Size)
	}
	crc := uint32(0)
	for {
		line, err := c.br.ReadSlice('\n')
		wire += int64(len(line))
		if err != nil {
			return wire, payload, fmt.Errorf("RETR body after %d octets: %w", payload, err)
		}
		if line[0] == '.' {
			if len(line) == 3 && line[1] == '\r' {
				break // the terminating ".\r\n" (RFC 1939 §3)
			}
			line = line[1:] // dot-stuffed
		}
		payload += int64(len(line))
		crc = crc32.Update(crc, crcTable, line)
	}
	if payload != int64(want.Size) || crc != want.CRC {
		return wire, payload, fmt.Errorf("RETR: got %d octets CRC-32C %08x, want %d octets %08x", payload, crc, want.Size, want.CRC)
	}
	return wire, payload, nil
}

// runSession runs one whole session as a, with RETR 1 when want is set.
func runSession(ctx context.Context, t target, a account, want *wantMessage) (sample, error) {
	var s sample
	start := time.Now()
	c, err := dialPOP3(ctx, t)
	if err != nil {
		return s, err
	}
	defer c.Close()
	s.TLS = c.tc.ConnectionState()
	if t.Token != nil {
		err = c.loginToken(a.User, t.Token(a))
	} else {
		err = c.login(a)
	}
	if err != nil {
		return s, err
	}
	s.Login = time.Since(start)
	if _, err := c.cmd("STAT", "STAT"); err != nil {
		return s, err
	}
	if want != nil {
		if s.Bytes, s.Payload, err = c.retr(*want); err != nil {
			return s, err
		}
	}
	if err := c.quit(); err != nil {
		return s, err
	}
	s.Session = time.Since(start)
	return s, nil
}

// loadResult is what a run of many sessions measured on the client side.
type loadResult struct {
	Sessions  int
	Errors    int
	ErrorMsgs []string // the first few, distinct
	Elapsed   time.Duration
	Login     []time.Duration // sorted
	Session   []time.Duration // sorted
	Bytes     int64
	Payload   int64
	TLS       *tls.ConnectionState // of the first session that completed
	Resumed   int                  // sessions whose TLS handshake resumed
}

// maxErrorMsgs bounds the error messages a run keeps.
const maxErrorMsgs = 5

// runLoad runs sessions on conc workers until total sessions have started
// or maxDur has passed, whichever comes first. Worker w logs in as
// accounts[w], accounts[w+conc], ... (those below len(accounts)) in turn,
// so no two workers share a mailbox (a POP3 server locks it for the
// session); accounts must hold at least conc.
func runLoad(ctx context.Context, t target, accounts []account, conc, total int, maxDur time.Duration, want *wantMessage) loadResult {
	var (
		next    atomic.Int64
		mu      sync.Mutex
		res     loadResult
		wg      sync.WaitGroup
		started = time.Now()
	)
	deadline := started.Add(maxDur)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(sessionTimeout))
	defer cancel()
	conc = min(conc, len(accounts))
	for w := range conc {
		var own []account
		for i := w; i < len(accounts); i += conc {
			own = append(own, accounts[i])
		}
		wt := t
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []sample
			var errs []error
			if wt.Resume {
				// The worker's own cache, filled by a full handshake
				// that is not measured.
				wt.TLS = t.TLS.Clone()
				wt.TLS.ClientSessionCache = tls.NewLRUClientSessionCache(4)
				if _, err := runSession(ctx, wt, own[0], want); err != nil {
					errs = append(errs, fmt.Errorf("%s as %s (first, full handshake): %w", t.Side, own[0].User, err))
				}
			}
			for k := 0; ; k++ {
				if int(next.Add(1)) > total || time.Now().After(deadline) || ctx.Err() != nil {
					break
				}
				a := own[k%len(own)]
				s, err := runSession(ctx, wt, a, want)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s as %s: %w", t.Side, a.User, err))
					continue
				}
				mine = append(mine, s)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, s := range mine {
				res.Login = append(res.Login, s.Login)
				res.Session = append(res.Session, s.Session)
				res.Bytes += s.Bytes
				res.Payload += s.Payload
				if s.TLS.DidResume {
					res.Resumed++
				}
				if res.TLS == nil {
					st := s.TLS
					res.TLS = &st
				}
			}
			res.Errors += len(errs)
			for _, e := range errs {
				if len(res.ErrorMsgs) < maxErrorMsgs && !slices.Contains(res.ErrorMsgs, e.Error()) {
					res.ErrorMsgs = append(res.ErrorMsgs, e.Error())
				}
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(started)
	res.Sessions = len(res.Session)
	slices.Sort(res.Login)
	slices.Sort(res.Session)
	return res
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method, or 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999)
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// idleSessions is a set of logged-in sessions held open.
type idleSessions struct {
	conns     []*popConn
	Errors    int
	ErrorMsgs []string
	Elapsed   time.Duration // to open them all
}

// openIdle logs in as each of accounts through t, conc at a time, and
// keeps the connections open after PASS's +OK.
func openIdle(ctx context.Context, t target, accounts []account, conc int) *idleSessions {
	var (
		next atomic.Int64
		mu   sync.Mutex
		wg   sync.WaitGroup
		is   = &idleSessions{}
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(accounts) {
					return
				}
				c, err := dialPOP3(ctx, t)
				if err == nil {
					if err = c.login(accounts[i]); err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					is.Errors++
					if len(is.ErrorMsgs) < maxErrorMsgs {
						is.ErrorMsgs = append(is.ErrorMsgs, fmt.Sprintf("idle login as %s: %v", accounts[i].User, err))
					}
				} else {
					// Held beyond sessionTimeout: no deadline while idle.
					_ = c.conn.SetDeadline(time.Time{})
					is.conns = append(is.conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	is.Elapsed = time.Since(start)
	return is
}

// closeAll ends every held session with QUIT, conc at a time, and counts
// the sessions that did not end cleanly.
func (is *idleSessions) closeAll(conc int) (errs int, msgs []string) {
	var (
		next atomic.Int64
		mu   sync.Mutex
		wg   sync.WaitGroup
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(is.conns) {
					return
				}
				c := is.conns[i]
				_ = c.conn.SetDeadline(time.Now().Add(sessionTimeout))
				err := c.quit()
				c.Close()
				if err != nil {
					mu.Lock()
					errs++
					if len(msgs) < maxErrorMsgs {
						msgs = append(msgs, "idle QUIT: "+err.Error())
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	is.conns = nil
	return errs, msgs
}
