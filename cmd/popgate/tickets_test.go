package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// popSession logs in at the listener at addr and quits: over implicit
// TLS, or with stls in plain text first and then STLS. It reports whether
// the TLS session resumed. A TLS 1.3 client takes its tickets in when it
// reads, which the greeting and the replies see to.
func popSession(t *testing.T, addr string, stls bool, cli *tls.Config) bool {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var tc *tls.Conn
	var p *popClient
	if stls {
		newPOPClient(t, raw).cmd("STLS")
		tc = tls.Client(raw, cli)
		p = &popClient{t: t, c: tc, r: bufio.NewReader(tc)}
	} else {
		tc = tls.Client(raw, cli)
		p = newPOPClient(t, tc)
	}
	p.login(procUser, procPass)
	p.cmd("QUIT")
	return tc.ConnectionState().DidResume
}

// resumingClient is a client configuration for popSession with its own
// session cache, held to TLS version v (0: any).
func resumingClient(v uint16) *tls.Config {
	return &tls.Config{
		ServerName:         "mail.example.com",
		InsecureSkipVerify: true, // what is tested is resumption, not trust
		MinVersion:         v,
		MaxVersion:         v,
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
	}
}

// TestTicketsAcrossReload: a client resumes its TLS session on the
// implicit-TLS listener and after STLS, on either with a ticket from the
// other, and across reloads, also one that builds a new certificate store;
// with tls.session_tickets = false it does not. The resumed handshakes are
// counted apart.
func TestTicketsAcrossReload(t *testing.T) {
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "one", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	config := func(tlsExtra, route string) string {
		return fmt.Sprintf(`[log]
format = "json"
[[listen]]
name = "pop3s"
address = "127.0.0.1:0"
tls = "implicit"
[[listen]]
name = "pop3"
address = "127.0.0.1:0"
tls = "starttls"
[tls]
certificates = [{ cert = %q, key = %q }]
%s
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route]
default = "mbox"
%s
[metrics]
address = "127.0.0.1:0"
`, cert.certFile, cert.keyFile, tlsExtra, backend, route)
	}
	path := writeConfig(t, config("", ""))
	r, _ := startRunner(t, path)
	pop3s, pop3 := r.addrOf("pop3s"), r.addrOf("pop3")
	reload := func(text string) {
		t.Helper()
		writeFile(t, path, []byte(text))
		if err := r.reload(); err != nil {
			t.Fatal(err)
		}
	}
	resumed := 0
	session := func(stls bool, cli *tls.Config) bool {
		t.Helper()
		addr := pop3s
		if stls {
			addr = pop3
		}
		ok := popSession(t, addr, stls, cli)
		if ok {
			resumed++
		}
		return ok
	}
	for _, tv := range []struct {
		name string
		v    uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(tv.name, func(t *testing.T) {
			reload(config("", ""))
			cli := resumingClient(tv.v)
			if session(false, cli) {
				t.Fatal("the first session resumed")
			}
			if !session(false, cli) {
				t.Error("no resumption on the implicit-TLS listener")
			}
			if !session(true, cli) {
				t.Error("no resumption after STLS with a ticket from the implicit-TLS listener")
			}
			if !session(true, cli) {
				t.Error("no resumption after STLS")
			}

			reload(config("", "users = { other = \"mbox\" }"))
			if !session(false, cli) {
				t.Error("no resumption after a reload that kept [tls]")
			}

			old := r.current().certs
			reload(config(`session_ticket_rotation = "5h"`, ""))
			if r.current().certs == old {
				t.Fatal("the reload kept the certificate store: the test shows nothing")
			}
			if !session(false, cli) {
				t.Error("no resumption after a reload that built a new certificate store")
			}
			if !session(true, cli) {
				t.Error("no resumption after STLS after a reload that built a new certificate store")
			}

			reload(config("session_tickets = false", ""))
			if session(false, cli) || session(true, cli) {
				t.Error("a session resumed with tls.session_tickets = false")
			}
		})
	}

	resp, err := http.Get("http://" + r.adminAddress() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var counted float64
	for series, v := range parseMetrics(t, string(body)) {
		if strings.HasPrefix(series, "popgate_tls_handshakes_total{") && strings.Contains(series, `resumed="true"`) {
			counted += v
		}
	}
	if counted != float64(resumed) {
		t.Errorf("popgate_tls_handshakes_total{resumed=\"true\"} = %v, want the %d sessions that resumed", counted, resumed)
	}
}
