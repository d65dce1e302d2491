package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/pop3test"
)

// TestAuthzIDCombinations: no combination of route, rewrite, SASL
// authorization identity and relay_authzid lets a user into another's
// mailbox unless the directory named that mailbox. The backend knows a
// master user (Dovecot style: "user*master" or AUTH PLAIN with an authzid),
// so every wrongly relayed identity would open alice's mailbox.
//
// Routes:
//   - own: the client's own credentials (route.users, route.domains, the
//     map file, an auth_http answer without rewrite);
//   - master: the login rewritten to "user*master" with the master's
//     password (an auth_http Auth-User/Auth-Pass answer);
//   - named: master, and the directory allows the identity the client asked
//     for (auth_http's Auth-Authzid answer);
//   - other: master, and the directory names a different identity.
func TestAuthzIDCombinations(t *testing.T) {
	const (
		bob        = "bob@example.com"
		bobPass    = "bob-PASSWORD-never-logged"
		masterPass = "master-PASSWORD-never-logged"
	)
	const (
		inBob   = "+OK 1 " // STAT of bob's mailbox
		inAlice = "+OK 2 " // STAT of alice's mailbox
		denied  = "-ERR [AUTH]"
		tempErr = "-ERR [SYS/TEMP]"
	)
	tests := []struct {
		route  string
		authz  string
		relay  bool
		want   string
		reason string // expected in the log when refused
	}{
		{"own", "", false, inBob, ""},
		{"own", "", true, inBob, ""},
		{"own", bob, false, inBob, ""},
		{"own", bob, true, inBob, ""},
		{"own", testUser, false, denied, "does not relay it"},
		{"own", testUser, true, denied, "refused the login"}, // bob is no master: the backend says no
		{"master", "", false, inBob, ""},
		{"master", "", true, inBob, ""},
		{"master", bob, false, inBob, ""},
		{"master", bob, true, inBob, ""},
		{"master", testUser, false, denied, "does not relay it"},
		{"master", testUser, true, denied, "rewrote the login without naming it"},
		{"named", "", false, inBob, ""},
		{"named", "", true, inBob, ""},
		{"named", bob, false, tempErr, "does not relay one"},
		{"named", bob, true, inBob, ""},
		{"named", testUser, false, tempErr, "does not relay one"},
		{"named", testUser, true, inAlice, ""},
		{"other", testUser, true, denied, "differs from the one the route named"},
		{"other", "", true, denied, "refused the login"}, // the directory chose carol; the backend has no such mailbox
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/authzid=%q/relay=%v", tc.route, tc.authz, tc.relay)
		t.Run(name, func(t *testing.T) {
			router := auth.RouterFunc(func(_ context.Context, req *auth.Request) (auth.Decision, error) {
				if req.User != bob || req.Password != bobPass {
					return auth.Decision{}, &auth.DeniedError{Reason: "wrong password"}
				}
				d := auth.Decision{Backend: "b1", User: req.User, Password: req.Password}
				if tc.route == "own" {
					return d, nil
				}
				d.User, d.Password = req.User+"*master", masterPass
				switch tc.route {
				case "named":
					d.AuthzID = req.AuthzID
				case "other":
					d.AuthzID = "carol@example.com"
				}
				return d, nil
			})
			h := newHarness(t, harnessOpts{
				backend: func(s *pop3test.Server) {
					s.SASL = []string{"PLAIN"}
					s.MasterUsers = map[string]string{"master": masterPass}
					s.MasterSeparator = "*"
					s.Mailboxes[bob] = &pop3test.Mailbox{Password: bobPass, Messages: [][]byte{[]byte("Subject: bob\r\n\r\nbob's\r\n")}}
				},
				config: func(c *Config) {
					c.Router = router
					c.Backends["b1"].RelayAuthzID = tc.relay
				},
			})
			c := h.dial("pop3s")
			got := c.cmd("AUTH PLAIN " + b64(tc.authz+"\x00"+bob+"\x00"+bobPass))
			if strings.HasPrefix(got, "+OK") {
				got = c.cmd("STAT")
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("bob as %q: %q, want %q", tc.authz, got, tc.want)
			}
			c.cmd("QUIT")
			if tc.reason != "" && !strings.Contains(h.logs.String(), tc.reason) {
				t.Errorf("log lacks %q:\n%s", tc.reason, h.logs.String())
			}
			for _, secret := range []string{bobPass, masterPass} {
				if strings.Contains(h.logs.String(), secret) {
					t.Errorf("a password is in the log")
				}
			}
		})
	}
}
