package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/oidctest"
)

const testAudience = "popgate-mail"

func startProvider(t *testing.T) *oidctest.Provider {
	t.Helper()
	p, err := oidctest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

func newVerifier(t *testing.T, p *oidctest.Provider, mod func(*OAuthConfig)) *OAuth {
	t.Helper()
	cfg := OAuthConfig{Issuer: p.Issuer, Audience: []string{testAudience}, ClockSkew: 30 * time.Second, HTTPClient: p.Client(), KeyRefreshInterval: time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	o, err := NewOAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func wantRefused(t *testing.T, o *OAuth, name, tok string) {
	t.Helper()
	_, err := o.Verify(context.Background(), tok)
	var te *TokenError
	if !errors.As(err, &te) {
		t.Errorf("%s: want a refusal, got %v", name, err)
		return
	}
	t.Logf("%s: %v", name, err)
	if strings.Contains(err.Error(), tok) {
		t.Errorf("%s: the error quotes the token", name)
	}
}

func TestOAuthVerifiesSignedTokens(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	id, err := o.Verify(context.Background(), p.Token("alice@example.com", testAudience))
	if err != nil || id.User != "alice@example.com" {
		t.Fatalf("got %+v, %v", id, err)
	}
	// ES256 keys work too.
	if err := p.RotateEC(); err != nil {
		t.Fatal(err)
	}
	if id, err := o.Verify(context.Background(), p.Token("bob@example.com", testAudience)); err != nil || id.User != "bob@example.com" {
		t.Fatalf("ES256: got %+v, %v", id, err)
	}
}

func TestOAuthRefusals(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	user := "alice@example.com"
	sign := func(mod func(c map[string]any)) string {
		c := p.Claims(user, testAudience, time.Hour)
		mod(c)
		tok, err := p.Sign(nil, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	wantRefused(t, o, "expired", sign(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() }))
	wantRefused(t, o, "no expiry", sign(func(c map[string]any) { delete(c, "exp") }))
	wantRefused(t, o, "not yet valid", sign(func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() }))
	wantRefused(t, o, "wrong audience", sign(func(c map[string]any) { c["aud"] = "another-client" }))
	wantRefused(t, o, "no audience", sign(func(c map[string]any) { delete(c, "aud") }))
	wantRefused(t, o, "wrong issuer", sign(func(c map[string]any) { c["iss"] = "https://evil.example" }))
	wantRefused(t, o, "no user claim", sign(func(c map[string]any) { delete(c, "email") }))
	wantRefused(t, o, "email not verified", sign(func(c map[string]any) { c["email_verified"] = false }))
	good := p.Token(user, testAudience)
	parts := strings.Split(good, ".")
	// The payload changed after signing: bob's name in alice's token.
	tampered := parts[0] + "." + strings.TrimRight(b64json(t, p.Claims("bob@example.com", testAudience, time.Hour)), "=") + "." + parts[2]
	wantRefused(t, o, "tampered payload", tampered)
	sig := []byte(parts[2])
	sig[10] ^= 1
	wantRefused(t, o, "tampered signature", parts[0]+"."+parts[1]+"."+string(sig))
	wantRefused(t, o, "alg none", oidctest.UnsignedToken(p.Claims(user, testAudience, time.Hour)))
	wantRefused(t, o, "HMAC with the public key", p.SignHMACWithPublicKey(p.Claims(user, testAudience, time.Hour)))
	if tok, err := p.Sign(map[string]any{"alg": "RS512"}, p.Claims(user, testAudience, time.Hour)); err == nil {
		// Signed RS256 but labelled RS512 (and the key says RS256).
		wantRefused(t, o, "algorithm relabelled", tok)
	}
	if tok, err := p.Sign(map[string]any{"crit": []string{"exp"}}, p.Claims(user, testAudience, time.Hour)); err == nil {
		wantRefused(t, o, "critical header", tok)
	}
	wantRefused(t, o, "not a JWT", "opaque-token-value")
	// Clock skew: a token expired 10 s ago passes with 30 s of skew.
	if _, err := o.Verify(context.Background(), sign(func(c map[string]any) { c["exp"] = now.Add(-10 * time.Second).Unix() })); err != nil {
		t.Errorf("within the clock skew: %v", err)
	}
}

func TestOAuthRefusesConfusableSettings(t *testing.T) {
	for _, cfg := range []OAuthConfig{
		{Issuer: "https://idp.example", Audience: []string{"a"}, Algorithms: []string{"none"}},
		{Issuer: "https://idp.example", Audience: []string{"a"}, Algorithms: []string{"HS256"}},
		{Issuer: "http://idp.example", Audience: []string{"a"}},
		{Issuer: "https://idp.example"}, // no audience
		{Issuer: "https://idp.example", Introspect: true, ClientID: "x"},
	} {
		if _, err := NewOAuth(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func b64json(t *testing.T, v map[string]any) string {
	t.Helper()
	tok, err := (&oidctest.Provider{}).SignPayloadOnly(v)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestOAuthKeyRotation(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, func(c *OAuthConfig) { c.KeyRefreshInterval = time.Hour })
	ctx := context.Background()
	if _, err := o.Verify(ctx, p.Token("alice@example.com", testAudience)); err != nil {
		t.Fatal(err)
	}
	fetches := p.JWKSFetches()
	// Made-up kids within the refresh interval fetch nothing more.
	for range 20 {
		tok, _ := p.Sign(map[string]any{"kid": "made-up"}, p.Claims("alice@example.com", testAudience, time.Hour))
		if _, err := o.Verify(ctx, tok); err == nil {
			t.Fatal("unknown kid accepted")
		}
	}
	if n := p.JWKSFetches(); n != fetches {
		t.Errorf("unknown kids fetched the JWKS %d more times within the refresh interval", n-fetches)
	}
	// Rotation: a fresh verifier with a short interval picks the new key
	// up on the first token that names it.
	o = newVerifier(t, p, func(c *OAuthConfig) { c.KeyRefreshInterval = 10 * time.Millisecond })
	if _, err := o.Verify(ctx, p.Token("alice@example.com", testAudience)); err != nil {
		t.Fatal(err)
	}
	if err := p.Rotate(); err != nil {
		t.Fatal(err)
	}
	p.DropOldKeys()
	time.Sleep(20 * time.Millisecond)
	if id, err := o.Verify(ctx, p.Token("bob@example.com", testAudience)); err != nil || id.User != "bob@example.com" {
		t.Fatalf("after rotation: %+v %v", id, err)
	}
}

func TestOAuthIssuerDown(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, nil)
	tok := p.Token("alice@example.com", testAudience)
	p.Stop()
	_, err := o.Verify(context.Background(), tok)
	var te *TokenError
	if err == nil || errors.As(err, &te) {
		t.Fatalf("issuer down: want a temporary error, got %v", err)
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	// The failed discovery is asked again once key_refresh_interval
	// (1ms here) has passed.
	time.Sleep(10 * time.Millisecond)
	if _, err := o.Verify(context.Background(), tok); err != nil {
		t.Fatalf("issuer back: %v", err)
	}
}

func TestOAuthIntrospection(t *testing.T) {
	p := startProvider(t)
	dir := t.TempDir()
	_ = dir
	o := newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, Password(p.ClientSecret)
		c.IntrospectionCacheTTL = time.Minute
	})
	ctx := context.Background()
	tok := p.Opaque(p.Claims("alice@example.com", testAudience, time.Hour))
	if id, err := o.Verify(ctx, tok); err != nil || id.User != "alice@example.com" {
		t.Fatalf("got %+v %v", id, err)
	}
	n := p.Introspections()
	if _, err := o.Verify(ctx, tok); err != nil || p.Introspections() != n {
		t.Fatalf("a verified token is asked again (%v)", err)
	}
	// Revoked: refused (a token never verified before, so no cache).
	tok2 := p.Opaque(p.Claims("alice@example.com", testAudience, time.Hour))
	p.Revoke(tok2)
	wantRefused(t, o, "revoked", tok2)
	wantRefused(t, o, "unknown", "never-issued")
	wantRefused(t, o, "wrong audience", p.Opaque(p.Claims("alice@example.com", "other", time.Hour)))
	// Wrong client secret: the issuer's refusal is trouble, not the user's.
	bad := newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, "wrong"
	})
	_, err := bad.Verify(ctx, tok)
	var te *TokenError
	if err == nil || errors.As(err, &te) {
		t.Fatalf("bad client secret: want a temporary error, got %v", err)
	}
	// With no cache, revocation shows at once.
	o = newVerifier(t, p, func(c *OAuthConfig) {
		c.Introspect, c.ClientID, c.ClientSecret = true, p.ClientID, Password(p.ClientSecret)
	})
	if _, err := o.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	p.Revoke(tok)
	wantRefused(t, o, "revoked after use", tok)
}

type routeRecorder struct {
	reqs []Request
}

func (r *routeRecorder) Route(_ context.Context, req *Request) (Decision, error) {
	r.reqs = append(r.reqs, *req)
	return Decision{Backend: "b", User: req.User, Password: req.Password}, nil
}

func TestOAuthRouter(t *testing.T) {
	p := startProvider(t)
	next := &routeRecorder{}
	r := &OAuthRouter{Next: next, Verifier: newVerifier(t, p, nil), Master: MasterLogin{User: "master", Password: "m-secret", Separator: "*"}}
	ctx := context.Background()
	alice := p.Token("alice@example.com", testAudience)
	dec, err := r.Route(ctx, &Request{Credentials: Credentials{User: "Alice@example.com", Password: Password(alice), Method: MethodXOAuth2}})
	if err != nil || dec.User != "alice@example.com*master" || dec.Password != "m-secret" || dec.AuthzID != "" || dec.Backend != "b" {
		t.Fatalf("got %+v %v", dec, err)
	}
	if len(next.reqs) != 1 || next.reqs[0].Password != "" || next.reqs[0].User != "alice@example.com" {
		t.Fatalf("the route lookup got %+v", next.reqs)
	}
	// Another spelling of the name routes and logs in as the token's.
	kate := p.Token("kate@example.com", testAudience)
	dec, err = r.Route(ctx, &Request{Credentials: Credentials{User: "\u212aATE@example.com", Password: Password(kate), Method: MethodXOAuth2}})
	if err != nil || dec.User != "kate@example.com*master" || next.reqs[len(next.reqs)-1].User != "kate@example.com" {
		t.Fatalf("Kelvin sign: %+v %v", dec, err)
	}
	next.reqs = next.reqs[:1]
	// Alice's token for bob's mailbox.
	_, err = r.Route(ctx, &Request{Credentials: Credentials{User: "bob@example.com", Password: Password(alice), Method: MethodOAuthBearer}})
	var de *DeniedError
	if !errors.As(err, &de) || len(next.reqs) != 1 {
		t.Fatalf("another user's token: %v (lookups %d)", err, len(next.reqs))
	}
	// OAUTHBEARER without a=: the token names the mailbox; authzid form.
	r.Master.Separator = ""
	dec, err = r.Route(ctx, &Request{Credentials: Credentials{Password: Password(alice), Method: MethodOAuthBearer}})
	if err != nil || dec.User != "master" || dec.AuthzID != "alice@example.com" {
		t.Fatalf("got %+v %v", dec, err)
	}
	// A backend's own master login wins over the default one.
	r.Masters = map[string]MasterLogin{"b": {User: "b-master", Password: "b-secret", Separator: "%"}}
	dec, err = r.Route(ctx, &Request{Credentials: Credentials{User: "alice@example.com", Password: Password(alice), Method: MethodXOAuth2}})
	if err != nil || dec.User != "alice@example.com%b-master" || dec.Password != "b-secret" {
		t.Fatalf("backend master: %+v %v", dec, err)
	}
	// A name holding the separator is refused, whoever issued it.
	sep := p.Token("carol@example.com%b-master", testAudience)
	if _, err := r.Route(ctx, &Request{Credentials: Credentials{User: "carol@example.com%b-master", Password: Password(sep), Method: MethodXOAuth2}}); !errors.As(err, &de) {
		t.Fatalf("separator in the name: %v", err)
	}
	// No master login at all: trouble, not a refusal.
	r.Masters, r.Master = nil, MasterLogin{}
	_, err = r.Route(ctx, &Request{Credentials: Credentials{User: "alice@example.com", Password: Password(alice), Method: MethodXOAuth2}})
	if err == nil || errors.As(err, &de) {
		t.Fatalf("no master login: %v", err)
	}
	// Passwords pass through untouched.
	dec, err = r.Route(ctx, &Request{Credentials: Credentials{User: "carol", Password: "pw", Method: "USER"}})
	if err != nil || dec.User != "carol" || dec.Password != "pw" {
		t.Fatalf("password login: %+v %v", dec, err)
	}
	// A refused token is a refusal of credentials.
	_, err = r.Route(ctx, &Request{Credentials: Credentials{User: "alice@example.com", Password: "junk", Method: MethodXOAuth2}})
	if !errors.As(err, &de) {
		t.Fatalf("junk token: %v", err)
	}
}

// BenchmarkOAuthVerify measures one token verification: a cached one (the
// HMAC of the token and an LRU look-up) and an uncached one (the signature
// check with the issuer's key, keys already fetched), RS256 and ES256.
func BenchmarkOAuthVerify(b *testing.B) {
	p, err := oidctest.Start(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	tokens := func(n int) []string {
		ts := make([]string, n)
		for i := range ts {
			ts[i] = p.Token("alice@example.com", testAudience)
		}
		return ts
	}
	run := func(b *testing.B, cacheSize int, ts []string) {
		o, err := NewOAuth(OAuthConfig{Issuer: p.Issuer, Audience: []string{testAudience}, HTTPClient: p.Client(), CacheSize: cacheSize})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		if _, err := o.Verify(ctx, ts[0]); err != nil { // fetches the keys
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := o.Verify(ctx, ts[i%len(ts)]); err != nil {
				b.Fatal(err)
			}
		}
	}
	rs := tokens(256)
	b.Run("cached", func(b *testing.B) { run(b, 1000, rs) })
	b.Run("uncached-RS256", func(b *testing.B) { run(b, 1, rs) })
	if err := p.RotateEC(); err != nil {
		b.Fatal(err)
	}
	es := tokens(256)
	b.Run("uncached-ES256", func(b *testing.B) { run(b, 1, es) })
}

// TestOAuthConcurrent verifies tokens from many goroutines while the issuer
// rotates its key (for the race detector), and checks that the key set is
// fetched a bounded number of times.
func TestOAuthConcurrent(t *testing.T) {
	p := startProvider(t)
	o := newVerifier(t, p, func(c *OAuthConfig) { c.KeyRefreshInterval = time.Hour })
	ctx := context.Background()
	if _, err := o.Verify(ctx, p.Token("alice@example.com", testAudience)); err != nil {
		t.Fatal(err)
	}
	toks := make([]string, 8)
	for i := range toks {
		toks[i] = p.Token(fmt.Sprintf("u%d@example.com", i), testAudience)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 50 {
				id, err := o.Verify(ctx, toks[(g+i)%len(toks)])
				if err != nil || id.User != fmt.Sprintf("u%d@example.com", (g+i)%len(toks)) {
					errs <- fmt.Errorf("%v %v", id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.JWKSFetches(); n != 1 {
		t.Errorf("the JWKS was fetched %d times, want once", n)
	}
}
