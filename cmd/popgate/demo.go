package main

import (
	"context"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/popgate/popgate/proxy/pop3test"
)

// Demo credentials of the built-in sample mailbox.
const (
	demoUser = "demo"
)

// cmdDemo runs popgate on loopback with a self-signed certificate in front
// of the built-in sample mailbox, and prints how to fetch a message. It
// stops when ctx is done or on SIGTERM/SIGINT.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("popgate demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pop3s := fs.String("pop3s", "127.0.0.1:9950", "POP3S (implicit TLS) listen `address`")
	pop3 := fs.String("pop3", "127.0.0.1:1100", "POP3+STLS listen `address`")
	adminAddr := fs.String("admin", "127.0.0.1:9110", "admin endpoints' (metrics, sessions) listen `address`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, a := range []string{*pop3s, *pop3, *adminAddr} {
		if !isLoopback(a) {
			return fmt.Errorf("demo: %s is not a loopback address; the demo serves a public sample password", a)
		}
	}
	mb := pop3test.SampleMailbox()
	backend := &pop3test.Server{Mailboxes: map[string]*pop3test.Mailbox{demoUser: mb}}
	baddr, err := backend.Start("127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: sample mailbox: %w", err)
	}
	defer backend.Close()

	c := &Config{
		Log: LogConfig{Level: "info"},
		Listen: []ListenConfig{
			{Name: "pop3s", Address: freeOr(*pop3s), TLS: "implicit"},
			{Name: "pop3", Address: freeOr(*pop3), TLS: "starttls"},
		},
		TLS:     TLSConfig{DefaultServerName: "localhost"},
		Backend: []BackendConfig{{Name: "sample", Address: baddr.String(), TLS: "none"}},
		Route:   RouteConfig{Default: "sample"},
	}
	admin := freeOr(*adminAddr)
	c.Metrics.Address = &admin
	c.Limits.FailureDelay = Duration{Duration: 0, Set: true}
	c.Limits.ShutdownTimeout = Duration{Duration: 0, Set: true}
	s, err := c.check("demo")
	if err != nil {
		return err
	}
	log := newLogger(s.Log, stderr)
	r, err := prepare(s, log)
	if err != nil {
		return err
	}
	in := r.current()
	dir, err := os.MkdirTemp("", "popgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca := filepath.Join(dir, "localhost.pem")
	var certPEM []byte
	for _, leaf := range in.certs.Leaves() {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})...)
	}
	if err := os.WriteFile(ca, certPEM, 0o644); err != nil {
		return err
	}
	_, sPort, _ := net.SplitHostPort(c.Listen[0].Address)
	_, pPort, _ := net.SplitHostPort(c.Listen[1].Address)
	fmt.Fprintf(stdout, `popgate demo: a POP3 proxy on loopback in front of a built-in sample mailbox.

  POP3S       localhost:%[1]s   (self-signed certificate for localhost: %[3]s)
  POP3+STLS   localhost:%[2]s
  mailbox     user %[4]q, password %[5]q, %[6]d messages (backend at %[7]s, plaintext)

Fetch message 1 through the proxy:

  curl --cacert %[3]s pop3s://%[4]s:%[5]s@localhost:%[1]s/1

or with STLS on the plaintext port:

  curl --ssl-reqd --cacert %[3]s pop3://%[4]s:%[5]s@localhost:%[2]s/1

Live sessions and metrics:

  curl http://%[8]s/sessions
  curl http://%[8]s/metrics

Ctrl-C stops the demo.

`, sPort, pPort, ca, demoUser, mb.Password, len(mb.Messages), baddr, admin)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return r.run(ctx)
}

// freeOr returns addr when it can be bound now, else the same host with a
// port the kernel picks, so that the demo starts even when its usual ports
// are taken.
func freeOr(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return addr
	}
	host, _, _ := net.SplitHostPort(addr)
	ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return addr
	}
	defer ln.Close()
	return ln.Addr().String()
}
