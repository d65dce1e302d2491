package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// loginFresh logs in on a new connection to listener name and retrieves a
// message: proof that whatever came before left popgate serving.
func (h *harness) loginFresh(name string) {
	h.t.Helper()
	c := h.dial(name)
	c.login()
	if got := c.cmd("RETR 1"); !strings.HasPrefix(got, "+OK") {
		h.t.Fatalf("RETR 1 = %q", got)
	}
	if body := c.multi(); len(body) == 0 || body[0] != "Subject: one" {
		h.t.Fatalf("RETR 1 body = %q", body)
	}
	c.cmd("QUIT")
	c.eof()
}

// TestHostileInput: each kind of bad input over a real socket gets a clear
// -ERR or a clean close and a log line, and a normal login on a fresh
// connection succeeds afterwards.
func TestHostileInput(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.LoginTimeout = 5 * time.Second }})
	for _, tc := range []struct {
		name, listener string
		run            func(t *testing.T, c *client)
		log            string // in the log afterwards
	}{
		{"over-long line", "plain", func(t *testing.T, c *client) {
			if got := c.cmd("USER " + strings.Repeat("x", 1<<20)); got != "-ERR Line too long" {
				t.Errorf("1 MiB line = %q", got)
			}
			if got := c.cmd("NOOP"); got != "+OK" {
				t.Errorf("NOOP after = %q", got)
			}
		}, `reason="Line too long"`},
		{"NUL bytes", "plain", func(t *testing.T, c *client) {
			if got := c.cmd("NO\x00OP"); !strings.HasPrefix(got, "-ERR") {
				t.Errorf("NUL in command = %q", got)
			}
			c.cmd("USER al\x00ice")
			if got := c.cmd("PASS x"); !strings.HasPrefix(got, "-ERR [AUTH]") {
				t.Errorf("login with NUL in the name = %q", got)
			}
		}, "credentials contain CR, LF or NUL"},
		{"invalid UTF-8", "plain", func(t *testing.T, c *client) {
			if got := c.cmd("\xc3\x28\xff"); !strings.HasPrefix(got, "-ERR") {
				t.Errorf("invalid UTF-8 command = %q", got)
			}
			c.cmd("USER \xff\xfe@example.com")
			if got := c.cmd("PASS x"); !strings.HasPrefix(got, "-ERR [AUTH]") {
				t.Errorf("login with invalid UTF-8 = %q", got)
			}
		}, "reason=no_route"},
		{"bare LF", "plain", func(t *testing.T, c *client) {
			c.send("NOOP\nCAPA\n")
			c.expect("+OK")
			c.expect("+OK")
			c.multi()
			c.send("QUIT\n")
			c.expect("+OK")
			c.eof()
		}, "result=quit"},
		{"HTTP request", "plain", func(t *testing.T, c *client) {
			c.send("GET / HTTP/1.1\r\nHost: mail.example.com\r\nUser-Agent: x\r\n\r\n")
			for range 4 {
				c.expect("-ERR")
			}
		}, `reason="Unknown command`},
		{"TLS ClientHello on plaintext", "plain", func(t *testing.T, c *client) {
			tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
			c.deadline()
			if err := tc.Handshake(); err == nil {
				t.Error("TLS handshake on the plaintext port succeeded")
			}
			c.eof()
		}, "TLS handshake on a plaintext listener"},
		{"TLS ClientHello on STLS port", "pop3", func(t *testing.T, c *client) {
			tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
			c.deadline()
			if err := tc.Handshake(); err == nil {
				t.Error("TLS handshake before STLS succeeded")
			}
			c.eof()
		}, "TLS handshake on a plaintext listener"},
		{"plaintext on POP3S", "pop3s-raw", func(t *testing.T, c *client) {
			c.send("USER " + testUser + "\r\nPASS x\r\n")
			c.eof()
		}, "first record does not look like a TLS handshake"},
		{"huge SASL blob", "plain", func(t *testing.T, c *client) {
			c.send("AUTH PLAIN\r\n")
			c.expect("+ ")
			if got := c.cmd(strings.Repeat("QUFBQUFB", 1<<17)); got != "-ERR SASL response too long" {
				t.Errorf("1 MiB SASL response = %q", got)
			}
			if got := c.cmd("NOOP"); got != "+OK" {
				t.Errorf("NOOP after = %q", got)
			}
		}, "SASL response too long"},
		{"unknown commands in a loop", "plain", func(t *testing.T, c *client) {
			for i := range 1000 {
				c.send("XYZZY\r\n")
				l := c.line()
				if strings.Contains(l, "Too many bad commands") {
					c.eof()
					return
				}
				if i > maxBadCommands {
					t.Fatalf("still answering after %d bad commands: %q", i, l)
				}
			}
		}, "too many bad commands, closing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *client
			if tc.listener == "pop3s-raw" {
				c = h.dialFrom("pop3s", "", nil, nil)
			} else {
				c = h.dialFrom(tc.listener, "", nil, nil)
				c.expect("+OK")
			}
			tc.run(t, c)
			c.conn.Close()
			waitFor(t, "log line "+tc.log, func() bool { return strings.Contains(h.logs.String(), tc.log) })
			h.loginFresh("pop3s")
		})
	}
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
}

// TestTLSHandshakeTimeout: a client that opens TCP to the POP3S port and
// sends nothing, or half a ClientHello, is closed at login_timeout.
func TestTLSHandshakeTimeout(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.LoginTimeout = 300 * time.Millisecond }})
	for _, send := range []string{"", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x01\x02"} {
		c := h.dialFrom("pop3s", "", nil, nil)
		c.send(send)
		start := time.Now()
		c.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := io.Copy(io.Discard, c.conn); err != nil && !isClosedErr(err) {
			t.Fatalf("after %d octets: %v, want EOF", n, err)
		}
		if time.Since(start) > 9*time.Second {
			t.Fatal("not closed")
		}
	}
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	if n := strings.Count(h.logs.String(), "result=timeout"); n != 2 {
		t.Errorf("%d sessions ended with result=timeout, want 2:\n%s", n, h.logs)
	}
}

// TestPerIPLimit: max_connections_per_ip refuses the next connection from
// that address with -ERR [SYS/TEMP] and accepts one from another address.
func TestPerIPLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.MaxConnectionsPerIP = 2 }})
	for range 2 {
		c := h.dialFrom("plain", "127.0.0.1", nil, nil)
		c.expect("+OK")
	}
	c := h.dialFrom("plain", "127.0.0.1", nil, nil)
	c.expect("-ERR [SYS/TEMP]")
	c.eof()
	other := h.dialFrom("plain", "127.0.0.2", nil, nil)
	other.expect("+OK")
	other.login()
	if got := other.cmd("STAT"); !strings.HasPrefix(got, "+OK 2") {
		t.Errorf("STAT = %q", got)
	}
	if !strings.Contains(h.logs.String(), "max_connections_per_ip reached") {
		t.Errorf("no log line for the refusal:\n%s", h.logs)
	}
}

// TestFlood: 2,000 connections that never send anything are held for a few
// seconds; the per-IP limit refuses half of them, and meanwhile an honest
// client from another address logs in and retrieves mail. Afterwards the
// goroutine count returns to its baseline.
func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood test in -short mode")
	}
	const flood, perIP = 2000, 1000
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.MaxConnectionsPerIP = perIP
		c.MaxConnections = 5000
	}})
	h.loginFresh("pop3s") // warm pools and the backend's caps cache
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	baseline := runtime.NumGoroutine()

	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 5 * time.Second}
	for i := range flood {
		listener := "plain"
		if i%2 == 1 {
			listener = "pop3s"
		}
		c, err := d.Dial("tcp", h.addrs[listener])
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// Half are served (and wait for a command), half refused.
	waitFor(t, "flood accepted", func() bool { return h.srv.Sessions() == perIP })
	// The honest client, from another address, while the flood is held.
	honest := time.Now()
	c := h.dialFrom("pop3s", "127.0.0.2", nil, h.front.client)
	c.expect("+OK")
	c.login()
	if got := c.cmd("RETR 2"); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("RETR 2 = %q", got)
	}
	if body := c.multi(); len(body) < 2 || body[2] != ".dotted line" {
		t.Errorf("RETR 2 body = %q", body)
	}
	c.cmd("QUIT")
	c.eof()
	// Hold the flood a little longer: a few seconds in all.
	time.Sleep(max(0, 2*time.Second-time.Since(honest)))
	if n := h.srv.Sessions(); n > perIP {
		t.Errorf("%d sessions after holding, limit %d", n, perIP)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, baseline %d", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(h.logs.String(), "max_connections_per_ip reached") {
		t.Error("no refusal logged")
	}
	checkNoSecrets(t, h.logs.String())
}
