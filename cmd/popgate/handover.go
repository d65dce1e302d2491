package main

import (
	"bufio"
	"context"
	endian "encoding/binary" // "binary" is the process tests' build
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/popgate/popgate/tlsconf"
	"golang.org/x/sys/unix"
)

// An upgrade (SIGUSR2) hands the listening sockets to a new process, as
// nginx's binary upgrade and HAProxy's seamless reload do: popgate starts
// its executable again as a child that inherits every listening socket
// (the POP3 listeners, the admin address, the ACME answerers), waits until
// the child serves, then stops accepting and drains as on SIGTERM. The
// sockets are never closed, so the kernel queues every connection until
// one of the two processes accepts it: no client is refused. A child that
// fails (its configuration does not load, it crashes, it is not ready in
// upgradeTimeout) is ended, and the old process serves on.
//
// The sockets travel as os/exec's ExtraFiles, described by one
// environment variable, upgradeEnv. github.com/cloudflare/tableflip does
// the same and more, but is built around its own reload signal and PID
// file, and keeps a parent/child protocol for things popgate has no use
// for; under systemd, the new main PID is announced with sd_notify
// MAINPID= (Type=notify), which tableflip leaves to the program anyway.
// The hand-written version is this file.
//
// Socket activation (LISTEN_FDS, sd_listen_fds(3)) uses the same path:
// the sockets systemd passes are taken by address.

// inheritedTicketKeys are the session ticket keys of the process this one
// replaces, for the first [tlsconf.Tickets] built (build.go); set by
// cmdRun before it builds anything.
var inheritedTicketKeys []tlsconf.TicketKey

// upgradeEnv describes the sockets a child of an upgrade inherits: JSON,
// an upgradeSpec.
const upgradeEnv = "POPGATE_UPGRADE"

// upgradeTimeout is how long the child of an upgrade has to serve: load
// its configuration and certificates and take over every listener.
const upgradeTimeout = 2 * time.Minute

// upgradeSettle is how long the new process of an upgrade must live on
// after it said it serves before this one hands over.
const upgradeSettle = 500 * time.Millisecond

// upgradeSpec is upgradeEnv's content.
type upgradeSpec struct {
	// Sockets maps a socket's key (socketKey) to its descriptor.
	Sockets map[string]int `json:"sockets"`
	// Ready is the descriptor of a pipe's write end: the child writes
	// readyLine to it once it serves.
	Ready int `json:"ready"`
	// Parent is the PID of the process the child replaces.
	Parent int `json:"parent"`
	// Tickets, when not 0, is the descriptor of a pipe that holds the
	// session ticket keys of the parent's local source
	// (encodeTicketKeys), so that tickets it issued resume on the child.
	// A pipe and not the environment: anyone who can read the
	// environment (ps e, /proc/PID/environ) must not get them.
	Tickets int `json:"tickets,omitempty"`
	// Activated: sockets among them are systemd's (socket activation),
	// which outlive every popgate process.
	Activated bool `json:"activated,omitempty"`
}

// encodeTicketKeys writes keys as the Tickets pipe carries them: for each,
// when it was made (Unix nanoseconds, 8 octets, big endian) and the key.
func encodeTicketKeys(keys []tlsconf.TicketKey) []byte {
	b := make([]byte, 0, len(keys)*40)
	for _, k := range keys {
		b = endian.BigEndian.AppendUint64(b, uint64(k.Made.UnixNano()))
		b = append(b, k.Key[:]...)
	}
	return b
}

func decodeTicketKeys(b []byte) ([]tlsconf.TicketKey, error) {
	if len(b)%40 != 0 || len(b) > tlsconf.MaxTicketKeys*40 {
		return nil, fmt.Errorf("session ticket keys: %d octets", len(b))
	}
	var keys []tlsconf.TicketKey
	for ; len(b) > 0; b = b[40:] {
		k := tlsconf.TicketKey{Made: time.Unix(0, int64(endian.BigEndian.Uint64(b)))}
		copy(k.Key[:], b[8:40])
		keys = append(keys, k)
	}
	return keys, nil
}

const readyLine = "ready\n"

// Socket keys: what a socket is for, and the address the configuration
// gives it. A POP3 listener's is its ListenConfig.key.
func pop3Key(key string) string   { return "pop3 " + key }
func adminKey(addr string) string { return "admin " + addr }
func acmeKey(addr string) string  { return "acme " + addr }

// inherited holds the listening sockets this process got at start, from
// the process it replaces or from systemd, until the configuration asks
// for them.
type inherited struct {
	mu      sync.Mutex
	byKey   map[string]net.Listener // from an upgrade
	systemd []net.Listener          // LISTEN_FDS: taken by address
	ready   *os.File                // an upgrade's ready pipe; nil when done or not an upgrade
	// activated: a listener took a socket systemd holds too.
	activated bool
	parent    int // the PID of the process an upgrade replaces
	// tickets are the session ticket keys of the process an upgrade
	// replaces.
	tickets []tlsconf.TicketKey
}

// inheritSockets takes the sockets passed to this process (upgradeEnv, or
// systemd's LISTEN_FDS) and unsets the variables, so that no child of its
// own sees them. It returns nil when there are none.
func inheritSockets() (*inherited, error) {
	h := &inherited{byKey: map[string]net.Listener{}}
	if v, ok := os.LookupEnv(upgradeEnv); ok {
		os.Unsetenv(upgradeEnv)
		var spec upgradeSpec
		if err := json.Unmarshal([]byte(v), &spec); err != nil {
			return nil, fmt.Errorf("%s: %w", upgradeEnv, err)
		}
		if spec.Parent != os.Getppid() {
			// Not from this process's parent: a variable left in
			// the environment (a shell, a copied unit), whose
			// descriptors are whatever this process has under
			// those numbers. Ignored, as sd_listen_fds(3) ignores
			// a LISTEN_PID that is not the process's own.
			return systemdOnly(h)
		}
		h.parent = spec.Parent
		h.activated = spec.Activated
		if spec.Ready < 3 || spec.Tickets != 0 && spec.Tickets < 3 {
			return nil, fmt.Errorf("%s: descriptors below 3 are stdin, stdout and stderr", upgradeEnv)
		}
		if err := spec.checkDistinct(); err != nil {
			return nil, err
		}
		h.ready = os.NewFile(uintptr(spec.Ready), "upgrade-ready")
		if spec.Tickets != 0 {
			f := os.NewFile(uintptr(spec.Tickets), "upgrade-tickets")
			b, err := io.ReadAll(io.LimitReader(f, tlsconf.MaxTicketKeys*40+1))
			f.Close()
			if err == nil {
				h.tickets, err = decodeTicketKeys(b)
			}
			clear(b)
			if err != nil {
				h.closeAll()
				return nil, fmt.Errorf("inherited %w", err)
			}
		}
		for key, fd := range spec.Sockets {
			if fd < 3 {
				h.closeAll()
				return nil, fmt.Errorf("%s: socket %s on descriptor %d, which is stdin, stdout or stderr", upgradeEnv, key, fd)
			}
			ln, err := fileListener(fd, key)
			if err != nil {
				h.closeAll()
				return nil, err
			}
			h.byKey[key] = ln
		}
	}
	return systemdOnly(h)
}

// closeOnExecAll marks every descriptor from 3 on close-on-exec. Go opens
// its own so; one this process got from whoever started it without the
// flag (a shell's redirection, a supervisor's pipe) would otherwise pass
// to the new process of every upgrade, and from it to the next. Called
// once the sockets passed on purpose are taken (inheritSockets), which
// hold close-on-exec duplicates.
func closeOnExecAll() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return // no /proc: as before
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// systemdOnly adds systemd's sockets (LISTEN_FDS) to h, and returns nil
// when h then holds nothing.
func systemdOnly(h *inherited) (*inherited, error) {
	lns, err := systemdListeners()
	if err != nil {
		h.closeAll()
		return nil, err
	}
	h.systemd = lns
	if h.ready == nil && len(h.byKey) == 0 && len(h.systemd) == 0 {
		return nil, nil
	}
	return h, nil
}

// checkDistinct reports a descriptor the spec names twice: two owners
// would close it, the second one whatever took its number meanwhile.
func (s *upgradeSpec) checkDistinct() error {
	seen := map[int]string{s.Ready: "the ready pipe"}
	named := func(fd int, what string) error {
		if prev, ok := seen[fd]; ok {
			return fmt.Errorf("%s: descriptor %d named twice (%s and %s)", upgradeEnv, fd, prev, what)
		}
		seen[fd] = what
		return nil
	}
	if s.Tickets != 0 {
		if err := named(s.Tickets, "the ticket key pipe"); err != nil {
			return err
		}
	}
	for key, fd := range s.Sockets {
		if err := named(fd, "socket "+key); err != nil {
			return err
		}
	}
	return nil
}

// systemdListeners returns the sockets of socket activation
// (sd_listen_fds(3)): LISTEN_FDS descriptors from 3 on, meant for this
// process when LISTEN_PID is its PID.
func systemdListeners() ([]net.Listener, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	if fds == "" || pid != strconv.Itoa(os.Getpid()) {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a number of sockets", fds)
	}
	var lns []net.Listener
	for fd := 3; fd < 3+n; fd++ {
		ln, err := fileListener(fd, "LISTEN_FDS")
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("%w (popgate takes ListenStream= TCP sockets only, with Accept=no)", err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// fileListener turns descriptor fd into a listener and closes fd (the
// listener holds a duplicate).
func fileListener(fd int, what string) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), what)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %d (%s): %w", fd, what, err)
	}
	if _, ok := ln.(*net.TCPListener); !ok {
		ln.Close()
		return nil, fmt.Errorf("inherited socket %d (%s) is not a TCP listener", fd, what)
	}
	return ln, nil
}

// take returns the inherited socket for key, or else one inherited or of
// systemd's whose address is addr, or nil.
func (h *inherited) take(key, addr string) net.Listener {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ln := h.byKey[key]; ln != nil {
		delete(h.byKey, key)
		return ln
	}
	// The same address in another role (a POP3 address that is now the
	// admin one) or spelt otherwise (":110" for "0.0.0.0:110"): the old
	// process still listens on that socket until it hands over, so a new
	// one could not be bound, and the upgrade would fail with "address
	// already in use". A socket is a socket; its role is what this
	// process makes of it.
	for k, ln := range h.byKey {
		if sameAddress(ln.Addr(), addr) {
			delete(h.byKey, k)
			return ln
		}
	}
	for i, ln := range h.systemd {
		if sameAddress(ln.Addr(), addr) {
			h.systemd = slices.Delete(h.systemd, i, i+1)
			h.activated = true
			return ln
		}
	}
	return nil
}

// sameAddress reports whether a socket bound to a serves the configured
// address addr: the same port (not 0), and the same IP or, for a
// configured host that is empty or unspecified, any unspecified one.
func sameAddress(a net.Addr, addr string) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != strconv.Itoa(ta.Port) || ta.Port == 0 {
		return false
	}
	if host == "" {
		return ta.IP.IsUnspecified()
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil {
		// A name: the socket is bound to one of its addresses.
		var err error
		if ips, err = net.LookupIP(host); err != nil {
			return false
		}
	}
	for _, ip := range ips {
		if ip.IsUnspecified() && ta.IP.IsUnspecified() || ip.Equal(ta.IP) {
			return true
		}
	}
	return false
}

// closeUnused closes the inherited sockets no listener of the
// configuration took, and says which.
func (h *inherited) closeUnused(log *slog.Logger) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, ln := range h.byKey {
		log.Warn("inherited socket not in the configuration; closed", "socket", key, "address", ln.Addr().String())
		ln.Close()
	}
	for _, ln := range h.systemd {
		log.Warn("socket from systemd (LISTEN_FDS) matches no address of the configuration; not served", "address", ln.Addr().String())
		ln.Close()
	}
	clear(h.byKey)
	h.systemd = nil
}

func (h *inherited) closeAll() {
	for _, ln := range h.byKey {
		ln.Close()
	}
	for _, ln := range h.systemd {
		ln.Close()
	}
	if h.ready != nil {
		h.ready.Close()
	}
}

// socketActivated reports whether a listener serves a socket systemd
// passed (and keeps open after this process has exited).
func (h *inherited) socketActivated() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.activated
}

// upgrading reports whether this process is the child of an upgrade that
// has not told its parent it serves yet.
func (h *inherited) upgrading() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ready != nil
}

// abandonReady closes an upgrade's ready pipe without the ready line: the
// parent serves on.
func (h *inherited) abandonReady() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ready != nil {
		h.ready.Close()
		h.ready = nil
	}
}

// signalReady tells the parent of an upgrade that this process serves.
func (h *inherited) signalReady() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ready == nil {
		return nil
	}
	_, err := h.ready.WriteString(readyLine)
	h.ready.Close()
	h.ready = nil
	return err
}

// listen returns the socket for addr: the one inherited under key, if
// any, or a new one.
func (r *runner) listen(key, addr string) (net.Listener, error) {
	if ln := r.inherit.take(key, addr); ln != nil {
		r.log.Info("serving an inherited socket", "socket", key, "address", ln.Addr().String())
		return ln, nil
	}
	return net.Listen("tcp", addr)
}

// upgradeExecutable is os.Executable; tests set another.
var upgradeExecutable = os.Executable

// upgrade starts this program's executable again with the listening
// sockets, waits until the new process serves, and then makes this one
// drain (r.handedOver, then stopRun). The caller holds r.upgradeBusy.
// On any failure the new process is
// ended and this one serves on; the error says why.
func (r *runner) upgrade(ctx context.Context) error {
	exe, err := upgradeExecutable() // the path, also when the file was replaced
	if err != nil {
		return fmt.Errorf("finding the executable: %w", err)
	}
	r.log.Info("upgrade: starting the new process with the listening sockets", "executable", exe, "pid", os.Getpid())

	files, spec, err := r.socketFiles()
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	extra := append(files, pw)
	// Until the new process serves, this one seals tickets only with the
	// keys it hands over, which resume there; after a handover it seals
	// none it has not handed over either.
	tickets := r.current().tickets
	release := tickets.HoldRotation()
	defer func() {
		if !r.handedOver.Load() {
			release()
		}
	}()
	if keys := tickets.LocalKeys(); len(keys) > 0 {
		// At most 32 keys of 40 octets: the pipe's buffer holds them,
		// and the write does not wait for the child.
		kr, kw, err := os.Pipe()
		if err != nil {
			pw.Close()
			return err
		}
		b := encodeTicketKeys(keys)
		_, err = kw.Write(b)
		clear(b)
		kw.Close()
		defer kr.Close()
		if err != nil {
			pw.Close()
			return fmt.Errorf("session ticket keys: %w", err)
		}
		spec.Tickets = 3 + len(extra)
		extra = append(extra, kr)
	}
	spec.Ready = 3 + len(files)
	spec.Parent = os.Getpid()
	spec.Activated = r.inherit.socketActivated()
	js, err := json.Marshal(spec)
	if err != nil {
		pw.Close()
		return err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = extra
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, upgradeEnv+"=")
	}), upgradeEnv+"="+string(js))
	reloads := r.reloads.Load()
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("starting %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan error, 1)
	garbled := errors.New("the new process wrote something else than it serves on its ready pipe (another build of popgate?)")
	go func() {
		// The ready line and no more: a process that writes without
		// end is not buffered.
		line, err := bufio.NewReader(io.LimitReader(pr, int64(len(readyLine)))).ReadString('\n')
		if line != "" && line != readyLine {
			err = garbled
		}
		ready <- err
	}()
	fail := func(why error) error {
		// Only this upgrade's own child, by its PID.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				why = fmt.Errorf("%w (new process: %v)", why, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		return why
	}
	exitedEarly := func(werr error) error {
		return fmt.Errorf("the new process exited before it served (%v); its log lines above say why", werr)
	}
	timer := time.NewTimer(upgradeTimeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if errors.Is(err, garbled) {
			return fail(err)
		}
		if err != nil {
			// The pipe closed without a word: the child exited (its
			// own log says why) or is about to.
			select {
			case werr := <-exited:
				return exitedEarly(werr)
			case <-time.After(10 * time.Second):
				return fail(errors.New("the new process closed its ready pipe without serving"))
			}
		}
	case werr := <-exited:
		return exitedEarly(werr)
	case <-timer.C:
		return fail(fmt.Errorf("the new process did not serve within %v", upgradeTimeout))
	case <-ctx.Done():
		return fail(errors.New("shutting down"))
	}
	// A process that writes the ready line and dies at once (a crash in
	// its first moments of serving, a wrapper that reports for it) would
	// leave nothing serving once this one drains: it must still be there
	// a moment later. A shorter life than upgradeSettle is caught here;
	// the sockets stay open either way, so no client is refused meanwhile.
	settle := time.NewTimer(upgradeSettle)
	defer settle.Stop()
	select {
	case werr := <-exited:
		return fmt.Errorf("the new process exited just after it said it served (%v); its log lines above say why", werr)
	case <-settle.C:
	case <-ctx.Done():
		return fail(errors.New("shutting down"))
	}
	pid := cmd.Process.Pid
	// Under r.mu, which shutdown holds when it sets draining and reads
	// handedOver: either it drains as after a handover, or the new
	// process is ended here. A SIGTERM while the new process started
	// means stop: it must not serve on, an orphan holding the ports.
	r.mu.Lock()
	if r.draining.Load() {
		r.mu.Unlock()
		return fail(errors.New("this process began to shut down while the new one started"))
	}
	r.handedOver.Store(true)
	r.mu.Unlock()
	if certs := r.current().certs; certs != nil {
		// The new process renews from now on: a renewal due while this
		// one drains would be ordered twice, against the CA's rate
		// limits. A reload can no longer bring a new ACME client: it is
		// refused from now on (apply).
		certs.StopOrders()
	}
	if r.pidFile != "" {
		// Now, not when the new process is ready: until here this
		// one could still turn it down, and popgate upgrade reports
		// success when the file names another process.
		if err := writePIDFile(r.pidFile, pid); err != nil {
			r.log.Warn("upgrade: could not write the new process's PID to the PID file; popgate upgrade cannot find it", "file", r.pidFile, "new_pid", pid, "err", err)
		}
	}
	// The new process is the service's main process from now on: it
	// gets "systemctl reload", and systemd no longer waits for this one.
	r.notify(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=upgraded; pid %d serves, pid %d drains", pid, pid, os.Getpid()))
	r.log.Info("upgrade: the new process serves; this one stops accepting and drains", "new_pid", pid, "sessions", r.srv.Sessions())
	if r.reloads.Load() != reloads {
		// A reload (systemctl reload signals the main process, this
		// one until now) while the new process started: it may have
		// read the file before the change, which would be lost here.
		r.log.Info("upgrade: a reload came while the new process started; passed on to it", "new_pid", pid)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			r.log.Warn("upgrade: could not pass the reload on; reload the new process", "new_pid", pid, "err", err)
		}
	}
	go func() {
		// Reaped while this one drains; after that, init reaps it.
		if err := <-exited; err != nil {
			r.log.Warn("upgrade: the new process exited", "new_pid", pid, "err", err)
		}
	}()
	r.stopRun()
	return nil
}

// socketFiles returns a duplicate of every listening socket, in the order
// of ExtraFiles, and the spec that names them.
func (r *runner) socketFiles() ([]*os.File, upgradeSpec, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	spec := upgradeSpec{Sockets: map[string]int{}}
	var files []*os.File
	add := func(key string, ln net.Listener) error {
		f, err := dupSocket(ln)
		if err != nil {
			return fmt.Errorf("socket %s (%s): %w", key, ln.Addr(), err)
		}
		spec.Sockets[key] = 3 + len(files)
		files = append(files, f)
		return nil
	}
	for key, b := range r.lns {
		if err := add(pop3Key(key), b.ln); err != nil {
			return files, spec, err
		}
	}
	if r.adminLn != nil {
		if err := add(adminKey(r.adminAddr), r.adminLn.ln); err != nil {
			return files, spec, err
		}
	}
	for addr, ln := range r.acmeLns {
		if err := add(acmeKey(addr), ln); err != nil {
			return files, spec, err
		}
	}
	return files, spec, nil
}

// dupSocket returns a duplicate of ln's descriptor for ExtraFiles. Not
// (*net.TCPListener).File: os/exec takes the descriptor with Fd, which for
// such a file switches the socket to blocking mode, and with it the
// original, which every process shares; an Accept of this process would
// then block in the kernel, where closing the listener no longer ends it,
// and a drain after a failed upgrade would never finish.
func dupSocket(ln net.Listener) (*os.File, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup: %w", derr)
	}
	return os.NewFile(uintptr(nfd), ln.Addr().String()), nil
}

// watchUpgrades starts an upgrade at every SIGUSR2 on sig until ctx is
// done; an upgrade ends when r.ctx is. One runs at a time; a signal during one, or during the drain
// after one, is ignored and logged.
func (r *runner) watchUpgrades(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			if r.draining.Load() {
				r.log.Warn("upgrade signal ignored", "reason", "this process drains; signal the new one")
				continue
			}
			if !r.upgradeBusy.CompareAndSwap(false, true) {
				r.log.Warn("upgrade signal ignored", "reason", "an upgrade is under way already; its outcome follows in the log")
				continue
			}
			if r.handedOver.Load() {
				// The upgrade that handed over cleared upgradeBusy
				// after setting this, and the drain has not begun
				// yet: a second upgrade would start a second new
				// process, and its failure would write this
				// process's PID over the new one's. The mark
				// goes again: a later signal is told the same.
				r.upgradeBusy.Store(false)
				r.log.Warn("upgrade signal ignored", "reason", "this process has handed over and drains; signal the new one")
				continue
			}
			go func() {
				defer r.upgradeBusy.Store(false)
				if err := r.upgrade(r.ctx); err != nil {
					r.log.Error("upgrade failed; this process keeps serving", "err", err)
					if r.pidFile != "" {
						// A new file: popgate upgrade sees the
						// failure in it.
						if err := writePIDFile(r.pidFile, os.Getpid()); err != nil {
							r.log.Warn("could not write the PID file", "file", r.pidFile, "err", err)
						}
					}
				}
			}()
		}
	}
}
