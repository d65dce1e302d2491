package proxy

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
)

// parker waits for readability of idle splice directions with one epoll
// instance and one goroutine, so that an idle logged-in session holds no
// goroutine and no buffer. A parked direction is registered one-shot; when
// its socket becomes readable (data, EOF or error), a fresh goroutine
// resumes the copy.
//
// The sockets stay registered with Go's own poller too; an fd may sit in
// several epoll sets, and Go's edge-triggered wakeups for a socket nobody
// waits on are harmless.
type parker struct {
	epfd   int
	mu     sync.Mutex
	byFD   map[int32]*direction
	closed atomic.Bool
	done   chan struct{}
	parked atomic.Int64 // directions parked right now
}

func newParker() (*parker, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	p := &parker{epfd: fd, byFD: make(map[int32]*direction), done: make(chan struct{})}
	go p.loop()
	return p, nil
}

func (p *parker) close() {
	if p.closed.Swap(true) {
		return
	}
	<-p.done
	syscall.Close(p.epfd)
}

// loop dispatches readiness events until the parker is closed.
func (p *parker) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for !p.closed.Load() {
		// A timeout rather than a wakeup fd: close is rare and may wait.
		n, err := syscall.EpollWait(p.epfd, events, 200)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			d := p.byFD[ev.Fd]
			p.mu.Unlock()
			if d != nil {
				d.wake(uint32(ev.Pad))
			}
		}
	}
}

// arm registers d's socket one-shot for readability. It runs with the
// session's mutex held.
func (p *parker) arm(d *direction) error {
	rc, err := d.sock.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	// Control holds the fd open: it cannot be closed and reused by
	// another connection while we register it.
	err = rc.Control(func(fd uintptr) {
		key := int32(fd)
		p.mu.Lock()
		p.byFD[key] = d
		p.mu.Unlock()
		d.fd = key
		ev := syscall.EpollEvent{
			Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
			Fd:     key,
			Pad:    int32(d.gen),
		}
		op := syscall.EPOLL_CTL_MOD
		if !d.registered {
			op = syscall.EPOLL_CTL_ADD
		}
		cerr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
		switch {
		case op == syscall.EPOLL_CTL_ADD && errors.Is(cerr, syscall.EEXIST):
			cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		case op == syscall.EPOLL_CTL_MOD && errors.Is(cerr, syscall.ENOENT):
			cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		p.forgetFD(d)
		return err
	}
	d.registered = true
	p.parked.Add(1)
	return nil
}

// unparked is called when a parked direction runs again or is finished.
func (p *parker) unparked() { p.parked.Add(-1) }

// forget removes d's registration, if its socket is still open (a closed
// socket left the epoll set by itself).
func (p *parker) forget(d *direction) {
	if !d.registered {
		return
	}
	d.registered = false
	p.forgetFD(d)
	if rc, err := d.sock.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
}

func (p *parker) forgetFD(d *direction) {
	p.mu.Lock()
	if p.byFD[d.fd] == d {
		delete(p.byFD, d.fd)
	}
	p.mu.Unlock()
}
