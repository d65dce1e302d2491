package interop

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/internal/oidctest"
)

const (
	oauthAudience   = "popgate-mail"
	oauthMaster     = "popgate-master"
	oauthMasterPass = "Master-pw-8Rq2v"
)

// curlBearer runs curl with an OAuth 2.0 bearer token on url, the token in
// a config file (-K) rather than on the command line, and returns its
// stdout and exit code.
func curlBearer(t *testing.T, token, rawURL string, args ...string) ([]byte, int) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "curlrc")
	writeFile(t, cfg, []byte("oauth2-bearer = \""+token+"\"\n"), 0o600)
	bin, _ := lookBinary("curl")
	cmdArgs := append([]string{"-q", "-sS", "--max-time", "60", "-K", cfg}, args...)
	cmd := exec.Command(bin, append(cmdArgs, rawURL)...)
	res := runClient(t, cmd, clientTimeout, token)
	return res.Stdout, res.ExitCode
}

// TestOAuthCurlDovecot: curl signs in with a bearer token from the loopback
// OpenID provider, through popgate, to a real Dovecot that knows popgate
// only as a master user, and fetches byte for byte what Dovecot holds; by
// OAUTHBEARER and XOAUTH2, with both master login forms. Refused tokens
// never reach Dovecot; a provider that is down gives [SYS/TEMP] and its
// return works again.
func TestOAuthCurlDovecot(t *testing.T) {
	requireInterop(t, "dovecot", "curl")
	t.Parallel()
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.MasterUsers = map[string]string{oauthMaster: oauthMasterPass}
	})
	want := [][]byte{testMessage(2<<10, "oauth-one"), testMessage(300<<10, "oauth-two")}
	for _, m := range want {
		d.addMessage(t, userAlice, m)
	}
	idp, err := oidctest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Stop)
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "master")
	writeFile(t, masterFile, []byte(oauthMasterPass+"\n"), 0o600)

	// expected counts the logins that opened the mailbox; Dovecot's log
	// must come to that many and no more (d.settleLogins).
	expected := 0
	for _, sep := range []string{"*", ""} {
		t.Run(fmt.Sprintf("separator=%q", sep), func(t *testing.T) {
			be := popgateBackend{Name: "dovecot", Address: d.TLSAddr, TLS: "implicit", ServerName: d.ServerName, CAFile: d.CAFile, RelayAuthzID: sep == ""}
			alice := idp.Token(userAlice, oauthAudience)
			bobs := idp.Token(userBob, oauthAudience)
			pg := startPopgate(t, popgateConfig{
				Backends: []popgateBackend{be},
				Default:  "dovecot",
				OAuth: []string{
					fmt.Sprintf("issuer = %q", idp.Issuer),
					fmt.Sprintf("audience = [%q]", oauthAudience),
					fmt.Sprintf("ca_file = %q", idp.CAFile),
					`timeout = "2s"`,
					`key_refresh_interval = "10ms"`,
					fmt.Sprintf("master_user = %q", oauthMaster),
					fmt.Sprintf("master_password_file = %q", masterFile),
					fmt.Sprintf("master_separator = %q", sep),
				},
				NoFailureLimits: true,
			}, oauthMasterPass, alice, bobs)
			_, port := splitHostPort(t, pg.POP3SAddr)
			resolve := []string{"--cacert", pg.CAFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", pg.ServerName, port)}
			user := strings.ReplaceAll(userAlice, "@", "%40")
			for _, mech := range []string{"", ";AUTH=XOAUTH2", ";AUTH=OAUTHBEARER"} {
				for n := 1; n <= len(want); n++ {
					got, code := curlBearer(t, alice, fmt.Sprintf("pop3s://%s%s@%s:%d/%d", user, mech, pg.ServerName, port, n), resolve...)
					if code != 0 || !bytes.Equal(got, want[n-1]) {
						t.Fatalf("curl%s message %d: exit %d, %d bytes, want %d bytes as Dovecot holds them", mech, n, code, len(got), len(want[n-1]))
					}
					expected++
				}
			}
			// Bob's token for alice's mailbox: curl is refused.
			if _, code := curlBearer(t, bobs, fmt.Sprintf("pop3s://%s@%s:%d/1", user, pg.ServerName, port), resolve...); code == 0 {
				t.Fatal("bob's token opened alice's mailbox")
			}
			// The provider down while it rotates its key: a token signed
			// with the new key cannot be checked, [SYS/TEMP] from
			// popgate, Dovecot not asked. (Tokens of keys popgate holds
			// verify without the provider.)
			idp.Stop()
			if err := idp.Rotate(); err != nil {
				t.Fatal(err)
			}
			fresh := idp.Token(userAlice, oauthAudience)
			c := dialPopgate(t, pg, "pop3s")
			if got := c.cmd("AUTH XOAUTH2 " + xoauth2(userAlice, fresh)); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
				t.Fatalf("provider down: %q", got)
			}
			if err := idp.Restart(); err != nil {
				t.Fatal(err)
			}
			// The failed fetch counts against key_refresh_interval
			// (10ms here): the issuer is asked again only after it.
			time.Sleep(50 * time.Millisecond)
			if got := c.cmd("AUTH XOAUTH2 " + xoauth2(userAlice, fresh)); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("provider back: %q", got)
			}
			expected++
			if got := c.retr(1); !bytes.Equal(got, want[0]) {
				t.Errorf("RETR 1 after the provider came back: %d bytes", len(got))
			}
			c.cmd("QUIT")
			// The refusals would have made logins of their own.
			d.settleLogins(t, expected)
		})
	}
}

func xoauth2(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// settleLogins waits until Dovecot's log holds exactly want logins ("Login:
// user=<"): its log process writes a login's line a moment after the
// login. A login too many never settles, and fails the test.
func (d *dovecot) settleLogins(t *testing.T, want int) {
	t.Helper()
	d.waitLog(t, d.log, fmt.Sprintf("exactly %d logins", want), func(s string) bool {
		return strings.Count(s, "Login: user=<") == want
	})
}
