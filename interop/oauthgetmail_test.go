package interop

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// getmailDir is where scripts/test unpacks Debian's getmail6 6.19.07
// package (pinned by its SHA-256): POP3 XOAUTH2 came in getmail6 6.19.04,
// after the getmail6 of Debian bookworm.
const getmailDir = ".tools/getmail6-6.19.07-1"

// TestOAuthGetmailDovecot: getmail6 with use_xoauth2 signs in through
// popgate with a token of the real OpenID provider, to a real Dovecot that
// knows popgate as a master user, and delivers into a Maildir what it
// delivers when it signs in to Dovecot itself with the mailbox password:
// the messages Dovecot holds byte for byte, after getmail's own
// Return-Path line. Another user's token fetches nothing and never
// reaches Dovecot.
func TestOAuthGetmailDovecot(t *testing.T) {
	requireInterop(t, "dovecot", "python3", "node")
	t.Parallel()
	if _, err := os.Stat(filepath.Join(getmailDir, "usr/bin/getmail")); err != nil {
		t.Fatalf("getmail6 6.19.07 is not unpacked in interop/%s: run scripts/test, which fetches it", getmailDir)
	}
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.MasterUsers = map[string]string{oauthMaster: oauthMasterPass}
	})
	want := [][]byte{testMessage(2<<10, "getmail-one"), testMessage(300<<10, "getmail-two")}
	for _, m := range want {
		d.addMessage(t, userAlice, m)
	}
	idp := startOIDCProvider(t, map[string]string{"alice": userAlice, "bob": userBob})
	masterFile := filepath.Join(t.TempDir(), "master")
	writeFile(t, masterFile, []byte(oauthMasterPass+"\n"), 0o600)
	pg := startPopgate(t, popgateConfig{
		Backends: []popgateBackend{{Name: "dovecot", Address: d.TLSAddr, TLS: "implicit", ServerName: d.ServerName, CAFile: d.CAFile}},
		Default:  "dovecot",
		OAuth: []string{
			fmt.Sprintf("issuer = %q", idp.Issuer),
			fmt.Sprintf("audience = [%q]", oauthAudience),
			fmt.Sprintf("ca_file = %q", idp.CAFile),
			`timeout = "2s"`,
			fmt.Sprintf("master_user = %q", oauthMaster),
			fmt.Sprintf("master_password_file = %q", masterFile),
			`master_separator = "*"`,
		},
		NoFailureLimits: true,
	}, oauthMasterPass)

	// Dovecot's own, through the same client: a password login.
	direct, code := getmailAll(t, d.TLSAddr, d.CAFile, d.ServerName, userAlice, testUsers()[userAlice], false)
	if code != 0 || len(direct) != len(want) {
		t.Fatalf("getmail from Dovecot with the password: exit %d, %d messages, want %d", code, len(direct), len(want))
	}
	alice := idp.token(t, "alice", false)
	got, code := getmailAll(t, pg.POP3SAddr, pg.CAFile, pg.ServerName, userAlice, alice, true)
	if code != 0 || len(got) != len(want) {
		t.Fatalf("getmail through popgate with XOAUTH2: exit %d, %d messages, want %d", code, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], direct[i]) {
			t.Errorf("message %d: %d bytes through popgate, %d from Dovecot directly", i+1, len(got[i]), len(direct[i]))
		}
		m, err := normalizeGetmail(got[i])
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		if !bytes.Equal(m, want[i]) {
			t.Errorf("message %d: %d bytes, want %d bytes as Dovecot holds them", i+1, len(m), len(want[i]))
		}
	}
	d.settleLogins(t, 2)

	// Bob's token for alice's mailbox: refused, nothing delivered, no
	// login at Dovecot. (getmail 6.19.07 sends AUTH XOAUTH2 with the
	// initial response and takes popgate's "+ " error challenge for
	// success, as poplib does any "+" line; its next command, UIDL, is
	// the answer to the challenge, and popgate ends with -ERR [AUTH].)
	got, code = getmailAll(t, pg.POP3SAddr, pg.CAFile, pg.ServerName, userAlice, idp.token(t, "bob", false), true)
	if code == 0 || len(got) != 0 {
		t.Errorf("getmail with bob's token for alice: exit %d, %d messages delivered", code, len(got))
	}
	d.settleLogins(t, 2)
}

// getmailAll fetches every message of userName's mailbox at addr (POP3 over
// implicit TLS, the certificate checked against cafile for serverName) with
// getmail6 into a Maildir, and returns the messages in the order of the
// mailbox, with the exit code. secret is the password, or with xoauth2 the
// bearer token for AUTH XOAUTH2; getmail reads it from a file through
// password_command, so it is on no command line and in no rc file.
// Nothing is deleted (delete = false); getmail adds no Delivered-To or
// Received header (delivered_to, received = false). As root, getmail
// delivers as "nobody" (it refuses to deliver as root).
func getmailAll(t *testing.T, addr, cafile, serverName, userName, secret string, xoauth2 bool) ([][]byte, int) {
	t.Helper()
	host, port := splitHostPort(t, addr)
	root, err := filepath.Abs(getmailDir)
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	maildir, deliverAs := getmailMaildir(t)
	secretFile := filepath.Join(home, "secret")
	writeFile(t, secretFile, []byte(secret), 0o600)
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{userName, cafile, serverName, maildir, secretFile, cat} {
		if strings.ContainsAny(s, "\"'\\\n%,()") {
			t.Fatalf("getmailAll: %q cannot go into the rc file as it is", s)
		}
	}
	rc := filepath.Join(home, "getmailrc")
	writeFile(t, rc, fmt.Appendf(nil, `[retriever]
type = SimplePOP3SSLRetriever
server = %s
port = %d
username = %s
password_command = ("%s", "%s")
use_xoauth2 = %v
ca_certs = %s
ssl_cert_hostname = %s
timeout = 60

[destination]
type = Maildir
path = %s/
%s

[options]
read_all = true
delete = false
delivered_to = false
received = false
verbose = 2
`, host, port, userName, cat, secretFile, xoauth2, cafile, serverName, maildir, deliverAs), 0o600)
	python, _ := lookBinary("python3")
	cmd := exec.Command(python, filepath.Join(root, "usr/bin/getmail"), "--getmaildir", home, "--rcfile", rc)
	cmd.Dir = home
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LC_ALL=C.UTF-8",
		"PYTHONPATH=" + filepath.Join(root, "usr/lib/python3/dist-packages"),
	}
	secrets := []string{secret}
	res := runClient(t, cmd, clientTimeout, secrets...)
	if res.ExitCode != 0 {
		t.Logf("getmail exited %d:\n%s%s", res.ExitCode, redact(tail(string(res.Stdout)), secrets...), redact(tail(string(res.Stderr)), secrets...))
	}
	var msgs [][]byte
	for _, sub := range []string{"tmp", "cur"} {
		if entries, _ := os.ReadDir(filepath.Join(maildir, sub)); len(entries) > 0 {
			failCommand(t, cmd, res, secrets, "getmail left %d files in the Maildir's %s", len(entries), sub)
		}
	}
	entries, err := os.ReadDir(filepath.Join(maildir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	type delivered struct {
		seq  int
		body []byte
	}
	var ds []delivered
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(maildir, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// getmail names a Maildir file TIME.M<usec>P<pid>Q<count>.HOST:
		// the delivery count orders them.
		var seq int
		if _, q, ok := strings.Cut(e.Name(), "Q"); ok {
			fmt.Sscanf(q, "%d", &seq)
		}
		ds = append(ds, delivered{seq, b})
	}
	slices.SortFunc(ds, func(a, b delivered) int { return a.seq - b.seq })
	for _, d := range ds {
		msgs = append(msgs, d.body)
	}
	return msgs, res.ExitCode
}

// normalizeGetmail undoes what getmail6 does to a message it delivers to a
// Maildir: it writes the message with the local line ending (LF) and puts
// a Return-Path line of its own first in place of the message's. Nothing
// else is touched, so the rest must equal the message on the server byte
// for byte.
func normalizeGetmail(msg []byte) ([]byte, error) {
	if bytes.Contains(msg, []byte("\r")) {
		return nil, fmt.Errorf("a CR in getmail's delivery: it writes LF line ends")
	}
	line, rest, ok := bytes.Cut(msg, []byte("\n"))
	if !ok || !bytes.HasPrefix(line, []byte("Return-Path: ")) {
		return nil, fmt.Errorf("no Return-Path line first: %q", firstLine(msg))
	}
	return bytes.ReplaceAll(append(append(line, '\n'), rest...), []byte("\n"), []byte("\r\n")), nil
}

// getmailMaildir makes an empty Maildir for getmail to deliver into and
// returns it with the destination's user line. getmail refuses to deliver
// as root: as root, the Maildir belongs to "nobody", in a directory of its
// own under the system's temporary directory (a t.TempDir is only root's to
// enter), and getmail is told to deliver as "nobody".
func getmailMaildir(t *testing.T) (dir, userLine string) {
	t.Helper()
	base := t.TempDir()
	var uid, gid int
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("getmail delivers as nobody when run as root: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		if base, err = os.MkdirTemp("", "popgate-getmail-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(base) })
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatal(err)
		}
		userLine = "user = nobody"
	}
	dir = filepath.Join(base, "Maildir")
	for _, d := range []string{dir, filepath.Join(dir, "cur"), filepath.Join(dir, "new"), filepath.Join(dir, "tmp")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if userLine != "" {
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir, userLine
}
