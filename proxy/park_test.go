package proxy

import (
	"crypto/tls"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParking: idle logged-in sessions give up their goroutines, wake up on
// the next command, and end properly when either side goes away while
// parked.
func TestParking(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parking uses epoll") // never skipped in CI, which runs on Linux
	}
	for _, mode := range []TLSMode{TLSNone, TLSImplicit, TLSStartTLS} {
		t.Run("backend "+mode.String(), func(t *testing.T) {
			h := newHarness(t, harnessOpts{backendMode: mode})
			h.srv.parkAfter = 50 * time.Millisecond
			parkedAll := func(n int64) func() bool { return func() bool { return h.srv.Parked() == n } }

			// Wake up with a command, several times.
			for _, listener := range []string{"pop3s", "plain"} {
				c := h.dial(listener)
				c.login()
				for range 3 {
					waitFor(t, "both directions parked", parkedAll(2))
					if got := c.cmd("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
						t.Fatalf("%s: STAT after parking = %q", listener, got)
					}
				}
				waitFor(t, "both directions parked", parkedAll(2))
				c.send("RETR 2\r\n")
				c.expect("+OK")
				if got := c.multi(); !slices.Equal(got, []string{"Subject: two", "", ".dotted line", "second"}) {
					t.Errorf("RETR after parking = %q", got)
				}
				c.cmd("QUIT")
				c.eof()
				waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
			}

			// The client vanishes while both directions are parked.
			quits := countOf(h.backend.Commands(), "QUIT")
			c := h.dial("pop3s")
			c.login()
			c.cmd("DELE 1")
			waitFor(t, "both directions parked", parkedAll(2))
			c.conn.Close()
			waitFor(t, "session end after the client left", func() bool { return h.srv.Sessions() == 0 })
			if n := len(h.backend.Messages(testUser)); n != 2 || countOf(h.backend.Commands(), "QUIT") != quits {
				t.Errorf("mailbox has %d messages; backend commands %q", n, h.backend.Commands())
			}
			if h.srv.Parked() != 0 {
				t.Errorf("%d directions still parked", h.srv.Parked())
			}

			// The server closes parked sessions.
			c = h.dial("plain")
			c.login()
			waitFor(t, "all parked", parkedAll(2))
			h.srv.Close()
			if n := h.srv.Sessions(); n != 0 {
				t.Errorf("%d sessions after Close", n)
			}
		})
	}
}

// TestParkedIdleTimeout: the idle timer ends a parked session.
func TestParkedIdleTimeout(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) { c.IdleTimeout = 300 * time.Millisecond }})
	h.srv.parkAfter = 20 * time.Millisecond
	c := h.dial("pop3s")
	c.login()
	c.eof()
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
	if !strings.Contains(h.logs.String(), `end="idle timeout"`) {
		t.Errorf("no idle timeout in the log:\n%s", h.logs)
	}
}

// TestRecordConn: reads through recordConn stop at record boundaries, and
// it knows when it is between records.
func TestRecordConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// Two records in one write: 3 body octets, then 2.
		c.Write([]byte{23, 3, 3, 0, 3, 'a', 'b', 'c', 23, 3, 3, 0, 2, 'd', 'e'})
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecordConn(conn).(*recordConn)
	defer rc.Close()
	rc.SetDeadline(time.Now().Add(5 * time.Second))
	var got []string
	var bounds []bool
	for {
		buf := make([]byte, 64)
		n, err := rc.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
		bounds = append(bounds, rc.atBoundary())
	}
	// After the first record the second is pending: not at a boundary.
	if want := []bool{false, true}; !slices.Equal(bounds, want) {
		t.Errorf("atBoundary after each read = %v, want %v", bounds, want)
	}
	// Both records arrived in one segment; each Read returns one.
	want := []string{"\x17\x03\x03\x00\x03abc", "\x17\x03\x03\x00\x02de"}
	if !slices.Equal(got, want) {
		t.Errorf("reads = %q, want %q", got, want)
	}
	// Byte by byte: never past a record's end, boundary only at ends.
	var rc2 recordConn
	stream := []byte{23, 3, 3, 0, 2, 'x', 'y', 23, 3, 3, 0, 0, 23, 3, 3, 0, 1, 'z'}
	var ends []int
	for i := range stream {
		if rc2.advance(stream[i:i+1]) != 1 {
			t.Fatalf("advance refused octet %d", i)
		}
		if rc2.atBoundary() {
			ends = append(ends, i)
		}
	}
	if want := []int{6, 11, 17}; !slices.Equal(ends, want) {
		t.Errorf("record ends at %v, want %v", ends, want)
	}
	if got := rc2.advance(stream); got != 7 {
		t.Errorf("advance over two records took %d octets, want 7", got)
	}
	if _, ok := newRecordConn(nil).(*recordConn); ok {
		t.Error("newRecordConn wrapped a non-TCP conn")
	}
	var _ net.Conn = tls.Client(rc, &tls.Config{})
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// FuzzRecordFraming: however the socket splits a stream of records, the
// octets recordConn hands on stop exactly at record ends.
func FuzzRecordFraming(f *testing.F) {
	f.Add([]byte{3, 0, 200, 7}, uint8(3))
	f.Add([]byte{0, 1, 0}, uint8(1))
	f.Fuzz(func(t *testing.T, lens []byte, chunk uint8) {
		var stream []byte
		var ends []int
		for _, l := range lens {
			stream = append(stream, 23, 3, 3, 0, l)
			stream = append(stream, make([]byte, l)...)
			ends = append(ends, len(stream))
		}
		step := int(chunk%17) + 1
		var rc recordConn
		var got []int
		pos := 0
		for pos < len(stream) {
			end := min(pos+step, len(stream))
			took := rc.advance(stream[pos:end])
			if took == 0 {
				t.Fatalf("advance took nothing at %d", pos)
			}
			pos += took
			if rc.atBoundary() {
				got = append(got, pos)
			}
		}
		if !slices.Equal(got, ends) {
			t.Fatalf("boundaries %v, want %v", got, ends)
		}
	})
}
