package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Buffer sizes of the splice.
const (
	// smallBufSize is what a TLS-sourced direction holds while it waits:
	// enough for any POP3 command or short reply.
	smallBufSize = 512
	// bigBufSize is borrowed from the pool while data flows; it holds a
	// full TLS record's plaintext (16 KiB) and then some.
	bigBufSize = 32 << 10
)

// bufPool hands out *[]byte of bigBufSize.
type bufPool struct {
	p        sync.Pool
	borrowed atomic.Int64 // buffers out of the pool right now
}

func (bp *bufPool) get() *[]byte {
	bp.borrowed.Add(1)
	if b, ok := bp.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, bigBufSize)
	return &b
}

func (bp *bufPool) put(b *[]byte) {
	bp.borrowed.Add(-1)
	bp.p.Put(b)
}

// splice is the state of a logged-in session's copy.
type splice struct {
	in        atomic.Int64 // client → backend bytes
	out       atomic.Int64 // backend → client bytes
	last      atomic.Int64 // time of the last activity, ns since session start
	endReason string       // why the splice ended, for the log

	// Guarded by session.mu.
	running  int         // directions still copying
	cerr     error       // how client → backend ended (nil: client EOF)
	berr     error       // how backend → client ended (nil: backend EOF)
	timer    *time.Timer // the idle timer, re-armed by itself
	finished bool        // the splice is over; the timer must not re-arm
	idledOut bool        // the idle timer closed the session
}

// startSplice hands the session to two goroutines that carry it after the
// login: the bytes the client pipelined behind its login go to the backend
// first, then both directions are copied until either side closes or the
// session is idle for idle_timeout. The last goroutine to finish ends the
// session.
func (sess *session) startSplice(bc *backendConn) {
	sess.mu.Lock()
	if sess.closed {
		sess.mu.Unlock()
		bc.raw.Close()
		sess.end()
		return
	}
	sess.spliced = true
	sess.bconn = bc.raw
	sess.mu.Unlock()

	fail := func(reason string) {
		sess.sp.endReason = reason
		bc.raw.Close()
		sess.end()
	}
	// The backend's login reply is in bw; flush it with nothing else.
	if err := sess.bw.Flush(); err != nil {
		fail("client write: " + err.Error())
		return
	}
	sess.raw.SetDeadline(time.Time{})
	bc.raw.SetDeadline(time.Time{})

	// Pipelined client bytes first, in order (RFC 2449 §6.6). They were
	// read along with the login and must not be lost.
	if n := sess.br.Buffered(); n > 0 {
		p, _ := sess.br.Peek(n)
		if _, err := bc.conn.Write(p); err != nil {
			fail("backend write: " + err.Error())
			return
		}
		sess.sp.in.Add(int64(n))
	}
	// A backend should not speak after +OK unasked, but if it did, the
	// client gets those bytes too.
	if n := bc.br.Buffered(); n > 0 {
		p, _ := bc.br.Peek(n)
		if _, err := sess.conn.Write(p); err != nil {
			fail("client write: " + err.Error())
			return
		}
		sess.sp.out.Add(int64(n))
	}
	sess.srv.putReader(bc.br)
	bc.br = nil
	sess.releaseBuffers()

	idle := sess.srv.cfg.idleTimeout()
	sess.touch()
	sess.mu.Lock()
	sess.sp.running = 2
	sess.sp.timer = time.AfterFunc(idle, sess.idleCheck)
	sess.mu.Unlock()
	go clientToBackend(sess, bc)
	go backendToClient(sess, bc)
}

// clientToBackend copies the client's commands to the backend.
func clientToBackend(sess *session, bc *backendConn) {
	err := sess.pump(bc.conn, sess.conn, &sess.sp.in)
	if err == nil {
		// The client half-closed: tell the backend, which will close
		// in turn (a POP3 server ends the session at EOF without
		// entering UPDATE); its remaining output still reaches the
		// client.
		closeWrite(bc.conn)
	} else {
		// The client is gone or the backend refused its bytes: end
		// both sides now.
		bc.raw.Close()
		sess.raw.Close()
	}
	sess.pumpDone(bc, true, err)
}

// backendToClient copies the backend's output to the client. When the
// backend closes, the client connection is closed too: a POP3 server that
// closes has ended the session (after QUIT, or on its own timeout).
func backendToClient(sess *session, bc *backendConn) {
	err := sess.pump(sess.conn, bc.conn, &sess.sp.out)
	if err == nil {
		// Orderly: close_notify on TLS, then FIN.
		sess.conn.Close()
	} else {
		sess.raw.Close()
	}
	sess.pumpDone(bc, false, err)
}

// pumpDone records the end of one direction; the second one ends the
// session.
func (sess *session) pumpDone(bc *backendConn, client bool, err error) {
	sess.mu.Lock()
	if client {
		sess.sp.cerr = err
	} else {
		sess.sp.berr = err
	}
	sess.sp.running--
	last := sess.sp.running == 0
	if last {
		sess.sp.finished = true
		sess.sp.timer.Stop()
	}
	idledOut := sess.sp.idledOut
	sess.mu.Unlock()
	if !last {
		return
	}
	if idledOut {
		sess.sp.endReason = "idle timeout"
	} else {
		sess.sp.endReason = endReason(sess.sp.cerr, sess.sp.berr)
	}
	bc.raw.Close()
	sess.end()
}

func endReason(cerr, berr error) string {
	switch {
	case cerr == nil && berr == nil:
		return "client closed"
	case berr == nil:
		return "backend closed"
	case errors.Is(cerr, net.ErrClosed) && errors.Is(berr, net.ErrClosed):
		return "closed"
	case cerr != nil && !errors.Is(cerr, net.ErrClosed):
		return "client: " + cerr.Error()
	default:
		return "backend: " + berr.Error()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// touch records activity for the idle timer.
func (sess *session) touch() {
	sess.sp.last.Store(int64(time.Since(sess.start)))
}

// idleCheck runs from the idle timer: it closes a session that saw no byte
// either way for idle_timeout, and otherwise re-arms itself for the moment
// the session would become idle. One timer, no goroutine, no per-read
// deadline.
func (sess *session) idleCheck() {
	idle := sess.srv.cfg.idleTimeout()
	quiet := time.Since(sess.start) - time.Duration(sess.sp.last.Load())
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.sp.finished {
		return
	}
	if quiet < idle {
		sess.sp.timer.Reset(idle - quiet)
		return
	}
	sess.sp.idledOut = true
	sess.log.Info("idle timeout, closing both sides without QUIT", "idle", idle)
	sess.closeLocked()
}

// pump copies src to dst until src ends (nil) or an error (returned).
func (sess *session) pump(dst, src net.Conn, count *atomic.Int64) error {
	if tc, ok := src.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			return sess.pumpRaw(dst, rc, count)
		}
	}
	return sess.pumpBuffered(dst, src, count)
}

// pumpRaw copies from a plain TCP socket. It waits for readability with no
// buffer held and borrows a pooled buffer only for a read that has data.
func (sess *session) pumpRaw(dst net.Conn, rc syscall.RawConn, count *atomic.Int64) error {
	pool := &sess.srv.bufs
	var (
		buf  *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		if buf == nil {
			buf = pool.get()
		}
		for {
			n, rerr = syscall.Read(int(fd), *buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			// Nothing to read: give the buffer back while we wait.
			pool.put(buf)
			buf = nil
			return false
		}
		return true
	}
	defer func() {
		if buf != nil {
			pool.put(buf)
		}
	}()
	for {
		if err := rc.Read(read); err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
		if n <= 0 {
			return nil
		}
		sess.touch()
		count.Add(int64(n))
		if _, err := dst.Write((*buf)[:n]); err != nil {
			return err
		}
	}
}

// pumpBuffered copies from a connection that buffers internally (TLS). A
// read that fills the small buffer means more is pending, and the next read
// borrows a large buffer; a read that does not fill the large one means the
// source ran dry, and the buffer goes back before the next read can block.
func (sess *session) pumpBuffered(dst, src net.Conn, count *atomic.Int64) error {
	pool := &sess.srv.bufs
	small := make([]byte, smallBufSize)
	var big *[]byte
	defer func() {
		if big != nil {
			pool.put(big)
		}
	}()
	buf := small
	for {
		n, err := src.Read(buf)
		if n > 0 {
			sess.touch()
			count.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		switch {
		case big == nil && n == len(buf):
			big = pool.get()
			buf = *big
		case big != nil && n < len(buf) && n < tlsRecordPlaintext:
			pool.put(big)
			big = nil
			buf = small
		}
	}
}

// tlsRecordPlaintext is the most a tls.Conn returns from one Read: one
// record's plaintext. A read of exactly this much may have more behind it.
const tlsRecordPlaintext = 16 << 10
