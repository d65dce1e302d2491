package admin

// Regression tests from the second attack review (admin endpoints, login
// path hardening, drain): each TestAttack2* test failed while the defect it
// names was present.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// TestAttack2UnauthenticatedConnectionsHeld: the admin server caps
// nothing. A client without the token (anyone who reaches a non-loopback
// admin address, the case metrics.token_file exists for) opens
// connections, sends one request each, gets 401, and the server keeps
// every one open for IdleTimeout (2 minutes; 5 s ReadHeaderTimeout even
// without a request). Each is a file descriptor out of the 128 that
// cmd/popgate's fdReserve keeps for everything but POP3 sessions
// (listeners, logs, map files, lookup connections, the admin endpoint):
// a few hundred such connections and POP3 accepts and backend dials fail
// with "too many open files", while the ACME challenge answerers, which
// share the same port-facing risk, are capped. Here one address holds 200.
func TestAttack2UnauthenticatedConnectionsHeld(t *testing.T) {
	const conns, budget = 200, 128 // budget: cmd/popgate fdReserve
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	access := func() Access { return Access{Token: testToken} }
	go func() { errc <- Serve(ctx, ln, Handler(nil, &fakeSessions{}, nil, access, nil), nil) }()
	defer func() {
		cancel()
		waitErr(t, errc)
	}()
	var cs []net.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for i := range conns {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		cs = append(cs, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d without token = %d, want 401", i, resp.StatusCode)
		}
	}
	// Connections the server closed read EOF at once; held ones time out.
	deadline := time.Now().Add(300 * time.Millisecond)
	held := 0
	for _, c := range cs {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			held++
		}
	}
	t.Logf("connections held open after a 401: %d of %d", held, conns)
	if held > budget {
		t.Errorf("one client without the token holds %d admin connections open (IdleTimeout %v), more than the %d descriptors kept for all of popgate's own needs", held, idleTimeout, budget)
	}
}
