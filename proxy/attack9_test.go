package proxy

import (
	"context"
	"strings"
	"testing"

	"github.com/popgate/popgate/auth"
)

// A lookup service that names a bare address (auth_http's Auth-Server
// without route.http.backend) is logged in to in plaintext, as nginx does:
// with a password login that is the user's own password. A token login
// would send the master user's secret, which opens every mailbox, in clear
// to wherever the lookup pointed.
func TestAttack9MasterSecretNeverToBareAddress(t *testing.T) {
	h, p := oauthHarness(t, "*", false, func(c *Config) {
		addr := c.Backends["b1"].Address
		or := c.Router.(*auth.OAuthRouter)
		or.Next = auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
			return auth.Decision{Address: addr}, nil
		})
	})
	c := h.dial("pop3s")
	got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, p.Token(testUser, oauthAudience)))
	if !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("token login routed to a bare address: %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != 0 {
		t.Errorf("the master login went in plaintext to the lookup's address: %q", cmds)
	}
}

// A Router that does not verify bearer tokens but names the backend
// login's password itself (a lookup service's Auth-Pass, a master login
// of its own) passed the check that the token is not handed on as a
// password: any made-up token then opened the mailbox it named. Token
// logins need a Router that verifies them.
func TestAttack9TokenLoginNeedsAVerifyingRouter(t *testing.T) {
	h := newHarness(t, harnessOpts{
		listeners: []Listener{{Name: "pop3s", TLS: TLSImplicit, OAuth: true}},
		config: func(c *Config) {
			c.Router = auth.RouterFunc(func(ctx context.Context, req *auth.Request) (auth.Decision, error) {
				return auth.Decision{Backend: "b1", User: req.User, Password: testPass}, nil
			})
		},
	})
	c := h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, "made-up")); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("a made-up token through a Router that verifies none: %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != 0 {
		t.Errorf("the backend was asked: %q", cmds)
	}
}

// OAUTHBEARER without "a=" leaves the name to the token, and the session
// kept the client's empty name: /sessions and the session log named
// nobody, and ending the user's sessions (a stolen token, a mailbox
// moved) missed it. The session now carries the verified token's name.
func TestAttack9TokenLoginWithoutNameIsTheTokensUser(t *testing.T) {
	h, p := oauthHarness(t, "*", false)
	c := h.dial("pop3s")
	if got := c.cmd("AUTH OAUTHBEARER " + oauthbearer("", p.Token(testUser, oauthAudience))); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("OAUTHBEARER without a= = %q", got)
	}
	var users []string
	for _, s := range h.srv.SessionList() {
		users = append(users, s.User)
	}
	if len(users) != 1 || users[0] != testUser {
		t.Errorf("/sessions lists users %q, want the token's %q", users, testUser)
	}
	if n := h.srv.EndSessions(testUser); n != 1 {
		t.Errorf("EndSessions(%q) = %d, want the token login's session ended", testUser, n)
	}
	c.eof()
}
