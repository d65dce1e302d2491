package interop

import (
	"bufio"
	"crypto/tls"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// dialPopgateFrom connects to addr from the loopback address local, sends
// hdr first when set, runs a TLS handshake when conf is set, and reads the
// greeting.
func dialPopgateFrom(t *testing.T, addr, local string, hdr []byte, conf *tls.Config) *popConn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	p := &popConn{t: t, c: c}
	t.Cleanup(func() { p.c.Close() })
	if hdr != nil {
		if _, err := c.Write(hdr); err != nil {
			t.Fatal(err)
		}
	}
	if conf != nil {
		p.startTLS(conf)
	}
	p.r = bufio.NewReader(p.c)
	if g := p.readLine(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting from %s: %q", addr, g)
	}
	return p
}

// TestProxyClientAddress: Dovecot sees the real client address, not
// popgate's, for each client_address mode: XCLIENT (over STLS, Dovecot
// trusting loopback in login_trusted_networks), and PROXY v1 and v2 (to a
// haproxy = yes listener, haproxy_trusted_networks = 127.0.0.0/8). The
// client is on 127.0.0.2, or behind a PROXY header sent to popgate that
// claims 192.0.2.10 (documentation range; only header content).
func TestProxyClientAddress(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	d := startDovecot(t)
	users := testUsers()
	modes := []struct{ user, backend, mode, addr string }{
		{userAlice, "xc", "xclient", d.PlainAddr},
		{userBob, "pv1", "proxy-v1", d.HAProxyAddr},
		{userCarol, "pv2", "proxy-v2", d.HAProxyAddr},
	}
	cfg := popgateConfig{Users: map[string]string{}, ProxyListener: true}
	for _, m := range modes {
		be := popgateBackend{Name: m.backend, Address: m.addr, TLS: "none", ClientAddress: m.mode}
		if m.mode == "xclient" {
			be.TLS, be.ServerName, be.CAFile = "starttls", d.ServerName, d.CAFile
		}
		cfg.Backends = append(cfg.Backends, be)
		cfg.Users[m.user] = m.backend
	}
	pg := startPopgate(t, cfg, users[userAlice], users[userBob], users[userCarol])

	const claimed = "192.0.2.10"
	for _, m := range modes {
		for _, via := range []string{"127.0.0.2", claimed} {
			t.Run(m.mode+" from "+via, func(t *testing.T) {
				var c *popConn
				if via == claimed {
					src := &net.TCPAddr{IP: net.ParseIP(claimed), Port: 40110}
					dst, _ := net.ResolveTCPAddr("tcp", pg.PPAddr)
					hdr, err := proxyproto.HeaderProxyFromAddrs(2, src, dst).Format()
					if err != nil {
						t.Fatal(err)
					}
					c = dialPopgateFrom(t, pg.PPAddr, "127.0.0.1", hdr, nil)
				} else {
					c = dialPopgateFrom(t, pg.POP3SAddr, via, nil, pg.ca.clientConfig(pg.ServerName))
				}
				c.login(m.user, users[m.user])
				if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
					t.Fatalf("STAT: %q", resp)
				}
				c.cmd("QUIT")
				want := regexp.MustCompile(`Login: user=<` + regexp.QuoteMeta(m.user) + `>.* rip=` + regexp.QuoteMeta(via) + `,`)
				d.waitLog(t, func(*testing.T) string { return d.MainLog() }, "a login of "+m.user+" from "+via, want.MatchString)
				for _, line := range strings.Split(d.MainLog(), "\n") {
					if want.MatchString(line) {
						t.Logf("Dovecot: %s", line)
						break
					}
				}
			})
		}
	}
	if t.Failed() {
		return
	}
	// Nothing logged in as popgate's own address.
	for _, line := range strings.Split(d.MainLog(), "\n") {
		if strings.Contains(line, "Login: user=<") && strings.Contains(line, "rip=127.0.0.1,") {
			t.Errorf("Dovecot saw popgate's address: %s", line)
		}
	}
}
