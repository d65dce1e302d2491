package proxy

import (
	"net"
)

// recordConn is the TCP socket under a tls.Conn. Its Read never returns
// bytes past the end of the current TLS record, so crypto/tls never holds
// a record it has not decrypted yet. When a TLS read returns nothing and
// recordConn is at a record boundary, nothing is buffered anywhere but in
// the kernel: the session can wait on the socket alone (see parker) and give
// up its goroutine. The cost is one extra read(2) per record, for the
// 5-octet header.
type recordConn struct {
	*net.TCPConn
	hdr       [5]byte
	hdrN      int // octets of the next header read so far
	remaining int // body octets of the current record still to read
}

func newRecordConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return &recordConn{TCPConn: tc}
	}
	return c
}

// Read reads at most to the end of the current record (header or body).
func (c *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.remaining == 0 {
		want := min(len(c.hdr)-c.hdrN, len(p))
		n, err := c.TCPConn.Read(p[:want])
		copy(c.hdr[c.hdrN:], p[:n])
		c.hdrN += n
		if c.hdrN == len(c.hdr) {
			// RFC 8446 §5.1: type, legacy version, 16-bit length.
			c.remaining = int(c.hdr[3])<<8 | int(c.hdr[4])
			c.hdrN = 0
		}
		return n, err
	}
	if len(p) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.TCPConn.Read(p)
	c.remaining -= n
	return n, err
}

// atBoundary reports whether every octet read so far belonged to complete
// records. Only the goroutine reading through the tls.Conn may call it.
func (c *recordConn) atBoundary() bool { return c.remaining == 0 && c.hdrN == 0 }
