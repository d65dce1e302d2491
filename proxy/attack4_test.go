package proxy

// Regression tests from the fourth attack review (the backend login with
// AUTH PLAIN): each TestAttack4* test failed while the defect it names was
// present.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// scriptedBackend is a raw POP3 backend on loopback: it greets, answers
// CAPA with caps, and hands every other command line to answer, which
// returns the reply lines (without CRLF); no reply closes the connection.
// It records every line it received.
type scriptedBackend struct {
	mu    sync.Mutex
	lines []string
}

func (sb *scriptedBackend) received() []string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return append([]string(nil), sb.lines...)
}

func startScriptedBackend(t *testing.T, caps []string, answer func(line string) []string) (*scriptedBackend, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sb := &scriptedBackend{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				w := func(lines ...string) {
					for _, l := range lines {
						c.Write([]byte(l + "\r\n"))
					}
				}
				w("+OK scripted ready")
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					l = strings.TrimRight(l, "\r\n")
					sb.mu.Lock()
					sb.lines = append(sb.lines, l)
					sb.mu.Unlock()
					if l == "CAPA" {
						w("+OK")
						w(caps...)
						w(".")
						continue
					}
					reply := answer(l)
					if reply == nil {
						return
					}
					w(reply...)
					if l == "QUIT" {
						return
					}
				}
			}()
		}
	}()
	return sb, ln.Addr().String()
}

// longPass is a password long enough that AUTH PLAIN with it as initial
// response does not fit in the 255 octets of a command line.
var longPass = "long-" + strings.Repeat("P4ssw0rd-", 22)

func scriptedHarness(t *testing.T, addr string, pass string, cfg func(*Config)) *harness {
	t.Helper()
	return newHarness(t, harnessOpts{config: func(c *Config) {
		c.Backends = map[string]*Backend{"b1": {Name: "b1", Address: addr}}
		c.RelayBackendErrors = true
		c.LoginTimeout = 10 * time.Second
		if cfg != nil {
			cfg(c)
		}
	}})
}

// checkNoCredential fails when s holds the password or the SASL PLAIN
// payload that carries it.
func checkNoCredential(t *testing.T, what, s, user, pass string) {
	t.Helper()
	ir := auth.EncodePlain(user, auth.Password(pass))
	for _, secret := range []string{pass, ir, ir[:40]} {
		if strings.Contains(s, secret) {
			t.Errorf("%s holds the credentials:\n%s", what, s)
			return
		}
	}
}

// TestAttack4PlainContinuationPlusOK: with an initial response too long for
// one line, popgate sends "AUTH PLAIN" alone and then the credentials on
// the next line if the backend's answer starts with '+'. "+OK" starts with
// '+' too: a broken or hostile backend that answers +OK to the bare AUTH
// PLAIN (already in its TRANSACTION state) gets the credentials as a
// command, and a server echoing unknown commands ("-ERR Unknown command:
// ...") hands the SASL payload back, which popgate logs and relays to the
// client, master credentials of a rewritten login included. Only "+ " (or
// "+") is a continuation (RFC 5034 §4); +OK and -ERR are the verdict.
func TestAttack4PlainContinuationPlusOK(t *testing.T) {
	sb, addr := startScriptedBackend(t, []string{"SASL PLAIN"}, func(l string) []string {
		switch {
		case l == "AUTH PLAIN":
			return []string{"+OK already logged in"}
		case l == "QUIT":
			return []string{"+OK bye"}
		}
		return []string{"-ERR Unknown command: " + l}
	})
	h := scriptedHarness(t, addr, longPass, func(c *Config) {
		c.Router = auth.NewStatic(map[string]string{testUser: "b1"}, nil, "")
	})
	c := h.dial("plain")
	c.send("USER " + testUser + "\r\n")
	c.expect("+OK")
	reply := c.cmd("PASS " + longPass)
	checkNoCredential(t, "the client's reply", reply, testUser, longPass)
	c.send("QUIT\r\n")
	c.eof()
	ir := auth.EncodePlain(testUser, auth.Password(longPass))
	for _, l := range sb.received() {
		if l == ir {
			t.Errorf("popgate sent the SASL payload after the backend's +OK, as a command")
		}
	}
	waitFor(t, "the session's end", func() bool { return strings.Contains(h.logs.String(), "session end") })
	checkNoCredential(t, "the log", h.logs.String(), testUser, longPass)
}

// TestAttack4BackendEchoesCredentials: a backend that advertises SASL
// PLAIN but does not know AUTH, and echoes the command it refuses (as some
// servers word "-ERR Unknown command: ..."), hands the SASL payload back
// in its -ERR. popgate put that line in the "login failed" log line (the
// backendRejected error) and, with relay of backend errors on (the
// default), relayed it to the client: for a login the route rewrote to a
// master user, that is the master password, readable by any client.
func TestAttack4BackendEchoesCredentials(t *testing.T) {
	const master, masterPass = "master", "Master-PASSWORD-of-all-mailboxes"
	for _, mode := range []string{"plain", "user-pass", "sys-perm-hidden"} {
		t.Run(mode, func(t *testing.T) {
			caps := []string{"SASL PLAIN"}
			if mode == "user-pass" {
				caps = []string{"USER"}
			}
			code := ""
			if mode == "sys-perm-hidden" {
				// Relayed with hide_backend_errors on (the default).
				code = "[SYS/PERM] "
			}
			_, addr := startScriptedBackend(t, caps, func(l string) []string {
				if l == "QUIT" {
					return []string{"+OK bye"}
				}
				if strings.HasPrefix(l, "USER ") {
					return []string{"+OK"}
				}
				return []string{"-ERR " + code + "Unknown command: " + l}
			})
			rewrite := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
				return auth.Decision{Backend: "b1", User: req.User + "*" + master, Password: masterPass}, nil
			})
			h := scriptedHarness(t, addr, testPass, func(c *Config) {
				c.Router = rewrite
				c.RelayBackendErrors = code == ""
			})
			c := h.dial("plain")
			c.send("USER " + testUser + "\r\n")
			c.expect("+OK")
			reply := c.cmd("PASS " + testPass)
			if !strings.HasPrefix(reply, "-ERR") {
				t.Fatalf("login answered %q", reply)
			}
			checkNoCredential(t, "the client's reply", reply, testUser+"*"+master, masterPass)
			c.send("QUIT\r\n")
			c.eof()
			waitFor(t, "the login failure's log line", func() bool { return strings.Contains(h.logs.String(), "login failed") })
			checkNoCredential(t, "the log", h.logs.String(), testUser+"*"+master, masterPass)
		})
	}
}

// TestAttack4PlainRefusedNoRetry (held): a backend advertising SASL PLAIN
// that refuses AUTH gets no USER/PASS after it: a login is tried once.
func TestAttack4PlainRefusedNoRetry(t *testing.T) {
	for _, pass := range []string{testPass, longPass} {
		sb, addr := startScriptedBackend(t, []string{"SASL PLAIN", "USER"}, func(l string) []string {
			switch {
			case strings.HasPrefix(l, "AUTH PLAIN"):
				return []string{"-ERR [SYS/PERM] mechanism not available"}
			case l == "QUIT":
				return []string{"+OK bye"}
			}
			return []string{"-ERR no"}
		})
		h := scriptedHarness(t, addr, pass, nil)
		c := h.dial("plain")
		c.send("USER " + testUser + "\r\n")
		c.expect("+OK")
		c.cmd("PASS " + pass)
		c.send("QUIT\r\n")
		c.eof()
		var auths, userPass int
		for _, l := range sb.received() {
			switch {
			case strings.HasPrefix(l, "AUTH"):
				auths++
			case strings.HasPrefix(l, "USER"), strings.HasPrefix(l, "PASS"):
				userPass++
			}
		}
		if auths+userPass == 0 || auths > 1 || auths == 1 && userPass > 0 {
			t.Errorf("backend saw the login commands %q: want one AUTH, or USER and PASS alone", sb.received())
		}
	}
}

// TestAttack4PlainLineBoundary (held): around the 255 octets of a command
// line, with multi-byte UTF-8 in the password, AUTH PLAIN with its initial
// response stays within the limit, a longer one goes on a continuation
// line, and the backend gets the credentials whole either way.
func TestAttack4PlainLineBoundary(t *testing.T) {
	var mu sync.Mutex
	var got []string // decoded credentials the backend received
	sb, addr := startScriptedBackend(t, []string{"SASL PLAIN"}, func(l string) []string {
		ir, ok := strings.CutPrefix(l, "AUTH PLAIN ")
		switch {
		case l == "AUTH PLAIN":
			return []string{"+ "}
		case l == "QUIT":
			return []string{"+OK bye"}
		case !ok:
			ir = l // the continuation line
		}
		msg, err := auth.DecodeBase64(ir)
		if err != nil {
			return []string{"-ERR bad base64"}
		}
		mu.Lock()
		got = append(got, string(msg))
		mu.Unlock()
		return []string{"+OK welcome"}
	})
	h := scriptedHarness(t, addr, "", nil)
	for n := 150; n <= 170; n++ {
		pass := strings.Repeat("é", n/2) + strings.Repeat("x", n%2) // n octets
		c := h.dial("plain")
		c.send("USER " + testUser + "\r\n")
		c.expect("+OK")
		if r := c.cmd("PASS " + pass); r != "+OK welcome" {
			t.Fatalf("%d-octet password: %q", n, r)
		}
		c.send("QUIT\r\n")
		c.eof()
		mu.Lock()
		last := got[len(got)-1]
		mu.Unlock()
		if want := "\x00" + testUser + "\x00" + pass; last != want {
			t.Errorf("%d-octet password: the backend got %q", n, last)
		}
	}
	for _, l := range sb.received() {
		if len(l)+2 > 255 && strings.HasPrefix(l, "AUTH") {
			t.Errorf("a %d-octet AUTH line", len(l)+2)
		}
	}
}

// TestAttack4BackendEchoesCredentialsCut: a backend that echoes the command
// it refuses but cuts the echo short ("-ERR Unknown command: PASS Mast")
// gives away the start of the password, or of the SASL payload, even
// though neither is there whole. Neither the client nor the log may see
// any of the secret part of the line popgate sent.
func TestAttack4BackendEchoesCredentialsCut(t *testing.T) {
	const master, masterPass = "master", "Master-PASSWORD-of-all-mailboxes"
	for _, mode := range []string{"plain", "user-pass"} {
		verb := "AUTH PLAIN "
		caps := []string{"SASL PLAIN"}
		if mode == "user-pass" {
			verb, caps = "PASS ", []string{"USER"}
		}
		for _, keep := range []int{1, 4, 12} {
			t.Run(fmt.Sprintf("%s/%d", mode, keep), func(t *testing.T) {
				var mu sync.Mutex
				var sent string
				_, addr := startScriptedBackend(t, caps, func(l string) []string {
					switch {
					case l == "QUIT":
						return []string{"+OK bye"}
					case strings.HasPrefix(l, "USER "):
						return []string{"+OK"}
					}
					mu.Lock()
					sent = l
					mu.Unlock()
					return []string{"-ERR Unknown command: " + l[:min(len(l), len(verb)+keep)]}
				})
				rewrite := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
					return auth.Decision{Backend: "b1", User: req.User + "*" + master, Password: masterPass}, nil
				})
				h := scriptedHarness(t, addr, testPass, func(c *Config) { c.Router = rewrite })
				c := h.dial("plain")
				c.send("USER " + testUser + "\r\n")
				c.expect("+OK")
				reply := c.cmd("PASS " + testPass)
				c.send("QUIT\r\n")
				c.eof()
				waitFor(t, "the login failure's log line", func() bool { return strings.Contains(h.logs.String(), "login failed") })
				mu.Lock()
				echo := sent[:min(len(sent), len(verb)+keep)]
				mu.Unlock()
				if !strings.HasPrefix(echo, verb) {
					t.Fatalf("backend got %q, want a line starting with %q", echo, verb)
				}
				if strings.Contains(reply, echo) {
					t.Errorf("the client's reply %q holds the start of the credentials", reply)
				}
				if strings.Contains(h.logs.String(), echo) {
					t.Errorf("the log holds the start of the credentials %q:\n%s", echo, h.logs.String())
				}
			})
		}
	}
}

// TestAttack4BackendEchoesRewrittenUser: a backend that refuses USER and
// echoes it hands back the user name the route rewrote the login to, such
// as a master user's login name ("alice*master"), which the client never
// gave. The client must not see it (the operator's log names it on
// purpose, as login_user).
func TestAttack4BackendEchoesRewrittenUser(t *testing.T) {
	const master = "secret-master-name"
	_, addr := startScriptedBackend(t, []string{"USER"}, func(l string) []string {
		if l == "QUIT" {
			return []string{"+OK bye"}
		}
		return []string{"-ERR Unknown command: " + l}
	})
	rewrite := auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
		return auth.Decision{Backend: "b1", User: req.User + "*" + master, Password: "x"}, nil
	})
	h := scriptedHarness(t, addr, testPass, func(c *Config) { c.Router = rewrite })
	c := h.dial("plain")
	c.send("USER " + testUser + "\r\n")
	c.expect("+OK")
	reply := c.cmd("PASS " + testPass)
	if !strings.HasPrefix(reply, "-ERR") {
		t.Fatalf("login answered %q", reply)
	}
	if strings.Contains(reply, master) {
		t.Errorf("the client's reply %q holds the rewritten user name", reply)
	}
	c.send("QUIT\r\n")
	c.eof()
}
