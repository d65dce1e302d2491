package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// updateTranscripts rewrites testdata/transcripts from the conversations
// instead of comparing them, as crypto/tls's -update does for its handshake
// transcripts.
var updateTranscripts = flag.Bool("update", false, "rewrite testdata/transcripts/*.txt from what popgate says now")

// The conversations log in with testPass and trWrongPass. The transcripts
// show them, and the SASL payloads carrying them, as *** (trRedact), and
// trCheckNoSecrets makes sure that none slips through.
const (
	trWrongPass = "wrong-PASSWORD-never-written"
	// trBackendAddr is backend b1's address in the transcripts; the tap
	// (trTap) answers it, so no port number changes from run to run.
	trBackendAddr = "b1.test:110"
	// trBackendGreeting replaces pop3test's greeting, which carries a
	// timestamp.
	trBackendGreeting = "pop3test ready"
	// trIndent sets the backend leg apart from the client's.
	trIndent = "    "
)

// trLegend follows each transcript's own description.
const trLegend = `# C: client to popgate, S: popgate to client; indented, the backend leg:
# P: popgate to backend, B: backend to popgate. A step is one write by the
# client (or a TLS handshake), what popgate and the backend said meanwhile,
# then what popgate answered. Lines are shown without CRLF; a line that
# would not read plainly is Go-quoted with its line end. Passwords and the
# SASL payloads carrying them read ***.
# Regenerate: go test ./proxy -run TestTranscripts -update
`

// trConversation is one scripted conversation of a client with popgate,
// and of popgate with the backend it logs in to.
type trConversation struct {
	name  string // the file name, without .txt
	about string // what the conversation shows, for the file's header
	// listener is the client's listener: "pop3s" (implicit TLS), "pop3"
	// (STLS) or "plain" (none), as the harness names them.
	listener    string
	backendMode TLSMode
	backend     func(*pop3test.Server) // tweaks the backend
	config      func(*Config)          // tweaks popgate
	backendDown bool                   // the backend refuses connections
	run         func(c *trClient)      // the client's side, after the greeting
}

// TestTranscripts replays the main conversations through a real Server and
// the in-memory backend and compares both legs with
// testdata/transcripts/*.txt, so that a reviewer can read what popgate says
// without running it. After an intended change, -update rewrites the files;
// review their diff like code.
func TestTranscripts(t *testing.T) {
	dir := filepath.Join("testdata", "transcripts")
	if *updateTranscripts {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]bool{}
	for _, cv := range trConversations() {
		file := filepath.Join(dir, cv.name+".txt")
		files[filepath.Base(file)] = true
		t.Run(cv.name, func(t *testing.T) {
			t.Parallel()
			got := cv.header() + "\n" + cv.record(t)
			if t.Failed() {
				return
			}
			trCheckNoSecrets(t, got)
			if *updateTranscripts {
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (go test ./proxy -run TestTranscripts -update writes it)", err)
			}
			if got != string(want) {
				t.Errorf("popgate's conversation differs from %s (-want +got):\n%s\nIf the change is intended: go test ./proxy -run TestTranscripts -update, and review the diff.",
					file, trDiff(string(want), got))
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".txt") && !files[e.Name()] {
			t.Errorf("%s: no conversation records it; delete it", filepath.Join(dir, e.Name()))
		}
	}
}

func trConversations() []trConversation {
	login := func(c *trClient) {
		c.cmd("USER " + testUser)
		c.cmd("PASS " + testPass)
	}
	quit := func(c *trClient) {
		c.cmd("QUIT")
		c.eof()
	}
	refusedWith := func(code string) func(*pop3test.Server) {
		return func(s *pop3test.Server) { s.LoginError = code }
	}
	return []trConversation{
		{
			name:     "pop3s-retr",
			about:    "POP3S: USER/PASS, STAT, RETR of a message with a line that starts\nwith a dot (dot-stuffed on the wire, relayed as it is), QUIT.",
			listener: "pop3s",
			run: func(c *trClient) {
				login(c)
				c.cmd("STAT")
				c.cmd("RETR 2")
				quit(c)
			},
		},
		{
			name:     "pipelined-login",
			about:    "POP3S: PASS, STAT and QUIT in one write. popgate logs in with PASS\nalone and hands the backend the rest once the login succeeded\n(RFC 2449 §6.6).",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("USER " + testUser)
				c.cmd("PASS "+testPass, "STAT", "QUIT")
				c.eof()
			},
		},
		{
			name:     "capa-stls",
			about:    "STLS listener: CAPA offers STLS and no login before TLS, USER is\nrefused in plaintext; after STLS, CAPA offers USER and SASL and no STLS.",
			listener: "pop3",
			run: func(c *trClient) {
				c.cmd("CAPA")
				c.cmd("USER " + testUser)
				c.cmd("STLS")
				c.starttls()
				c.cmd("CAPA")
				c.cmd("STLS")
				quit(c)
			},
		},
		{
			name:     "stls-pipelined",
			about:    "STLS listener: the client pipelines USER behind STLS. popgate drops\nwhat came in plaintext behind STLS unread (CVE-2011-0411), so after the\nhandshake PASS finds no USER.",
			listener: "pop3",
			run: func(c *trClient) {
				c.pipeline(1, "STLS", "USER "+testUser)
				c.starttls()
				c.cmd("PASS " + testPass)
				quit(c)
			},
		},
		{
			name:     "auth-plain-continuation",
			about:    "POP3S: AUTH PLAIN without an initial response: popgate prompts with\n\"+ \" and reads the payload on the next line (RFC 5034 §4). The backend\noffers USER, so popgate logs in to it with USER/PASS.",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("AUTH PLAIN")
				c.cmd(auth.EncodePlain(testUser, testPass))
				quit(c)
			},
		},
		{
			name:     "auth-plain-initial",
			about:    "POP3S: AUTH PLAIN with an initial response (RFC 5034, RFC 4616).",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("AUTH PLAIN " + auth.EncodePlain(testUser, testPass))
				quit(c)
			},
		},
		{
			name:     "auth-login",
			about:    "POP3S: AUTH LOGIN, prompting for the user name and then the password\n(base64 \"Username:\" and \"Password:\").",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("AUTH LOGIN")
				c.cmd(b64(testUser))
				c.cmd(b64(testPass))
				quit(c)
			},
		},
		{
			name:     "refused-wrong-password",
			about:    "A wrong password: the backend refuses it with [AUTH], and so does\npopgate.",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("USER " + testUser)
				c.cmd("PASS " + trWrongPass)
				quit(c)
			},
		},
		{
			name:     "refused-backend-wording",
			about:    "The backend refuses the credentials in words of its own: popgate\nanswers with its own, the answer every refusal of credentials gets, so\nthat no backend's wording tells a wrong password from an unknown name\n(RelayBackendErrors off, the default).",
			listener: "pop3s",
			backend:  refusedWith("[AUTH] no mailbox alice@example.com here"),
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:     "refused-unknown-user",
			about:    "A user no route knows: popgate refuses the login with the words of a\nwrong password, without asking any backend.",
			listener: "pop3s",
			run: func(c *trClient) {
				c.cmd("USER nobody@example.com")
				c.cmd("PASS " + testPass)
				quit(c)
			},
		},
		{
			name:     "refused-too-many",
			about:    "Three failed logins in one session: popgate answers the third and\ncloses the connection.",
			listener: "pop3s",
			run: func(c *trClient) {
				for range 3 {
					c.cmd("USER " + testUser)
					c.cmd("PASS " + trWrongPass)
				}
				c.eof()
			},
		},
		{
			name:     "refused-in-use",
			about:    "The backend accepts the password but the mailbox is locked: its\n[IN-USE] answer is relayed as it is (RFC 2449 §8.1.2).",
			listener: "pop3s",
			backend:  refusedWith("[IN-USE] maildrop already locked by another session"),
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:     "refused-login-delay",
			about:    "The backend accepts the password but asks the client to wait: its\n[LOGIN-DELAY] answer is relayed as it is (RFC 2449 §8.1.1).",
			listener: "pop3s",
			backend:  refusedWith("[LOGIN-DELAY] wait 5 minutes between logins"),
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:     "refused-sys-perm",
			about:    "The backend has trouble of its own: its [SYS/PERM] answer is relayed\nas it is (RFC 3206).",
			listener: "pop3s",
			backend:  refusedWith("[SYS/PERM] mailbox is corrupt, ask your administrator"),
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:        "refused-backend-down",
			about:       "The backend cannot be reached: popgate answers [SYS/TEMP] (RFC 3206).",
			listener:    "pop3s",
			backendDown: true,
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:     "refused-throttled",
			about:    "The failed-login throttle, at one failure per user: after a wrong\npassword even the right one is refused with [SYS/TEMP], and the backend\nis not asked.",
			listener: "pop3s",
			config: func(cfg *Config) {
				fixed := time.Date(2025, 3, 3, 9, 0, 0, 0, time.UTC)
				cfg.Throttle = auth.NewThrottle(auth.ThrottleConfig{MaxPerUser: 1, Window: time.Hour, Now: func() time.Time { return fixed }})
			},
			run: func(c *trClient) {
				c.cmd("USER " + testUser)
				c.cmd("PASS " + trWrongPass)
				login(c)
				quit(c)
			},
		},
		{
			name:        "backend-stls",
			about:       "A backend reached with STLS: popgate checks that it offers STLS,\nupgrades, asks CAPA again (RFC 2595 §4) and only then logs in.",
			listener:    "pop3s",
			backendMode: TLSStartTLS,
			run: func(c *trClient) {
				login(c)
				c.cmd("STAT")
				quit(c)
			},
		},
		{
			name:        "backend-pop3s",
			about:       "A backend reached with implicit TLS (POP3S).",
			listener:    "pop3s",
			backendMode: TLSImplicit,
			run: func(c *trClient) {
				login(c)
				c.cmd("STAT")
				quit(c)
			},
		},
		{
			name:     "backend-user-and-plain",
			about:    "A backend that offers both USER and SASL PLAIN: popgate logs in to it\nwith AUTH PLAIN and its initial response, one round trip instead of\nthe two of USER and PASS.",
			listener: "pop3s",
			backend: func(s *pop3test.Server) {
				s.SASL = []string{"PLAIN"}
			},
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
		{
			name:     "backend-auth-plain",
			about:    "A backend that offers SASL PLAIN and no USER: popgate logs in to it\nwith AUTH PLAIN, whatever the client used.",
			listener: "pop3s",
			backend: func(s *pop3test.Server) {
				s.NoUSER = true
				s.SASL = []string{"PLAIN"}
			},
			run: func(c *trClient) {
				login(c)
				quit(c)
			},
		},
	}
}

// header is the file's description of the conversation.
func (cv trConversation) header() string {
	var b strings.Builder
	for _, l := range strings.Split(cv.about, "\n") {
		b.WriteString(strings.TrimRight("# "+l, " ") + "\n")
	}
	backend := "popgate reaches backend b1 " + map[TLSMode]string{
		TLSNone:     "in plaintext",
		TLSImplicit: "with implicit TLS",
		TLSStartTLS: "with STLS",
	}[cv.backendMode]
	if cv.backendDown {
		backend = "backend b1 refuses connections"
	}
	fmt.Fprintf(&b, "#\n# The client uses listener %s (%s); %s.\n#\n", cv.listener, trModeName(trListenerTLS(cv.listener)), backend)
	b.WriteString(trLegend)
	return b.String()
}

// trModeName names a listener's TLS mode for the transcript.
func trModeName(m TLSMode) string {
	switch m {
	case TLSImplicit:
		return "implicit TLS"
	case TLSStartTLS:
		return "STLS"
	}
	return "plaintext"
}

// trListenerTLS is the TLS mode of the harness's listener name.
func trListenerTLS(name string) TLSMode {
	switch name {
	case "pop3s":
		return TLSImplicit
	case "pop3":
		return TLSStartTLS
	}
	return TLSNone
}

// record runs the conversation and returns its transcript.
func (cv trConversation) record(t *testing.T) string {
	tr := &transcript{}
	tp := &trTap{tr: tr, down: cv.backendDown, implicit: cv.backendMode == TLSImplicit}
	h := newHarness(t, harnessOpts{
		backendMode: cv.backendMode,
		listeners:   []Listener{{Name: cv.listener, TLS: trListenerTLS(cv.listener)}},
		backend: func(s *pop3test.Server) {
			s.Greeting = trBackendGreeting
			if cv.backend != nil {
				cv.backend(s)
			}
			tp.backend = s
			tp.serverTLS = s.TLSConfig
		},
		config: func(cfg *Config) {
			b := cfg.Backends["b1"]
			b.Address = trBackendAddr
			tp.clientTLS = b.TLSConfig
			cfg.DialContext = tp.dial
			cfg.FailureDelay = 0
			cfg.AssumedFailureTime = time.Millisecond
			if cv.config != nil {
				cv.config(cfg)
			}
		},
	})
	c := &trClient{t: t, tr: tr}
	c.connect(h, cv.listener)
	cv.run(c)
	if !c.closed {
		c.conn.Close()
		tr.begin("-- the client closes the connection --")
	}
	waitFor(t, "session end", func() bool { return h.srv.Sessions() == 0 })
	tp.wait(t)
	return tr.String()
}

// transcript collects a conversation step by step. A step starts with what
// the client does; what is said on the backend leg and what the client
// reads until its next step belong to it. Every backend line of a step is
// caused by the client's write, and the client reads popgate's answer only
// after it, so the order is the same in every run.
type transcript struct {
	mu   sync.Mutex
	out  []string // finished steps
	sent []string // the current step: what the client did
	back []string // the current step: the backend leg
	got  []string // the current step: what the client received
}

// begin ends the current step and starts one with lines.
func (tr *transcript) begin(lines ...string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.flushLocked()
	tr.sent = append(tr.sent, lines...)
}

func (tr *transcript) backend(line string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.back = append(tr.back, line)
}

func (tr *transcript) received(line string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, line)
}

func (tr *transcript) flushLocked() {
	tr.out = append(tr.out, tr.sent...)
	for _, l := range tr.back {
		tr.out = append(tr.out, trIndent+l)
	}
	tr.out = append(tr.out, tr.got...)
	tr.sent, tr.back, tr.got = nil, nil, nil
}

// String ends the current step and returns the transcript.
func (tr *transcript) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.flushLocked()
	return strings.Join(tr.out, "\n") + "\n"
}

// trLine renders one line received or sent, line end included, after
// prefix: redacted, without its CRLF when it reads plainly, else Go-quoted
// with whatever line end it has.
func trLine(prefix, raw string) string {
	body, end := raw, ""
	switch {
	case strings.HasSuffix(raw, "\r\n"):
		body, end = raw[:len(raw)-2], "\r\n"
	case strings.HasSuffix(raw, "\n"):
		body, end = raw[:len(raw)-1], "\n"
	}
	body = trRedact(body)
	if end != "\r\n" || !trPlain(body) {
		return prefix + strconv.Quote(body+end)
	}
	if body == "" {
		return strings.TrimRight(prefix, " ")
	}
	return prefix + body
}

// trPlain reports whether s reads the same unquoted: printable ASCII, no
// space at its end, no quote at its start.
func trPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return !strings.HasSuffix(s, " ") && !strings.HasPrefix(s, `"`)
}

// trRedact hides passwords: PASS's argument, AUTH PLAIN's initial response,
// and any line that is base64 of something carrying a test password (a
// SASL response).
func trRedact(s string) string {
	verb, arg, hasArg := strings.Cut(s, " ")
	switch {
	case strings.EqualFold(verb, "PASS") && hasArg:
		return verb + " ***"
	case strings.EqualFold(verb, "AUTH") && hasArg:
		if mech, ir, ok := strings.Cut(arg, " "); ok && (strings.EqualFold(mech, "PLAIN") || trSecret(ir)) {
			return verb + " " + mech + " ***"
		}
	case trSecret(s):
		return "***"
	}
	return s
}

func trSecret(s string) bool {
	b, err := auth.DecodeBase64(s)
	if err != nil {
		return false
	}
	for _, p := range []string{testPass, trWrongPass} {
		if bytes.Contains(b, []byte(p)) {
			return true
		}
	}
	return false
}

// trCheckNoSecrets fails when a password, or a payload the conversations
// send it in, made it into a transcript.
func trCheckNoSecrets(t *testing.T, transcript string) {
	t.Helper()
	for _, p := range []string{testPass, trWrongPass} {
		for _, secret := range []string{p, b64(p), auth.EncodePlain(testUser, auth.Password(p))} {
			if strings.Contains(transcript, secret) {
				t.Errorf("transcript contains a password or a payload with one:\n%s", transcript)
				return
			}
		}
	}
}

// trClient is the client's side: each write is a step of the transcript,
// each line it reads is recorded.
type trClient struct {
	t      *testing.T
	tr     *transcript
	h      *harness
	conn   net.Conn
	br     *bufio.Reader
	closed bool // popgate closed the connection
}

func (c *trClient) deadline() { c.conn.SetDeadline(time.Now().Add(10 * time.Second)) }

// connect dials the listener, shakes hands on implicit TLS and reads the
// greeting.
func (c *trClient) connect(h *harness, listener string) {
	c.t.Helper()
	c.h = h
	conn, err := net.Dial("tcp", h.addrs[listener])
	if err != nil {
		c.t.Fatal(err)
	}
	c.conn = conn
	c.t.Cleanup(func() { c.conn.Close() })
	mode := trListenerTLS(listener)
	lines := []string{fmt.Sprintf("-- the client connects to listener %s (%s) --", listener, trModeName(mode))}
	if mode == TLSImplicit {
		lines = append(lines, c.handshake())
	}
	c.br = bufio.NewReader(c.conn)
	c.tr.begin(lines...)
	c.readLine()
}

// handshake starts TLS and returns the transcript's line for it.
func (c *trClient) handshake() string {
	c.t.Helper()
	tc := tls.Client(c.conn, c.h.front.client)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	return trTLSLine(tc)
}

func trTLSLine(tc *tls.Conn) string {
	return "-- TLS handshake (" + tls.VersionName(tc.ConnectionState().Version) + ") --"
}

// starttls shakes hands after popgate's +OK to STLS; what the client had
// buffered in plaintext is dropped with the old reader.
func (c *trClient) starttls() {
	c.t.Helper()
	line := c.handshake()
	c.br = bufio.NewReader(c.conn)
	c.tr.begin(line)
}

// cmd writes lines in one write and reads an answer to each.
func (c *trClient) cmd(lines ...string) {
	c.t.Helper()
	c.pipeline(len(lines), lines...)
}

// pipeline writes lines in one write and reads the answers to the first n.
func (c *trClient) pipeline(n int, lines ...string) {
	c.t.Helper()
	var step []string
	if len(lines) > 1 {
		step = append(step, fmt.Sprintf("-- one write of %d lines: --", len(lines)))
	}
	var b strings.Builder
	for _, l := range lines {
		step = append(step, trLine("C: ", l+"\r\n"))
		b.WriteString(l + "\r\n")
	}
	c.tr.begin(step...)
	c.deadline()
	if _, err := io.WriteString(c.conn, b.String()); err != nil {
		c.t.Fatalf("write %q: %v", trRedact(lines[0]), err)
	}
	for _, l := range lines[:n] {
		c.answer(l)
	}
}

// answer reads the answer to command line cmd: one line, or a multi-line
// answer where an +OK to cmd is followed by one (RFC 1939 §3).
func (c *trClient) answer(cmd string) {
	c.t.Helper()
	if first := c.readLine(); !strings.HasPrefix(first, "+OK") || !trMultiLine(cmd) {
		return
	}
	for c.readLine() != ".\r\n" {
	}
}

func trMultiLine(cmd string) bool {
	verb, arg, _ := strings.Cut(cmd, " ")
	switch strings.ToUpper(verb) {
	case "CAPA", "RETR", "TOP":
		return true
	case "LIST", "UIDL", "AUTH":
		return arg == ""
	}
	return false
}

func (c *trClient) readLine() string {
	c.t.Helper()
	c.deadline()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, l)
	}
	c.tr.received(trLine("S: ", l))
	return l
}

// eof reads until popgate closes the connection.
func (c *trClient) eof() {
	c.t.Helper()
	for {
		c.deadline()
		l, err := c.br.ReadString('\n')
		if l != "" {
			c.tr.received(trLine("S: ", l))
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("popgate did not close the connection: %v", err)
			}
			break
		}
	}
	c.closed = true
	c.tr.received("-- popgate closes the connection --")
}

// trTap is backend b1 as popgate dials it (Config.DialContext): a relay to
// the pop3test backend that records the backend leg. Where popgate and the
// backend speak TLS, the tap ends popgate's TLS with the backend's
// certificate and opens its own to the backend, so that the transcript
// shows what travels inside. Its fields are set by the harness's hooks,
// before the Server starts.
type trTap struct {
	tr        *transcript
	backend   *pop3test.Server
	serverTLS *tls.Config // the backend's certificate, shown to popgate
	clientTLS *tls.Config // popgate's trust in it, used towards the backend
	implicit  bool        // backend b1 speaks TLS from the first byte
	down      bool        // backend b1 refuses connections

	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []string
}

func (tp *trTap) errorf(format string, args ...any) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.errs = append(tp.errs, fmt.Sprintf(format, args...))
}

// wait waits for the relays to end and reports what went wrong in them.
func (tp *trTap) wait(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		tp.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend relay did not end")
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, e := range tp.errs {
		t.Error(e)
	}
}

func (tp *trTap) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if tp.down {
		tp.tr.backend("-- popgate cannot connect to " + addr + ": connection refused --")
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	tp.tr.backend("-- popgate connects to " + addr + " --")
	popgateEnd, front := net.Pipe()
	back, backendEnd := net.Pipe()
	l := &trLink{tap: tp, front: front, back: back, stls: make(chan struct{}, 1), resume: make(chan [2]net.Conn)}
	tp.wg.Add(2)
	go func() {
		defer tp.wg.Done()
		tp.backend.ServeConn(backendEnd)
	}()
	go l.run()
	return &trCloseConn{Conn: popgateEnd, link: l}, nil
}

// trLink is one backend connection through the tap.
type trLink struct {
	tap         *trTap
	front, back net.Conn // the tap's ends of the pipes to popgate and the backend

	stls   chan struct{}    // up → down: STLS went to the backend
	resume chan [2]net.Conn // down → up: the connections to go on with after STLS
	mu     sync.Mutex
	closed bool // who closed first is recorded
}

// closedBy records the first close of the connection, by popgate or the
// backend.
func (l *trLink) closedBy(who string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.tap.tr.backend("-- " + who + " closes the connection --")
	}
}

// trCloseConn is popgate's end of the backend connection; its Close is
// recorded in popgate's goroutine, before popgate answers the client.
type trCloseConn struct {
	net.Conn
	link *trLink
}

func (c *trCloseConn) Close() error {
	c.link.closedBy("popgate")
	return c.Conn.Close()
}

func (l *trLink) run() {
	defer l.tap.wg.Done()
	front, back := l.front, l.back
	if l.tap.implicit {
		var err error
		if front, back, err = l.handshake(); err != nil {
			l.tap.errorf("backend relay: %v", err)
			l.front.Close()
			l.back.Close()
			return
		}
	}
	l.tap.wg.Add(1)
	go l.up(front, back)
	l.down(front, back)
}

// handshake ends popgate's TLS and starts the tap's own with the backend.
func (l *trLink) handshake() (front, back net.Conn, err error) {
	deadline := time.Now().Add(10 * time.Second)
	l.front.SetDeadline(deadline)
	l.back.SetDeadline(deadline)
	defer l.front.SetDeadline(time.Time{})
	defer l.back.SetDeadline(time.Time{})
	ft := tls.Server(l.front, l.tap.serverTLS)
	if err := ft.Handshake(); err != nil {
		return nil, nil, fmt.Errorf("TLS handshake with popgate: %w", err)
	}
	bt := tls.Client(l.back, l.tap.clientTLS)
	if err := bt.Handshake(); err != nil {
		return nil, nil, fmt.Errorf("TLS handshake with the backend: %w", err)
	}
	l.tap.tr.backend(trTLSLine(ft))
	return ft, bt, nil
}

// up relays popgate → backend, recording each line before it goes on.
// After STLS it waits for down to say how to go on.
func (l *trLink) up(front, back net.Conn) {
	defer l.tap.wg.Done()
	defer l.back.Close() // the backend learns that popgate is gone
	buf := make([]byte, 32<<10)
	var partial []byte
	for {
		n, err := front.Read(buf)
		if n > 0 {
			var lines []string
			lines, partial = trSplit(partial, buf[:n])
			stls := false
			for i, ln := range lines {
				l.tap.tr.backend(trLine("P: ", ln))
				if strings.EqualFold(ln, "STLS\r\n") {
					stls = true
					if i < len(lines)-1 || len(partial) > 0 {
						l.tap.errorf("popgate sent bytes behind STLS before the backend's answer")
					}
				}
			}
			if stls {
				l.stls <- struct{}{}
			}
			if _, err := back.Write(buf[:n]); err != nil {
				return
			}
			if stls {
				next, ok := <-l.resume
				if !ok {
					return
				}
				front, back = next[0], next[1]
			}
		}
		if err != nil {
			if len(partial) > 0 {
				l.tap.tr.backend(trLine("P: ", string(partial)))
			}
			return
		}
	}
}

// down relays backend → popgate, recording each line before it goes on.
// An +OK to STLS is followed by the two handshakes.
func (l *trLink) down(front, back net.Conn) {
	defer close(l.resume)
	buf := make([]byte, 32<<10)
	var partial []byte
	stls := false
	for {
		n, err := back.Read(buf)
		if n > 0 {
			select {
			case <-l.stls:
				stls = true
			default:
			}
			var lines []string
			lines, partial = trSplit(partial, buf[:n])
			for _, ln := range lines {
				l.tap.tr.backend(trLine("B: ", ln))
			}
			if _, err := front.Write(buf[:n]); err != nil {
				break
			}
			if stls && len(lines) > 0 {
				stls = false
				if strings.HasPrefix(lines[0], "+OK") && len(lines) == 1 && len(partial) == 0 {
					if front, back, err = l.handshake(); err != nil {
						l.tap.errorf("backend relay: %v", err)
						break
					}
				}
				l.resume <- [2]net.Conn{front, back}
			}
		}
		if err != nil {
			if len(partial) > 0 {
				l.tap.tr.backend(trLine("B: ", string(partial)))
			}
			break
		}
	}
	l.closedBy("the backend")
	l.front.Close()
}

// trSplit appends b to partial and splits off the complete lines.
func trSplit(partial, b []byte) (lines []string, rest []byte) {
	data := append(partial, b...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return lines, data
		}
		lines = append(lines, string(data[:i+1]))
		data = data[i+1:]
	}
}

// trDiff is a line diff of want and got, with a little context.
func trDiff(want, got string) string {
	a := strings.Split(want, "\n")
	b := strings.Split(got, "\n")
	// lcs[i][j] is the longest common subsequence of a[i:] and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		mark byte
		line string
	}
	var ops []op
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, op{' ', a[i]})
			i++
			j++
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', a[i]})
			i++
		default:
			ops = append(ops, op{'+', b[j]})
			j++
		}
	}
	const context = 3
	var out strings.Builder
	skipped := false
	for k, o := range ops {
		near := false
		for d := max(k-context, 0); d <= min(k+context, len(ops)-1); d++ {
			if ops[d].mark != ' ' {
				near = true
				break
			}
		}
		if !near {
			if !skipped {
				out.WriteString("  ...\n")
				skipped = true
			}
			continue
		}
		skipped = false
		fmt.Fprintf(&out, "%c %s\n", o.mark, o.line)
	}
	return out.String()
}
