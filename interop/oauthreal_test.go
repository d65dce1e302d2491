package interop

import (
	"bytes"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// TestOAuthRealProvider: tokens from a real OpenID provider (oidc-provider
// on node) open mailboxes through popgate on a real Dovecot that knows
// popgate as a master user: JWTs verified by signature, across a key
// rotation, and opaque tokens by introspection, revocation included; every
// forgery and misuse is refused without reaching Dovecot; a provider that
// is down gives [SYS/TEMP], and once back the logins work again.
func TestOAuthRealProvider(t *testing.T) {
	requireInterop(t, "dovecot", "curl", "node")
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.MasterUsers = map[string]string{oauthMaster: oauthMasterPass}
	})
	want := [][]byte{testMessage(4<<10, "real-idp-one")}
	d.addMessage(t, userAlice, want[0])
	idp := startOIDCProvider(t, map[string]string{"alice": userAlice, "bob": userBob})
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "master")
	writeFile(t, masterFile, []byte(oauthMasterPass+"\n"), 0o600)
	secretFile := filepath.Join(dir, "client-secret")
	writeFile(t, secretFile, []byte(oidcClientSecret("popgate")+"\n"), 0o600)
	common := []string{
		fmt.Sprintf("issuer = %q", idp.Issuer),
		fmt.Sprintf("ca_file = %q", idp.CAFile),
		`timeout = "2s"`,
		`key_refresh_interval = "10ms"`,
		fmt.Sprintf("master_user = %q", oauthMaster),
		fmt.Sprintf("master_password_file = %q", masterFile),
		`master_separator = "*"`,
	}
	backends := []popgateBackend{{Name: "dovecot", Address: d.TLSAddr, TLS: "implicit", ServerName: d.ServerName, CAFile: d.CAFile}}
	secrets := []string{oauthMasterPass, oidcClientSecret("popgate")}
	jwtPG := startPopgate(t, popgateConfig{Backends: backends, Default: "dovecot", NoFailureLimits: true,
		OAuth: append([]string{fmt.Sprintf("audience = [%q]", oauthAudience)}, common...)}, secrets...)
	introPG := startPopgate(t, popgateConfig{Backends: backends, Default: "dovecot", NoFailureLimits: true,
		OAuth: append([]string{"introspection = true", `client_id = "popgate"`, fmt.Sprintf("client_secret_file = %q", secretFile),
			`introspection_cache_ttl = "0s"`}, common...)}, secrets...)

	// expected counts the logins that opened the mailbox; Dovecot's log
	// must come to that many and no more (d.settleLogins), so that a
	// refused login that reached Dovecot shows.
	expected := 0
	// login presents tok as user over XOAUTH2 and returns popgate's
	// answer: "+OK", or the -ERR after the error exchange.
	login := func(pg *popgate, user, tok string) string {
		c := dialPopgate(t, pg, "pop3s")
		defer c.cmd("QUIT")
		got := c.cmd("AUTH XOAUTH2 " + xoauth2(user, tok))
		if strings.HasPrefix(got, "+ ") {
			got = c.cmd("AQ==")
		}
		if strings.HasPrefix(got, "+OK") {
			if m := c.retr(1); !bytes.Equal(m, want[0]) {
				t.Errorf("RETR 1: %d bytes, want %d", len(m), len(want[0]))
			}
			expected++
			return "+OK"
		}
		return got
	}
	refused := func(what string, pg *popgate, user, tok string) {
		t.Helper()
		if got := login(pg, user, tok); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Errorf("%s: %q, want -ERR [AUTH]", what, got)
		}
	}

	// curl with the provider's JWT, both mechanisms.
	alice := idp.token(t, "alice", false)
	_, port := splitHostPort(t, jwtPG.POP3SAddr)
	resolve := []string{"--cacert", jwtPG.CAFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", jwtPG.ServerName, port)}
	for _, mech := range []string{"", ";AUTH=XOAUTH2"} {
		got, code := curlBearer(t, alice, fmt.Sprintf("pop3s://%s%s@%s:%d/1", strings.ReplaceAll(userAlice, "@", "%40"), mech, jwtPG.ServerName, port), resolve...)
		if code != 0 || !bytes.Equal(got, want[0]) {
			t.Fatalf("curl%s: exit %d, %d bytes, want %d", mech, code, len(got), len(want[0]))
		}
		expected++
	}

	// Refusals of the JWT side, over the provider's real claims.
	refused("bob's token for alice", jwtPG, userAlice, idp.token(t, "bob", false))
	refused("another audience", jwtPG, userAlice, idp.tokenFor(t, "alice", "urn:other"))
	parts := strings.Split(idp.token(t, "alice", false), ".")
	sig := []byte(parts[2])
	sig[7] ^= 2
	refused("tampered signature", jwtPG, userAlice, parts[0]+"."+parts[1]+"."+string(sig))
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	json.Unmarshal(payload, &claims)
	claims["email"] = userAlice
	claims["exp"] = time.Now().Add(-time.Hour).Unix()
	refused("claims changed under the signature (an expired exp)", jwtPG, userAlice, parts[0]+"."+b64url(claims)+"."+parts[2])
	refused("alg none", jwtPG, userAlice, b64url(map[string]any{"alg": "none", "typ": "at+jwt"})+"."+parts[1]+".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]any
	json.Unmarshal(hdr, &h)
	h["alg"] = "HS256"
	signing := b64url(h) + "." + parts[1]
	mac := hmac.New(sha256.New, idp.publicKeyPEM(t, h["kid"].(string)))
	mac.Write([]byte(signing))
	refused("HMAC signed with the public key", jwtPG, userAlice, signing+"."+base64.RawURLEncoding.EncodeToString(mac.Sum(nil)))
	d.settleLogins(t, expected)

	// Key rotation mid-test, the provider running throughout: a token of
	// the new key fetches the set.
	idp.rotate(t)
	time.Sleep(50 * time.Millisecond) // past key_refresh_interval since the last fetch
	rotated := idp.token(t, "alice", false)
	if kidOf(rotated) == kidOf(alice) {
		t.Fatalf("the provider still signs with key %q after the rotation", kidOf(alice))
	}
	if got := login(jwtPG, userAlice, rotated); got != "+OK" {
		t.Fatalf("after the key rotation: %q", got)
	}
	if got := login(jwtPG, userAlice, alice); got != "+OK" {
		t.Fatalf("a token of the old key after the rotation: %q", got)
	}
	// And across a restart with a new key.
	idp.restart(t, true)
	time.Sleep(50 * time.Millisecond)
	if got := login(jwtPG, userAlice, idp.token(t, "alice", false)); got != "+OK" {
		t.Fatalf("after a restart with a new key: %q", got)
	}

	// Introspection: opaque tokens, then one revoked.
	opaque := idp.token(t, "alice", true)
	if got := login(introPG, userAlice, opaque); got != "+OK" {
		t.Fatalf("opaque token: %q", got)
	}
	refused("bob's opaque token for alice", introPG, userAlice, idp.token(t, "bob", true))
	idp.revoke(t, "alice", opaque)
	refused("revoked", introPG, userAlice, opaque)
	d.settleLogins(t, expected)

	// The provider down: the introspection cannot be made, and a JWT of
	// a key popgate has not seen cannot be checked.
	idp.restart(t, true)
	time.Sleep(50 * time.Millisecond)
	unseen := idp.token(t, "alice", false)
	pending := idp.token(t, "alice", true)
	idp.stop()
	for name, try := range map[string]func() string{
		"introspection": func() string { return login(introPG, userAlice, pending) },
		"jwt":           func() string { return login(jwtPG, userAlice, unseen) },
	} {
		if got := try(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
			t.Errorf("provider down, %s: %q", name, got)
		}
	}
	d.settleLogins(t, expected)
	idp.restart(t, false)
	time.Sleep(50 * time.Millisecond)
	if got := login(jwtPG, userAlice, unseen); got != "+OK" {
		t.Errorf("provider back, jwt: %q", got)
	}
	if got := login(introPG, userAlice, idp.token(t, "alice", true)); got != "+OK" {
		t.Errorf("provider back, introspection: %q", got)
	}
	d.settleLogins(t, expected)
}

// kidOf returns the kid in a JWT's header.
func kidOf(tok string) string {
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	var h struct{ Kid string }
	json.Unmarshal(hdr, &h)
	return h.Kid
}

func b64url(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

// publicKeyPEM returns the PEM of the provider's RSA key kid, from its
// JWKS: the secret of the algorithm-confusion forgery.
func (p *oidcProvider) publicKeyPEM(t *testing.T, kid string) []byte {
	t.Helper()
	resp, err := p.client.Get(p.Issuer + "/jwks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kid, N, E string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	for _, k := range set.Keys {
		if k.Kid != kid {
			continue
		}
		n, _ := base64.RawURLEncoding.DecodeString(k.N)
		e, _ := base64.RawURLEncoding.DecodeString(k.E)
		der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())})
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	t.Fatalf("no key %q in the JWKS", kid)
	return nil
}
