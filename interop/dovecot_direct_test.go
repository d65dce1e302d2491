package interop

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// These tests validate the harness against Dovecot alone: every client
// helper must fetch exactly the bytes in the Maildir, so that the same
// checks through popgate (proxy_test.go) measure popgate and nothing else.

func TestDovecotDirectFetch(t *testing.T) {
	requireInterop(t, "dovecot", "curl", "python3", "fetchmail")
	t.Parallel()
	d := startDovecot(t)
	want := [][]byte{
		testMessage(4<<10, "direct-small"),
		testMessage(1<<20, "direct-1MiB"),
	}
	for _, m := range want {
		d.addMessage(t, userAlice, m)
	}
	pass := d.Users[userAlice]
	_, tlsPort := splitHostPort(t, d.TLSAddr)
	_, plainPort := splitHostPort(t, d.PlainAddr)

	tests := []struct {
		name  string
		fetch func(t *testing.T) [][]byte
	}{
		{"go-raw-tls", func(t *testing.T) [][]byte {
			p := dialPOP3(t, d.TLSAddr, d.ca.clientConfig(d.ServerName))
			p.login(userAlice, pass)
			got := [][]byte{p.retr(1), p.retr(2)}
			p.cmd("QUIT")
			return got
		}},
		{"curl-pop3s", func(t *testing.T) [][]byte {
			var got [][]byte
			for n := 1; n <= len(want); n++ {
				got = append(got, curlRetr(t, fmt.Sprintf("pop3s://%s:%s@%s:%d/%d", userAlice, pass, d.ServerName, tlsPort, n),
					"--cacert", d.CAFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", d.ServerName, tlsPort)))
			}
			return got
		}},
		{"curl-pop3-ssl-reqd", func(t *testing.T) [][]byte {
			var got [][]byte
			for n := 1; n <= len(want); n++ {
				got = append(got, curlRetr(t, fmt.Sprintf("pop3://%s:%s@127.0.0.1:%d/%d", userAlice, pass, plainPort, n),
					"--ssl-reqd", "--cacert", d.CAFile)) // verified against the IP SAN
			}
			return got
		}},
		{"poplib-ssl", func(t *testing.T) [][]byte {
			return pythonPoplib(t, "ssl", d.TLSAddr, d.CAFile, d.ServerName, userAlice, pass)
		}},
		{"poplib-stls", func(t *testing.T) [][]byte {
			return pythonPoplib(t, "stls", d.PlainAddr, d.CAFile, d.ServerName, userAlice, pass)
		}},
		{"fetchmail-ssl", func(t *testing.T) [][]byte {
			return fetchmailAll(t, "ssl", d.TLSAddr, d.CAFile, d.ServerName, userAlice, pass)
		}},
		{"fetchmail-stls", func(t *testing.T) [][]byte {
			return fetchmailAll(t, "stls", d.PlainAddr, d.CAFile, d.ServerName, userAlice, pass)
		}},
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				compareMessages(t, tc.fetch(t), want)
			})
		}
	})
	// Fetching with keep leaves the mailbox as it was.
	compareMessages(t, d.messages(t, userAlice), want)
}

// TestDovecotDirectDeleWithoutQuit checks the RFC 1939 behaviour popgate
// must preserve: DELE only marks; without QUIT there is no UPDATE state and
// the message stays. The QUIT case shows the check is not vacuous.
func TestDovecotDirectDeleWithoutQuit(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	msg := testMessage(2<<10, "dele")
	d.addMessage(t, userBob, msg)
	d.addMessage(t, userCarol, msg)

	t.Run("drop", func(t *testing.T) {
		before := sessionEnds(d.mainLog(t), userBob)
		p := dialPOP3(t, d.PlainAddr, nil)
		p.login(userBob, d.Users[userBob])
		if resp := p.cmd("DELE 1"); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("DELE 1: %q", resp)
		}
		p.drop()
		waitSessionEnd(t, d, d.mainLog, userBob, before)
		compareMessages(t, d.messages(t, userBob), [][]byte{msg})
	})
	t.Run("quit", func(t *testing.T) {
		before := sessionEnds(d.mainLog(t), userCarol)
		p := dialPOP3(t, d.PlainAddr, nil)
		p.login(userCarol, d.Users[userCarol])
		if resp := p.cmd("DELE 1"); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("DELE 1: %q", resp)
		}
		if resp := p.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("QUIT: %q", resp)
		}
		waitSessionEnd(t, d, d.mainLog, userCarol, before)
		if n := len(d.messages(t, userCarol)); n != 0 {
			t.Errorf("after DELE 1 and QUIT the Maildir holds %d messages, want 0", n)
		}
	})
}

// TestDovecotDirectNoTLSInstance checks the instance behind NoTLSAddr really
// lacks STLS, which the proxy test for a refused backend STLS relies on.
func TestDovecotDirectNoTLSInstance(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	for _, tc := range []struct {
		addr     string
		wantSTLS bool
	}{{d.PlainAddr, true}, {d.NoTLSAddr, false}} {
		p := dialPOP3(t, tc.addr, nil)
		if resp := p.cmd("CAPA"); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("CAPA at %s: %q", tc.addr, resp)
		}
		var caps []string
		for {
			line := p.readLine()
			if line == "." {
				break
			}
			caps = append(caps, line)
		}
		p.cmd("QUIT")
		hasSTLS := false
		for _, c := range caps {
			hasSTLS = hasSTLS || strings.EqualFold(c, "STLS")
		}
		if hasSTLS != tc.wantSTLS {
			t.Errorf("CAPA at %s = %q, STLS offered %v, want %v", tc.addr, caps, hasSTLS, tc.wantSTLS)
		}
	}
}

// sessionEnds counts the lines in log that end a mail session of user
// ("pop3(USER)<pid><session>: Info: Disconnected: ...").
func sessionEnds(log, user string) int {
	re := regexp.MustCompile(`pop3\(` + regexp.QuoteMeta(user) + `\)<[^>]*><[^>]*>: (Info: )?Disconnected`)
	return len(re.FindAllStringIndex(log, -1))
}

// waitSessionEnd waits until the log returned by get shows more than before
// ends of user's mail sessions: only then has Dovecot done whatever it does
// when the connection closes.
func waitSessionEnd(t *testing.T, d *dovecot, get func(*testing.T) string, user string, before int) {
	t.Helper()
	d.waitLog(t, get, "the end of "+user+"'s session", func(log string) bool { return sessionEnds(log, user) > before })
}

// compareMessages fails t unless got and want hold the same messages byte
// for byte, naming the first differing offset instead of printing megabytes.
func compareMessages(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if bytes.Equal(got[i], want[i]) {
			continue
		}
		off := 0
		for off < len(got[i]) && off < len(want[i]) && got[i][off] == want[i][off] {
			off++
		}
		t.Errorf("message %d: got %d bytes, want %d; first difference at offset %d:\n got: %q\nwant: %q",
			i+1, len(got[i]), len(want[i]), off, around(got[i], off), around(want[i], off))
	}
}

func around(b []byte, off int) []byte {
	lo, hi := max(0, off-40), min(len(b), off+40)
	return b[lo:hi]
}
