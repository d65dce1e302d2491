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
