package interop

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
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

// dovecot is a real Dovecot started for one test, listening on loopback
// only: a thin wrapper over internal/dovecotrun, which the benchmark
// (cmd/pop3bench) shares.
//
// Two master processes run: the main instance (ssl = yes) serves PlainAddr and
// TLSAddr; a second one (ssl = no, same passwd-file and Maildirs) serves
// NoTLSAddr, because Dovecot 2.3 cannot switch STLS off for one listener.
// The embedded Instance has PlainAddr, TLSAddr, NoTLSAddr, CAFile,
// ServerName ("pop.test"; the certificate has the IP SAN 127.0.0.1 too),
// Dir and Users (user → password, all in the passwd-file).
type dovecot struct {
	*dovecotrun.Instance
	ca *testCA // signed Dovecot's certificate
}

// dovecotServerName is the DNS name in Dovecot's certificate.
const dovecotServerName = dovecotrun.DefaultServerName

// startDovecot starts Dovecot on free loopback ports for t and stops it when
// t ends. It runs `dovecot -F -c CONFIG` as a child (two of them, see
// dovecot), so it needs root, as CI runs it.
func startDovecot(t *testing.T) *dovecot {
	t.Helper()
	return startDovecotWith(t, nil)
}

// startDovecotWith is startDovecot with the options changed by opt, when
// set, before Dovecot starts: more users, master users, extra
// configuration.
func startDovecotWith(t testing.TB, opt func(*dovecotrun.Options)) *dovecot {
	t.Helper()
	requireInterop(t, "dovecot")
	if os.Geteuid() != 0 {
		t.Fatal("the Dovecot interop tests start Dovecot as root (it drops privileges itself); run scripts/test as root")
	}
	dir := t.TempDir()
	// t.TempDir makes the test's temporary root and dir 0700; Dovecot's
	// unprivileged processes must pass through both (dovecotrun opens dir
	// itself and checks the rest).
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t, dir, "dovecot")
	certFile, keyFile := ca.issue(t, dir, "pop.test", dovecotServerName)
	opts := dovecotrun.Options{
		Dir:           dir,
		Users:         testUsers(),
		CertFile:      certFile,
		KeyFile:       keyFile,
		CAFile:        ca.CAFile,
		ServerName:    dovecotServerName,
		NoTLSInstance: true,
		HAProxy:       true, // HAProxyAddr, for client_address = "proxy-v1"/"proxy-v2"
		Logf:          t.Logf,
	}
	if opt != nil {
		opt(&opts)
	}
	inst, err := dovecotrun.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	d := &dovecot{Instance: inst, ca: ca}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("Dovecot logs:\n%s", inst.Log())
		}
	})
	return d
}

// addMessage delivers msg into user's Maildir/new (see
// dovecotrun.Instance.AddMessage); messages are numbered in the order they
// are added.
func (d *dovecot) addMessage(t *testing.T, user string, msg []byte) {
	t.Helper()
	if err := d.AddMessage(user, msg); err != nil {
		t.Fatal(err)
	}
}

// messages returns every message in user's Maildir in POP3 order.
func (d *dovecot) messages(t *testing.T, user string) [][]byte {
	t.Helper()
	msgs, err := d.Messages(user)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// log returns both instances' log files, for failure messages.
func (d *dovecot) log(t *testing.T) string {
	t.Helper()
	return d.Log()
}

// mainLog returns only the main instance's log (PlainAddr, TLSAddr).
func (d *dovecot) mainLog(t *testing.T) string {
	t.Helper()
	return d.MainLog()
}

// noTLSLog returns only the log of the instance behind NoTLSAddr.
func (d *dovecot) noTLSLog(t *testing.T) string {
	t.Helper()
	return d.NoTLSLog()
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

// readOr returns the contents of name, or a note saying why it has none.
func readOr(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	return string(b)
}
