package main

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// TestSameAddress: a socket systemd passes is taken by the listener whose
// configured address it is bound to.
func TestSameAddress(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 995}
	any6 := &net.TCPAddr{IP: net.IPv6unspecified, Port: 995}
	any4 := &net.TCPAddr{IP: net.IPv4zero, Port: 995}
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 995}
	zero := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0}
	for _, c := range []struct {
		a    net.Addr
		addr string
		want bool
	}{
		{any6, ":995", true}, // ListenStream=995
		{any4, ":995", true},
		{any6, "0.0.0.0:995", true},
		{any6, "[::]:995", true},
		{v4, "192.0.2.1:995", true},
		{loop, "localhost:995", true},
		{v4, ":995", false}, // a single address does not serve all of them
		{any6, "192.0.2.1:995", false},
		{v4, "192.0.2.2:995", false},
		{v4, "192.0.2.1:110", false},
		{zero, "127.0.0.1:0", false}, // port 0 is no address to match
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, ":995", false},
		{v4, "not an address", false},
	} {
		if got := sameAddress(c.a, c.addr); got != c.want {
			t.Errorf("sameAddress(%v, %q) = %v, want %v", c.a, c.addr, got, c.want)
		}
	}
}

// TestTicketKeysEncoding: the keys an upgrade hands over arrive as they
// left; a pipe's content of another length is refused.
func TestTicketKeysEncoding(t *testing.T) {
	keys := []tlsconf.TicketKey{
		{Key: [32]byte{1, 2, 3}, Made: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)},
		{Key: [32]byte{31: 9}, Made: time.Date(2025, 12, 31, 0, 0, 0, 0, time.UTC)},
	}
	got, err := decodeTicketKeys(encodeTicketKeys(keys))
	if err != nil || !slices.EqualFunc(got, keys, func(a, b tlsconf.TicketKey) bool { return a.Key == b.Key && a.Made.Equal(b.Made) }) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	if got, err := decodeTicketKeys(nil); err != nil || len(got) != 0 {
		t.Errorf("no keys: %v, %v", got, err)
	}
	for _, n := range []int{39, 41, (tlsconf.MaxTicketKeys + 1) * 40} {
		if _, err := decodeTicketKeys(make([]byte, n)); err == nil {
			t.Errorf("%d octets accepted", n)
		}
	}
}
