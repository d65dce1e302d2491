package interop

import (
	"fmt"
	"strings"
	"testing"
)

// TestProxyPipelining: a client that writes PASS, STAT, LIST and QUIT in one
// write gets all four answers, from real Dovecot through popgate, in each
// backend mode (RFC 2449 §6.6; nginx before 1.21.0 lost such bytes).
func TestProxyPipelining(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	msgs := [][]byte{testMessage(2<<10, "pipe-1"), testMessage(3<<10, "pipe-2")}
	for _, m := range msgs {
		d.addMessage(t, userCarol, m)
	}
	pass := d.Users[userCarol]
	for _, mode := range backendModes {
		t.Run(mode, func(t *testing.T) {
			pg := startPopgate(t, popgateConfig{Backends: dovecotBackends(d), Default: mode}, pass)
			c := dialPopgate(t, pg, "pop3s")
			if resp := c.cmd("USER " + userCarol); !strings.HasPrefix(resp, "+OK") {
				t.Fatalf("USER: %q", resp)
			}
			if _, err := c.c.Write([]byte("PASS " + pass + "\r\nSTAT\r\nLIST\r\nQUIT\r\n")); err != nil {
				t.Fatal(err)
			}
			if resp := c.readLine(); !strings.HasPrefix(resp, "+OK") {
				t.Fatalf("PASS: %q", redact(resp, pass))
			}
			total := len(msgs[0]) + len(msgs[1])
			if resp := c.readLine(); resp != fmt.Sprintf("+OK 2 %d", total) {
				t.Errorf("STAT = %q, want +OK 2 %d", resp, total)
			}
			if resp := c.readLine(); !strings.HasPrefix(resp, "+OK") {
				t.Errorf("LIST = %q", resp)
			}
			for i, m := range msgs {
				if got, want := c.readLine(), fmt.Sprintf("%d %d", i+1, len(m)); got != want {
					t.Errorf("LIST line %d = %q, want %q", i+1, got, want)
				}
			}
			if got := c.readLine(); got != "." {
				t.Errorf("LIST end = %q", got)
			}
			if resp := c.readLine(); !strings.HasPrefix(resp, "+OK") {
				t.Errorf("QUIT = %q", resp)
			}
		})
	}
}

// TestProxySTLSInjection: "STLS\r\nUSER x\r\n" in one packet; the USER must
// not be processed inside TLS (CVE-2011-0411 class).
func TestProxySTLSInjection(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	pass := d.Users[userAlice]
	pg := startPopgate(t, popgateConfig{Backends: dovecotBackends(d), Default: "plain"}, pass)
	c := dialPOP3(t, pg.POP3Addr, nil)
	if _, err := c.c.Write([]byte("STLS\r\nUSER " + userAlice + "\r\n")); err != nil {
		t.Fatal(err)
	}
	if resp := c.readLine(); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("STLS: %q", resp)
	}
	c.startTLS(pg.ca.clientConfig(pg.ServerName))
	// Had the injected USER been kept, this PASS would log in.
	if resp := c.cmd("PASS " + pass); !strings.HasPrefix(resp, "-ERR") {
		t.Fatalf("PASS after injected USER = %q, want -ERR", redact(resp, pass))
	}
	c.login(userAlice, pass)
	if resp := c.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
		t.Errorf("QUIT = %q", resp)
	}
}
