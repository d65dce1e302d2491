package auth

import "net/netip"

// DefaultIPv6Prefix is the prefix length by which IPv6 clients are grouped
// when nothing else is configured: one host, or one customer of a provider,
// routinely holds a whole /64 (RFC 6177) and can pick any address in it.
const DefaultIPv6Prefix = 64

// ClientNet returns the network that stands for one client in every limit
// (connections per address, failed logins per address): an IPv4 address as
// it is (an IPv4-mapped IPv6 address, and one of the NAT64 well-known
// prefix 64:ff9b::/96 of RFC 6052, count as the IPv4 address they carry),
// an IPv6 address by its first ipv6Bits bits. ipv6Bits outside 1..128
// means [DefaultIPv6Prefix]. Zones are dropped. ok is false for an invalid
// ip.
func ClientNet(ip netip.Addr, ipv6Bits int) (p netip.Prefix, ok bool) {
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	if nat64.Contains(ip) {
		// Behind a NAT64 translator every IPv4 client would otherwise
		// share one /64.
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	bits := 32
	if ip.Is6() {
		bits = ipv6Bits
		if bits < 1 || bits > 128 {
			bits = DefaultIPv6Prefix
		}
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// nat64 is the NAT64 well-known prefix (RFC 6052 §2.1), whose addresses
// carry an IPv4 address in their last 32 bits.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")
