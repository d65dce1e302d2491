package interop

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Bounds of a flood: how often one connection is opened again after the
// server closed it, how long it waits before that, and how long any
// connection is held at most.
const (
	floodRedials     = 4
	floodRedialDelay = 500 * time.Millisecond
	floodHold        = 2 * time.Minute
)

// flood is an attacker holding silent TCP connections open: perSource
// connections from each source address, each opened again (after
// floodRedialDelay, at most floodRedials times) when the server closes
// it, until stop. Pebble validates from 127.0.0.1, so the sources are
// other loopback addresses (Linux routes all of 127.0.0.0/8 to lo).
type flood struct {
	target string
	stopc  chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open now
	done  bool

	opened   atomic.Int64 // connections that stood
	closedBy atomic.Int64 // of those, closed by the server
	dialErrs atomic.Int64
	errOnce  sync.Once
	firstErr error
}

// startFlood starts the attack and returns once every connection has been
// opened once; t's cleanup stops it.
func startFlood(t *testing.T, target string, perSource int, sources []string) *flood {
	t.Helper()
	f := &flood{target: target, stopc: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	t.Cleanup(func() { f.stop() })
	var first sync.WaitGroup
	for _, src := range sources {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		for range perSource {
			first.Add(1)
			f.wg.Go(func() { f.hold(d, &first) })
		}
	}
	first.Wait()
	t.Logf("flood of %s: %d connections from %d addresses opened", target, perSource*len(sources), len(sources))
	return f
}

// hold is one attacking connection's life: open, wait for the server to
// close it, open again.
func (f *flood) hold(d *net.Dialer, first *sync.WaitGroup) {
	signal := sync.OnceFunc(first.Done)
	defer signal()
	buf := make([]byte, 1)
	for i := 0; i <= floodRedials; i++ {
		if i > 0 {
			select {
			case <-f.stopc:
				return
			case <-time.After(floodRedialDelay):
			}
		}
		c, err := d.Dial("tcp", f.target)
		signal()
		if err != nil {
			f.dialErrs.Add(1)
			f.errOnce.Do(func() { f.firstErr = err })
			continue
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.opened.Add(1)
		_ = c.SetReadDeadline(time.Now().Add(floodHold))
		_, err = c.Read(buf) // silent: only the server's close (or stop) ends it
		byServer := f.untrack(c)
		c.Close()
		if !byServer || isTimeout(err) {
			return
		}
		f.closedBy.Add(1)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func (f *flood) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

// untrack reports whether c was still tracked (false: stop closed it).
func (f *flood) untrack(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.conns[c]
	delete(f.conns, c)
	return ok && !f.done
}

// stop closes every connection, waits for the attack to end and returns a
// summary.
func (f *flood) stop() string {
	f.mu.Lock()
	if !f.done {
		f.done = true
		close(f.stopc)
		for c := range f.conns {
			c.Close()
		}
		clear(f.conns)
	}
	f.mu.Unlock()
	f.wg.Wait()
	s := fmt.Sprintf("%d connections opened, %d of them closed by popgate, %d dials failed", f.opened.Load(), f.closedBy.Load(), f.dialErrs.Load())
	if f.firstErr != nil {
		s += fmt.Sprintf(" (first: %v)", f.firstErr)
	}
	return s
}

// loopbacks returns 127.0.0.first .. 127.0.0.(first+n-1).
func loopbacks(first, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.%d", first+i)
	}
	return out
}
