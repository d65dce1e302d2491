package proxy

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// legacyRecorder is a recorder that is also a LegacyObserver.
type legacyRecorder struct {
	recorder
	mu     sync.Mutex
	legacy []string
}

func (r *legacyRecorder) LegacyClient(listener string, client netip.Addr, user string, version uint16, sni string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.legacy = append(r.legacy, listener+" "+client.String()+" "+user+" "+tls.VersionName(version)+" sni="+sni)
}

func (r *legacyRecorder) seen() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.legacy, "\n")
}

func TestLegacyObserver(t *testing.T) {
	rec := &legacyRecorder{}
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.Observer = rec }})
	old := h.front.server.Clone()
	old.MinVersion = tls.VersionTLS10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go h.srv.Serve(t.Context(), ln, Listener{Name: "old", TLS: TLSImplicit, TLSConfig: old})

	login := func(addr string, cfg *tls.Config) {
		t.Helper()
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		cl := &client{t: t, conn: c}
		t.Cleanup(func() { c.Close() })
		cl.br = bufio.NewReader(c)
		cl.expect("+OK")
		cl.login()
		cl.cmd("QUIT")
	}
	// A modern client: TLS 1.3 with SNI.
	login(h.addrs["pop3s"], h.front.client)
	if s := rec.seen(); s != "" {
		t.Errorf("a TLS 1.3 client with SNI was reported as legacy: %s", s)
	}
	// Without SNI (the client was given an IP address), then TLS 1.0.
	noSNI := h.front.client.Clone()
	noSNI.ServerName = ""
	noSNI.InsecureSkipVerify = true // loopback, self-signed; only the hello matters
	login(h.addrs["pop3s"], noSNI)
	tls10 := h.front.client.Clone()
	tls10.MinVersion, tls10.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	login(ln.Addr().String(), tls10)
	want := "pop3s 127.0.0.1 " + testUser + " TLS 1.3 sni=\nold 127.0.0.1 " + testUser + " TLS 1.0 sni=localhost"
	if s := rec.seen(); s != want {
		t.Errorf("legacy clients reported:\n%s\nwant:\n%s", s, want)
	}
	// A failed attempt is noted by its address, without the name the
	// client made up.
	c, err := tls.Dial("tcp", ln.Addr().String(), tls10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, conn: c, br: bufio.NewReader(c)}
	cl.expect("+OK")
	if got := cl.cmd("USER invented-name-1234"); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("USER: %q", got)
	}
	if got := cl.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("PASS with a wrong password: %q", got)
	}
	cl.cmd("QUIT")
	want += "\nold 127.0.0.1  TLS 1.0 sni=localhost"
	if s := rec.seen(); s != want {
		t.Errorf("legacy clients reported after a failed login:\n%s\nwant:\n%s", s, want)
	}
}
