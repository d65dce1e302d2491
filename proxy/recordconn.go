package proxy

import (
	"io"
	"net"
	"sync"
)

// recordConn is the TCP socket under a tls.Conn. Its Read never returns
// bytes past the end of the current TLS record: what the socket delivered
// beyond it waits in pending for the next Read. So crypto/tls never holds a
// record it has not decrypted yet, and when a TLS read returns nothing while
// recordConn is at a record boundary with nothing pending, no byte is
// buffered anywhere but in the kernel: the session can wait on the socket
// alone (see parker) and give up its goroutine.
type recordConn struct {
	*net.TCPConn
	w         io.Writer // where writes go: the socket; tests record them
	hdr       [5]byte
	hdrN      int    // octets of the next record header seen so far
	remaining int    // body octets of the current record not yet returned
	pending   []byte // octets read from the socket past the current record

	// Write batching (see beginBatch). wmu orders a batch's flush with
	// any write crypto/tls makes from another goroutine (an alert, a
	// KeyUpdate answer while reading).
	wmu      sync.Mutex
	wbuf     []byte // records collected since beginBatch; nil: no batch open
	batching bool   // a batch is open (wbuf may be empty)
}

func newRecordConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return &recordConn{TCPConn: tc, w: tc}
	}
	return c
}

// beginBatch makes Writes collect whole records in buf instead of writing
// each one with its own system call, until endBatch writes them at once.
// crypto/tls calls Write once per record, so a tls.Conn.Write of N records
// becomes one socket write instead of N. Only the splice opens batches,
// around one tls.Conn.Write, and closes them before it reads again: no
// octet waits in buf while the splice blocks, and handshake records and
// alerts outside a batch go straight to the socket.
func (c *recordConn) beginBatch(buf []byte) {
	c.wmu.Lock()
	c.wbuf = buf[:0]
	c.batching = true
	c.wmu.Unlock()
}

// endBatch writes what the batch collected and closes it. The buffer given
// to beginBatch is no longer referenced when it returns.
func (c *recordConn) endBatch() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf
	c.wbuf = nil
	c.batching = false
	if len(b) == 0 {
		return nil
	}
	_, err := c.w.Write(b)
	return err
}

// Write writes p to the socket, or adds it to the open batch. A record that
// does not fit behind what the batch holds flushes the batch first.
func (c *recordConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.batching {
		return c.w.Write(p)
	}
	if len(c.wbuf)+len(p) > cap(c.wbuf) {
		if len(c.wbuf) > 0 {
			_, err := c.w.Write(c.wbuf)
			c.wbuf = c.wbuf[:0]
			if err != nil {
				return 0, err
			}
		}
		if len(p) > cap(c.wbuf) {
			return c.w.Write(p)
		}
	}
	c.wbuf = append(c.wbuf, p...)
	return len(p), nil
}

// Read reads at most to the end of the current record.
func (c *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	fromPending := len(c.pending) > 0
	if fromPending {
		n = copy(p, c.pending)
		c.pending = c.pending[n:]
	} else {
		n, err = c.TCPConn.Read(p)
	}
	i := c.advance(p[:n])
	if i < n {
		// The next record's octets: keep them, in order, ahead of
		// anything already pending.
		rest := make([]byte, 0, n-i+len(c.pending))
		rest = append(rest, p[i:n]...)
		c.pending = append(rest, c.pending...)
		n = i
	}
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return n, err
}

// advance follows the record framing over b (RFC 8446 §5.1: type, legacy
// version, 16-bit length, body) and returns how many of its octets belong
// to the current record.
func (c *recordConn) advance(b []byte) int {
	i := 0
	for i < len(b) {
		if c.remaining > 0 {
			take := min(c.remaining, len(b)-i)
			c.remaining -= take
			i += take
			if c.remaining == 0 {
				return i
			}
			continue
		}
		c.hdr[c.hdrN] = b[i]
		c.hdrN++
		i++
		if c.hdrN == len(c.hdr) {
			c.remaining = int(c.hdr[3])<<8 | int(c.hdr[4])
			c.hdrN = 0
			if c.remaining == 0 {
				return i
			}
		}
	}
	return i
}

// atBoundary reports whether every octet read from the socket so far
// belonged to complete records that were all returned. Only the goroutine
// reading through the tls.Conn may call it.
func (c *recordConn) atBoundary() bool {
	return c.remaining == 0 && c.hdrN == 0 && len(c.pending) == 0
}
