package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// idleHelperEnv makes the test binary an idle-session helper instead of
// running tests (see TestMain and idleHelper). Its value is the number of
// sessions.
const idleHelperEnv = "POPGATE_TEST_IDLE_HELPER"

func TestMain(m *testing.M) {
	if n := os.Getenv(idleHelperEnv); n != "" {
		if err := idleHelper(n, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "idle helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// BenchmarkIdleSession reports what one logged-in idle session retains in
// the proxy: the live heap and goroutine stacks, after a collection, of
// idleSessions sessions held over TLS with both splice directions parked,
// per session (B/session). The clients and the backend run in a child
// process (this test binary as idleHelper), so the figure is the proxy's
// alone. It is the floor of what pop3bench's idle workload sees in RSS;
// garbage left by the logins and pages the runtime has not yet returned
// come on top of it there.
func BenchmarkIdleSession(b *testing.B) {
	if newParkerErr() != nil {
		b.Skip("parking needs epoll")
	}
	const idleSessions = 500
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), idleHelperEnv+"="+strconv.Itoa(idleSessions))
	child.Stderr = os.Stderr
	toChild, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		toChild.Close()
		child.Wait()
	}()
	fromChild := bufio.NewReader(out)
	reply := func() string {
		l, err := fromChild.ReadString('\n')
		if err != nil {
			b.Fatalf("idle helper: %v", err)
		}
		return strings.TrimSpace(l)
	}
	backendAddr := reply()

	srv, err := New(Config{
		Router:   auth.NewStatic(nil, nil, "b"),
		Backends: map[string]*Backend{"b": {Name: "b", Address: backendAddr}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(context.Background(), ln, Listener{Name: "pop3s", TLS: TLSImplicit, TLSConfig: newTLSPair(b, "localhost").server})
	}()
	defer func() {
		srv.Close()
		wg.Wait()
	}()

	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	retained := func() int64 {
		runtime.GC()
		runtime.GC()
		metrics.Read(samples)
		return int64(samples[0].Value.Uint64() + samples[1].Value.Uint64())
	}
	// round opens the sessions, waits until they are all parked, and
	// returns what the proxy retained for them; then the sessions end.
	round := func() int64 {
		before := retained()
		fmt.Fprintln(toChild, "open", ln.Addr())
		if r := reply(); r != "open" {
			b.Fatalf("idle helper: %s", r)
		}
		deadline := time.Now().Add(time.Minute)
		for srv.Parked() != 2*idleSessions || srv.Sessions() != idleSessions {
			if time.Now().After(deadline) {
				b.Fatalf("%d sessions, %d directions parked; want %d, all parked", srv.Sessions(), srv.Parked(), idleSessions)
			}
			time.Sleep(10 * time.Millisecond)
		}
		with := retained()
		fmt.Fprintln(toChild, "close")
		if r := reply(); r != "closed" {
			b.Fatalf("idle helper: %s", r)
		}
		for srv.Sessions() != 0 {
			if time.Now().After(deadline) {
				b.Fatalf("%d sessions left after the clients quit", srv.Sessions())
			}
			time.Sleep(10 * time.Millisecond)
		}
		return with - before
	}
	round() // pools, the parker's table, code paths: not per session
	var total int64
	b.ResetTimer()
	for range b.N {
		total += round()
	}
	b.ReportMetric(float64(total)/float64(b.N*idleSessions), "B/session")
}

// idleHelper is the child process of BenchmarkIdleSession: a pop3test
// backend with one mailbox per session, whose address it prints first, and
// the clients. "open ADDR" on in opens n sessions to the proxy at ADDR over
// TLS and logs them in ("open" when done); "close" ends them with QUIT
// ("closed").
func idleHelper(arg string, in io.Reader, out io.Writer) error {
	n, err := strconv.Atoi(arg)
	if err != nil {
		return err
	}
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{}}
	for i := range n {
		backend.Mailboxes[fmt.Sprint("u", i)] = &pop3test.Mailbox{Password: testPass}
	}
	addr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer backend.Close()
	fmt.Fprintln(out, addr)
	// The proxy's certificate is a fresh self-signed one; what is
	// measured is memory, not verification. X25519 alone, as pop3bench's
	// clients: an X25519MLKEM768 key share makes the ClientHello about
	// 1.2 KiB larger, and crypto/tls keeps the buffers it grew to read
	// it (about 3 KiB more per session).
	cfg := &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}}
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	var conns []conn
	expectOK := func(c conn) error {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(l, "+OK") {
			return fmt.Errorf("got %q", l)
		}
		return nil
	}
	cmds := bufio.NewScanner(in)
	for cmds.Scan() {
		f := strings.Fields(cmds.Text())
		switch {
		case len(f) == 2 && f[0] == "open":
			var mu sync.Mutex
			var firstErr error
			var wg sync.WaitGroup
			next := make(chan int)
			for range 8 {
				wg.Go(func() {
					for i := range next {
						c, err := tls.Dial("tcp", f[1], cfg)
						if err == nil {
							cn := conn{c, bufio.NewReader(c)}
							err = expectOK(cn)
							if err == nil {
								fmt.Fprintf(c, "USER u%d\r\nPASS %s\r\n", i, testPass)
								if err = expectOK(cn); err == nil {
									err = expectOK(cn)
								}
							}
							mu.Lock()
							conns = append(conns, cn)
							mu.Unlock()
						}
						if err != nil {
							mu.Lock()
							if firstErr == nil {
								firstErr = err
							}
							mu.Unlock()
						}
					}
				})
			}
			for i := range n {
				next <- i
			}
			close(next)
			wg.Wait()
			if firstErr != nil {
				return firstErr
			}
			fmt.Fprintln(out, "open")
		case len(f) == 1 && f[0] == "close":
			var errs []error
			for _, c := range conns {
				io.WriteString(c.c, "QUIT\r\n")
				errs = append(errs, expectOK(c))
				c.c.Close()
			}
			conns = nil
			if err := errors.Join(errs...); err != nil {
				return err
			}
			fmt.Fprintln(out, "closed")
		default:
			return fmt.Errorf("unknown command %q", cmds.Text())
		}
	}
	return cmds.Err()
}
