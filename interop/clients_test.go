package interop

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// clientTimeout bounds one run of a real client; a 10 MiB RETR takes well
// under a second on loopback, so this only catches hangs.
const clientTimeout = 90 * time.Second

// curlRetr runs curl on url and returns what it wrote to stdout: for a
// pop3:// or pop3s:// URL ending in /N, message N as sent by the server
// minus the POP3 framing (curl removes dot-stuffing and the final ".").
//
// Credentials may be given in the URL ("pop3s://user:pass@host:port/1"):
// they are moved into a netrc file (mode 0600) so the password is on no
// command line, and it is redacted from any failure output. args go before
// the URL, for example "--cacert", ca, "--ssl-reqd", or "--resolve",
// "localhost:PORT:127.0.0.1" to connect to a name the certificate carries.
// curl's own config files are ignored (-q).
func curlRetr(t *testing.T, rawURL string, args ...string) []byte {
	t.Helper()
	requireInterop(t, "curl")
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("curl URL: %v", err)
	}
	var secrets []string
	cmdArgs := []string{"-q", "-sS", "--max-time", "60"}
	if u.User != nil {
		pass, _ := u.User.Password()
		secrets = append(secrets, pass, url.QueryEscape(pass), url.PathEscape(pass))
		netrc := filepath.Join(t.TempDir(), "netrc")
		writeFile(t, netrc, fmt.Appendf(nil, "machine %s login %s password %s\n", u.Hostname(), u.User.Username(), pass), 0o600)
		cmdArgs = append(cmdArgs, "--netrc-file", netrc)
		u.User = nil
	}
	cmdArgs = append(cmdArgs, args...)
	cmdArgs = append(cmdArgs, u.String())
	bin, _ := lookBinary("curl")
	cmd := exec.Command(bin, cmdArgs...)
	res := runClient(t, cmd, clientTimeout, secrets...)
	if res.ExitCode != 0 {
		failCommand(t, cmd, res, secrets, "curl %s failed", u.Redacted())
	}
	return res.Stdout
}

// poplibScript drives Python's poplib. It reads its parameters as JSON on
// stdin (so the password is in no argv and no file), runs the operations,
// and prints {"messages": [base64, ...]} with one entry per RETR.
//
// poplib hands back a message as a list of lines with the line endings
// removed (and dot-stuffing undone); the script joins them with CRLF and
// ends the last one with CRLF. That reconstruction is exact for messages
// that use CRLF line endings only and end in CRLF, which all test messages
// do (testMessage); a bare CR or LF inside a message would not survive it.
const poplibScript = `
import base64, json, poplib, socket, ssl, sys

p = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=p["cafile"]) if p["cafile"] else None
if ctx is not None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

class POP3SSLTo(poplib.POP3_SSL):
    # Connect to the address but verify (and send as SNI) server_name.
    def _create_socket(self, timeout):
        sock = socket.create_connection((p["host"], p["port"]), timeout)
        return self.context.wrap_socket(sock, server_hostname=p["server_name"] or p["host"])

mode = p["mode"]
if mode == "ssl":
    c = POP3SSLTo(p["host"], p["port"], context=ctx, timeout=60)
elif mode in ("stls", "plain"):
    c = poplib.POP3(p["host"], p["port"], timeout=60)
    if mode == "stls":
        c.host = p["server_name"] or p["host"]  # stls() verifies self.host
        c.stls(ctx)
else:
    sys.exit("unknown mode " + mode)

def join(lines):
    return b"".join(l + b"\r\n" for l in lines)

out = {"messages": []}
c.user(p["user"])
c.pass_(p["password"])
for op in p["ops"]:
    words = op.split()
    if op == "retr-all":
        for entry in c.list()[1]:
            n = int(entry.split()[0])
            out["messages"].append(base64.b64encode(join(c.retr(n)[1])).decode())
    elif words[0] == "retr":
        out["messages"].append(base64.b64encode(join(c.retr(int(words[1]))[1])).decode())
    elif words[0] == "dele":
        c.dele(int(words[1]))
    elif op == "stat":
        c.stat()
    elif op == "quit":
        c.quit()
    elif op == "close":  # drop the connection without QUIT
        c.close()
    else:
        sys.exit("unknown op " + op)
json.dump(out, sys.stdout)
`

// pythonPoplib logs in as user with Python's poplib (USER/PASS) and runs ops,
// returning the messages the RETRs fetched, in order. mode is "ssl"
// (POP3_SSL, implicit TLS), "stls" (POP3 then stls()) or "plain". cafile is
// the only CA trusted; serverName is verified and sent as SNI (empty: the
// host of addr). ops default to "retr-all", "quit"; also "retr N", "dele N",
// "stat", "quit", "close" (drop without QUIT). Any -ERR fails the test.
func pythonPoplib(t *testing.T, mode, addr, cafile, serverName, user, pass string, ops ...string) [][]byte {
	t.Helper()
	requireInterop(t, "python3")
	if len(ops) == 0 {
		ops = []string{"retr-all", "quit"}
	}
	host, port := splitHostPort(t, addr)
	params, err := json.Marshal(map[string]any{
		"mode": mode, "host": host, "port": port, "cafile": cafile, "server_name": serverName,
		"user": user, "password": pass, "ops": ops,
	})
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "poplib_client.py")
	writeFile(t, script, []byte(poplibScript), 0o600)
	bin, _ := lookBinary("python3")
	cmd := exec.Command(bin, "-I", script) // -I: no user site, no PYTHON* env
	cmd.Stdin = bytes.NewReader(params)
	secrets := []string{pass}
	res := runClient(t, cmd, clientTimeout, secrets...)
	if res.ExitCode != 0 {
		failCommand(t, cmd, res, secrets, "python poplib (%s) against %s failed", mode, addr)
	}
	var out struct{ Messages []string }
	if err := json.Unmarshal(res.Stdout, &out); err != nil {
		failCommand(t, cmd, res, secrets, "python poplib: bad output: %v", err)
	}
	msgs := make([][]byte, 0, len(out.Messages))
	for _, m := range out.Messages {
		b, err := base64.StdEncoding.DecodeString(m)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	return msgs
}

// fetchmailMDA is the delivery agent fetchmail runs once per message: it
// stores stdin as DIR/msg.NNNNNN, numbered in delivery order (fetchmail
// delivers one message at a time).
const fetchmailMDA = `#!/bin/sh
set -eu
dir="$1"
n=$(ls "$dir" | wc -l)
f=$(printf '%s/msg.%06d' "$dir" "$n")
cat > "$f.part"
mv "$f.part" "$f"
`

// fetchmailAll fetches every message of user's mailbox with fetchmail in
// keep mode (nothing is deleted) through an MDA, and returns them in order,
// normalized by normalizeFetchmail. mode is "ssl" (implicit TLS) or "stls"
// (sslproto TLS1.2+ without ssl: STLS is mandatory, no plaintext fallback).
// The certificate is checked (sslcertck) against cafile only, for the name
// serverName (sslcommonname; empty: the host of addr).
//
// fetchmail runs with HOME and FETCHMAILHOME in a temporary directory, its
// own pid file (as root it would otherwise lock /var/run/fetchmail.pid),
// an rc file of mode 0600 (it refuses others), no syslog.
func fetchmailAll(t *testing.T, mode, addr, cafile, serverName, userName, pass string) [][]byte {
	t.Helper()
	requireInterop(t, "fetchmail")
	host, port := splitHostPort(t, addr)
	if serverName == "" {
		serverName = host
	}
	home := t.TempDir()
	outDir := filepath.Join(home, "delivered")
	if err := os.Mkdir(outDir, 0o700); err != nil {
		t.Fatal(err)
	}
	mda := filepath.Join(home, "mda.sh")
	writeFile(t, mda, []byte(fetchmailMDA), 0o700)

	var tlsOpts string
	switch mode {
	case "ssl":
		tlsOpts = "ssl sslproto 'TLS1.2+'"
	case "stls":
		tlsOpts = "sslproto 'TLS1.2+'"
	default:
		t.Fatalf("fetchmailAll: unknown mode %q", mode)
	}
	for _, s := range []string{userName, pass, cafile, serverName, mda, outDir} {
		if strings.ContainsAny(s, "\"'\\ \n%") {
			t.Fatalf("fetchmailAll: %q cannot go into the rc file unquoted", redact(s, pass))
		}
	}
	rc := filepath.Join(home, "fetchmailrc")
	// "no stripcr": with an MDA, fetchmail strips CRs by default. The other
	// "no" options keep fetchmail from editing the message.
	writeFile(t, rc, fmt.Appendf(nil, `set no syslog
set no bouncemail
poll %s with proto POP3 service %d auth password timeout 60
  user "%s" there with password "%s"
  options keep fetchall no rewrite no stripcr no forcecr no mimedecode no dropstatus no dropdelivered
  %s sslcertck sslcertfile "%s" sslcommonname "%s"
  mda "%s %s"
`, host, port, userName, pass, tlsOpts, cafile, serverName, mda, outDir), 0o600)

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := lookBinary("fetchmail")
	cmd := exec.Command(bin, "-v", "--nosyslog", "-f", rc,
		"--pidfile", filepath.Join(home, "fetchmail.pid"), "--idfile", filepath.Join(home, "fetchids"))
	cmd.Dir = home
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "FETCHMAILHOME=" + home,
		"FETCHMAILUSER=" + me.Username, // the MDA runs as this user when fetchmail is root
		"LC_ALL=C",
	}
	secrets := []string{pass}
	res := runClient(t, cmd, clientTimeout, secrets...)
	// 0: messages retrieved, 1: no mail; anything else is an error.
	if res.ExitCode != 0 && res.ExitCode != 1 {
		failCommand(t, cmd, res, secrets, "fetchmail (%s) from %s failed", mode, addr)
	}
	entries, err := os.ReadDir(outDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".part") {
			failCommand(t, cmd, res, secrets, "fetchmail left a partial delivery %s", e.Name())
		}
		names = append(names, e.Name())
	}
	slices.Sort(names)
	msgs := make([][]byte, 0, len(names))
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(outDir, n))
		if err != nil {
			t.Fatal(err)
		}
		m, err := normalizeFetchmail(b)
		if err != nil {
			failCommand(t, cmd, res, secrets, "fetchmail delivery %s: %v", n, err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// normalizeFetchmail undoes what fetchmail adds to a message it delivers:
// the "Received: from ... by ... with POP3 (fetchmail-...)" trace header it
// prepends (RFC 5321 §4.4 asks every relay to). That header, with its
// continuation lines, is checked to be there and removed; nothing else is
// touched, so the rest must equal the message on the server byte for byte.
func normalizeFetchmail(msg []byte) ([]byte, error) {
	if !bytes.HasPrefix(msg, []byte("Received: ")) {
		return nil, fmt.Errorf("no Received header first: %q", firstLine(msg))
	}
	rest := msg
	var header []byte
	for i := 0; ; i++ {
		line, after, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return nil, fmt.Errorf("message ends inside the Received header")
		}
		if i > 0 && len(line) > 0 && line[0] != ' ' && line[0] != '\t' {
			break // the next header starts
		}
		header = append(header, line...)
		rest = after
	}
	if !bytes.Contains(header, []byte("fetchmail")) {
		return nil, fmt.Errorf("first Received header is not fetchmail's: %q", header)
	}
	return rest, nil
}

func firstLine(b []byte) []byte {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return line
}

func splitHostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	if _, err := fmt.Sscan(portStr, &port); err != nil {
		t.Fatalf("port in %q: %v", addr, err)
	}
	return host, port
}

// testMessage builds a deterministic RFC 5322 message of exactly size bytes
// (at least about 300) from seed. Lines end in CRLF only, the message ends
// in CRLF, and the body is full of what POP3 framing must survive: lines
// starting with ".", lines that are only "." or "..", "From " lines, empty
// lines, UTF-8 and other 8-bit bytes (never NUL, bare CR or bare LF), and
// line lengths from 0 to 998 octets.
func testMessage(size int, seed string) []byte {
	h := fnv.New64a()
	h.Write([]byte(seed))
	rng := rand.New(rand.NewPCG(h.Sum64(), uint64(size)))
	var b bytes.Buffer
	fmt.Fprintf(&b, "Return-Path: <sender@example.net>\r\n")
	fmt.Fprintf(&b, "From: Sender <sender@example.net>\r\n")
	fmt.Fprintf(&b, "To: Recipient <rcpt@example.com>\r\n")
	fmt.Fprintf(&b, "Subject: popgate interop %s (%d bytes)\r\n", seed, size)
	fmt.Fprintf(&b, "Message-ID: <%016x.%d@interop.popgate.test>\r\n", h.Sum64(), size)
	fmt.Fprintf(&b, "Date: Sat, 01 Mar 2025 12:00:00 +0000\r\n")
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\n")
	fmt.Fprintf(&b, "Content-Transfer-Encoding: 8bit\r\n")
	fmt.Fprintf(&b, "\r\n")
	fixed := []string{".", "..", "...", ".leading dot", "..two dots", ". ", "", "From the top", ">From quoted", "Grüße aus Köln — ünïcödé ✓", "\t tab and space "}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_=+*/()<>@!?#"
	for b.Len() < size {
		var line []byte
		switch r := rng.IntN(10); {
		case r < 3:
			line = []byte(fixed[rng.IntN(len(fixed))])
		case r == 3:
			// 8-bit bytes without CR, LF or NUL.
			for range rng.IntN(80) {
				line = append(line, byte(0x80+rng.IntN(0x80)))
			}
		case r == 4:
			line = append([]byte("."), randomText(rng, alphabet, rng.IntN(120))...)
		case r == 5 && rng.IntN(20) == 0:
			line = randomText(rng, alphabet, 900+rng.IntN(99)) // up to 998, RFC 5322 §2.1.1
		default:
			line = randomText(rng, alphabet, rng.IntN(100))
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	// Trim to size, keeping the CRLF at the end and none torn apart.
	out := b.Bytes()[:size]
	out[size-2], out[size-1] = '\r', '\n'
	if out[size-3] == '\r' {
		out[size-3] = 'x'
	}
	return out
}

func randomText(rng *rand.Rand, alphabet string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return b
}

// popConn is a minimal POP3 client for what the real clients cannot do on
// purpose: DELE and then vanish, read a refusal word for word.
type popConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dialPOP3 connects to addr, over implicit TLS when conf is set, and reads
// the greeting, which must be +OK.
func dialPOP3(t *testing.T, addr string, conf *tls.Config) *popConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	p := &popConn{t: t, c: c}
	t.Cleanup(func() { p.c.Close() })
	if conf != nil {
		p.startTLS(conf)
	}
	p.r = bufio.NewReader(p.c)
	if g := p.readLine(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting from %s: %q", addr, g)
	}
	return p
}

func (p *popConn) startTLS(conf *tls.Config) {
	p.t.Helper()
	tc := tls.Client(p.c, conf)
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		p.t.Fatalf("TLS handshake with %s: %v", p.c.RemoteAddr(), err)
	}
	p.c = tc
	p.r = bufio.NewReader(tc)
}

// stls upgrades the connection with STLS.
func (p *popConn) stls(conf *tls.Config) {
	p.t.Helper()
	if resp := p.cmd("STLS"); !strings.HasPrefix(resp, "+OK") {
		p.t.Fatalf("STLS: %q", resp)
	}
	p.startTLS(conf)
}

// cmd sends line and returns the one-line response without CRLF. A PASS
// argument is never printed.
func (p *popConn) cmd(line string) string {
	p.t.Helper()
	_ = p.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := p.c.Write([]byte(line + "\r\n")); err != nil {
		p.t.Fatalf("send %s: %v", commandName(line), err)
	}
	return p.readLine()
}

func (p *popConn) readLine() string {
	p.t.Helper()
	_ = p.c.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read from %s: %v (got %q)", p.c.RemoteAddr(), err, line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// login sends USER and PASS and fails t unless both are accepted.
func (p *popConn) login(user, pass string) {
	p.t.Helper()
	if resp := p.cmd("USER " + user); !strings.HasPrefix(resp, "+OK") {
		p.t.Fatalf("USER %s: %q", user, resp)
	}
	if resp := p.cmd("PASS " + pass); !strings.HasPrefix(resp, "+OK") {
		p.t.Fatalf("PASS for %s: %q", user, redact(resp, pass))
	}
}

// retr fetches message n, undoing dot-stuffing (RFC 1939 §3).
func (p *popConn) retr(n int) []byte {
	p.t.Helper()
	if resp := p.cmd(fmt.Sprintf("RETR %d", n)); !strings.HasPrefix(resp, "+OK") {
		p.t.Fatalf("RETR %d: %q", n, resp)
	}
	var msg []byte
	for {
		_ = p.c.SetDeadline(time.Now().Add(30 * time.Second))
		line, err := p.r.ReadBytes('\n')
		if err != nil {
			p.t.Fatalf("RETR %d: %v", n, err)
		}
		if string(line) == ".\r\n" {
			return msg
		}
		msg = append(msg, bytes.TrimPrefix(line, []byte("."))...)
	}
}

// drop closes the connection without QUIT.
func (p *popConn) drop() {
	p.c.Close()
}

func commandName(line string) string {
	name, _, _ := strings.Cut(line, " ")
	return name
}
