package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// pipeListener hands out one connection, then blocks until closed.
type pipeListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func newPipeListener(c net.Conn) *pipeListener {
	l := &pipeListener{c: make(chan net.Conn, 1), done: make(chan struct{})}
	l.c <- c
	return l
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 110} }

// FuzzSession drives the AUTHORIZATION state with arbitrary client input
// over net.Pipe. It must not panic, must answer within the line limits,
// must not route before it has complete credentials, must never dial for
// credentials with CR, LF or NUL, and must not log a password.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"CAPA\r\nQUIT\r\n",
		"USER alice\r\nPASS secret-password\r\n",
		"user alice\r\npass secret password with spaces\r\nSTAT\r\n",
		"AUTH\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldC1wYXNzd29yZA==\r\n",
		"AUTH PLAIN AGFsaWNlAHNlY3JldC1wYXNzd29yZA\r\n",
		"AUTH LOGIN YWxpY2U=\r\nc2VjcmV0LXBhc3N3b3Jk\r\n",
		"AUTH PLAIN *\r\nAUTH LOGIN\r\n*\r\n",
		"STLS\r\nUSER x\r\n",
		"NOOP\r\nAPOP a b\r\nRETR 1\r\n\r\n\x00\r\n",
		"USER " + strings.Repeat("a", 300) + "\r\nQUIT\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		var logs syncBuffer
		var mu sync.Mutex
		var reqs []auth.Request
		srv, err := New(Config{
			Router: auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
				mu.Lock()
				reqs = append(reqs, *req)
				mu.Unlock()
				return auth.Decision{Backend: "b"}, nil
			}),
			Backends:     map[string]*Backend{"b": {Name: "b", Address: "127.0.0.1:1"}},
			LoginTimeout: 250 * time.Millisecond,
			Logger:       slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nil, errors.New("no backend in the fuzzer")
			},
			MaxLoginFailures: 1000,
		})
		if err != nil {
			t.Fatal(err)
		}
		cli, srvConn := net.Pipe()
		ln := newPipeListener(srvConn)
		served := make(chan struct{})
		go func() {
			srv.Serve(context.Background(), ln, Listener{Name: "fuzz", TLS: TLSNone})
			close(served)
		}()
		cli.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			cli.Write(input)
			cli.Write([]byte("\r\nQUIT\r\n"))
		}()
		br := bufio.NewReaderSize(cli, 4096)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				break
			}
			if len(line) > 512 {
				t.Fatalf("response line of %d octets", len(line))
			}
			if bytes.HasPrefix(line, []byte("+OK Bye")) {
				break
			}
		}
		cli.Close()
		waitFor(t, "session end", func() bool { return srv.Sessions() == 0 })
		srv.Close()
		ln.Close()
		<-served

		upper := strings.ToUpper(string(input))
		mu.Lock()
		defer mu.Unlock()
		if len(reqs) > 0 && !strings.Contains(upper, "PASS") && !strings.Contains(upper, "AUTH") {
			t.Fatalf("routed %d logins without PASS or AUTH in the input", len(reqs))
		}
		for _, r := range reqs {
			if r.Check() != nil {
				t.Fatalf("routed unusable credentials for %q", r.User)
			}
			if p := string(r.Password); len(p) >= 8 && !strings.Contains(r.User, p) && strings.Contains(logs.String(), p) {
				t.Fatalf("password %q in the log:\n%s", p, logs.String())
			}
		}
	})
}
