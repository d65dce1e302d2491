package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/popgate/popgate/proxy/internal/pop3"
)

// BackendHealth is what the health checks know of one address of a
// backend, as [Server.BackendHealth] returns it for metrics and the admin
// pages. Only backends with Backend.HealthInterval > 0 are checked.
type BackendHealth struct {
	// Backend is the backend's name.
	Backend string `json:"backend"`
	// Address is host:port; Index is its place in the backend's order:
	// 0 for Backend.Address, i for Fallbacks[i-1].
	Address string `json:"address"`
	Index   int    `json:"index"`
	// Up is false once Backend.HealthFailures checks in a row have
	// failed, and true again after one that passed. An address counts
	// as up until its checks say otherwise.
	Up bool `json:"up"`
	// Since is when Up last changed, or when the checks of the address
	// began.
	Since time.Time `json:"since"`
	// LastCheck is when the last finished check started; zero before
	// the first. Latency is how long it took.
	LastCheck time.Time     `json:"last_check"`
	Latency   time.Duration `json:"latency"`
	// LastErr is why the last check failed; "" when it passed.
	LastErr string `json:"last_error"`
	// Failures counts the failed checks in a row.
	Failures int `json:"failures"`
}

// healthKey names one checked address.
type healthKey struct{ backend, address string }

// addrCheck is the check loop of one address.
type addrCheck struct {
	key     healthKey
	b       atomic.Pointer[Backend] // the settings; a reload swaps them
	changed chan struct{}           // a reload changed b (capacity 1)
	cancel  context.CancelFunc
	down    atomic.Bool // !st.Up, read by logins without the lock
	st      BackendHealth
}

// healthChecks runs the checks of a Server: from its first Serve until
// Shutdown or Close, one goroutine per checked address, which checks
// once at a time. Reconfigure makes them follow the new backends; an
// address that stays keeps its state.
type healthChecks struct {
	mu      sync.Mutex
	running bool
	stopped bool
	ctx     context.Context
	cancel  context.CancelFunc
	checks  map[healthKey]*addrCheck
	wg      sync.WaitGroup
	// view is checks for the logins, which read it without the lock.
	// Both maps are replaced, never changed.
	view atomic.Pointer[map[healthKey]*addrCheck]
}

// startHealthChecks starts the checks, once.
func (s *Server) startHealthChecks() {
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running || h.stopped {
		return
	}
	h.running = true
	h.ctx, h.cancel = context.WithCancel(s.ctx)
	s.updateHealthChecks()
}

// stopHealthChecks ends the checks for good and waits for them: a check
// under way is abandoned.
func (s *Server) stopHealthChecks() {
	h := &s.health
	h.mu.Lock()
	h.stopped = true
	if h.running {
		h.running = false
		h.cancel()
		h.checks = nil
		h.view.Store(nil)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// updateHealthChecks makes the checks follow the current configuration's
// backends. s.health.mu is held.
func (s *Server) updateHealthChecks() {
	h := &s.health
	if !h.running {
		return
	}
	cfg := s.config()
	type want struct {
		b     *Backend
		index int
	}
	wanted := map[healthKey]want{}
	for name, b := range cfg.Backends {
		if b.HealthInterval <= 0 {
			continue
		}
		for i, a := range b.addresses() {
			k := healthKey{name, a}
			if _, dup := wanted[k]; !dup {
				wanted[k] = want{b, i}
			}
		}
	}
	next := make(map[healthKey]*addrCheck, len(wanted))
	for k, c := range h.checks {
		if _, ok := wanted[k]; !ok {
			c.cancel()
		}
	}
	now := time.Now()
	for k, w := range wanted {
		c := h.checks[k]
		if c == nil {
			c = &addrCheck{key: k, changed: make(chan struct{}, 1)}
			c.st = BackendHealth{Backend: k.backend, Address: k.address, Up: true, Since: now}
			c.b.Store(w.b)
			var ctx context.Context
			ctx, c.cancel = context.WithCancel(h.ctx)
			h.wg.Add(1)
			go s.runHealthCheck(ctx, c)
		} else if old := c.b.Swap(w.b); old.HealthInterval != w.b.HealthInterval {
			select {
			case c.changed <- struct{}{}:
			default:
			}
		}
		c.st.Index = w.index
		next[k] = c
	}
	// next is not changed from here on: the next update makes its own.
	h.checks = next
	if len(next) == 0 {
		h.view.Store(nil)
	} else {
		h.view.Store(&next)
	}
}

// runHealthCheck checks c's address every HealthInterval, counted from
// the start of one check to the start of the next; a check that takes
// longer is followed by the next at once.
func (s *Server) runHealthCheck(ctx context.Context, c *addrCheck) {
	defer s.health.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
			if !last.IsZero() {
				timer.Reset(time.Until(last.Add(c.b.Load().HealthInterval)))
			}
			continue
		case <-timer.C:
		}
		b := c.b.Load()
		last = time.Now()
		err := s.checkAddress(ctx, s.config(), b, c.key.address)
		if ctx.Err() != nil {
			return // stopped: the check's failure says nothing
		}
		s.recordHealth(c, b, last, time.Since(last), err)
		timer.Reset(time.Until(last.Add(b.HealthInterval)))
	}
}

// recordHealth counts a check's result and logs a change of state.
func (s *Server) recordHealth(c *addrCheck, b *Backend, start time.Time, took time.Duration, err error) {
	h := &s.health
	h.mu.Lock()
	st := &c.st
	wasUp, since := st.Up, st.Since
	st.LastCheck, st.Latency = start, took
	if err == nil {
		st.LastErr, st.Failures = "", 0
		st.Up = true
	} else {
		st.LastErr = err.Error()
		st.Failures++
		if st.Failures >= b.healthFailures() {
			st.Up = false
		}
	}
	if st.Up != wasUp {
		st.Since = start
	}
	c.down.Store(!st.Up)
	failures := st.Failures
	h.mu.Unlock()
	switch {
	case wasUp && err != nil && failures < b.healthFailures():
		s.log.Debug("backend health check failed", "backend", b.Name, "address", c.key.address, "failures", failures, "err", err)
	case wasUp && err != nil:
		// Logins try it after the backend's addresses that are up.
		s.log.Warn("backend address down", "backend", b.Name, "address", c.key.address, "failures", failures, "err", err)
	case !wasUp && err == nil:
		s.log.Info("backend address up again", "backend", b.Name, "address", c.key.address,
			"down_for", start.Sub(since).Round(time.Millisecond).String(), "latency", took.Round(time.Microsecond).String())
	}
}

// orderByHealth returns backend's addrs with the addresses whose checks
// say they are down moved to the end, in their order: while an address
// is up they are not tried before it, and with none up every address is

// BackendDown reports whether health checks took every address of the
// backend named name down: a pool gives it no new users (see
// [Config.Pools]). A backend whose addresses are not checked is never
// down.
func (s *Server) BackendDown(name string) bool {
	view := s.health.view.Load()
	if view == nil {
		return false
	}
	b := s.config().Backends[name]
	if b == nil {
		return false
	}
	for _, a := range b.addresses() {
		if c := (*view)[healthKey{name, a}]; c == nil || !c.down.Load() {
			return false
		}
	}
	return true
}

// still tried. A failed check never refuses a login on its own.
func (s *Server) orderByHealth(backend string, addrs []string) []string {
	view := s.health.view.Load()
	if view == nil {
		return addrs
	}
	var up, down []string
	for i, a := range addrs {
		if c := (*view)[healthKey{backend, a}]; c != nil && c.down.Load() {
			if down == nil {
				up = append(make([]string, 0, len(addrs)), addrs[:i]...)
			}
			down = append(down, a)
		} else if down != nil {
			up = append(up, a)
		}
	}
	if down == nil {
		return addrs
	}
	return append(up, down...)
}

// BackendHealth returns the state of every checked address, by backend
// name and then in the backend's order. It is empty while no backend has
// health checks, and before the server serves.
func (s *Server) BackendHealth() []BackendHealth {
	h := &s.health
	h.mu.Lock()
	list := make([]BackendHealth, 0, len(h.checks))
	for _, c := range h.checks {
		list = append(list, c.st)
	}
	h.mu.Unlock()
	slices.SortFunc(list, func(a, b BackendHealth) int {
		return cmp.Or(cmp.Compare(a.Backend, b.Backend), cmp.Compare(a.Index, b.Index))
	})
	return list
}

// errTimedOut is a check that HealthTimeout ended.
var errTimedOut = errors.New("health check timed out")

// checkAddress checks addr of b as a login would start: connect, the PROXY
// header when b wants one (a LOCAL one: there is no client), the TLS
// handshake of an implicit TLS backend, the greeting, which must be +OK,
// STLS and its handshake for a starttls backend; then QUIT. It sends no
// credentials. HealthTimeout bounds all of it.
func (s *Server) checkAddress(ctx context.Context, cfg *Config, b *Backend, addr string) (err error) {
	ctx, cancel := context.WithTimeout(ctx, b.healthTimeout())
	defer cancel()
	defer func() {
		if err != nil && (errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) {
			err = fmt.Errorf("%w after %v: %w", errTimedOut, b.healthTimeout(), err)
		}
	}()
	dctx, dcancel := context.WithTimeout(ctx, b.connectTimeout())
	raw, err := dial(dctx, cfg, addr)
	dcancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := &backendClient{b: b, conn: raw, timeout: b.healthTimeout(), ctx: ctx, br: s.getReader(raw)}
	defer func() { s.putReader(c.br) }()
	if v := b.ClientAddress; v == ClientAddressProxyV1 || v == ClientAddressProxyV2 {
		if err := c.writeLocalProxyHeader(v); err != nil {
			return err
		}
	}
	if b.TLS == TLSImplicit {
		if _, err := c.handshake(); err != nil {
			return err
		}
	}
	greeting, err := c.readLine()
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if !pop3.IsOK(greeting) {
		return fmt.Errorf("greeting is not +OK: %.80q", greeting)
	}
	if b.TLS == TLSStartTLS {
		line, err := c.cmd("STLS")
		if err != nil {
			return fmt.Errorf("STLS: %w", err)
		}
		if !pop3.IsOK(line) {
			return fmt.Errorf("STLS refused: %.80q", line)
		}
		if c.br.Buffered() > 0 {
			return errors.New("backend sent data after its STLS reply, before TLS: possible injection")
		}
		if _, err := c.handshake(); err != nil {
			return err
		}
	}
	// A polite goodbye, so that the backend logs no aborted
	// connection. Its answer does not count: the backend has shown it
	// serves.
	if line, err := c.cmd("QUIT"); err != nil || !pop3.IsOK(line) {
		s.log.Debug("backend health check: no +OK to QUIT", "backend", b.Name, "address", addr, "reply", fmt.Sprintf("%.80q", line), "err", err)
	}
	c.conn.Close() // over TLS: with a close_notify
	return nil
}

// writeLocalProxyHeader writes the PROXY header of a connection that
// relays no client (v1 "PROXY UNKNOWN", v2 LOCAL: for health checks,
// haproxy doc/proxy-protocol.txt §2.1 and §2.2).
func (c *backendClient) writeLocalProxyHeader(v ClientAddressMode) error {
	h := &proxyproto.Header{Version: 1, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UNSPEC}
	if v == ClientAddressProxyV2 {
		h = &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	}
	hdr, err := h.Format()
	if err != nil {
		return fmt.Errorf("PROXY header: %w", err)
	}
	c.deadline()
	if _, err := c.conn.Write(hdr); err != nil {
		return fmt.Errorf("PROXY header: %w", err)
	}
	return nil
}
