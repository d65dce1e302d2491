package proxy

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/popgate/popgate/internal/tlsversion"
)

// Limits of an inbound PROXY header (haproxy doc/proxy-protocol.txt).
const (
	proxyV1MaxLen = 107 // §2.1, CRLF included
	proxyV2HdrLen = 16  // §2.2: signature, version/command, family, length
	// proxyV2MaxBody bounds the address block and TLVs popgate accepts;
	// the format allows 64 KiB, a load balancer sends well under 1 KiB
	// (addresses, ALPN, SNI, SSL details).
	proxyV2MaxBody = 2048
)

var errNotProxyHeader = errors.New("not a PROXY protocol header")

// readProxyHeader reads one PROXY protocol v1 or v2 header from r and
// returns its octets, and not one octet more: whatever the client sent
// behind the header (a TLS ClientHello, pipelined commands) stays in the
// socket for the session, so the raw *net.TCPConn can still be handed to
// TLS and parked after the login. v1 is read an octet at a time for that
// reason; it is at most 107 octets, and only trusted proxies get here.
func readProxyHeader(r io.Reader) ([]byte, error) {
	buf := make([]byte, 12, proxyV2HdrLen)
	// 12 octets: the v2 signature, and less than the shortest v1 header
	// ("PROXY UNKNOWN\r\n", 15).
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	switch {
	case bytes.Equal(buf, proxyproto.SIGV2):
		buf = buf[:proxyV2HdrLen]
		if _, err := io.ReadFull(r, buf[12:]); err != nil {
			return nil, err
		}
		n := int(buf[14])<<8 | int(buf[15])
		if n > proxyV2MaxBody {
			return nil, fmt.Errorf("PROXY v2 header of %d octets is too long", n)
		}
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(r, buf[proxyV2HdrLen:]); err != nil {
			return nil, err
		}
		return buf, nil
	case bytes.HasPrefix(buf, []byte("PROXY ")):
		var b [1]byte
		for buf[len(buf)-1] != '\n' {
			if len(buf) >= proxyV1MaxLen {
				return nil, errors.New("PROXY v1 header is longer than 107 octets")
			}
			if _, err := io.ReadFull(r, b[:]); err != nil {
				return nil, err
			}
			buf = append(buf, b[0])
		}
		return buf, nil
	}
	return nil, errNotProxyHeader
}

// proxyInfo is what a PROXY header says.
type proxyInfo struct {
	local  bool           // LOCAL command: the proxy's own connection (health check)
	source netip.AddrPort // the client
	dest   netip.AddrPort // the address the client connected to
}

// parseProxyHeader validates a header read by readProxyHeader. Only TCP
// over IPv4 or IPv6 is accepted for the PROXY command; UNKNOWN (v1) and
// LOCAL (v2) both mean "not a relayed client".
func parseProxyHeader(hdr []byte) (proxyInfo, error) {
	if bytes.HasPrefix(hdr, []byte("PROXY UNKNOWN")) {
		// §2.1: the rest of the line is to be ignored.
		if !bytes.HasSuffix(hdr, []byte("\r\n")) {
			return proxyInfo{}, proxyproto.ErrLineMustEndWithCrlf
		}
		return proxyInfo{local: true}, nil
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(hdr), 4096))
	if err != nil {
		return proxyInfo{}, err
	}
	if h.Command.IsLocal() {
		return proxyInfo{local: true}, nil
	}
	src, dst, ok := h.TCPAddrs()
	if !ok || src == nil || dst == nil {
		return proxyInfo{}, fmt.Errorf("PROXY header carries no TCP addresses (%v)", h.TransportProtocol)
	}
	info := proxyInfo{source: src.AddrPort(), dest: dst.AddrPort()}
	info.source = netip.AddrPortFrom(info.source.Addr().Unmap(), info.source.Port())
	info.dest = netip.AddrPortFrom(info.dest.Addr().Unmap(), info.dest.Port())
	if !info.source.Addr().IsValid() {
		return proxyInfo{}, errors.New("PROXY header has an invalid source address")
	}
	return info, nil
}

// proxyHeaderFor builds the outbound PROXY header (version 1 or 2) for a
// client at src that connected to dst. When the two differ in family (an
// IPv4 client reached popgate over IPv6 through a load balancer), dst is
// given in src's family as the unspecified address. A v2 header for a client
// that reached popgate over TLS carries the PP2_TYPE_SSL TLV with the
// PP2_CLIENT_SSL flag (haproxy's send-proxy-v2-ssl): Dovecot then treats the
// connection as secured and allows plaintext authentication on it.
func proxyHeaderFor(version byte, src, dst netip.AddrPort, clientTLS *tlsInfo) ([]byte, error) {
	s := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	d := netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.Addr().Is4() != d.Addr().Is4() {
		if s.Addr().Is4() {
			d = netip.AddrPortFrom(netip.IPv4Unspecified(), d.Port())
		} else {
			d = netip.AddrPortFrom(netip.IPv6Unspecified(), d.Port())
		}
	}
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(s), net.TCPAddrFromAddrPort(d))
	if version == 2 && clientTLS != nil {
		// client: PP2_CLIENT_SSL; verify: non-zero, no client
		// certificate was verified; then the version, which must
		// follow PP2_CLIENT_SSL (doc/proxy-protocol.txt §2.2.5).
		sub, err := proxyproto.JoinTLVs([]proxyproto.TLV{{
			Type:  proxyproto.PP2_SUBTYPE_SSL_VERSION,
			Value: []byte(cmp.Or(tlsversion.OpenSSL(clientTLS.version), "TLS")), // haproxy's ssl_fc_protocol words
		}})
		if err != nil {
			return nil, err
		}
		ssl := proxyproto.TLV{Type: proxyproto.PP2_TYPE_SSL, Value: append([]byte{0x01, 0, 0, 0, 1}, sub...)}
		if err := h.SetTLVs([]proxyproto.TLV{ssl}); err != nil {
			return nil, err
		}
	}
	return h.Format()
}

// xclientLine is the XCLIENT command for Dovecot (src/pop3-login/client.c):
// the client's address and port, popgate's connection ID as the session,
// the hop limit, and whether the client's own connection was encrypted.
func xclientLine(src netip.AddrPort, session string, tls bool) string {
	transport := "insecure"
	if tls {
		transport = "TLS"
	}
	var b strings.Builder
	b.WriteString("XCLIENT ADDR=")
	// Dovecot wants IPv6 bare, without Postfix's "IPV6:" prefix.
	b.WriteString(src.Addr().Unmap().String())
	b.WriteString(" PORT=")
	b.WriteString(strconv.Itoa(int(src.Port())))
	b.WriteString(" SESSION=")
	b.WriteString(session)
	b.WriteString(" TTL=")
	b.WriteString(strconv.Itoa(xclientTTL))
	b.WriteString(" CLIENT-TRANSPORT=")
	b.WriteString(transport)
	return b.String()
}

// xclientTTL is the hop limit sent with XCLIENT; Dovecot decrements it per
// proxy hop and refuses to proxy at zero (its own default is 5).
const xclientTTL = 5
