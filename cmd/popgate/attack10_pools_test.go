package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// TestAttack10MoveEndsMasterSessions: a master user's session of bob's
// mailbox ("bob*admin") is a session of bob's mailbox, keyed by bob in
// the pool. An operator's move of bob must end it as well, or the move
// sends bob's next login to the new backend while the master session
// keeps the mailbox open on the old one: one mailbox on two backends.
func TestAttack10MoveEndsMasterSessions(t *testing.T) {
	users := map[string]*pop3test.Mailbox{"bob": {Password: procPass}}
	var addrs []string
	for range 2 {
		b := &pop3test.Server{Mailboxes: users, MasterUsers: map[string]string{"admin": "master-secret"}, MasterSeparator: "*"}
		addr, err := b.Start("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		addrs = append(addrs, addr.String())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	path := writeConfig(t, fmt.Sprintf(`[log]
format = "json"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "a"
address = %q
tls = "none"
[[backend]]
name = "b"
address = %q
tls = "none"
[[pool]]
name = "mx"
backends = ["a", "b"]
affinity_ttl = "1h"
[route]
default = "mx"
[limits]
master_user_separator = "*"
[metrics]
address = %q
`, addrs[0], addrs[1], admin))
	r, _ := startRunner(t, path)
	c, err := net.Dial("tcp", r.addrOf("plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := newPOPClient(t, c)
	p.login("bob*admin", "master-secret")
	from := r.srv.SessionList()[0].Backend
	to := map[string]string{"a": "b", "b": "a"}[from]
	code, out, errOut := run(t.Context(), "pool", "-config", path, "move", "mx", "bob", to)
	if code != 0 {
		t.Fatalf("popgate pool move: %d, %s", code, errOut)
	}
	// The session ends at once when the move ends it; the deadline only
	// keeps a session that survived from hanging the test.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the master user's session of bob's mailbox on %s outlived the move of bob to %s (%q): bob's next login opens the mailbox on a second backend", from, to, strings.TrimSpace(out))
	}
}
