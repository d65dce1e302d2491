package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// hostileIssuer is an issuer under the attacker's control or broken: its
// discovery document and JWKS are served by handlers the test sets.
type hostileIssuer struct {
	srv       *httptest.Server
	discovery http.HandlerFunc // nil: a correct document
	jwks      http.HandlerFunc
	hits      atomic.Int32 // discovery requests
}

func startHostileIssuer(t *testing.T) *hostileIssuer {
	t.Helper()
	h := &hostileIssuer{}
	h.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			h.hits.Add(1)
			if h.discovery != nil {
				h.discovery(w, r)
				return
			}
			json.NewEncoder(w).Encode(map[string]string{"issuer": h.srv.URL, "jwks_uri": h.srv.URL + "/jwks"})
		case "/jwks":
			h.jwks(w, r)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func rsaJWKS(k *rsa.PublicKey, kid string) map[string]any {
	return map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
	}}}
}

func signRS256(t *testing.T, k *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]any{"alg": "RS256", "kid": kid, "typ": "at+jwt"}) + "." + enc(claims)
	d := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// A time claim beyond what an int64 of seconds holds wrapped around: nbf
// (or iat) 1e300, "not before the end of time", read as the distant past.
func TestAttack9TimeClaimsOutOfRange(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	for _, name := range []string{"nbf", "iat"} {
		c := p.Claims("alice@example.com", testAudience, time.Hour)
		c[name] = 1e300
		tok, err := p.Sign(nil, c)
		if err != nil {
			t.Fatal(err)
		}
		wantRefused(t, o, name+" 1e300", tok)
	}
	c := p.Claims("alice@example.com", testAudience, time.Hour)
	c["exp"] = -1e300
	tok, err := p.Sign(nil, c)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, o, "exp -1e300", tok)
}

// The issuer's endpoints are used as its discovery names them: a JWKS
// answer that redirects elsewhere (to plain http, where anyone on the path
// can answer with a key of their own) is not followed, whatever client the
// verifier was given.
func TestAttack9KeysRedirectedToPlainHTTP(t *testing.T) {
	evil, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(rsaJWKS(&evil.PublicKey, "k1"))
	}))
	defer plain.Close()
	h := startHostileIssuer(t)
	h.jwks = func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/jwks", http.StatusFound)
	}
	o, err := NewOAuth(OAuthConfig{Issuer: h.srv.URL, Audience: []string{testAudience}, HTTPClient: h.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	tok := signRS256(t, evil, "k1", map[string]any{"iss": h.srv.URL, "aud": testAudience, "email": "bob@example.com", "exp": time.Now().Add(time.Hour).Unix()})
	if id, err := o.Verify(context.Background(), tok); err == nil {
		t.Fatalf("a token signed with a key served over plain http after a redirect opened %q", id.User)
	}
}

// An issuer that does not answer (blackholed, or a slow-loris) must not
// queue every token login behind every earlier one's full timeout: a login
// gives up when its own deadline passes, and a failed discovery is not
// asked again by each login that follows.
func TestAttack9HangingIssuerDoesNotQueueLogins(t *testing.T) {
	h := startHostileIssuer(t)
	release := make(chan struct{})
	h.discovery = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
	}
	client := h.srv.Client()
	client.Timeout = time.Minute
	o, err := NewOAuth(OAuthConfig{Issuer: h.srv.URL, Audience: []string{testAudience}, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	tok := "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln"
	first := make(chan error, 1)
	go func() {
		_, err := o.Verify(context.Background(), tok)
		first <- err
	}()
	for h.hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	second := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := o.Verify(ctx, tok)
		second <- err
	}()
	select {
	case err := <-second:
		if err == nil || errors.As(err, new(*TokenError)) {
			t.Errorf("a login while the issuer hangs: want trouble with the issuer, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a login with a 100ms deadline still waits for another login's fetch 10s on")
	}
	close(release)
	if err := <-first; err == nil {
		t.Fatal("the hanging issuer's 503 gave a login")
	}
	for range 5 {
		if _, err := o.Verify(context.Background(), tok); err == nil {
			t.Fatal("no issuer, yet a login")
		}
	}
	if n := h.hits.Load(); n > 1 {
		t.Errorf("the failed discovery was fetched %d times within key_refresh_interval; want once", n)
	}
}

// Under introspection with an audience configured, a token the issuer
// gave another client (a web application the user signed in to, whose
// operator now holds the token) carries no "aud" of popgate's and must
// not open the mailbox: an answer without "aud" is not one for popgate.
func TestAttack9IntrospectionAudienceRequiredWhenConfigured(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, Password(p.ClientSecret)
	})
	c := p.Claims("alice@example.com", testAudience, time.Hour)
	delete(c, "aud")
	c["client_id"] = "some-web-app"
	wantRefused(t, o, "another client's token without aud", p.Opaque(c))
	// Without an audience configured, whatever the issuer calls active
	// passes, as documented.
	open := newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, Password(p.ClientSecret)
		c.Audience = nil
	})
	if _, err := open.Verify(context.Background(), p.Opaque(c)); err != nil {
		t.Errorf("no audience configured: %v", err)
	}
}

// A JWKS key far larger than any issuer uses makes each verification cost
// a great deal of CPU (a 1 MiB JWKS holds a modulus of millions of bits):
// such keys are left out like those under 2048 bits.
func TestAttack9HugeRSAKeyLeftOut(t *testing.T) {
	n := make([]byte, 16384/8+1)
	rand.Read(n)
	n[0] |= 1
	n[len(n)-1] |= 1
	k := rawJWK{Kty: "RSA", N: base64.RawURLEncoding.EncodeToString(n), E: "AQAB"}
	if _, err := k.publicKey(); err == nil {
		t.Errorf("a %d-bit RSA key is accepted", new(big.Int).SetBytes(n).BitLen())
	}
	k.E = base64.RawURLEncoding.EncodeToString(big.NewInt(1<<31 - 1).Bytes())
	n = n[:4096/8]
	n[0] |= 0x80
	k.N = base64.RawURLEncoding.EncodeToString(n)
	if _, err := k.publicKey(); err != nil {
		t.Errorf("a 4096-bit key with a large exponent: %v", err)
	}
}

// A key the issuer took out of its JWKS (compromised, rotated away) was
// trusted for as long as the process ran, unless some token happened to
// name a key popgate did not hold: the set held is fetched again once it
// is an hour old.
func TestAttack9RemovedKeyNotTrustedForever(t *testing.T) {
	p := startProvider(t)
	var offset atomic.Int64
	o := newVerifier(t, p, func(c *OAuthConfig) {
		c.KeyRefreshInterval = time.Minute
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	ctx := context.Background()
	old, err := p.Sign(nil, p.Claims("alice@example.com", testAudience, 5*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Verify(ctx, p.Token("alice@example.com", testAudience)); err != nil {
		t.Fatal(err)
	}
	if err := p.Rotate(); err != nil {
		t.Fatal(err)
	}
	p.DropOldKeys()
	offset.Store(int64(2 * time.Hour))
	if id, err := o.Verify(ctx, old); err == nil {
		t.Errorf("two hours after the issuer dropped its key, a token it signed still opens %q", id.User)
	}
	// The new key verifies; the issuer down keeps the keys held.
	long := func(user string) string {
		tok, err := p.Sign(nil, p.Claims(user, testAudience, 5*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if _, err := o.Verify(ctx, long("bob@example.com")); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	offset.Store(int64(4 * time.Hour))
	if _, err := o.Verify(ctx, long("carol@example.com")); err != nil {
		t.Errorf("issuer down with the keys an hour old: %v", err)
	}
}

// Every token login under introspection is a request to the issuer: a
// flood of connections each sending a made-up token must not become as
// many concurrent HTTPS requests (and connections) to the issuer.
func TestAttack9IntrospectionConcurrencyBounded(t *testing.T) {
	h := startHostileIssuer(t)
	h.discovery = func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": h.srv.URL, "introspection_endpoint": h.srv.URL + "/jwks"})
	}
	var inFlight, most atomic.Int32
	h.jwks = func(w http.ResponseWriter, r *http.Request) {
		// The body read, the server notices the client leave.
		io.Copy(io.Discard, r.Body)
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-r.Context().Done()
	}
	o, err := NewOAuth(OAuthConfig{Issuer: h.srv.URL, Introspect: true, ClientID: "popgate", ClientSecret: "s", HTTPClient: h.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	const logins = 3 * maxIntrospections
	for i := range logins {
		go func() {
			defer func() { done <- struct{}{} }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := o.Verify(ctx, "made-up-"+strconv.Itoa(i)); err == nil {
				t.Error("a made-up token passed")
			}
		}()
	}
	for range logins {
		<-done
	}
	if m := most.Load(); m > maxIntrospections {
		t.Errorf("%d introspections at once for %d logins; want at most %d", m, logins, maxIntrospections)
	}
}

// Some issuers (Apple's among them) write email_verified as a string:
// "false" is as unverified as false.
func TestAttack9EmailVerifiedAsString(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	for _, v := range []any{"false", "False", 0, nil} {
		c := p.Claims("alice@example.com", testAudience, time.Hour)
		c["email_verified"] = v
		tok, err := p.Sign(nil, c)
		if err != nil {
			t.Fatal(err)
		}
		wantRefused(t, o, fmt.Sprintf("email_verified %#v", v), tok)
	}
	c := p.Claims("alice@example.com", testAudience, time.Hour)
	c["email_verified"] = "true"
	tok, err := p.Sign(nil, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Verify(context.Background(), tok); err != nil {
		t.Errorf(`email_verified "true": %v`, err)
	}
}

// blindRecorder is a route source that compares local parts only, as
// route.sql with :local or route.ldap with %n do.
type blindRecorder struct{ routeRecorder }

func (*blindRecorder) IgnoresDomain() bool { return true }

// A source that compares local parts only routes alice@gmail.com to local
// alice's entry, and a backend that ignores the domain too (Dovecot's %Ln)
// opens her mailbox for whoever had alice@gmail.com verified at the
// issuer. Token logins then need the mailbox domains listed; a name in
// another domain is refused.
func TestAttack9DomainBlindRouteNeedsDomains(t *testing.T) {
	p := startProvider(t)
	next := &blindRecorder{}
	r := &OAuthRouter{Next: next, Verifier: newVerifier(t, p, nil), Master: MasterLogin{User: "master", Password: "m-secret", Separator: "*"}}
	ctx := context.Background()
	login := func(user string) error {
		_, err := r.Route(ctx, &Request{Credentials: Credentials{User: user, Password: Password(p.Token(user, testAudience)), Method: MethodXOAuth2}})
		return err
	}
	var de *DeniedError
	if err := login("alice@gmail.com"); !errors.As(err, &de) {
		t.Fatalf("no domains, a domain-blind route: want a refusal, got %v", err)
	}
	r.Domains = []string{"example.com", "Example.ORG."}
	for _, u := range []string{"alice@gmail.com", "alice@example.com.evil", "alice@gmail.com@example.com", "alice@example.com@gmail.com", "alice@exa\u212Ample.com"} {
		if err := login(u); !errors.As(err, &de) {
			t.Errorf("%s: want a refusal, got %v", u, err)
		} else {
			t.Logf("%s: %v", u, err)
		}
	}
	if len(next.reqs) != 0 {
		t.Fatalf("refused names were looked up: %+v", next.reqs)
	}
	for _, u := range []string{"alice@example.com", "bob@EXAMPLE.org", "carol"} {
		if err := login(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	// With a route that compares whole names, no list is needed; a
	// list set still holds.
	r.Next = &routeRecorder{}
	if err := login("alice@gmail.com"); !errors.As(err, &de) {
		t.Errorf("domains set: want a refusal, got %v", err)
	}
	r.Domains = nil
	if err := login("alice@gmail.com"); err != nil {
		t.Errorf("a route that compares whole names, no domains: %v", err)
	}
}

// An "email" claim without "email_verified" was taken as confirmed: an
// address nobody checked may be anyone's. It is refused unless
// AllowUnverifiedEmail says the issuer sends no such claim.
func TestAttack9EmailVerifiedRequired(t *testing.T) {
	p := startProvider(t)
	c := p.Claims("alice@example.com", testAudience, time.Hour)
	delete(c, "email_verified")
	tok, err := p.Sign(nil, c)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, newVerifier(t, p, nil), "no email_verified", tok)
	allow := newVerifier(t, p, func(c *OAuthConfig) { c.AllowUnverifiedEmail = true })
	if _, err := allow.Verify(context.Background(), tok); err != nil {
		t.Errorf("no email_verified, allowed: %v", err)
	}
	c["email_verified"] = false
	if tok, err = p.Sign(nil, c); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, allow, "email_verified false, allowed without the claim", tok)
	// Another claim names the mailbox: email_verified is not asked for.
	delete(c, "email_verified")
	if tok, err = p.Sign(nil, c); err != nil {
		t.Fatal(err)
	}
	pu := newVerifier(t, p, func(c *OAuthConfig) { c.UserClaim = "preferred_username" })
	if _, err := pu.Verify(context.Background(), tok); err != nil {
		t.Errorf("preferred_username without email_verified: %v", err)
	}
}

// A name in compatibility forms ("ａｌｉｃｅ", the Kelvin sign, "ﬁ"), with
// decomposed accents or invisible characters was passed on as it was: a
// directory or backend that compares names as Unicode folds them takes it
// for another user's. Such names are refused unless AllowUnnormalizedNames.
func TestAttack9UnnormalizedNameRefused(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	allow := newVerifier(t, p, func(c *OAuthConfig) { c.AllowUnnormalizedNames = true })
	for _, u := range []string{"ａｌｉｃｅ@example.com", "\u212Aate@example.com", "ﬁona@example.com", "jose\u0301@example.com",
		"al\u200bice@example.com", "alice\u00ad@example.com", " alice@example.com", "alice@example.com ", "alice@example.com\t", "𝐚lice@example.com"} {
		tok := p.Token(u, testAudience)
		wantRefused(t, o, fmt.Sprintf("%q", u), tok)
		if _, err := allow.Verify(context.Background(), tok); err != nil {
			t.Errorf("%q, allowed: %v", u, err)
		}
	}
	for _, u := range []string{"alice@example.com", "Alice.Smith+pop@Example.com", "jos\u00e9@example.com", "иван@example.com", "bob"} {
		if _, err := o.Verify(context.Background(), p.Token(u, testAudience)); err != nil {
			t.Errorf("%q: %v", u, err)
		}
	}
}

// An ID token, signed by the issuer with the key of its access tokens,
// passed for an access token when it named an accepted audience (the
// mail client's ID configured as the audience): any site the user signs
// in to holds one. ID tokens are refused by their claims (at_hash,
// c_hash, Keycloak's typ), other explicitly typed JWTs by their header,
// and with RequireAccessTokenType anything but at+jwt.
func TestAttack9IDTokenRefused(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	strict := newVerifier(t, p, func(c *OAuthConfig) { c.RequireAccessTokenType = true })
	intro := newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, Password(p.ClientSecret)
	})
	sign := func(header map[string]any, extra map[string]any) string {
		c := p.Claims("alice@example.com", testAudience, time.Hour)
		for k, v := range extra {
			c[k] = v
		}
		tok, err := p.Sign(header, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	keycloakAT := map[string]any{"typ": "JWT"}
	for name, tok := range map[string]string{
		"at_hash":             sign(keycloakAT, map[string]any{"at_hash": "x", "nonce": "n"}),
		"c_hash":              sign(keycloakAT, map[string]any{"c_hash": "x"}),
		"Keycloak typ ID":     sign(keycloakAT, map[string]any{"typ": "ID"}),
		"Keycloak typ Logout": sign(keycloakAT, map[string]any{"typ": "Logout"}),
		"typ a number":        sign(keycloakAT, map[string]any{"typ": 1}),
		"header logout+jwt":   sign(map[string]any{"typ": "logout+jwt"}, nil),
		"header dpop+jwt":     sign(map[string]any{"typ": "application/dpop+jwt"}, nil),
	} {
		wantRefused(t, o, name, tok)
	}
	c := p.Claims("alice@example.com", testAudience, time.Hour)
	c["at_hash"], c["typ"] = "x", "ID"
	wantRefused(t, intro, "introspection of an ID token", p.Opaque(c))
	// Keycloak's access tokens: header typ JWT, claim typ Bearer, and a
	// nonce copied from the sign-in.
	kc := sign(keycloakAT, map[string]any{"typ": "Bearer", "nonce": "n"})
	if _, err := o.Verify(context.Background(), kc); err != nil {
		t.Errorf("a Keycloak access token: %v", err)
	}
	wantRefused(t, strict, "typ JWT under RequireAccessTokenType", kc)
	for _, typ := range []string{"at+jwt", "application/at+JWT"} {
		if _, err := strict.Verify(context.Background(), sign(map[string]any{"typ": typ}, nil)); err != nil {
			t.Errorf("typ %s under RequireAccessTokenType: %v", typ, err)
		}
	}
}
