// Package dovecotrun starts a real Dovecot 2.3 POP3 server on loopback for
// popgate's interop tests and its benchmark, and stops it again.
//
//	d, err := dovecotrun.Start(dovecotrun.Options{
//		Users: map[string]string{"alice@example.com": "secret"},
//	})
//	if err != nil { ... }
//	defer d.Stop()
//	err = d.AddMessage("alice@example.com", msg)
//	// POP3 at d.PlainAddr (STLS offered), POP3S at d.TLSAddr; trust d.CAFile
//	// for d.ServerName (the certificate carries the IP SAN 127.0.0.1 too).
//
// Start runs `dovecot -F -c CONFIG` as a child with a configuration of its
// own (nothing under /etc/dovecot is read), so it needs root: Dovecot drops
// privileges itself. Login processes run as dovenull, auth and the other
// internal services as dovecot, mail processes as "nobody", who owns the
// Maildirs; the dovecot-core package creates those users. Passwords are in a
// passwd-file ({PLAIN}), the userdb is static, mail is in ~/Maildir.
//
// Dovecot quirks the configuration works around:
//   - Listeners are named after Dovecot's built-in ones (pop3, pop3s): a
//     listener of another name would leave the built-in ones binding ports
//     110 and 995 on all addresses.
//   - Dovecot's UNIX sockets live in base_dir, and sun_path holds 107 bytes:
//     a long directory gets a short one under /tmp instead.
//   - anvil's growing authentication penalty per IP is switched off, so a
//     deliberate failed login does not slow every later login down.
//   - Dovecot's unprivileged processes must reach the Maildirs, the
//     passwd-file and the certificates: Dir is made 0755 and every directory
//     above it must be searchable by others.
//   - Dovecot 2.3 cannot switch STLS off for one listener: a second master
//     process (Options.NoTLSInstance, ssl = no) serves NoTLSAddr.
//
// Options.MasterUsers adds Dovecot master users (a second passwd-file with
// master = yes): "user*master" with the master's password, or SASL PLAIN
// with authzid "user" and authcid "master", opens user's mailbox.
package dovecotrun

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/popgate/popgate/internal/certgen"
)

// DefaultServerName is the DNS name in the certificate Start generates.
const DefaultServerName = "pop.test"

// Options says what Start runs. The zero value is usable: no users, an
// ECDSA certificate generated for DefaultServerName, a temporary directory.
type Options struct {
	// Dir holds everything of the instance: configuration, logs,
	// Maildirs, generated certificates. It is made 0755; every directory
	// above it must already be searchable by other users. Empty: a new
	// directory under os.TempDir(), removed by Stop.
	Dir string

	// Users maps user name to password; all go into the passwd-file and
	// get a Maildir. Names must be usable as a directory name and neither
	// may hold ':' or a line break.
	Users map[string]string

	// MasterUsers maps master user name to password; non-empty adds a
	// master passdb (a passwd-file of its own, master = yes,
	// result_success = continue, so the login user must exist in the
	// normal passdb) and auth_master_user_separator = *. Master users have
	// no mailbox and cannot log in as themselves. Same rules for names and
	// passwords as Users.
	MasterUsers map[string]string

	// CertFile and KeyFile are Dovecot's certificate and key (PEM); CAFile
	// is what clients should trust for them. All three empty: Start
	// generates a CA and a certificate of KeyType for ServerName into Dir.
	CertFile, KeyFile, CAFile string
	// KeyType of the generated certificate; "" is ECDSA P-256.
	KeyType certgen.KeyType
	// ServerName is the DNS name in the certificate; "" is DefaultServerName.
	ServerName string

	// NoTLSInstance starts a second master process with ssl = no, serving
	// the same users and Maildirs at NoTLSAddr, which offers no STLS.
	NoTLSInstance bool

	// UserExtraFields are passdb extra fields every user gets in the
	// passwd-file, space-separated, e.g. "proxy=y host=127.0.0.1 port=110"
	// to make the instance a proxy to another POP3 server (the password
	// is checked here and passed on). No ':' or line break.
	UserExtraFields string

	// MaxUserIPConnections is mail_max_userip_connections; 0 means 100.
	MaxUserIPConnections int

	// HAProxy adds a plaintext POP3 listener at Instance.HAProxyAddr that
	// requires a PROXY protocol (v1 or v2) header (inet_listener haproxy =
	// yes), trusted from loopback (haproxy_trusted_networks).
	HAProxy bool

	// ExtraConfig is appended, one line per element, to every instance's
	// dovecot.conf, e.g. "service pop3 {", "  process_limit = 2048", "}".
	// A section that already exists (service pop3-login, service anvil,
	// protocol pop3) may be opened again; Dovecot merges the settings.
	ExtraConfig []string

	// MailRoot holds the users' homes (MailRoot/USER/Maildir). Several
	// instances may share one: a mail store their backends share, as
	// behind a Director or a popgate pool. It must exist and be
	// searchable by other users. Empty: Dir/mail.
	MailRoot string

	// Binary is the dovecot executable; "" looks it up in PATH and the
	// sbin directories.
	Binary string

	// Logf, when set, receives notes on what Start does (port retries).
	Logf func(format string, args ...any)
}

// Instance is a running Dovecot. Its exported fields are set by Start and
// must not be changed.
type Instance struct {
	PlainAddr   string            // 127.0.0.1:port, POP3 with STLS offered; plaintext login allowed
	TLSAddr     string            // 127.0.0.1:port, implicit TLS (POP3S)
	NoTLSAddr   string            // second instance without STLS; "" unless Options.NoTLSInstance
	HAProxyAddr string            // 127.0.0.1:port, PROXY header required; "" unless Options.HAProxy
	CAFile      string            // PEM of the CA clients should trust
	CertFile    string            // Dovecot's certificate (PEM)
	KeyFile     string            // its key (PEM)
	ServerName  string            // DNS name in the certificate
	Dir         string            // configuration, logs, Maildirs
	Users       map[string]string // user → password, as in the passwd-file

	uid, gid int    // owner of the Maildirs, the uid mail processes run as
	mailDir  string // Dir/mail; a user's home is mailDir/USER
	ownDir   bool   // Dir was created by Start and is removed by Stop

	main, noTLS *master
	bin         string      // the dovecot executable, for StartMain
	greetConf   *tls.Config // trusts the certificate, for waiting on TLSAddr

	mu       sync.Mutex
	seq      int // messages added so far; orders the Maildir file names
	stopped  bool
	stopErr  error
	cleanups []string // directories Stop removes, after the processes are gone
}

// master is one Dovecot master process.
type master struct {
	name               string
	ssl                bool
	certFile, keyFile  string
	logFile, errFile   string
	configFile         string
	baseDir, stateDir  string
	plainPort, tlsPort int
	plainAddr, tlsAddr string
	haproxyPort        int // 0: no PROXY protocol listener
	haproxyAddr        string
	cmd                *exec.Cmd
	exited             chan struct{}
	exitErr            error
}

// Available reports whether a dovecot binary is installed.
func Available() bool {
	_, err := LookBinary("dovecot")
	return err == nil
}

// LookBinary finds name in PATH or in the sbin directories, which a
// non-login root shell may not have in PATH.
func LookBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH or sbin", name)
}

// Start writes the configuration, starts Dovecot on free loopback ports
// (retrying with other ports when one is taken in between) and returns
// once every listener answers with a +OK greeting. On error nothing is
// left running.
func Start(opts Options) (_ *Instance, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("dovecotrun: Dovecot must be started as root (it drops privileges itself)")
	}
	bin := opts.Binary
	if bin == "" {
		if bin, err = LookBinary("dovecot"); err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
	}
	for _, name := range []string{"dovecot", "dovenull"} {
		if _, err := user.Lookup(name); err != nil {
			return nil, fmt.Errorf("dovecotrun: system user %q missing (the dovecot-core package creates it): %w", name, err)
		}
	}
	for u, pw := range mergedUsers(opts.Users, opts.MasterUsers) {
		if u == "" || u == "." || u == ".." || strings.ContainsAny(u, ":/\r\n\x00") || strings.ContainsAny(pw, ":\r\n\x00") {
			return nil, fmt.Errorf("dovecotrun: user %q: name must be a plain directory name and neither it nor the password may hold ':' or a line break", u)
		}
	}
	d := &Instance{Dir: opts.Dir, ServerName: opts.ServerName, Users: maps.Clone(opts.Users), bin: bin}
	if d.Users == nil {
		d.Users = map[string]string{}
	}
	if d.ServerName == "" {
		d.ServerName = DefaultServerName
	}
	if d.Dir == "" {
		if d.Dir, err = os.MkdirTemp("", "dovecotrun-"); err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
		d.ownDir = true
	}
	defer func() {
		if err != nil {
			_ = d.Stop()
		}
	}()
	if err := makeTraversable(d.Dir); err != nil {
		return nil, err
	}
	if d.uid, d.gid, err = MailOwner(); err != nil {
		return nil, err
	}

	d.CertFile, d.KeyFile, d.CAFile = opts.CertFile, opts.KeyFile, opts.CAFile
	switch {
	case d.CertFile == "" && d.KeyFile == "" && d.CAFile == "":
		if err := d.generateCert(opts.KeyType); err != nil {
			return nil, err
		}
	case d.CertFile == "" || d.KeyFile == "":
		return nil, errors.New("dovecotrun: Options.CertFile and KeyFile go together")
	}

	passwd := filepath.Join(d.Dir, "users.passwd")
	if strings.ContainsAny(opts.UserExtraFields, ":\r\n") {
		return nil, errors.New("dovecotrun: Options.UserExtraFields may hold no ':' or line break")
	}
	if err := writePasswd(passwd, d.Users, opts.UserExtraFields); err != nil {
		return nil, err
	}
	masterPasswd := ""
	if len(opts.MasterUsers) > 0 {
		masterPasswd = filepath.Join(d.Dir, "masters.passwd")
		if err := writePasswd(masterPasswd, opts.MasterUsers, ""); err != nil {
			return nil, err
		}
	}
	if opts.MailRoot != "" {
		d.mailDir = opts.MailRoot
	} else {
		d.mailDir = filepath.Join(d.Dir, "mail")
		if err := os.Mkdir(d.mailDir, 0o755); err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
	}
	for u := range d.Users {
		if _, err := d.ensureMaildir(u); err != nil {
			return nil, err
		}
	}

	cfg := config{
		MailUID: d.uid, MailGID: d.gid, Passwd: passwd, MasterPasswd: masterPasswd, Home: d.mailDir,
		MaxUserIP: opts.MaxUserIPConnections, Extra: opts.ExtraConfig,
		HAProxy: opts.HAProxy,
	}
	if cfg.MaxUserIP <= 0 {
		cfg.MaxUserIP = 100
	}
	d.main = &master{name: "main", ssl: true, certFile: d.CertFile, keyFile: d.KeyFile}
	if err := d.start(d.main, bin, cfg, opts.Logf); err != nil {
		return nil, err
	}
	d.PlainAddr, d.TLSAddr, d.HAProxyAddr = d.main.plainAddr, d.main.tlsAddr, d.main.haproxyAddr
	if opts.NoTLSInstance {
		d.noTLS = &master{name: "notls"}
		if err := d.start(d.noTLS, bin, cfg, opts.Logf); err != nil {
			return nil, err
		}
		d.NoTLSAddr = d.noTLS.plainAddr
	}

	var tlsConf *tls.Config
	if d.CAFile != "" {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(d.CAFile)
		if err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("dovecotrun: no certificate in %s", d.CAFile)
		}
		tlsConf = &tls.Config{RootCAs: pool, ServerName: d.ServerName, MinVersion: tls.VersionTLS12}
	} else {
		tlsConf = &tls.Config{InsecureSkipVerify: true} // the caller brought a certificate without its CA
	}
	d.greetConf = tlsConf
	deadline := time.Now().Add(15 * time.Second)
	if err := waitGreeting(d.PlainAddr, nil, deadline); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, d.Log())
	}
	if err := waitGreeting(d.TLSAddr, tlsConf, deadline); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, d.Log())
	}
	if d.NoTLSAddr != "" {
		if err := waitGreeting(d.NoTLSAddr, nil, deadline); err != nil {
			return nil, fmt.Errorf("%w\n%s", err, d.Log())
		}
	}
	return d, nil
}

// generateCert makes a CA and a certificate for d.ServerName in d.Dir.
func (d *Instance) generateCert(kt certgen.KeyType) error {
	if kt == "" {
		kt = certgen.ECDSA
	}
	ca, err := certgen.NewCA("dovecot", kt)
	if err != nil {
		return err
	}
	d.CAFile = filepath.Join(d.Dir, "dovecot-ca.pem")
	if err := ca.WriteCert(d.CAFile); err != nil {
		return err
	}
	d.CertFile, d.KeyFile, err = ca.IssueFiles(d.Dir, "dovecot", d.ServerName, kt)
	return err
}

// MasterPID returns the PID of the main instance's master process; every
// other Dovecot process of it (login, auth, pop3, log, ...) is its
// descendant.
func (d *Instance) MasterPID() int { return d.main.cmd.Process.Pid }

// NoTLSMasterPID returns the PID of the second instance's master, or 0.
func (d *Instance) NoTLSMasterPID() int {
	if d.noTLS == nil {
		return 0
	}
	return d.noTLS.cmd.Process.Pid
}

// ConfigFile returns the main instance's dovecot.conf.
func (d *Instance) ConfigFile() string { return d.main.configFile }

// Stop ends the master processes (SIGTERM by PID, both at once: each takes
// about a second; SIGKILL after 10 s), then removes what Start created
// outside Options.Dir, and Dir itself when Start created it. It is
// idempotent.
func (d *Instance) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return d.stopErr
	}
	d.stopped = true
	var errs []error
	masters := []*master{d.main, d.noTLS}
	for _, m := range masters {
		if m != nil && m.cmd != nil {
			m.signalStop()
		}
	}
	for _, m := range masters {
		if m != nil && m.cmd != nil {
			errs = append(errs, m.waitStopped())
		}
	}
	for _, dir := range d.cleanups {
		errs = append(errs, os.RemoveAll(dir))
	}
	if d.ownDir {
		errs = append(errs, os.RemoveAll(d.Dir))
	}
	d.stopErr = errors.Join(errs...)
	return d.stopErr
}

// StopMain stops the main instance's master process as Stop does (its
// clients are disconnected) but keeps its configuration, Maildirs and
// ports: StartMain runs it again at the same addresses, a backend that
// goes away and comes back. Stop still ends everything.
func (d *Instance) StopMain() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return errors.New("dovecotrun: stopped")
	}
	if d.main.cmd == nil {
		return nil
	}
	d.main.signalStop()
	return d.main.waitStopped()
}

// StartMain starts the main instance again after StopMain, on the same
// ports, and returns once its listeners answer with a +OK greeting. A port
// that another process took in between fails it.
func (d *Instance) StartMain() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return errors.New("dovecotrun: stopped")
	}
	if d.main.cmd != nil {
		select {
		case <-d.main.exited:
		default:
			return errors.New("dovecotrun: the main instance is running")
		}
	}
	if err := d.main.run(d.bin, d.Dir); err != nil {
		d.main.cmd = nil
		return fmt.Errorf("dovecotrun: restart dovecot %s: %w\nstderr:\n%s\nlog:\n%s", d.main.name, err, readOr(d.main.errFile), readOr(d.main.logFile))
	}
	deadline := time.Now().Add(15 * time.Second)
	if err := waitGreeting(d.PlainAddr, nil, deadline); err != nil {
		return err
	}
	return waitGreeting(d.TLSAddr, d.greetConf, deadline)
}

// config is what every instance's configuration shares.
type config struct {
	MailUID, MailGID int
	Passwd           string // passwd-file with {PLAIN} passwords
	MasterPasswd     string // master users' passwd-file; "" for none
	Home             string // user homes are Home/USER
	MaxUserIP        int
	HAProxy          bool
	Extra            []string
}

var errAddrInUse = errors.New("address already in use")

// start writes m's configuration and runs it, retrying with new ports when
// one was taken between picking it and Dovecot binding it.
func (d *Instance) start(m *master, bin string, cfg config, logf func(string, ...any)) error {
	m.logFile = filepath.Join(d.Dir, m.name+".log")
	m.errFile = filepath.Join(d.Dir, m.name+".stderr")
	m.configFile = filepath.Join(d.Dir, m.name+".conf")
	m.stateDir = filepath.Join(d.Dir, m.name+"-state")
	m.baseDir = filepath.Join(d.Dir, m.name+"-run")
	// Dovecot puts its UNIX sockets in base_dir; sun_path holds 107 bytes
	// and the longest socket name is about 25.
	if len(m.baseDir) > 80 {
		short, err := os.MkdirTemp("/tmp", "dc-")
		if err != nil {
			return fmt.Errorf("dovecotrun: %w", err)
		}
		d.cleanups = append(d.cleanups, short)
		m.baseDir = filepath.Join(short, "run")
	}
	if err := os.MkdirAll(m.stateDir, 0o755); err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	const attempts = 5
	for attempt := 1; ; attempt++ {
		var err error
		if m.plainPort, err = freePort(); err != nil {
			return err
		}
		m.tlsPort = 0
		if m.ssl {
			if m.tlsPort, err = freePort(); err != nil {
				return err
			}
		}
		m.haproxyPort, m.haproxyAddr = 0, ""
		if cfg.HAProxy {
			if m.haproxyPort, err = freePort(); err != nil {
				return err
			}
			m.haproxyAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.haproxyPort))
		}
		m.plainAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.plainPort))
		m.tlsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.tlsPort))
		if err := certgen.WriteFile(m.configFile, []byte(m.config(cfg)), 0o644); err != nil {
			return err
		}
		err = m.run(bin, d.Dir)
		if err == nil {
			return nil
		}
		if attempt < attempts && errors.Is(err, errAddrInUse) {
			if logf != nil {
				logf("dovecot %s: port taken, retrying: %v", m.name, err)
			}
			continue
		}
		return fmt.Errorf("dovecotrun: start dovecot %s: %w\nstderr:\n%s\nlog:\n%s", m.name, err, readOr(m.errFile), readOr(m.logFile))
	}
}

// run starts the process and waits until its listeners accept connections
// or it exits. On error the process is gone.
func (m *master) run(bin, dir string) error {
	errOut, err := os.Create(m.errFile)
	if err != nil {
		return err
	}
	defer errOut.Close()
	cmd := exec.Command(bin, "-F", "-c", m.configFile)
	cmd.Dir = dir
	cmd.Stdout = errOut
	cmd.Stderr = errOut
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go m.wait(cmd, exited)
	m.cmd, m.exited = cmd, exited

	// The master binds its listeners before it forks any child: wait until
	// a TCP connect succeeds, or it dies.
	deadline := time.Now().Add(15 * time.Second)
	addrs := []string{m.plainAddr}
	if m.ssl {
		addrs = append(addrs, m.tlsAddr)
	}
	if m.haproxyAddr != "" {
		addrs = append(addrs, m.haproxyAddr)
	}
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				m.cmd = nil
				out := readOr(m.errFile) + readOr(m.logFile)
				if strings.Contains(out, "Address already in use") {
					return fmt.Errorf("%w: %v", errAddrInUse, m.exitErr)
				}
				return fmt.Errorf("dovecot exited: %v", m.exitErr)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				m.signalStop()
				_ = m.waitStopped()
				m.cmd = nil
				return fmt.Errorf("%s not listening after 15s", a)
			}
		}
	}
	return nil
}

// wait reaps the master process.
func (m *master) wait(cmd *exec.Cmd, exited chan<- struct{}) {
	m.exitErr = cmd.Wait()
	close(exited)
}

// signalStop sends SIGTERM to the master process (by its PID); it stops its
// children first (shutdown_clients = yes).
func (m *master) signalStop() {
	select {
	case <-m.exited:
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// waitStopped waits for the master process to exit; SIGKILL after 10 s.
func (m *master) waitStopped() error {
	select {
	case <-m.exited:
		return nil
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("dovecotrun: dovecot %s (pid %d) ignored SIGTERM for 10s; killed", m.name, m.cmd.Process.Pid)
	}
}

// config renders dovecot.conf for m. Every listener is named after one of
// Dovecot's built-in ones (pop3, pop3s): a differently named listener would
// leave the built-in one binding ports 110/995 on all addresses.
func (m *master) config(c config) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# Generated by popgate's internal/dovecotrun.")
	p("instance_name = popgate-dovecotrun-%s", m.name)
	p("base_dir = %s", m.baseDir)
	p("state_dir = %s", m.stateDir)
	p("log_path = %s", m.logFile)
	p("protocols = pop3")
	p("listen = 127.0.0.1")
	p("shutdown_clients = yes")
	// Privilege separation as root: login processes run as dovenull,
	// auth/stats/anvil as dovecot, mail processes as MailUID (never root:
	// Dovecot refuses uid 0 for mail access, and first_valid_uid says so).
	p("default_login_user = dovenull")
	p("default_internal_user = dovecot")
	p("first_valid_uid = %d", c.MailUID)
	p("last_valid_uid = %d", c.MailUID)
	p("first_valid_gid = %d", c.MailGID)
	p("last_valid_gid = %d", c.MailGID)
	p("mail_location = maildir:~/Maildir")
	p("auth_mechanisms = plain login")
	p("disable_plaintext_auth = no")
	p("auth_failure_delay = 0")
	// Loopback is trusted: Dovecot then offers and honours XCLIENT from it.
	p("login_trusted_networks = 127.0.0.0/8")
	if m.haproxyPort != 0 {
		// Who may send a PROXY header to the haproxy = yes listener.
		p("haproxy_trusted_networks = 127.0.0.0/8")
	}
	p("pop3_uidl_format = %%08Xu%%08Xv")
	if m.ssl {
		p("ssl = yes")
		p("ssl_cert = <%s", m.certFile)
		p("ssl_key = <%s", m.keyFile)
		p("ssl_min_protocol = TLSv1.2")
	} else {
		p("ssl = no")
	}
	p("passdb {")
	p("  driver = passwd-file")
	p("  args = %s", c.Passwd)
	p("}")
	if c.MasterPasswd != "" {
		// Dovecot keeps master passdbs in a list of their own, so the
		// order of the two blocks does not matter. result_success =
		// continue (older configurations say pass = yes) then looks
		// the login user up in the normal passdb, without its
		// password: a master cannot open the mailbox of a user who
		// does not exist (the static userdb would make one).
		p("auth_master_user_separator = *")
		p("passdb {")
		p("  driver = passwd-file")
		p("  args = %s", c.MasterPasswd)
		p("  master = yes")
		p("  result_success = continue")
		p("}")
	}
	p("userdb {")
	p("  driver = static")
	p("  args = uid=%d gid=%d home=%s/%%u", c.MailUID, c.MailGID, c.Home)
	p("}")
	p("service pop3-login {")
	p("  inet_listener pop3 {")
	p("    address = 127.0.0.1")
	p("    port = %d", m.plainPort)
	p("  }")
	p("  inet_listener pop3s {")
	p("    address = 127.0.0.1")
	p("    port = %d", m.tlsPort) // 0: not listening
	p("    ssl = yes")
	p("  }")
	if m.haproxyPort != 0 {
		// A third listener, besides the built-in names; it speaks
		// plaintext POP3 after a mandatory PROXY header.
		p("  inet_listener pop3-haproxy {")
		p("    address = 127.0.0.1")
		p("    port = %d", m.haproxyPort)
		p("    haproxy = yes")
		p("  }")
	}
	p("}")
	// No growing auth penalty per IP (anvil), so a deliberate failed login
	// does not slow the next logins down by seconds.
	p("service anvil {")
	p("  unix_listener anvil-auth-penalty {")
	p("    mode = 0")
	p("  }")
	p("}")
	p("protocol pop3 {")
	p("  mail_max_userip_connections = %d", c.MaxUserIP)
	p("}")
	if len(c.Extra) > 0 {
		p("# Options.ExtraConfig")
		for _, l := range c.Extra {
			p("%s", l)
		}
	}
	return b.String()
}

// AddMessage delivers msg into user's Maildir/new the way an MDA does
// (write in tmp/, rename into new/), owned by the mail uid. Messages are
// numbered in the order they are added: the file names start with
// increasing timestamps, which is how Dovecot orders new mail.
func (d *Instance) AddMessage(user string, msg []byte) error {
	md, err := d.ensureMaildir(user)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	name := fmt.Sprintf("%d.M%06dP%d.popgate-dovecotrun", 1700000000+seq, seq, os.Getpid())
	tmp := filepath.Join(md, "tmp", name)
	if err := certgen.WriteFile(tmp, msg, 0o600); err != nil {
		return err
	}
	if err := os.Chown(tmp, d.uid, d.gid); err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	return nil
}

// Messages returns every message in user's Maildir (new/ and cur/), sorted
// by the base file name (before the ":2," flags suffix Dovecot adds when it
// moves a message to cur/): for messages from AddMessage, the order they
// were added, which is also their POP3 message number.
func (d *Instance) Messages(user string) ([][]byte, error) {
	md := filepath.Join(d.mailDir, user, "Maildir")
	type file struct{ base, path string }
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(md, sub))
		if err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			base, _, _ := strings.Cut(e.Name(), ":")
			files = append(files, file{base, filepath.Join(md, sub, e.Name())})
		}
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.base, b.base) })
	msgs := make([][]byte, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("dovecotrun: %w", err)
		}
		msgs = append(msgs, b)
	}
	return msgs, nil
}

// Log returns every instance's log file, each under a header line.
func (d *Instance) Log() string {
	var b strings.Builder
	for _, m := range []*master{d.main, d.noTLS} {
		if m != nil && m.logFile != "" {
			fmt.Fprintf(&b, "----- %s -----\n%s", filepath.Base(m.logFile), readOr(m.logFile))
		}
	}
	return b.String()
}

// MainLog returns the main instance's log (PlainAddr, TLSAddr).
func (d *Instance) MainLog() string { return readOr(d.main.logFile) }

// NoTLSLog returns the log of the instance behind NoTLSAddr.
func (d *Instance) NoTLSLog() string {
	if d.noTLS == nil {
		return ""
	}
	return readOr(d.noTLS.logFile)
}

// ensureMaildir creates user's home and Maildir/{cur,new,tmp}, owned by the
// mail uid, and returns the Maildir path.
func (d *Instance) ensureMaildir(user string) (string, error) {
	if _, ok := d.Users[user]; !ok {
		return "", fmt.Errorf("dovecotrun: unknown user %q", user)
	}
	home := filepath.Join(d.mailDir, user)
	md := filepath.Join(home, "Maildir")
	for _, p := range []string{home, md, filepath.Join(md, "cur"), filepath.Join(md, "new"), filepath.Join(md, "tmp")} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("dovecotrun: %w", err)
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			return "", fmt.Errorf("dovecotrun: %w", err)
		}
	}
	return md, nil
}

// MailOwner returns the uid and gid Dovecot's mail processes use: "nobody",
// present on every Debian system, with 65534 as the fallback. Root is not
// possible (Dovecot refuses mail access as uid 0) and dovecot/dovenull are
// Dovecot's own privilege-separation users.
func MailOwner() (uid, gid int, err error) {
	u, err := user.Lookup("nobody")
	if err != nil {
		return 65534, 65534, nil
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("dovecotrun: user nobody: uid %q gid %q", u.Uid, u.Gid)
	}
	return uid, gid, nil
}

// makeTraversable opens dir (os.MkdirTemp makes it 0700) so that the
// unprivileged Dovecot processes reach the Maildirs, the passwd-file and the
// certificates, and checks that every directory above lets them through.
func makeTraversable(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("dovecotrun: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("dovecotrun: %s (mode %v) is not searchable by other users; Dovecot's unprivileged processes cannot reach %s; use a directory elsewhere (TMPDIR)", p, st.Mode().Perm(), dir)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// chownGroup gives name to the group of the system group group, keeping
// root as the owner.
func chownGroup(name, group string) error {
	g, err := user.LookupGroup(group)
	if err != nil {
		return fmt.Errorf("dovecotrun: group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return fmt.Errorf("dovecotrun: group %q: %w", group, err)
	}
	if err := os.Chown(name, 0, gid); err != nil {
		return fmt.Errorf("dovecotrun: %w", err)
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// caller retries if someone else takes it before it is bound again.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dovecotrun: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitGreeting connects to addr (over TLS when conf is set) until it reads
// a "+OK" greeting or the deadline passes.
func waitGreeting(addr string, conf *tls.Config, deadline time.Time) error {
	var last error
	for time.Now().Before(deadline) {
		line, err := readGreeting(addr, conf)
		if err == nil && strings.HasPrefix(line, "+OK") {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("greeting %q", line)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("dovecotrun: no +OK greeting from Dovecot at %s: %v", addr, last)
}

func readGreeting(addr string, conf *tls.Config) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if conf != nil {
		tc := tls.Client(c, conf)
		if err := tc.Handshake(); err != nil {
			return "", err
		}
		c = tc
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// mergedUsers returns both tables in one, for checking names and passwords.
func mergedUsers(users, masters map[string]string) map[string]string {
	all := maps.Clone(users)
	if all == nil {
		all = map[string]string{}
	}
	for u, pw := range masters {
		all[u] = pw
	}
	return all
}

// writePasswd writes users (name → password) as a passwd-file with {PLAIN}
// passwords, readable by Dovecot's auth process (default_internal_user) and
// nobody else but root; each user's passdb extra fields are extra.
func writePasswd(name string, users map[string]string, extra string) error {
	var pw strings.Builder
	for _, u := range slices.Sorted(maps.Keys(users)) {
		// user:password:uid:gid:gecos:home:shell:extra; the userdb is static.
		fmt.Fprintf(&pw, "%s:{PLAIN}%s::::::%s\n", u, users[u], extra)
	}
	if err := certgen.WriteFile(name, []byte(pw.String()), 0o640); err != nil {
		return err
	}
	return chownGroup(name, "dovecot")
}

// readOr returns the contents of name, or a note saying why it has none.
func readOr(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	return string(b)
}
