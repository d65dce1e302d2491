package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/oidctest"
)

func TestParseConfigOAuth(t *testing.T) {
	const good = "[oauth]\nissuer = \"https://idp.example.com/realms/mail\"\naudience = [\"popgate\"]\nmaster_user = \"m\"\nmaster_password_file = \"/m\"\nmaster_separator = \"*\"\n"
	listenOAuth := "[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\noauth = true\n\n"
	c, err := ParseConfig("oauth", []byte(listenOAuth+backendB+routeB+good))
	if err != nil {
		t.Fatal(err)
	}
	o := c.OAuth
	if o == nil || !c.Listeners[0].OAuth || o.UserClaim != defaultOAuthUserClaim || o.ClockSkew != defaultOAuthClockSkew ||
		o.Timeout != defaultOAuthTimeout || o.CacheSize != defaultOAuthCacheSize || o.MasterSeparator != "*" {
		t.Fatalf("settings %+v", o)
	}
	c, err = ParseConfig("oauth", []byte(listenOAuth+backendB+routeB+good+"domains = [\"Example.COM.\", \"example.org\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := c.OAuth.Domains; len(d) != 2 || d[0] != "example.com" || d[1] != "example.org" {
		t.Fatalf("domains %q", d)
	}
	if c.OAuth.AllowUnverifiedEmail {
		t.Fatal("email_verified not required by default")
	}
	if c, err = ParseConfig("oauth", []byte(listenOAuth+backendB+routeB+good+"require_email_verified = false\n")); err != nil || !c.OAuth.AllowUnverifiedEmail {
		t.Fatalf("require_email_verified = false: %v", err)
	}
	if c.OAuth.RequireAccessTokenType {
		t.Fatal("at+jwt required by default")
	}
	if c, err = ParseConfig("oauth", []byte(listenOAuth+backendB+routeB+good+"require_access_token_type = true\n")); err != nil || !c.OAuth.RequireAccessTokenType {
		t.Fatalf("require_access_token_type = true: %v", err)
	}
	if c.OAuth.AllowUnnormalizedNames {
		t.Fatal("unnormalized names allowed by default")
	}
	if c, err = ParseConfig("oauth", []byte(listenOAuth+backendB+routeB+good+"allow_unnormalized_names = true\n")); err != nil || !c.OAuth.AllowUnnormalizedNames {
		t.Fatalf("allow_unnormalized_names = true: %v", err)
	}
	// Every backend with its own master login: [oauth] needs none.
	perBackend := strings.Replace(backendB, "tls = \"none\"\n", "tls = \"none\"\noauth_master_user = \"bm\"\noauth_master_password_file = \"/bm\"\noauth_master_separator = \"*\"\n", 1)
	c, err = ParseConfig("oauth", []byte(listenOAuth+perBackend+routeB+strings.Replace(good, "master_user = \"m\"\nmaster_password_file = \"/m\"\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Backends[0].OAuthMaster; m == nil || m.User != "bm" || m.PasswordFile != "/bm" || m.Separator != "*" {
		t.Fatalf("backend master %+v", m)
	}
	for _, tc := range []struct{ conf, want string }{
		{listenOAuth + backendB + routeB, "listen[0].oauth: needs an [oauth] section"},
		{"[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"none\"\noauth = true\n\n" + backendB + routeB + good, "listen[0].oauth: needs tls"},
		{minimal + strings.Replace(good, "https://", "http://", 1), "oauth.issuer: must be the issuer's https URL"},
		{minimal + strings.Replace(good, "audience = [\"popgate\"]\n", "", 1), "oauth.audience: missing"},
		{minimal + good + "algorithms = [\"HS256\"]\n", "oauth.algorithms: \"HS256\" is not accepted"},
		{minimal + good + "algorithms = [\"none\"]\n", "oauth.algorithms: \"none\" is not accepted"},
		{minimal + good + "introspection = true\n", "oauth.introspection: needs client_id and client_secret_file"},
		{minimal + good + "client_id = \"x\"\n", "only used with introspection = true"},
		{minimal + strings.Replace(good, "master_user = \"m\"\n", "", 1), "oauth.master_user and master_password_file: missing"},
		{minimal + strings.Replace(good, "master_separator = \"*\"\n", "", 1), "needs relay_authzid = true on the backend"},
		{minimal + good + "clock_skew = \"1h\"\n", "oauth.clock_skew"},
		{minimal + good + "surprise = 1\n", "unknown key \"oauth.surprise\""},
		{minimal + strings.Replace(good, "master_user = \"m\"\nmaster_password_file = \"/m\"\n", "", 1), "backend \"b\" has no oauth_master_user"},
		{minimal + strings.Replace(good, "master_user = \"m\"\n", "", 1), "oauth.master_user and master_password_file: set both"},
		{minimal + good + "domains = []\n", "oauth.domains: empty"},
		{minimal + good + "require_access_token_type = true\nintrospection = true\nclient_id = \"c\"\nclient_secret_file = \"/s\"\n", "oauth.require_access_token_type: only used for signed tokens"},
		{minimal + good + "user_claim = \"preferred_username\"\nrequire_email_verified = false\n", "oauth.require_email_verified: only used with user_claim"},
		{minimal + good + "domains = [\"exa\u212Ample.com\"]\n", "oauth.domains: \"exa\u212Ample.com\" is not a domain name"},
		{minimal + good + "domains = [\"*.example.com\"]\n", "is not a domain name"},
		{minimal + good + "domains = [\"a@example.com\"]\n", "is not a domain name"},
		{strings.Replace(minimal, "tls = \"none\"\n\n[route]", "tls = \"none\"\noauth_master_user = \"x\"\n\n[route]", 1) + good, "backend[0].oauth_master_user and oauth_master_password_file: set both"},
		// A pool's member is logged in to with the master login of the
		// pool's name, which only [oauth] gives.
		{listenOAuth + perBackend + "[[pool]]\nname = \"mx\"\nbackends = [\"b\"]\n\n[route]\ndefault = \"mx\"\n\n" + good, "backend \"b\" oauth_master_user: not used for a member of pool \"mx\""},
	} {
		_, err := ParseConfig("oauth", []byte(tc.conf))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
		}
	}
}

// TestCheckOAuthIssuer: popgate check fetches the issuer's discovery
// document and keys, and names what is wrong.
func TestCheckOAuthIssuer(t *testing.T) {
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
	write := func(issuer string) string {
		conf := filepath.Join(dir, "popgate.toml")
		body := "[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\noauth = true\n\n" + backendB + routeB +
			fmt.Sprintf("[oauth]\nissuer = %q\naudience = [\"popgate\"]\nca_file = %q\ntimeout = \"2s\"\nmaster_user = \"m\"\nmaster_password_file = %q\nmaster_separator = \"*\"\n", issuer, idp.CAFile, master)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return conf
	}
	var out, errOut bytes.Buffer
	if code := mainErr([]string{"check", "-config", write(idp.Issuer)}, &out, &errOut); code != 0 {
		t.Fatalf("check = %d: %s", code, errOut.String())
	}
	// An issuer URL that is not what the document names.
	out.Reset()
	errOut.Reset()
	if code := mainErr([]string{"check", "-config", write(idp.Issuer + "/")}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "oauth.issuer:") {
		t.Fatalf("wrong issuer: check = %d: %s", code, errOut.String())
	}
	// The issuer down.
	idp.Stop()
	errOut.Reset()
	if code := mainErr([]string{"check", "-config", write(idp.Issuer)}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "oauth.issuer: oauth discovery") {
		t.Fatalf("issuer down: check = %d: %s", code, errOut.String())
	}
	// -offline, as the service manager runs it before a start or a
	// reload: an issuer outage blocks neither.
	errOut.Reset()
	if code := mainErr([]string{"check", "-offline", "-config", write(idp.Issuer)}, &out, &errOut); code != 0 {
		t.Fatalf("issuer down: check -offline = %d: %s", code, errOut.String())
	}
}

// TestOAuthVerifierKeptOnReload: a reload with [oauth] unchanged keeps
// the verifier, with the issuer's keys and the tokens it verified, so
// that a reload during an issuer outage does not stop token logins; a
// changed setting or client secret builds a new one.
func TestOAuthVerifierKeptOnReload(t *testing.T) {
	dir := t.TempDir()
	master, secret := filepath.Join(dir, "master"), filepath.Join(dir, "secret")
	writeFile(t, master, []byte("Master-Secret-9x\n"))
	writeFile(t, secret, []byte("client-secret-1\n"))
	conf := func(audience string) *settings {
		t.Helper()
		c, err := ParseConfig("oauth", []byte("[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\noauth = true\n\n"+backendB+routeB+
			fmt.Sprintf("[oauth]\nissuer = \"https://idp.example.com/realms/mail\"\naudience = [%q]\nintrospection = true\nclient_id = \"popgate\"\nclient_secret_file = %q\nmaster_user = \"m\"\nmaster_password_file = %q\nmaster_separator = \"*\"\n", audience, secret, master)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	build := func(c *settings, prev *auth.OAuthRouter, prevPrint [32]byte) (*auth.OAuthRouter, [32]byte) {
		t.Helper()
		var pv *auth.OAuth
		if prev != nil {
			pv = prev.Verifier
		}
		r, p, err := buildOAuth(c.OAuth, c.Backends, nil, pv, prevPrint)
		if err != nil {
			t.Fatal(err)
		}
		return r, p
	}
	first, p1 := build(conf("popgate"), nil, [32]byte{})
	same, p2 := build(conf("popgate"), first, p1)
	if same.Verifier != first.Verifier || p2 != p1 {
		t.Error("an unchanged [oauth] built a new verifier")
	}
	other, p3 := build(conf("mail"), same, p2)
	if other.Verifier == same.Verifier || p3 == p2 {
		t.Error("a changed audience kept the old verifier")
	}
	writeFile(t, secret, []byte("client-secret-2\n"))
	rotated, _ := build(conf("mail"), other, p3)
	if rotated.Verifier == other.Verifier {
		t.Error("a changed client secret kept the old verifier")
	}
}
