package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// chanListener is a net.Listener fed through a channel (net.Pipe ends).
type chanListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{c: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 995} }

// dial hands the listener one end of a new pipe and returns the other.
func (l *chanListener) dial() net.Conn {
	c, s := net.Pipe()
	l.c <- s
	return c
}

// BenchmarkLogin is a whole session over net.Pipe: greeting, USER, PASS
// (routed, dialed and logged in to the in-memory backend), STAT, QUIT. No
// TLS, so it measures popgate's own POP3 work.
func BenchmarkLogin(b *testing.B) {
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{}}
	for i := range 64 {
		backend.Mailboxes[fmt.Sprint("u", i)] = &pop3test.Mailbox{Password: testPass, Messages: [][]byte{[]byte("Subject: x\r\n\r\nx\r\n")}}
	}
	defer backend.Close()
	srv, err := New(Config{
		Router:   auth.NewStatic(nil, nil, "b"),
		Backends: map[string]*Backend{"b": {Name: "b", Address: "memory"}},
		Logger:   slog.New(slog.DiscardHandler),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, s := net.Pipe()
			go backend.ServeConn(s)
			return c, nil
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ln := newChanListener()
	go srv.Serve(context.Background(), ln, Listener{Name: "bench", TLS: TLSNone})
	defer srv.Close()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c := ln.dial()
			br := bufio.NewReader(c)
			user := fmt.Sprint("u", i%64)
			i++
			expectOK := func() {
				l, err := br.ReadString('\n')
				if err != nil || !strings.HasPrefix(l, "+OK") {
					b.Errorf("got %q, %v", l, err)
				}
			}
			expectOK()
			io.WriteString(c, "USER "+user+"\r\n")
			expectOK()
			io.WriteString(c, "PASS "+testPass+"\r\n")
			l, _ := br.ReadString('\n')
			if !strings.HasPrefix(l, "+OK") {
				// The same user twice at once: IN-USE. Fine here.
				c.Close()
				continue
			}
			io.WriteString(c, "STAT\r\n")
			expectOK()
			io.WriteString(c, "QUIT\r\n")
			expectOK()
			io.Copy(io.Discard, br)
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}

// BenchmarkLoginTLS is BenchmarkLogin over loopback TCP with a full TLS 1.3
// handshake (ECDSA P-256) per session, as clients do.
func BenchmarkLoginTLS(b *testing.B) {
	h := newHarness(b, harnessOpts{config: func(c *Config) { c.Router = auth.NewStatic(nil, nil, "b1") }, backend: func(s *pop3test.Server) {
		s.Mailboxes = map[string]*pop3test.Mailbox{}
		for i := range 64 {
			s.Mailboxes[fmt.Sprint("u", i)] = &pop3test.Mailbox{Password: testPass}
		}
	}})
	cfg := h.front.client.Clone()
	cfg.ClientSessionCache = nil
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c, err := tls.Dial("tcp", h.addrs["pop3s"], cfg)
			if err != nil {
				b.Fatal(err)
			}
			br := bufio.NewReader(c)
			user := fmt.Sprint("u", i%64)
			i++
			br.ReadString('\n')
			io.WriteString(c, "USER "+user+"\r\nPASS "+testPass+"\r\nSTAT\r\nQUIT\r\n")
			io.Copy(io.Discard, br)
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}

// BenchmarkSplice relays a 10 MiB RETR through the splice over loopback
// TCP, plaintext both sides (TLSNone listener, plain backend), and over TLS
// to the client.
func BenchmarkSplice(b *testing.B) {
	msg := pop3test.GenerateMessage(10 << 20)
	for _, listener := range []string{"plain", "pop3s"} {
		b.Run(listener, func(b *testing.B) {
			h := newHarness(b, harnessOpts{backend: func(s *pop3test.Server) {
				s.Mailboxes[testUser].Messages = [][]byte{msg}
			}})
			c := h.dial(listener)
			c.login()
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c.send("RETR 1\r\n")
				c.expect("+OK")
				for {
					l, err := c.br.ReadSlice('\n')
					if err != nil {
						b.Fatal(err)
					}
					if len(l) == 3 && l[0] == '.' {
						break
					}
				}
			}
		})
	}
}
