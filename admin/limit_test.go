package admin

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestCapListener: connections beyond the per-address cap are closed at
// once, those within it are kept, and a closed one frees its place.
func TestCapListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	capped := newCapListener(ln, 10, 3)
	defer capped.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := capped.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed reports whether the server closed c (EOF) rather than
	// keeping it (a read that times out).
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF)
	}
	var kept []net.Conn
	for range 3 {
		dial()
		kept = append(kept, <-accepted)
	}
	over := dial()
	if !closed(over) {
		t.Fatal("a 4th connection from one address was kept, cap 3")
	}
	if n := capped.refused(); n != 1 {
		t.Errorf("refused() = %d, want 1", n)
	}
	kept[0].Close()
	dial()
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a connection was refused after one of three was closed")
	}
}
