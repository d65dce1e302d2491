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
