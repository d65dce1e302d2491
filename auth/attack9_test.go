package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
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
