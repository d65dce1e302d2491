package interop

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// Users of TestAuthzIDMasterUser, one per route, so that one popgate
// routes them all; alice (userAlice) is the mailbox none of them may open.
const (
	authzStatic     = "static@example.com"      // route.users, own credentials
	authzMap        = "mapped@example.com"      // route.map_file, own credentials
	authzHTTPOwn    = "http-own@example.com"    // auth_http, no rewrite
	authzHTTPMaster = "http-master@example.com" // auth_http rewrites to "user*master"
	authzHTTPNamed  = "http-named@example.com"  // as http-master, and answers Auth-Authzid

	authzMaster     = "popgate-master" // Dovecot's master user
	authzMasterPass = "Master-pw-8Rv2p"
)

// TestAuthzIDMasterUser: with Dovecot master users behind popgate, no
// combination of route (static, map file, auth_http with and without a
// master-user rewrite), SASL PLAIN authorization identity (none, the
// user's own, alice) and relay_authzid opens another user's mailbox,
// except the one combination where the directory named that mailbox
// (auth_http's Auth-Authzid answer) on a backend that relays it. This is
// the attack review's case: a lookup that rewrites every login to
// "user*master" with the master password, and a client asking for alice
// as its authzid.
//
// Two popgates share one Dovecot, one whose backend has relay_authzid and
// one whose backend has not; each mailbox holds a different number of
// messages, and its first message names its owner, so STAT and RETR say
// whose mailbox opened.
//
// What Dovecot 2.3.19 does with master users (the "dovecot" subtest pins
// it down) and why popgate stays safe with it:
//
//   - With AUTH PLAIN, the authorization identity wins over the login user
//     before the separator: authzid alice with authcid "bob*master" and the
//     master's password opens alice's mailbox; Dovecot takes "bob" from
//     the separator, then lets the authzid replace it. So the old relay of
//     the client's authzid with a lookup's master login was a full
//     impersonation, and Dovecot will not stop it: popgate's refusal of an
//     authzid the route did not name is the only guard. The in-memory
//     server (pop3test) was modelled the same way, and agrees.
//   - A user who is no master cannot act as another: authzid alice with
//     authcid bob and bob's own password gets "-ERR [AUTH] Authentication
//     failed.", as a wrong password does (Dovecot checks the authcid's
//     password in the master passdb only). Relaying a client's authzid
//     with its own credentials (relay_authzid) is therefore safe: Dovecot
//     decides, and says no unless the client is a master itself.
//   - An authzid equal to the user is an ordinary login, with or without
//     the separator ("bob" with "bob*master" opens bob's). popgate drops
//     such an authzid unless the route names it, which changes nothing.
//   - A master login for a user who does not exist gets "-ERR [AUTH]
//     Authorization failed" (result_success = continue) rather than
//     "Authentication failed": a route that names any authzid the client
//     asks for would let clients tell existing mailboxes from others, but
//     such a route lets them into the existing ones anyway.
//   - Dovecot's "Login: user=<alice@example.com>" line does not name the
//     master user; who acted as whom is in popgate's log only (its
//     login_user "bob*master as alice").
func TestAuthzIDMasterUser(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()

	users := map[string]string{
		userAlice:       "Alice-pw-7Qz4t",
		authzStatic:     "Static-pw-2Lw6d",
		authzMap:        "Mapped-pw-9Tc3b",
		authzHTTPOwn:    "HTTPOwn-pw-4Gm8s",
		authzHTTPMaster: "HTTPMaster-pw-6Yf1k",
		authzHTTPNamed:  "HTTPNamed-pw-5Ju7r",
	}
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.Users = users
		o.MasterUsers = map[string]string{authzMaster: authzMasterPass}
		o.NoTLSInstance, o.HAProxy = false, false
	})
	// Mailbox sizes in messages: a STAT tells the mailboxes apart.
	counts := map[string]int{}
	for i, u := range slices.Sorted(maps.Keys(users)) {
		counts[u] = i + 1
		for n := 1; n <= counts[u]; n++ {
			d.addMessage(t, u, mailboxMessage(u, n))
		}
	}

	// Dovecot alone first: what the master user can do there is what
	// popgate must not hand to the wrong client.
	t.Run("dovecot", func(t *testing.T) {
		dc := d.ca.clientConfig(d.ServerName)
		tests := []struct {
			name, authz, authc, pass string
			want                     string // a user whose mailbox opens, or "-ERR [AUTH]"
		}{
			{"own", "", authzHTTPMaster, users[authzHTTPMaster], authzHTTPMaster},
			{"separator", "", authzHTTPMaster + "*" + authzMaster, authzMasterPass, authzHTTPMaster},
			{"authzid", userAlice, authzMaster, authzMasterPass, userAlice},
			// The authzid wins over the user before the separator:
			// relaying a client's authzid with a rewritten
			// "bob*master" login opens the authzid's mailbox.
			{"separator+authzid", userAlice, authzHTTPMaster + "*" + authzMaster, authzMasterPass, userAlice},
			{"separator+own-authzid", authzHTTPMaster, authzHTTPMaster + "*" + authzMaster, authzMasterPass, authzHTTPMaster},
			// A user who is no master cannot act as another.
			{"user+authzid", userAlice, authzHTTPMaster, users[authzHTTPMaster], "-ERR [AUTH]"},
			{"user+own-authzid", authzHTTPMaster, authzHTTPMaster, users[authzHTTPMaster], authzHTTPMaster},
			{"master-alone", "", authzMaster, authzMasterPass, "-ERR [AUTH]"},
			// result_success = continue: no mailbox for a user who
			// does not exist.
			{"separator-unknown-user", "", "nobody@example.com*" + authzMaster, authzMasterPass, "-ERR [AUTH]"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dialPOP3(t, d.TLSAddr, dc)
				got := whoseMailbox(t, c, c.cmd("AUTH PLAIN "+saslPlain(tc.authz, tc.authc, tc.pass)), counts)
				if strings.HasPrefix(got, "-ERR") {
					got = errCode(got)
				}
				if got != tc.want {
					t.Errorf("AUTH PLAIN authzid %q authcid %q: %s, want %s", tc.authz, tc.authc, got, tc.want)
				}
				c.cmd("QUIT")
			})
		}
	})

	// The directory: http-* users with their own password; the service
	// rewrites http-master and http-named to the master user and, for
	// http-named only, allows the identity the client asked for.
	// Every row below is a new (user, password, authzid) for its popgate,
	// so none is answered from popgate's lookup cache and sent holds what
	// the row's login sent.
	var (
		sentMu sync.Mutex
		sent   = map[string]string{} // user → Auth-Authzid popgate sent, per the last request
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, err1 := url.PathUnescape(r.Header.Get("Auth-User"))
		pass, err2 := url.PathUnescape(r.Header.Get("Auth-Pass"))
		authz, err3 := url.PathUnescape(r.Header.Get("Auth-Authzid"))
		sentMu.Lock()
		sent[user] = authz
		sentMu.Unlock()
		switch {
		case err1 != nil || err2 != nil || err3 != nil:
			w.Header().Set("Auth-Status", "bad request headers")
			return
		case !strings.HasPrefix(user, "http-") || users[user] == "" || pass != users[user]:
			w.Header().Set("Auth-Status", "Invalid login")
			return
		}
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Backend", "dovecot")
		if user == authzHTTPOwn {
			return
		}
		w.Header().Set("Auth-User", user+"*"+authzMaster)
		w.Header().Set("Auth-Pass", authzMasterPass)
		if user == authzHTTPNamed && authz != "" {
			w.Header().Set("Auth-Authzid", authz)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	mapFile := filepath.Join(t.TempDir(), "routes")
	if err := os.WriteFile(mapFile, []byte(authzMap+" dovecot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Every password and every AUTH PLAIN blob that carries one must stay
	// out of popgate's log.
	secrets := []string{authzMasterPass}
	for u, pw := range users {
		secrets = append(secrets, pw)
		for _, z := range []string{"", u, userAlice} {
			secrets = append(secrets, saslPlain(z, u, pw))
		}
	}
	popgates := map[bool]*popgate{}
	for _, relay := range []bool{false, true} {
		popgates[relay] = startPopgate(t, popgateConfig{
			Backends: []popgateBackend{{
				Name: "dovecot", Address: d.TLSAddr, TLS: "implicit",
				ServerName: d.ServerName, CAFile: d.CAFile, RelayAuthzID: relay,
			}},
			Users:           map[string]string{authzStatic: "dovecot"},
			MapFile:         mapFile,
			HTTPURL:         "http://" + ln.Addr().String() + "/auth",
			NoFailureLimits: true,
		}, secrets...)
	}

	// The expected outcome of every combination, written out rather than
	// computed by the rule under test.
	const (
		own      = "own"     // the client's own mailbox
		alice    = userAlice // alice's mailbox
		denied   = "-ERR [AUTH]"
		tempFail = "-ERR [SYS/TEMP]"
	)
	const (
		none = ""
		self = "self" // the client's own name as authzid
	)
	// reason is what popgate's log says about a refusal: "does not relay"
	// and "rewrote the login" are popgate's own refusals, before any
	// backend is dialled; "refused the login" is Dovecot's.
	tests := []struct {
		user   string
		authz  string
		relay  bool
		want   string
		reason string
	}{
		{authzStatic, none, false, own, ""},
		{authzStatic, none, true, own, ""},
		{authzStatic, self, false, own, ""},
		{authzStatic, self, true, own, ""},
		{authzStatic, alice, false, denied, "does not relay it"},
		{authzStatic, alice, true, denied, "refused the login"}, // Dovecot: no master

		{authzMap, none, false, own, ""},
		{authzMap, none, true, own, ""},
		{authzMap, self, false, own, ""},
		{authzMap, self, true, own, ""},
		{authzMap, alice, false, denied, "does not relay it"},
		{authzMap, alice, true, denied, "refused the login"},

		{authzHTTPOwn, none, false, own, ""},
		{authzHTTPOwn, none, true, own, ""},
		{authzHTTPOwn, self, false, own, ""},
		{authzHTTPOwn, self, true, own, ""},
		{authzHTTPOwn, alice, false, denied, "does not relay it"},
		{authzHTTPOwn, alice, true, denied, "refused the login"},

		{authzHTTPMaster, none, false, own, ""},
		{authzHTTPMaster, none, true, own, ""},
		{authzHTTPMaster, self, false, own, ""},
		{authzHTTPMaster, self, true, own, ""}, // the own name is dropped: a plain "user*master" login
		{authzHTTPMaster, alice, false, denied, "does not relay it"},
		// The attack review's case: relayed, Dovecot would open alice's
		// mailbox (see the dovecot subtest).
		{authzHTTPMaster, alice, true, denied, "rewrote the login without naming it"},

		{authzHTTPNamed, none, false, own, ""},
		{authzHTTPNamed, none, true, own, ""},
		// The directory echoes any authzid, the user's own too: a
		// backend that cannot relay it is a configuration problem.
		{authzHTTPNamed, self, false, tempFail, "does not relay one"},
		{authzHTTPNamed, self, true, own, ""},
		{authzHTTPNamed, alice, false, tempFail, "does not relay one"},
		{authzHTTPNamed, alice, true, alice, ""},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/authzid=%s/relay=%v", strings.TrimSuffix(tc.user, "@example.com"), cmp.Or(tc.authz, "none"), tc.relay)
		t.Run(name, func(t *testing.T) {
			pg := popgates[tc.relay]
			authz := tc.authz
			if authz == self {
				authz = tc.user
			}
			want := tc.want
			if want == own {
				want = tc.user
			}
			failed := func() int { return strings.Count(pg.log(), `"msg":"login failed"`) }
			before := failed()
			c := dialPopgate(t, pg, "pop3s")
			resp := c.cmd("AUTH PLAIN " + saslPlain(authz, tc.user, users[tc.user]))
			got := whoseMailbox(t, c, resp, counts)
			if strings.HasPrefix(got, "-ERR") {
				got = errCode(got)
			}
			if got != want {
				t.Errorf("%s as %q, relay_authzid = %v: %s, want %s", tc.user, authz, tc.relay, got, want)
			}
			c.cmd("QUIT")
			if strings.HasPrefix(tc.user, "http-") {
				sentMu.Lock()
				z := sent[tc.user]
				sentMu.Unlock()
				if z != authz {
					t.Errorf("popgate told the directory Auth-Authzid %q, want %q", z, authz)
				}
			}
			if tc.reason != "" && got == want {
				// The line is written before the reply; the reader
				// may be a moment behind.
				deadline := time.Now().Add(10 * time.Second)
				for failed() == before && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				lines := strings.Split(pg.log(), "\n")
				var last string
				for _, l := range slices.Backward(lines) {
					if strings.Contains(l, `"msg":"login failed"`) {
						last = l
						break
					}
				}
				if !strings.Contains(last, tc.reason) {
					t.Errorf("popgate's last failed login does not say %q:\n%s", tc.reason, last)
				}
			}
		})
	}
}

// mailboxMessage is message n of user's mailbox; its header names both.
func mailboxMessage(user string, n int) []byte {
	return fmt.Appendf(nil, "From: interop@example.com\r\nTo: %s\r\nSubject: message %d\r\nX-Mailbox: %s\r\n\r\nMessage %d of %s.\r\n", user, n, user, n, user)
}

// whoseMailbox returns whose mailbox the login answered by resp opened,
// judged by STAT (counts: user → number of messages) and the first
// message's X-Mailbox header, which must agree; or resp itself when it is
// no +OK.
func whoseMailbox(t *testing.T, c *popConn, resp string, counts map[string]int) string {
	t.Helper()
	if !strings.HasPrefix(resp, "+OK") {
		return resp
	}
	stat := c.cmd("STAT")
	f := strings.Fields(stat)
	if len(f) != 3 || f[0] != "+OK" {
		t.Fatalf("STAT: %q", stat)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("STAT: %q", stat)
	}
	var byCount string
	for u, k := range counts {
		if k == n {
			byCount = u
		}
	}
	msg := string(c.retr(1))
	_, rest, _ := strings.Cut(msg, "X-Mailbox: ")
	byHeader, _, _ := strings.Cut(rest, "\r\n")
	if byCount != byHeader {
		t.Fatalf("STAT says %d messages (%q's mailbox) but message 1 is from %q's", n, byCount, byHeader)
	}
	return byHeader
}

// errCode cuts an -ERR reply down to "-ERR [CODE]", or "-ERR".
func errCode(resp string) string {
	if code, _, ok := strings.Cut(strings.TrimPrefix(resp, "-ERR ["), "]"); ok && strings.HasPrefix(resp, "-ERR [") {
		return "-ERR [" + code + "]"
	}
	return "-ERR"
}

// saslPlain is the AUTH PLAIN initial response (RFC 4616).
func saslPlain(authz, authc, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + authc + "\x00" + pass))
}
