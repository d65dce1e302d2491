package proxy

import (
	"bufio"
	"crypto/tls"
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
	// bigBufSize is borrowed from the pool while data flows from a TLS
	// source; it holds a full TLS record's plaintext (16 KiB), the most
	// one read returns, and then some.
	bigBufSize = 32 << 10
	// rawBufSize is borrowed while data flows from a plain TCP source
	// (the backend, mostly). Reads this large, each written to a TLS
	// client in one batch of eight records, took pop3bench's CPU per GB
	// relayed from 0.87-1.00 s to 0.76-0.85 s; 32 and 64 KiB made no
	// measurable difference, 256 KiB none beyond 128 (issue 13). A
	// session holds this and a batch buffer only while data flows.
	rawBufSize = 128 << 10
	// batchBufSize holds the TLS records of one rawBufSize plaintext
	// write to the client (see recordConn.beginBatch): crypto/tls cuts
	// it into records of at most 16 KiB, each with a header, content
	// type and tag (22 octets in TLS 1.3, 29 in TLS 1.2 with AES-GCM);
	// smaller records early in a connection (dynamic record sizing)
	// may make it flush once more.
	batchBufSize = rawBufSize + 1024
)

// bufPool hands out *[]byte of size octets (bigBufSize when zero).
type bufPool struct {
	p        sync.Pool
	size     int
	borrowed atomic.Int64 // buffers out of the pool right now
}

func (bp *bufPool) get() *[]byte {
	bp.borrowed.Add(1)
	if b, ok := bp.p.Get().(*[]byte); ok {
		return b
	}
	size := bp.size
	if size == 0 {
		size = bigBufSize
	}
	b := make([]byte, size)
	return &b
}

func (bp *bufPool) put(b *[]byte) {
	bp.borrowed.Add(-1)
	bp.p.Put(b)
}

// parkAfter is how long a splice direction waits for data with its own
// goroutine before it parks (see parker). Tests shorten Server.parkAfter.
const parkAfter = time.Second

// splice is the state of a logged-in session's copy.
type splice struct {
	in        atomic.Int64 // client → backend bytes
	out       atomic.Int64 // backend → client bytes
	last      atomic.Int64 // time of the last activity, ns since session start
	endReason string       // why the splice ended, for the log

	// Guarded by session.mu.
	dirs     [2]*direction // client → backend, backend → client
	running  int           // directions not done
	cerr     error         // how client → backend ended (nil: client EOF)
	berr     error         // how backend → client ended (nil: backend EOF)
	timer    *time.Timer   // the idle timer, re-armed by itself
	finished bool          // the splice is over; the timer must not re-arm
	idledOut bool          // the idle timer closed the session
}

// dirState is where a direction is in its life.
type dirState int

const (
	dirRunning dirState = iota // a goroutine copies
	dirParked                  // waiting in the parker, no goroutine
	dirDone                    // finished
)

// direction is one half of a splice.
type direction struct {
	sess      *session
	toBackend bool
	src, dst  net.Conn
	count     *atomic.Int64
	raw       *net.TCPConn // src itself when it is a plain TCP socket
	rec       *recordConn  // the socket under src when src is TLS over TCP
	wrec      *recordConn  // the socket under dst when dst is TLS over TCP
	sock      *net.TCPConn // the socket to wait on when parked; nil: never park
	small     []byte       // read buffer of a TLS source, only while running
	waited    bool         // the direction has waited for data before

	// Guarded by session.mu.
	state      dirState
	gen        uint32 // parking generation, to ignore stale wakeups
	registered bool   // sock is in the parker's epoll set
	fd         int32  // sock's descriptor when registered
}

func newDirection(sess *session, toBackend bool, src, dst net.Conn, count *atomic.Int64) *direction {
	d := &direction{sess: sess, toBackend: toBackend, src: src, dst: dst, count: count}
	switch c := src.(type) {
	case *net.TCPConn:
		d.raw = c
		d.sock = c
	case *tls.Conn:
		if rc, ok := c.NetConn().(*recordConn); ok {
			d.rec = rc
			d.sock = rc.TCPConn
		}
	}
	if c, ok := dst.(*tls.Conn); ok {
		d.wrec, _ = c.NetConn().(*recordConn)
	}
	if sess.srv.parker == nil {
		d.sock = nil
	}
	return d
}

// errParked ends a direction's goroutine that parked itself.
var errParked = errors.New("parked")

// startSplice hands the session to two goroutines that carry it after the
// login: the bytes the client pipelined behind its login go to the backend
// first, then both directions are copied until either side closes or the
// session is idle for idle_timeout. The last direction to finish ends the
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
	sess.srv.mu.Lock()
	sess.relaying = true
	sess.srv.relaying++
	sess.srv.mu.Unlock()

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
	if err := writeBuffered(bc.conn, sess.br, &sess.sp.in); err != nil {
		fail("backend write: " + err.Error())
		return
	}
	// A backend should not speak after +OK unasked, but if it did, the
	// client gets those bytes too.
	if err := writeBuffered(sess.conn, bc.br, &sess.sp.out); err != nil {
		fail("client write: " + err.Error())
		return
	}
	sess.srv.putReader(bc.br)
	bc.br = nil
	sess.releaseBuffers()

	up := newDirection(sess, true, sess.conn, bc.conn, &sess.sp.in)
	down := newDirection(sess, false, bc.conn, sess.conn, &sess.sp.out)
	idle := sess.cfg.idleTimeout()
	sess.touch()
	sess.mu.Lock()
	sess.sp.dirs = [2]*direction{up, down}
	sess.sp.running = 2
	sess.sp.timer = time.AfterFunc(idle, sess.idleCheck)
	sess.mu.Unlock()
	go down.run()
	// The session goroutine carries the client's side itself: one
	// goroutine start fewer per login. Its stack, grown by the TLS
	// handshake, goes when the direction parks, at its first wait (see
	// readDeadline).
	up.run()
}

// writeBuffered writes to w what br holds buffered, and counts it in n. br
// is left as it was; the caller drops it.
func writeBuffered(w io.Writer, br *bufio.Reader, n *atomic.Int64) error {
	k := br.Buffered()
	if k == 0 {
		return nil
	}
	p, _ := br.Peek(k)
	if _, err := w.Write(p); err != nil {
		return err
	}
	n.Add(int64(k))
	return nil
}

// run copies until the direction ends or parks.
func (d *direction) run() {
	var err error
	if d.raw != nil {
		err = d.copyRaw()
	} else {
		err = d.copyBuffered()
	}
	if err == errParked {
		return
	}
	d.finish(err)
}

// finish does what the end of one direction asks of the other side, and
// ends the session when both are done.
func (d *direction) finish(err error) {
	sess := d.sess
	closedAll := true
	if d.toBackend {
		if err == nil {
			// The client half-closed: tell the backend, which will
			// close in turn (a POP3 server ends the session at EOF
			// without entering UPDATE); its remaining output still
			// reaches the client.
			closeWrite(d.dst)
			closedAll = false
		} else {
			// The client is gone or the backend refused its bytes:
			// end both sides now.
			sess.bconn.Close()
			sess.raw.Close()
		}
	} else {
		// The backend closed: a POP3 server that closes has ended the
		// session (after QUIT, or on its own timeout). Close the
		// client too, orderly when the backend was.
		if err == nil {
			d.dst.Close()
		} else {
			sess.raw.Close()
		}
		sess.bconn.Close()
	}
	sess.dirDone(d, err, closedAll)
}

// dirDone records that d ended with err. When the sockets were closed, a
// parked direction can no longer be woken and is finished here too.
func (sess *session) dirDone(d *direction, err error, socketsClosed bool) {
	sess.mu.Lock()
	if sess.sp.dirs[0] == nil || sess.sp.finished {
		// Not spliced (yet), or already ended.
		sess.mu.Unlock()
		return
	}
	if d != nil {
		sess.recordDirLocked(d, err)
	}
	if socketsClosed {
		sess.finishParkedLocked()
	}
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
	sess.bconn.Close()
	sess.end()
}

func (sess *session) recordDirLocked(d *direction, err error) {
	if d.state == dirDone {
		return
	}
	if d.state == dirParked {
		sess.srv.parker.unparked()
	}
	d.state = dirDone
	if sess.srv.parker != nil {
		sess.srv.parker.forget(d)
	}
	if d.toBackend {
		sess.sp.cerr = err
	} else {
		sess.sp.berr = err
	}
	sess.sp.running--
}

// finishParkedLocked ends the directions that wait in the parker: their
// sockets are closed, so no wakeup will come.
func (sess *session) finishParkedLocked() {
	for _, d := range sess.sp.dirs {
		if d != nil && d.state == dirParked {
			sess.recordDirLocked(d, net.ErrClosed)
		}
	}
}

// park hands d to the parker; its goroutine must return errParked at once
// when park reports true.
func (d *direction) park() bool {
	sess := d.sess
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.closed || d.state != dirRunning {
		return false
	}
	d.gen++
	d.state = dirParked
	if d.small != nil {
		b := d.small
		sess.srv.smallBufs.Put(&b)
		d.small = nil
	}
	if err := sess.srv.parker.arm(d); err != nil {
		d.state = dirRunning
		return false
	}
	return true
}

// wake resumes a parked direction in a new goroutine. It is called by the
// parker with the generation the event was armed with.
func (d *direction) wake(gen uint32) {
	sess := d.sess
	sess.mu.Lock()
	if d.state != dirParked || d.gen != gen {
		sess.mu.Unlock()
		return
	}
	d.state = dirRunning
	sess.srv.parker.unparked()
	sess.mu.Unlock()
	go d.run()
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
	idle := sess.cfg.idleTimeout()
	quiet := time.Since(sess.start) - time.Duration(sess.sp.last.Load())
	sess.mu.Lock()
	if sess.sp.finished {
		sess.mu.Unlock()
		return
	}
	if quiet < idle {
		sess.sp.timer.Reset(idle - quiet)
		sess.mu.Unlock()
		return
	}
	sess.sp.idledOut = true
	sess.mu.Unlock()
	sess.logger().Info("idle timeout, closing both sides without QUIT", "idle", idle)
	sess.close()
}

// readDeadline is when a read of d that finds no data gives up so that d
// can park. The first wait of a splice parks at once. Waiting there with a
// goroutine for parkAfter would, for the client's direction, keep the
// session's goroutine with the stack the TLS handshake grew (about 8 KiB):
// after a burst of logins, those stacks, freed when the directions park,
// stayed resident until the next collection. A client whose next command
// is on its way only costs an epoll registration and a wakeup. Later
// waits, between a reply and the next command of a busy client, keep the
// goroutine for parkAfter, so a session in use does not park and wake on
// every command.
func (d *direction) readDeadline() time.Time {
	if !d.waited {
		d.waited = true
		return aLongTimeAgo
	}
	return time.Now().Add(d.sess.srv.parkAfter)
}

// aLongTimeAgo is a read deadline that has passed: the read returns a
// timeout at once.
var aLongTimeAgo = time.Unix(1, 0)

// copyRaw copies from a plain TCP socket. It waits for readability with no
// buffer held and borrows a pooled buffer only for a read that has data.
// After parkAfter without data it parks.
func (d *direction) copyRaw() error {
	pool := &d.sess.srv.rawBufs
	rc, err := d.raw.SyscallConn()
	if err != nil {
		return err
	}
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
		if d.sock != nil {
			d.raw.SetReadDeadline(d.readDeadline())
		}
		if err := rc.Read(read); err != nil {
			if d.sock != nil && isTimeout(err) && d.park() {
				return errParked
			}
			if isTimeout(err) && !d.sess.isClosed() {
				continue
			}
			return err
		}
		if rerr != nil {
			return rerr
		}
		if n <= 0 {
			return nil
		}
		d.sess.touch()
		d.count.Add(int64(n))
		if err := d.write((*buf)[:n]); err != nil {
			return err
		}
	}
}

// write writes p to dst. Into TLS over TCP, the records of p go to the
// socket in one write (see recordConn.beginBatch), through a batch buffer
// borrowed for this call only.
func (d *direction) write(p []byte) error {
	if d.wrec == nil {
		_, err := d.dst.Write(p)
		return err
	}
	pool := &d.sess.srv.batchBufs
	b := pool.get()
	d.wrec.beginBatch(*b)
	_, err := d.dst.Write(p)
	if ferr := d.wrec.endBatch(); err == nil {
		err = ferr
	}
	pool.put(b)
	return err
}

// copyBuffered copies from a connection that buffers internally (TLS). A
// read that fills the small buffer means more is pending, and the next read
// borrows a large buffer; a read that does not fill the large one means the
// source ran dry, and the buffer goes back before the next read can block.
// After parkAfter without data, at a record boundary, it parks.
func (d *direction) copyBuffered() error {
	srv := d.sess.srv
	if d.small == nil {
		if b, ok := srv.smallBufs.Get().(*[]byte); ok {
			d.small = *b
		} else {
			d.small = make([]byte, smallBufSize)
		}
	}
	var big *[]byte
	defer func() {
		if big != nil {
			srv.bufs.put(big)
		}
	}()
	buf := d.small
	for {
		if d.sock != nil {
			d.src.SetReadDeadline(d.readDeadline())
		}
		n, err := d.src.Read(buf)
		if n > 0 {
			d.sess.touch()
			d.count.Add(int64(n))
			if _, werr := d.dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if n == 0 && isTimeout(err) && !d.sess.isClosed() {
				if big != nil {
					srv.bufs.put(big)
					big = nil
					buf = d.small
				}
				if d.rec != nil && d.rec.atBoundary() && d.park() {
					return errParked
				}
				continue
			}
			return err
		}
		switch {
		case big == nil && n == len(buf):
			big = srv.bufs.get()
			buf = *big
		case big != nil && n < len(buf) && n < tlsRecordPlaintext:
			srv.bufs.put(big)
			big = nil
			buf = d.small
		}
	}
}

// tlsRecordPlaintext is the most a tls.Conn returns from one Read: one
// record's plaintext. A read of exactly this much may have more behind it.
const tlsRecordPlaintext = 16 << 10
