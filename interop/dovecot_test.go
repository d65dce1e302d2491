package interop

import (
	"bufio"
	"crypto/tls"
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
	"testing"
	"time"
)

// Test users in every Dovecot instance's passwd-file. The passwords are
// redacted from client output; keep them free of quotes, backslashes, spaces
// and '%' so they fit in a fetchmail rc file and a netrc file unquoted.
const (
	userAlice = "alice@example.com"
	userBob   = "bob@example.org"
	userCarol = "carol@example.net"
)

// testUsers returns a fresh user → password table.
func testUsers() map[string]string {
	return map[string]string{
		userAlice: "Alice-pw-7Qz4t",
		userBob:   "Bob-pw-3Kx9m",
		userCarol: "Carol-pw-5Hn2w",
	}
}

// dovecot is a real Dovecot started for one test, listening on loopback only.
//
// Two master processes run: the main instance (ssl = yes) serves PlainAddr and
// TLSAddr; a second one (ssl = no, same passwd-file and Maildirs) serves
// NoTLSAddr, because Dovecot 2.3 cannot switch STLS off for one listener.
type dovecot struct {
	PlainAddr  string            // 127.0.0.1:port, plaintext POP3 with STLS offered; plaintext auth allowed
	TLSAddr    string            // 127.0.0.1:port, implicit TLS (pop3s)
	NoTLSAddr  string            // 127.0.0.1:port of the second instance, which does not offer STLS
	CAFile     string            // PEM of the CA that signed Dovecot's certificate
	ServerName string            // name in Dovecot's certificate ("pop.test"; it has the IP SAN 127.0.0.1 too)
	Dir        string            // everything of this instance: config, logs, Maildirs
	Users      map[string]string // user → password, all in the passwd-file

	ca      *testCA
	uid     int    // owner of the Maildirs, the uid Dovecot's mail processes run as
	gid     int    // its group
	mailDir string // Dir/mail; a user's home is mailDir/USER, the Maildir USER/Maildir
	logs    []string

	mu  sync.Mutex
	seq int // messages added so far; orders the Maildir file names
}

// dovecotServerName is the DNS name in Dovecot's certificate.
const dovecotServerName = "pop.test"

// startDovecot starts Dovecot on free loopback ports for t and stops it when
// t ends. It runs `dovecot -F -c CONFIG` as a child (two of them, see
// dovecot), so it needs root, as CI runs it.
func startDovecot(t *testing.T) *dovecot {
	t.Helper()
	requireInterop(t, "dovecot")
	if os.Geteuid() != 0 {
		t.Fatal("the Dovecot interop tests start Dovecot as root (it drops privileges itself); run scripts/test as root")
	}
	bin, err := lookBinary("dovecot")
	if err != nil {
		t.Fatal(err)
	}
	d := &dovecot{Dir: t.TempDir(), ServerName: dovecotServerName, Users: testUsers()}
	d.mailDir = filepath.Join(d.Dir, "mail")
	d.uid, d.gid = mailOwner(t)
	for _, name := range []string{"dovecot", "dovenull"} {
		if _, err := user.Lookup(name); err != nil {
			t.Fatalf("system user %q missing (the dovecot-core package creates it): %v", name, err)
		}
	}
	makeTraversable(t, d.Dir)

	d.ca = newTestCA(t, d.Dir, "dovecot")
	d.CAFile = d.ca.CAFile
	certFile, keyFile := d.ca.issue(t, d.Dir, "pop.test", d.ServerName)

	passwd := filepath.Join(d.Dir, "users.passwd")
	var pw strings.Builder
	for _, u := range slices.Sorted(maps.Keys(d.Users)) {
		// user:password:uid:gid:gecos:home:shell:extra; the userdb is static.
		fmt.Fprintf(&pw, "%s:{PLAIN}%s::::::\n", u, d.Users[u])
	}
	writeFile(t, passwd, []byte(pw.String()), 0o640)
	chownGroup(t, passwd, "dovecot") // the auth process runs as default_internal_user

	if err := os.Mkdir(d.mailDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for u := range d.Users {
		d.ensureMaildir(t, u)
	}

	common := dovecotCommon{
		MailUID: d.uid, MailGID: d.gid,
		Passwd: passwd, Home: d.mailDir,
	}
	mainInst := dovecotInstance{name: "main", dovecotCommon: common, SSL: true, Cert: certFile, Key: keyFile}
	noTLS := dovecotInstance{name: "notls", dovecotCommon: common}

	mainInst.start(t, bin, d.Dir)
	d.PlainAddr, d.TLSAddr = mainInst.plainAddr, mainInst.tlsAddr
	noTLS.start(t, bin, d.Dir)
	d.NoTLSAddr = noTLS.plainAddr
	d.logs = []string{mainInst.logFile, noTLS.logFile}

	ready := withTimeout(15 * time.Second)
	waitGreeting(t, d.PlainAddr, nil, ready, d)
	waitGreeting(t, d.TLSAddr, d.ca.clientConfig(d.ServerName), ready, d)
	waitGreeting(t, d.NoTLSAddr, nil, ready, d)

	t.Cleanup(func() {
		// Both at once: a master takes about a second to stop.
		mainInst.signalStop(t)
		noTLS.signalStop(t)
		mainInst.waitStopped(t)
		noTLS.waitStopped(t)
		if t.Failed() {
			t.Logf("Dovecot logs:\n%s", d.log(t))
		}
	})
	return d
}

// dovecotCommon is the part of the configuration both instances share.
type dovecotCommon struct {
	MailUID, MailGID int
	Passwd           string // passwd-file with {PLAIN} passwords
	Home             string // user homes are Home/USER
}

// dovecotInstance is one Dovecot master process.
type dovecotInstance struct {
	dovecotCommon
	name      string
	SSL       bool
	Cert, Key string

	logFile             string
	plainAddr, tlsAddr  string
	plainPort, tlsPort  int
	baseDir, stateDir   string
	configFile, errFile string
	cmd                 *exec.Cmd
	exited              chan struct{}
	exitErr             error
}

// start writes the configuration and runs the master process, retrying with
// new ports when one was taken between picking it and Dovecot binding it.
func (in *dovecotInstance) start(t *testing.T, bin, dir string) {
	t.Helper()
	in.logFile = filepath.Join(dir, in.name+".log")
	in.errFile = filepath.Join(dir, in.name+".stderr")
	in.configFile = filepath.Join(dir, in.name+".conf")
	in.stateDir = filepath.Join(dir, in.name+"-state")
	in.baseDir = filepath.Join(dir, in.name+"-run")
	// Dovecot puts its UNIX sockets in base_dir; sun_path holds 107 bytes and
	// the longest socket name is about 25, so a long TMPDIR or test name
	// needs a shorter directory.
	if len(in.baseDir) > 80 {
		short, err := os.MkdirTemp("/tmp", "dc-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) }) // runs after the process cleanup below
		in.baseDir = filepath.Join(short, "run")
	}
	if err := os.MkdirAll(in.stateDir, 0o755); err != nil {
		t.Fatal(err)
	}

	const attempts = 5
	for attempt := 1; ; attempt++ {
		in.plainPort = freePort(t)
		in.tlsPort = 0
		if in.SSL {
			in.tlsPort = freePort(t)
		}
		in.plainAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(in.plainPort))
		in.tlsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(in.tlsPort))
		writeFile(t, in.configFile, []byte(in.config()), 0o644)
		err := in.run(t, bin, dir)
		if err == nil {
			return
		}
		if attempt < attempts && errors.Is(err, errAddrInUse) {
			t.Logf("dovecot %s: port taken, retrying: %v", in.name, err)
			continue
		}
		t.Fatalf("start dovecot %s: %v\nstderr:\n%s\nlog:\n%s", in.name, err, readOr(in.errFile), readOr(in.logFile))
	}
}

var errAddrInUse = errors.New("address already in use")

// run starts the process and waits until its listeners accept connections
// or it exits. On success a cleanup stops it.
func (in *dovecotInstance) run(t *testing.T, bin, dir string) error {
	t.Helper()
	errOut, err := os.Create(in.errFile)
	if err != nil {
		return err
	}
	defer errOut.Close()
	cmd := exec.Command(bin, "-F", "-c", in.configFile)
	cmd.Dir = dir
	cmd.Stdout = errOut
	cmd.Stderr = errOut
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		in.exitErr = cmd.Wait()
		close(exited)
	}()
	in.cmd, in.exited = cmd, exited

	// Wait until the master has bound its listeners (a TCP connect succeeds)
	// or died; binding happens before any child is forked.
	deadline := time.Now().Add(15 * time.Second)
	addrs := []string{in.plainAddr}
	if in.SSL {
		addrs = append(addrs, in.tlsAddr)
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
				out := readOr(in.errFile) + readOr(in.logFile)
				if strings.Contains(out, "Address already in use") {
					return fmt.Errorf("%w: %v", errAddrInUse, in.exitErr)
				}
				return fmt.Errorf("dovecot exited: %v", in.exitErr)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				in.stop(t)
				return fmt.Errorf("%s not listening after 15s", a)
			}
		}
	}
	t.Cleanup(func() { in.stop(t) })
	return nil
}

// stop ends the master process by its PID and waits for it.
func (in *dovecotInstance) stop(t *testing.T) {
	t.Helper()
	in.signalStop(t)
	in.waitStopped(t)
}

// signalStop sends SIGTERM to the master process (by its PID); it stops its
// children first (shutdown_clients = yes).
func (in *dovecotInstance) signalStop(t *testing.T) {
	t.Helper()
	select {
	case <-in.exited:
		return
	default:
	}
	if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Logf("dovecot %s: SIGTERM: %v", in.name, err)
	}
}

// waitStopped waits for the master process to exit; SIGKILL after 10 s.
func (in *dovecotInstance) waitStopped(t *testing.T) {
	t.Helper()
	select {
	case <-in.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("dovecot %s (pid %d) ignored SIGTERM for 10s; killing it", in.name, in.cmd.Process.Pid)
		_ = in.cmd.Process.Kill()
		<-in.exited
	}
}

// config renders dovecot.conf for this instance. Nothing of /etc/dovecot is
// read. Every listener is named after one of Dovecot's built-in ones
// (pop3, pop3s): a differently named listener would leave the built-in one
// binding ports 110/995 on all addresses.
func (in *dovecotInstance) config() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# Generated by popgate's interop tests (interop/dovecot_test.go).")
	p("instance_name = popgate-interop-%s", in.name)
	p("base_dir = %s", in.baseDir)
	p("state_dir = %s", in.stateDir)
	p("log_path = %s", in.logFile)
	p("protocols = pop3")
	p("listen = 127.0.0.1")
	p("shutdown_clients = yes")
	// Privilege separation as root: login processes run as dovenull,
	// auth/stats/anvil as dovecot, mail processes as MailUID (never root:
	// Dovecot refuses uid 0 for mail access, and first_valid_uid says so).
	p("default_login_user = dovenull")
	p("default_internal_user = dovecot")
	p("first_valid_uid = %d", in.MailUID)
	p("last_valid_uid = %d", in.MailUID)
	p("first_valid_gid = %d", in.MailGID)
	p("last_valid_gid = %d", in.MailGID)
	p("mail_location = maildir:~/Maildir")
	p("auth_mechanisms = plain login")
	p("disable_plaintext_auth = no")
	p("auth_failure_delay = 0")
	// Loopback is trusted: Dovecot then offers and honours XCLIENT from it.
	p("login_trusted_networks = 127.0.0.0/8")
	p("pop3_uidl_format = %%08Xu%%08Xv")
	if in.SSL {
		p("ssl = yes")
		p("ssl_cert = <%s", in.Cert)
		p("ssl_key = <%s", in.Key)
		p("ssl_min_protocol = TLSv1.2")
	} else {
		p("ssl = no")
	}
	p("passdb {")
	p("  driver = passwd-file")
	p("  args = %s", in.Passwd)
	p("}")
	p("userdb {")
	p("  driver = static")
	p("  args = uid=%d gid=%d home=%s/%%u", in.MailUID, in.MailGID, in.Home)
	p("}")
	p("service pop3-login {")
	p("  inet_listener pop3 {")
	p("    address = 127.0.0.1")
	p("    port = %d", in.plainPort)
	p("  }")
	p("  inet_listener pop3s {")
	p("    address = 127.0.0.1")
	p("    port = %d", in.tlsPort) // 0: not listening
	p("    ssl = yes")
	p("  }")
	p("}")
	// No growing auth penalty per IP (anvil), so a test's deliberate failed
	// login does not slow the next tests' logins down by seconds.
	p("service anvil {")
	p("  unix_listener anvil-auth-penalty {")
	p("    mode = 0")
	p("  }")
	p("}")
	p("protocol pop3 {")
	p("  mail_max_userip_connections = 100")
	p("}")
	return b.String()
}

// addMessage delivers msg into user's Maildir/new the way an MDA does (write
// in tmp/, rename into new/), owned by the mail uid. Messages are numbered in
// the order they are added: the file names start with increasing
// timestamps, which is how Dovecot orders new mail.
func (d *dovecot) addMessage(t *testing.T, user string, msg []byte) {
	t.Helper()
	md := d.ensureMaildir(t, user)
	d.mu.Lock()
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	name := fmt.Sprintf("%d.M%06dP%d.popgate-interop", 1700000000+seq, seq, os.Getpid())
	tmp := filepath.Join(md, "tmp", name)
	writeFile(t, tmp, msg, 0o600)
	if err := os.Chown(tmp, d.uid, d.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
		t.Fatal(err)
	}
}

// messages returns every message in user's Maildir (new/ and cur/), sorted
// by the base file name (before the ":2," flags suffix Dovecot adds when it
// moves a message to cur/): for messages from addMessage, the order they
// were added, which is also their POP3 message number.
func (d *dovecot) messages(t *testing.T, user string) [][]byte {
	t.Helper()
	md := filepath.Join(d.mailDir, user, "Maildir")
	type file struct{ base, path string }
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(md, sub))
		if err != nil {
			t.Fatal(err)
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
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	return msgs
}

// log returns both instances' log files, for failure messages.
func (d *dovecot) log(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, f := range d.logs {
		fmt.Fprintf(&b, "----- %s -----\n%s", filepath.Base(f), readOr(f))
	}
	return b.String()
}

// mainLog returns only the main instance's log (PlainAddr, TLSAddr).
func (d *dovecot) mainLog(t *testing.T) string {
	t.Helper()
	return readOr(d.logs[0])
}

// noTLSLog returns only the log of the instance behind NoTLSAddr.
func (d *dovecot) noTLSLog(t *testing.T) string {
	t.Helper()
	return readOr(d.logs[1])
}

// waitLog waits until match holds for the log returned by get, for events
// Dovecot logs after the client is gone (a session's "Disconnected" line).
func (d *dovecot) waitLog(t *testing.T, get func(*testing.T) string, what string, match func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !match(get(t)) {
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot did not log %s within 10s; logs:\n%s", what, d.log(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ensureMaildir creates user's home and Maildir/{cur,new,tmp}, owned by the
// mail uid, and returns the Maildir path.
func (d *dovecot) ensureMaildir(t *testing.T, user string) string {
	t.Helper()
	if _, ok := d.Users[user]; !ok {
		t.Fatalf("unknown test user %q", user)
	}
	home := filepath.Join(d.mailDir, user)
	md := filepath.Join(home, "Maildir")
	for _, p := range []string{home, md, filepath.Join(md, "cur"), filepath.Join(md, "new"), filepath.Join(md, "tmp")} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			t.Fatal(err)
		}
	}
	return md
}

// mailOwner returns the uid and gid Dovecot's mail processes use: "nobody",
// present on every Debian system, with 65534 as the fallback. Root is not
// possible (Dovecot refuses mail access as uid 0) and dovecot/dovenull are
// Dovecot's own privilege-separation users.
func mailOwner(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		return 65534, 65534
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("user nobody: uid %q gid %q", u.Uid, u.Gid)
	}
	return uid, gid
}

// makeTraversable opens dir and the test's temporary root above it
// (os.MkdirTemp makes them 0700) so that the unprivileged Dovecot processes
// reach the Maildirs, the passwd-file and the certificates, and checks that
// every other ancestor already lets them through.
func makeTraversable(t *testing.T, dir string) {
	t.Helper()
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p := filepath.Dir(filepath.Dir(dir)); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s (mode %v) is not searchable by other users; Dovecot's unprivileged processes cannot reach %s; set TMPDIR/GOTMPDIR elsewhere", p, st.Mode().Perm(), dir)
		}
		if p == filepath.Dir(p) {
			return
		}
	}
}

// chownGroup gives name to the group of the system user group, keeping root
// as the owner.
func chownGroup(t *testing.T, name, group string) {
	t.Helper()
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatalf("group %q: %v", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(name, 0, gid); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// caller retries if someone else takes it before it is bound again.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitGreeting connects to addr (over TLS when conf is set) until it reads a
// "+OK" greeting or the deadline passes.
func waitGreeting(t *testing.T, addr string, conf *tls.Config, deadline time.Time, d *dovecot) {
	t.Helper()
	var last error
	for time.Now().Before(deadline) {
		line, err := readGreeting(addr, conf)
		if err == nil && strings.HasPrefix(line, "+OK") {
			return
		}
		if err == nil {
			err = fmt.Errorf("greeting %q", line)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no +OK greeting from Dovecot at %s: %v\n%s", addr, last, d.log(t))
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

func withTimeout(d time.Duration) time.Time { return time.Now().Add(d) }

// readOr returns the contents of name, or a note saying why it has none.
func readOr(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	return string(b)
}
