package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// TestAttack10ConflictEndsPoolSessions: when the fleet holds a user on
// another backend than this replica's sessions (a renewal that found
// another replica's affinity), the director's end ends the sessions of
// the user's mailbox on that backend, a master user's too, and no
// other.
func TestAttack10ConflictEndsPoolSessions(t *testing.T) {
	users := map[string]*pop3test.Mailbox{"bob": {Password: procPass}, "carol": {Password: procPass}}
	b := &pop3test.Server{Mailboxes: users, MasterUsers: map[string]string{"admin": "master-secret"}, MasterSeparator: "*"}
	addr, err := b.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
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
[[pool]]
name = "mx"
backends = ["a"]
[route]
default = "mx"
[limits]
master_user_separator = "*"
`, addr))
	r, _ := startRunner(t, path)
	login := func(user, pass string) (*popClient, net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", r.addrOf("plain"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		p := newPOPClient(t, c)
		p.login(user, pass)
		return p, c
	}
	pb, cb := login("bob*admin", "master-secret")
	pc, _ := login("carol", procPass)
	if n := r.srv.EndPoolSessions("mx", "bob", "b"); n != 0 {
		t.Errorf("the end of bob's sessions on b ended %d (bob is on a)", n)
	}
	if n := r.srv.EndPoolSessions("mx", "bob", "a"); n != 1 {
		t.Errorf("the end of bob's sessions on a ended %d, want 1", n)
	}
	cb.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pb.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("bob's master session still open after its end: %v", err)
	}
	pc.cmd("NOOP")
}
