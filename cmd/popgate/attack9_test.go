package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/oidctest"
)

// TestAttack9OAuthDomainsForDomainBlindRoute: with a route source that
// compares local parts only (route.sql with :local), a token naming
// alice@gmail.com was routed to local alice and logged in as
// alice@gmail.com*master, which a backend that ignores the domain too
// (Dovecot's %Ln) takes for alice. Such a configuration now needs
// oauth.domains, at start and in popgate check; without a domain-blind
// source, leaving it out is a warning naming the key.
func TestAttack9OAuthDomainsForDomainBlindRoute(t *testing.T) {
	dir := t.TempDir()
	idp, err := oidctest.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Stop)
	master := filepath.Join(dir, "master")
	if err := os.WriteFile(master, []byte("Master-Secret-9x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(oauthExtra, routeExtra string) (int, string) {
		conf := filepath.Join(dir, "popgate.toml")
		body := "[log]\nformat = \"json\"\n\n[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\noauth = true\n\n" + backendB + routeB + routeExtra +
			fmt.Sprintf("[oauth]\nissuer = %q\naudience = [\"popgate\"]\nca_file = %q\ntimeout = \"2s\"\nmaster_user = \"m\"\nmaster_password_file = %q\nmaster_separator = \"*\"\n", idp.Issuer, idp.CAFile, master) +
			oauthExtra
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		code := mainErr([]string{"check", "-config", conf}, &out, &errOut)
		return code, errOut.String()
	}
	blind := "[route.sql]\ndriver = \"postgres\"\ndsn = \"postgres://u@127.0.0.1:1/db\"\nquery = \"SELECT 'b' AS backend WHERE :local <> ''\"\n\n"
	if code, out := check("", blind); code == 0 || !strings.Contains(out, "oauth.domains: required") {
		t.Fatalf("domain-blind route without oauth.domains: check = %d: %s", code, out)
	}
	if code, out := check("domains = [\"example.com\"]\n", blind); code != 0 || strings.Contains(out, "oauth.domains") {
		t.Fatalf("domain-blind route with oauth.domains: check = %d: %s", code, out)
	}
	if code, out := check("", ""); code != 0 || !strings.Contains(out, `"level":"WARN","msg":"`+warnOAuthDomains+`"`) {
		t.Fatalf("no oauth.domains: check = %d, want a warning naming the key: %s", code, out)
	}
}
