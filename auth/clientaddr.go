package auth

import "net/netip"

// DefaultIPv6Prefix is the prefix length by which IPv6 clients are grouped
// when nothing else is configured: one host, or one customer of a provider,
// routinely holds a whole /64 (RFC 6177) and can pick any address in it.
const DefaultIPv6Prefix = 64

// ClientNet returns the network that stands for one client in every limit
// (connections per address, failed logins per address): an IPv4 address as
// it is (an IPv4-mapped IPv6 address counts as its IPv4 address), an IPv6
// address by its first ipv6Bits bits. ipv6Bits outside 1..128 means
// [DefaultIPv6Prefix]. Zones are dropped. ok is false for an invalid ip.
func ClientNet(ip netip.Addr, ipv6Bits int) (p netip.Prefix, ok bool) {
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
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
