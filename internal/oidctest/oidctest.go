// Package oidctest runs an OpenID Connect provider on loopback for tests of
// popgate's bearer-token logins: HTTPS with a throwaway CA, a discovery
// document, a JWKS whose signing key can be rotated, RFC 7662 token
// introspection (with revocation), and a token endpoint for the client
// credentials grant. It can be stopped and started again on the same
// address, to test an issuer that is down.
//
// Signed tokens are JWTs (RFC 9068 access tokens) signed with RS256 by
// default; for refusal tests [Provider.Sign] takes any header and claims,
// and [Provider.SignHMACWithPublicKey] and [UnsignedToken] build the
// classic forgeries.
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/popgate/popgate/internal/certgen"
)

// Provider is a running test OpenID provider.
type Provider struct {
	Issuer string // https://127.0.0.1:PORT
	CAFile string // PEM of the CA that signed the provider's certificate
	Pool   *x509.CertPool

	ClientID, ClientSecret string // introspection client

	addr    string
	tlsConf *tls.Config

	mu       sync.Mutex
	srv      *http.Server
	keys     []*signingKey // keys[len-1] signs
	opaque   map[string]map[string]any
	revoked  map[string]bool
	jwksHits int
	introHit int
}

type signingKey struct {
	kid string
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

// Start starts a provider on 127.0.0.1 with one RSA signing key; dir holds
// the CA file.
func Start(dir string) (*Provider, error) {
	ca, err := certgen.NewCA("oidctest", certgen.ECDSA)
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := ca.IssueFiles(dir, "idp", "localhost", certgen.ECDSA)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	p := &Provider{
		CAFile:       filepath.Join(dir, "idp-ca.pem"),
		Pool:         ca.Pool,
		ClientID:     "popgate",
		ClientSecret: "introspection secret",
		tlsConf:      &tls.Config{Certificates: []tls.Certificate{cert}},
		opaque:       map[string]map[string]any{},
		revoked:      map[string]bool{},
	}
	if err := ca.WriteCert(p.CAFile); err != nil {
		return nil, err
	}
	if err := p.Rotate(); err != nil {
		return nil, err
	}
	if err := p.listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	p.Issuer = "https://" + p.addr
	return p, nil
}

func (p *Provider) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("POST /introspect", p.introspect)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	go srv.Serve(tls.NewListener(ln, p.tlsConf))
	return nil
}

// Stop stops serving; the provider's state is kept for [Provider.Restart].
func (p *Provider) Stop() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Restart serves again on the same address.
func (p *Provider) Restart() error {
	var err error
	for range 50 { // the port may linger a moment after Stop
		if err = p.listen(p.addr); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Rotate adds a new RSA signing key, which signs from now on; the older
// keys stay published (see [Provider.DropOldKeys]).
func (p *Provider) Rotate() error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, &signingKey{kid: fmt.Sprintf("rsa-%d", len(p.keys)+1), rsa: k})
	return nil
}

// RotateEC adds a new ECDSA P-256 signing key (ES256).
func (p *Provider) RotateEC() error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, &signingKey{kid: fmt.Sprintf("ec-%d", len(p.keys)+1), ec: k})
	return nil
}

// DropOldKeys unpublishes every key but the signing one.
func (p *Provider) DropOldKeys() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = p.keys[len(p.keys)-1:]
}

// JWKSFetches counts the JWKS requests served.
func (p *Provider) JWKSFetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.jwksHits
}

// Introspections counts the introspection requests served.
func (p *Provider) Introspections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.introHit
}

func (p *Provider) discovery(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]any{
		"issuer":                                p.Issuer,
		"jwks_uri":                              p.Issuer + "/jwks",
		"introspection_endpoint":                p.Issuer + "/introspect",
		"token_endpoint":                        p.Issuer + "/token",
		"authorization_endpoint":                p.Issuer + "/authorize",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (p *Provider) jwks(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.jwksHits++
	var keys []map[string]string
	for _, k := range p.keys {
		keys = append(keys, k.public())
	}
	p.mu.Unlock()
	writeJSON(w, map[string]any{"keys": keys})
}

func (k *signingKey) public() map[string]string {
	if k.ec != nil {
		return map[string]string{"kty": "EC", "crv": "P-256", "kid": k.kid, "use": "sig", "alg": "ES256",
			"x": b64(k.ec.X.FillBytes(make([]byte, 32))), "y": b64(k.ec.Y.FillBytes(make([]byte, 32)))}
	}
	return map[string]string{"kty": "RSA", "kid": k.kid, "use": "sig", "alg": "RS256",
		"n": b64(k.rsa.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.E)).Bytes())}
}

func (p *Provider) introspect(w http.ResponseWriter, r *http.Request) {
	id, secret, ok := r.BasicAuth()
	// RFC 6749 §2.3.1: the credentials are form-encoded first.
	if !ok || id != p.ClientID || secret != url.QueryEscape(p.ClientSecret) {
		http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
		return
	}
	tok := r.PostFormValue("token")
	p.mu.Lock()
	p.introHit++
	claims, known := p.opaque[tok]
	revoked := p.revoked[tok]
	p.mu.Unlock()
	if !known || revoked {
		writeJSON(w, map[string]any{"active": false})
		return
	}
	if exp, ok := claims["exp"].(int64); ok && time.Now().Unix() >= exp {
		writeJSON(w, map[string]any{"active": false})
		return
	}
	out := map[string]any{"active": true, "token_type": "Bearer"}
	for k, v := range claims {
		out[k] = v
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Claims returns the usual claims of an access token for user and
// audience, valid from a minute ago for ttl.
func (p *Provider) Claims(user, audience string, ttl time.Duration) map[string]any {
	now := time.Now()
	jti := make([]byte, 12)
	rand.Read(jti)
	return map[string]any{
		"jti": b64(jti), // every token differs, as a provider's do
		"iss": p.Issuer, "aud": audience, "sub": "sub-" + user, "email": user, "email_verified": true,
		"preferred_username": user, "iat": now.Add(-time.Minute).Unix(),
		"nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(ttl).Unix(),
		"client_id": "mailclient", "scope": "openid email",
	}
}

// Token signs an access token for user and audience, valid for an hour,
// with the current key.
func (p *Provider) Token(user, audience string) string {
	t, err := p.Sign(nil, p.Claims(user, audience, time.Hour))
	if err != nil {
		panic(err)
	}
	return t
}

// Sign signs claims with the current key. header's entries are added to
// (and override) the default header {"alg","kid","typ"}.
func (p *Provider) Sign(header, claims map[string]any) (string, error) {
	p.mu.Lock()
	k := p.keys[len(p.keys)-1]
	p.mu.Unlock()
	h := map[string]any{"typ": "at+jwt", "kid": k.kid, "alg": "RS256"}
	if k.ec != nil {
		h["alg"] = "ES256"
	}
	for n, v := range header {
		h[n] = v
	}
	signing := encodePart(h) + "." + encodePart(claims)
	digest := sha256.Sum256([]byte(signing))
	var sig []byte
	var err error
	if k.ec != nil {
		r, s, err2 := ecdsa.Sign(rand.Reader, k.ec, digest[:])
		if err2 != nil {
			return "", err2
		}
		sig = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	} else {
		sig, err = rsa.SignPKCS1v15(rand.Reader, k.rsa, crypto.SHA256, digest[:])
		if err != nil {
			return "", err
		}
	}
	return signing + "." + b64(sig), nil
}

// SignHMACWithPublicKey forges the algorithm-confusion token: HS256 with
// the current RSA key's public key (its PEM, as vulnerable libraries used
// it) as the HMAC secret.
func (p *Provider) SignHMACWithPublicKey(claims map[string]any) string {
	p.mu.Lock()
	k := p.keys[len(p.keys)-1]
	p.mu.Unlock()
	der, _ := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	signing := encodePart(map[string]any{"alg": "HS256", "kid": k.kid, "typ": "JWT"}) + "." + encodePart(claims)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(signing))
	return signing + "." + b64(m.Sum(nil))
}

// UnsignedToken builds an "alg":"none" token of claims.
func UnsignedToken(claims map[string]any) string {
	return encodePart(map[string]any{"alg": "none", "typ": "JWT"}) + "." + encodePart(claims) + "."
}

func encodePart(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b64(b)
}

// Opaque issues an opaque token (for introspection) with claims.
func (p *Provider) Opaque(claims map[string]any) string {
	b := make([]byte, 24)
	rand.Read(b)
	tok := b64(b)
	c := map[string]any{}
	for k, v := range claims {
		c[k] = v
	}
	p.mu.Lock()
	p.opaque[tok] = c
	p.mu.Unlock()
	return tok
}

// Revoke makes introspection answer tok inactive.
func (p *Provider) Revoke(tok string) {
	p.mu.Lock()
	p.revoked[tok] = true
	p.mu.Unlock()
}

// Client returns an HTTP client that trusts the provider.
func (p *Provider) Client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool}}}
}

// WriteSecret writes the introspection client secret to a file (mode
// 0600) and returns its name.
func (p *Provider) WriteSecret(dir string) (string, error) {
	name := filepath.Join(dir, "introspection-secret")
	return name, os.WriteFile(name, []byte(p.ClientSecret+"\n"), 0o600)
}

// Close stops the provider for good.
func (p *Provider) Close() error {
	p.Stop()
	return nil
}

// SignPayloadOnly returns the base64url encoding of claims as a JWT's
// payload part, for tests that swap the payload of a signed token.
func (p *Provider) SignPayloadOnly(claims map[string]any) (string, error) {
	return encodePart(claims), nil
}
