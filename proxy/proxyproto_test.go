package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// The address a test load balancer claims for its client: documentation
// range, header content only; no traffic goes there.
var claimed = netip.MustParseAddrPort("192.0.2.10:40110")

func headerV1(t testing.TB, src netip.AddrPort) []byte {
	t.Helper()
	h, err := proxyHeaderFor(1, src, netip.MustParseAddrPort("198.51.100.1:995"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func headerV2(t testing.TB, src netip.AddrPort) []byte {
	t.Helper()
	h, err := proxyHeaderFor(2, src, netip.MustParseAddrPort("198.51.100.1:995"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// prefixWriteConn sends prefix in the same write as the first bytes written
// to it, so a PROXY header and a TLS ClientHello share a TCP segment, as
// they do behind a load balancer.
type prefixWriteConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixWriteConn) Write(p []byte) (int, error) {
	if c.prefix != nil {
		b := append(c.prefix, p...)
		c.prefix = nil
		if _, err := c.Conn.Write(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// dialFrom connects to listener name from local (an address on loopback,
// "" for the default), sends hdr (if any) and returns a client, after a
// TLS handshake when tlsCfg is set. It does not read the greeting.
func (h *harness) dialFrom(name, local string, hdr []byte, tlsCfg *tls.Config) *client {
	h.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", h.addrs[name])
	if err != nil {
		h.t.Fatal(err)
	}
	cl := &client{t: h.t, conn: c}
	h.t.Cleanup(func() { cl.conn.Close() })
	var conn net.Conn = c
	if hdr != nil {
		if tlsCfg != nil {
			conn = &prefixWriteConn{Conn: c, prefix: hdr}
		} else if _, err := c.Write(hdr); err != nil {
			h.t.Fatal(err)
		}
	}
	if tlsCfg != nil {
		conn = tls.Client(conn, tlsCfg)
	}
	cl.conn = conn
	cl.br = bufio.NewReader(conn)
	return cl
}

func proxyListeners() []Listener {
	return []Listener{
		{Name: "pp", TLS: TLSNone, ProxyProtocol: true},
		{Name: "pps", TLS: TLSImplicit, ProxyProtocol: true},
		{Name: "plain", TLS: TLSNone},
	}
}

// TestProxyProtocolIn: PROXY v1 and v2 headers from a trusted address are
// honoured on plaintext and implicit-TLS listeners: the session log, the
// router and the backend (here through XCLIENT) see the header's address.
func TestProxyProtocolIn(t *testing.T) {
	var mu sync.Mutex
	var routed []netip.AddrPort
	h := newHarness(t, harnessOpts{
		listeners: proxyListeners(),
		backend:   func(b *pop3test.Server) { b.XCLIENT = true },
		config: func(c *Config) {
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			c.Backends["b1"].ClientAddress = ClientAddressXCLIENT
			inner := c.Router
			c.Router = auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
				mu.Lock()
				routed = append(routed, req.Client)
				mu.Unlock()
				return inner.Route(ctx, req)
			})
		},
	})
	for _, tc := range []struct {
		name, listener string
		hdr            []byte
		tls            bool
	}{
		{"v1 plain", "pp", headerV1(t, claimed), false},
		{"v2 plain", "pp", headerV2(t, claimed), false},
		{"v1 tls", "pps", headerV1(t, claimed), true},
		{"v2 tls", "pps", headerV2(t, claimed), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *tls.Config
			if tc.tls {
				cfg = h.front.client
			}
			c := h.dialFrom(tc.listener, "", tc.hdr, cfg)
			c.expect("+OK")
			c.login()
			if got := c.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
				t.Errorf("STAT = %q", got)
			}
			c.cmd("QUIT")
			c.eof()
		})
	}
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	logs := h.logs.String()
	if n := strings.Count(logs, "remote="+claimed.String()); n < 4 {
		t.Errorf("log names the header's address %d times, want at least 4:\n%s", n, logs)
	}
	if !strings.Contains(logs, "proxy=127.0.0.1:") {
		t.Errorf("log does not name the load balancer:\n%s", logs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(routed) != 4 {
		t.Errorf("router asked %d times, want 4", len(routed))
	}
	for _, a := range routed {
		if a != claimed {
			t.Errorf("router saw client %v, want %v", a, claimed)
		}
	}
	var xclients []string
	for _, cmd := range h.backend.Commands() {
		if strings.HasPrefix(cmd, "XCLIENT ") {
			xclients = append(xclients, cmd)
		}
	}
	if len(xclients) != 4 {
		t.Fatalf("backend got %d XCLIENT lines, want 4: %q", len(xclients), h.backend.Commands())
	}
	for i, x := range xclients {
		want := "XCLIENT ADDR=192.0.2.10 PORT=40110 SESSION="
		transport := "CLIENT-TRANSPORT=insecure"
		if i >= 2 {
			transport = "CLIENT-TRANSPORT=TLS"
		}
		if !strings.HasPrefix(x, want) || !strings.HasSuffix(x, " TTL=5 "+transport) {
			t.Errorf("XCLIENT line %q, want %q... TTL=5 %s", x, want, transport)
		}
	}
}

// TestProxyProtocolRefused: a PROXY listener closes, with a log line, a
// connection from an untrusted address (whatever it sends), one without a
// header, one with a garbage header and one that sends nothing; a LOCAL
// health check is closed quietly. A plaintext listener never reads a
// header: there it is just a bad command.
func TestProxyProtocolRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{
		listeners: proxyListeners(),
		config: func(c *Config) {
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			c.ProxyHeaderTimeout = 300 * time.Millisecond
		},
	})
	cases := []struct {
		name, from string
		send       []byte
		log        string
	}{
		{"untrusted v2", "127.0.0.2", headerV2(t, claimed), "not from a trusted proxy"},
		{"untrusted v1", "127.0.0.2", headerV1(t, claimed), "not from a trusted proxy"},
		{"missing header", "", []byte("USER alice\r\n"), "not a PROXY protocol header"},
		{"garbage v1", "", []byte("PROXY TCP4 999.1.2.3 1.2.3.4 1 2\r\n"), "PROXY header missing or invalid"},
		{"v1 too long", "", []byte("PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n"), "longer than 107"},
		{"v2 huge length", "", append(append([]byte{}, headerV2(t, claimed)[:14]...), 0xff, 0xff), "too long"},
		{"nothing", "", nil, "no PROXY header before the timeout"},
		{"half header", "", headerV2(t, claimed)[:20], "no PROXY header before the timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dialFrom("pp", tc.from, nil, nil)
			if tc.send != nil {
				c.send(string(tc.send))
			}
			c.eof()
			waitFor(t, "log line", func() bool { return strings.Contains(h.logs.String(), tc.log) })
		})
	}
	// LOCAL: no INFO line at all.
	local := []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	before := strings.Count(h.logs.String(), "level=INFO")
	c := h.dialFrom("pp", "", local, nil)
	c.eof()
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	if !strings.Contains(h.logs.String(), "result=proxy_local") {
		t.Errorf("LOCAL not logged at debug:\n%s", h.logs)
	}
	if after := strings.Count(h.logs.String(), "level=INFO"); after != before {
		t.Errorf("LOCAL health check logged at INFO:\n%s", h.logs)
	}
	// On a listener without proxy_protocol a header is only junk.
	c = h.dialFrom("plain", "", nil, nil)
	c.expect("+OK")
	if got := c.cmd(strings.TrimSpace(string(headerV1(t, claimed)))); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("PROXY line on a plain listener = %q", got)
	}
	c.login()
	c.cmd("QUIT")
	c.eof()
	// And it still works after all that.
	c = h.dialFrom("pp", "", headerV1(t, claimed), nil)
	c.expect("+OK")
	c.login()
}

// TestProxyProtocolPerIP: behind a PROXY listener max_connections_per_ip
// counts the header's address, not the load balancer's.
func TestProxyProtocolPerIP(t *testing.T) {
	h := newHarness(t, harnessOpts{
		listeners: proxyListeners(),
		config: func(c *Config) {
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			c.MaxConnectionsPerIP = 1
		},
	})
	first := h.dialFrom("pp", "", headerV2(t, claimed), nil)
	first.expect("+OK")
	second := h.dialFrom("pp", "", headerV2(t, netip.AddrPortFrom(claimed.Addr(), 2)), nil)
	second.expect("-ERR [SYS/TEMP]")
	second.eof()
	other := h.dialFrom("pp", "", headerV1(t, netip.MustParseAddrPort("192.0.2.11:1")), nil)
	other.expect("+OK")
	other.login()
	other.cmd("QUIT")
	other.eof()
	first.login()
	if !strings.Contains(h.logs.String(), "max_connections_per_ip reached") {
		t.Errorf("no log line for the refusal:\n%s", h.logs)
	}
	first.cmd("QUIT")
	first.eof()
	waitFor(t, "sessions to end", func() bool { return h.srv.Sessions() == 0 })
	again := h.dialFrom("pp", "", headerV2(t, claimed), nil)
	again.expect("+OK")
}

// TestClientAddressOut: each client_address mode tells the backend the
// client's address, and the failures of XCLIENT fail the login with
// [SYS/TEMP] and a log line naming login_trusted_networks.
func TestClientAddressOut(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    ClientAddressMode
		backend func(*pop3test.Server)
		want    string // prefix of a backend Commands() entry
		fail    bool
	}{
		{"proxy-v1", ClientAddressProxyV1, func(b *pop3test.Server) { b.ProxyHeader = true }, "PROXY 127.0.0.1:", false},
		{"proxy-v2", ClientAddressProxyV2, func(b *pop3test.Server) { b.ProxyHeader = true }, "PROXY 127.0.0.1:", false},
		{"xclient", ClientAddressXCLIENT, func(b *pop3test.Server) { b.XCLIENT = true }, "XCLIENT ADDR=127.0.0.1 PORT=", false},
		{"xclient in greeting", ClientAddressXCLIENT, func(b *pop3test.Server) { b.XCLIENT = true; b.Greeting = "[XCLIENT] Dovecot ready." }, "XCLIENT ADDR=127.0.0.1 PORT=", false},
		{"xclient not offered", ClientAddressXCLIENT, nil, "", true},
		{"xclient refused", ClientAddressXCLIENT, func(b *pop3test.Server) { b.XCLIENT = true; b.XCLIENTError = "Not trusted" }, "XCLIENT ", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{
				backendMode: TLSStartTLS,
				backend:     tc.backend,
				config:      func(c *Config) { c.Backends["b1"].ClientAddress = tc.mode },
			})
			c := h.dial("pop3s")
			c.send("USER " + testUser + "\r\n")
			c.expect("+OK")
			c.send("PASS " + testPass + "\r\n")
			got := c.line()
			if tc.fail {
				if !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
					t.Errorf("login = %q, want -ERR [SYS/TEMP]", got)
				}
				waitFor(t, "log line", func() bool { return strings.Contains(h.logs.String(), "login_trusted_networks") })
				if !strings.Contains(h.logs.String(), "level=WARN") {
					t.Errorf("no WARN line:\n%s", h.logs)
				}
				for _, cmd := range h.backend.Commands() {
					if strings.HasPrefix(cmd, "USER") || strings.HasPrefix(cmd, "PASS") {
						t.Errorf("backend got %q after XCLIENT failed", cmd)
					}
				}
			} else if !strings.HasPrefix(got, "+OK") {
				t.Fatalf("login = %q", got)
			}
			if tc.want != "" {
				found := false
				for _, cmd := range h.backend.Commands() {
					found = found || strings.HasPrefix(cmd, tc.want)
				}
				if !found {
					t.Errorf("backend commands %q lack %q", h.backend.Commands(), tc.want)
				}
			}
		})
	}
}

// TestReadProxyHeaderExact: the header reader takes the header and not one
// octet more, whatever follows it in the same segment.
func TestReadProxyHeaderExact(t *testing.T) {
	tail := []byte("\x16\x03\x01\x00\x05hello")
	for _, hdr := range [][]byte{headerV1(t, claimed), headerV2(t, claimed), []byte("PROXY UNKNOWN\r\n")} {
		r := bytes.NewReader(append(append([]byte{}, hdr...), tail...))
		got, err := readProxyHeader(r)
		if err != nil {
			t.Fatalf("readProxyHeader(%q) = %v", hdr, err)
		}
		if !bytes.Equal(got, hdr) {
			t.Errorf("readProxyHeader = %q, want %q", got, hdr)
		}
		if r.Len() != len(tail) {
			t.Errorf("readProxyHeader(%q) consumed %d octets of what follows", hdr, len(tail)-r.Len())
		}
		info, err := parseProxyHeader(got)
		if err != nil {
			t.Fatalf("parseProxyHeader(%q) = %v", got, err)
		}
		if !info.local && info.source != claimed {
			t.Errorf("parseProxyHeader(%q).source = %v, want %v", got, info.source, claimed)
		}
	}
}

// FuzzProxyHeader feeds arbitrary octets to the PROXY header reader and
// parser. Neither may panic; the reader never consumes more than the
// header it returns and never more than the format's bounds; a header the
// parser accepts names a valid TCP client address or is LOCAL.
func FuzzProxyHeader(f *testing.F) {
	f.Add(headerV1(f, claimed))
	f.Add(headerV2(f, claimed))
	f.Add(headerV1(f, netip.MustParseAddrPort("[2001:db8::1]:1")))
	f.Add(headerV2(f, netip.MustParseAddrPort("[2001:db8::1]:1")))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nUSER x\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		hdr, err := readProxyHeader(r)
		if err != nil {
			return
		}
		if consumed := len(in) - r.Len(); consumed != len(hdr) || !bytes.Equal(hdr, in[:consumed]) {
			t.Fatalf("read %d octets, returned a %d-octet header", consumed, len(hdr))
		}
		if len(hdr) > proxyV2HdrLen+proxyV2MaxBody {
			t.Fatalf("header of %d octets accepted", len(hdr))
		}
		info, err := parseProxyHeader(hdr)
		if err != nil {
			return
		}
		if !info.local && (!info.source.Addr().IsValid() || info.source.Addr().Is4In6()) {
			t.Fatalf("accepted header %q gives source %v", hdr, info.source)
		}
	})
}

// TestProxyHeaderSSLTLV: an outbound v2 header for a TLS client says so
// (PP2_TYPE_SSL with PP2_CLIENT_SSL); one for a plaintext client does not.
func TestProxyHeaderSSLTLV(t *testing.T) {
	for _, clientTLS := range []bool{true, false} {
		var st *tlsInfo
		if clientTLS {
			st = &tlsInfo{version: tls.VersionTLS13}
		}
		hdr, err := proxyHeaderFor(2, claimed, netip.MustParseAddrPort("[2001:db8::1]:995"), st)
		if err != nil {
			t.Fatal(err)
		}
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(hdr)))
		if err != nil {
			t.Fatal(err)
		}
		if src, _, _ := h.TCPAddrs(); src.AddrPort() != claimed {
			t.Errorf("source %v, want %v", src, claimed)
		}
		tlvs, err := h.TLVs()
		if err != nil {
			t.Fatal(err)
		}
		ssl, found := tlvparse.FindSSL(tlvs)
		if found != clientTLS || found && !ssl.ClientSSL() {
			t.Errorf("client TLS %v: SSL TLV found=%v", clientTLS, found)
		}
		if v, _ := ssl.SSLVersion(); found && v != "TLSv1.3" {
			t.Errorf("SSL TLV version %q, want TLSv1.3", v)
		}
	}
}

// TestPerIPIPv6Prefix: max_connections_per_ip counts an IPv6 client by its
// network (ipv6_prefix, /64 by default), as the failed-login throttle does,
// so one host cannot take every connection by cycling through its /64; an
// IPv4-mapped address is its IPv4 address. The addresses come in PROXY
// headers, since loopback has a single IPv6 address.
func TestPerIPIPv6Prefix(t *testing.T) {
	const limit = 3
	for _, tc := range []struct {
		prefix   int
		accepted int // of 5 connections from 2001:db8:1:2::1 ... ::5
	}{
		{0, limit},   // default /64: one client
		{64, limit},  // the same, said
		{120, limit}, // ::1 to ::5 share a /120
		{128, 5},     // every address its own client
	} {
		t.Run(fmt.Sprintf("prefix=%d", tc.prefix), func(t *testing.T) {
			h := newHarness(t, harnessOpts{
				listeners: proxyListeners(),
				config: func(c *Config) {
					c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
					c.MaxConnectionsPerIP = limit
					c.IPv6Prefix = tc.prefix
				},
			})
			accepted := 0
			for i := range 5 {
				src := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%d", i+1)), 40000)
				c := h.dialFrom("pp", "", headerV2(t, src), nil)
				if strings.HasPrefix(c.line(), "+OK") {
					accepted++
				}
			}
			if accepted != tc.accepted {
				t.Errorf("%d of 5 connections from one /64 accepted, want %d", accepted, tc.accepted)
			}
		})
	}
	// IPv4 and its IPv4-mapped form are one client.
	h := newHarness(t, harnessOpts{
		listeners: proxyListeners(),
		config: func(c *Config) {
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			c.MaxConnectionsPerIP = 1
		},
	})
	h.dialFrom("pp", "", headerV2(t, netip.MustParseAddrPort("192.0.2.77:1")), nil).expect("+OK")
	h.dialFrom("pp", "", headerV2(t, netip.MustParseAddrPort("[::ffff:192.0.2.77]:2")), nil).expect("-ERR [SYS/TEMP]")
}
