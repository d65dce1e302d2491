package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	_ "crypto/sha512" // SHA-384 and SHA-512 for RS384, PS512, ES384 …
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// OAuthConfig configures an [OAuth] verifier of bearer tokens.
type OAuthConfig struct {
	// Issuer is the OpenID Connect issuer URL (https). Its discovery
	// document (Issuer + "/.well-known/openid-configuration") names the
	// JWKS and the introspection endpoint, and must name Issuer itself
	// (RFC 8414 §3.3), so that a look-alike cannot stand in for it.
	Issuer string
	// Audience lists the accepted "aud" values; a token must name one.
	// Required for signed tokens; optional under introspection, where
	// without it any token the issuer calls active passes, whichever
	// client it was issued to.
	Audience []string
	// Algorithms lists the accepted JWS algorithms; nil:
	// [DefaultOAuthAlgorithms]. Only public-key algorithms exist here:
	// "none" and the HMAC ones are refused by [NewOAuth], so that no
	// token is accepted unsigned or signed with a public key used as an
	// HMAC secret.
	Algorithms []string
	// ClockSkew is the leeway on exp, nbf and iat.
	ClockSkew time.Duration
	// UserClaim names the claim that holds the mailbox name ("email",
	// "preferred_username", …); "" is "email".
	UserClaim string
	// AllowUnverifiedEmail accepts an "email" UserClaim without an
	// "email_verified" claim (issuers that send none, such as Entra
	// ID). By default the claim must be there and true: an address the
	// user typed in and nobody confirmed may be anyone's. A false one
	// is refused either way.
	AllowUnverifiedEmail bool
	// AllowUnnormalizedNames accepts names that Unicode's NFKC changes
	// ("ａｌｉｃｅ", the Kelvin sign, "ﬁ", decomposed accents) or that
	// hold format or control characters (zero-width spaces, soft
	// hyphens) or spaces around them. By default they are refused: a
	// directory or backend that compares names as Unicode folds them
	// (OpenLDAP's matching rules, a database's collation) takes
	// "ａｌｉｃｅ@example.com" for alice, whose address an issuer that
	// lets users register themselves would never have handed out.
	AllowUnnormalizedNames bool
	// RequireAccessTokenType accepts only JWTs whose header says
	// "typ": "at+jwt" (RFC 9068 §2.1), so that no other token the
	// issuer signs (an ID token, a logout token) passes for an access
	// token. Keycloak and many others write "JWT" there, so it is off
	// by default; without it, ID tokens are refused by their claims (see
	// [OAuth.verifyJWT]).
	RequireAccessTokenType bool
	// Introspect verifies tokens through RFC 7662 token introspection at
	// the issuer's introspection_endpoint (opaque tokens), with ClientID
	// and ClientSecret as the HTTP Basic credentials, instead of checking
	// signatures.
	Introspect   bool
	ClientID     string
	ClientSecret Password
	// IntrospectionCacheTTL bounds how long an introspection's "active"
	// answer is trusted: a revoked token is refused at the latest that
	// long after. 0 asks for every login.
	IntrospectionCacheTTL time.Duration
	// CacheSize bounds the verified tokens held (each keyed by an HMAC
	// of the token, never the token). 0: 10000.
	CacheSize int
	// KeyRefreshInterval is the least time between two fetches of the
	// JWKS: a token naming a key ("kid") not in the cached set fetches
	// it again at most this often, so that made-up kids cannot make
	// popgate hammer the issuer. 0: one minute.
	KeyRefreshInterval time.Duration
	// HTTPClient fetches discovery, keys and introspections; it carries
	// the timeouts and the trust. nil: a client with a 10 s timeout and
	// the system's roots. Redirects are not followed unless the client
	// has a CheckRedirect of its own.
	HTTPClient *http.Client
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// DefaultOAuthAlgorithms are the JWS algorithms accepted when none are
// configured: RSA (PKCS #1 v1.5 and PSS), ECDSA and Ed25519 signatures.
var DefaultOAuthAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// Identity is what a verified token says.
type Identity struct {
	User    string    // the mailbox, from the configured claim
	Expires time.Time // the token's exp; zero when it has none (introspection)
}

// TokenError is a token that was checked and refused: expired, signed
// with an unknown key or not at all, for another audience, revoked.
// Reason is for the log; it never quotes the token. Any other error from
// [OAuth.Verify] is trouble reaching the issuer.
type TokenError struct{ Reason string }

func (e *TokenError) Error() string { return "auth: bearer token refused: " + e.Reason }

func refuse(format string, a ...any) error { return &TokenError{Reason: fmt.Sprintf(format, a...)} }

// clip bounds a value taken from a token (a kid, an issuer) before a
// refusal's reason quotes it for the log.
func clip(s string) string {
	if len(s) > 64 {
		return strings.ToValidUTF8(s[:64], "") + "..."
	}
	return s
}

// OAuth verifies bearer tokens against an OpenID Connect issuer: JWTs by
// their signature with the issuer's published keys, or opaque tokens by
// RFC 7662 introspection. Verified tokens are remembered until they expire.
// It is safe for concurrent use.
type OAuth struct {
	cfg    OAuthConfig
	client *http.Client
	algs   map[string]bool
	macKey []byte

	mu    sync.Mutex // guards cache
	cache *ttlLRU[Identity]

	// fetching (a one-place semaphore, see lockFetch) serialises
	// discovery and key fetches; meta, metaErr, metaTried and fetched
	// are read and written while it is held.
	fetching  chan struct{}
	meta      *oidcMetadata
	metaErr   error     // the last discovery's failure, while meta is nil
	metaTried time.Time // last discovery attempt
	fetched   time.Time // last JWKS fetch attempt

	// introspecting holds a place for each introspection under way
	// (maxIntrospections): a flood of made-up tokens is not as many
	// requests and connections to the issuer at once.
	introspecting chan struct{}

	// keysMu guards keys, which are written under fetching too: tokens
	// of keys popgate holds verify while a fetch is under way.
	keysMu sync.RWMutex
	keys   []jwk
	keysAt time.Time // when keys were fetched
}

type oidcMetadata struct {
	Issuer        string `json:"issuer"`
	JWKSURI       string `json:"jwks_uri"`
	Introspection string `json:"introspection_endpoint"`
}

// NewOAuth checks cfg and returns its verifier. Nothing is fetched yet: an
// issuer that cannot be reached fails logins for now ("-ERR [SYS/TEMP]"),
// not the start.
func NewOAuth(cfg OAuthConfig) (*OAuth, error) {
	u, err := url.Parse(cfg.Issuer)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("oauth issuer must be an https URL without query or fragment, such as https://idp.example.com/realms/mail")
	}
	if cfg.Introspect {
		if cfg.ClientID == "" || cfg.ClientSecret == "" {
			return nil, errors.New("oauth introspection needs client_id and client_secret_file")
		}
	} else if len(cfg.Audience) == 0 {
		return nil, errors.New("oauth audience is required for signed tokens: name the client or resource the tokens are issued for")
	}
	if cfg.Algorithms == nil {
		cfg.Algorithms = DefaultOAuthAlgorithms
	}
	o := &OAuth{cfg: cfg, client: cfg.HTTPClient, algs: map[string]bool{}, macKey: make([]byte, 32), fetching: make(chan struct{}, 1),
		introspecting: make(chan struct{}, maxIntrospections)}
	for _, a := range cfg.Algorithms {
		if !slices.Contains(DefaultOAuthAlgorithms, a) {
			return nil, fmt.Errorf("oauth algorithm %q is not accepted (only %s; never none or HMAC)", a, strings.Join(DefaultOAuthAlgorithms, ", "))
		}
		o.algs[a] = true
	}
	if o.cfg.UserClaim == "" {
		o.cfg.UserClaim = "email"
	}
	if o.cfg.CacheSize <= 0 {
		o.cfg.CacheSize = 10000
	}
	if o.cfg.KeyRefreshInterval <= 0 {
		o.cfg.KeyRefreshInterval = time.Minute
	}
	if o.cfg.Now == nil {
		o.cfg.Now = time.Now
	}
	if o.client == nil {
		o.client = &http.Client{Timeout: 10 * time.Second}
	}
	if o.client.CheckRedirect == nil {
		// Go's clients follow redirects, to any host and from https
		// to plain http, where anyone on the path could answer the
		// JWKS with a key of their own. The issuer's endpoints are
		// used as its discovery document names them.
		c := *o.client
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		o.client = &c
	}
	if _, err := rand.Read(o.macKey); err != nil {
		return nil, err
	}
	o.cache = newTTLLRU[Identity](o.cfg.CacheSize, 0)
	return o, nil
}

// DiscoveryURL returns the issuer's OpenID discovery document URL, which
// RFC 7628's error response points clients at.
func (o *OAuth) DiscoveryURL() string {
	return strings.TrimSuffix(o.cfg.Issuer, "/") + "/.well-known/openid-configuration"
}

// Verify checks token and returns whom it names. A *[TokenError] refuses
// the token; any other error is trouble with the issuer (unreachable, a
// broken answer), to be answered "try again later".
func (o *OAuth) Verify(ctx context.Context, token string) (Identity, error) {
	now := o.cfg.Now()
	m := hmac.New(sha256.New, o.macKey)
	m.Write([]byte(token))
	key := string(m.Sum(nil))
	o.mu.Lock()
	id, ok := o.cache.get(key, now)
	o.mu.Unlock()
	if ok {
		return id, nil
	}
	var until time.Time
	var err error
	if o.cfg.Introspect {
		id, until, err = o.introspect(ctx, token, now)
	} else {
		id, err = o.verifyJWT(ctx, token, now)
		until = id.Expires
	}
	if err != nil {
		return Identity{}, err
	}
	if until.After(now) {
		o.mu.Lock()
		o.cache.addUntil(key, id, now, until)
		o.mu.Unlock()
	}
	return id, nil
}

// CheckIssuer fetches the discovery document and, for signed tokens, the
// keys, reporting what is wrong: `popgate check`'s test of the settings.
func (o *OAuth) CheckIssuer(ctx context.Context) error {
	if err := o.lockFetch(ctx); err != nil {
		return err
	}
	defer o.unlockFetch()
	meta, err := o.metadataLocked(ctx)
	if err != nil {
		return err
	}
	if o.cfg.Introspect {
		if meta.Introspection == "" {
			return errors.New("the issuer's discovery document names no introspection_endpoint")
		}
		return nil
	}
	if err := o.fetchKeysLocked(ctx, o.cfg.Now()); err != nil {
		return err
	}
	o.keysMu.RLock()
	n := len(o.keys)
	o.keysMu.RUnlock()
	if n == 0 {
		return errors.New("the issuer's JWKS holds no signing key popgate can use")
	}
	return nil
}

// lockFetch waits for the fetches from the issuer to be this login's to
// make, or for ctx to end: a login behind another one's fetch from an
// issuer that does not answer gives up at its own deadline.
func (o *OAuth) lockFetch(ctx context.Context) error {
	select {
	case o.fetching <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("oauth: waiting for another login's fetch from the issuer: %w", ctx.Err())
	}
}

func (o *OAuth) unlockFetch() { <-o.fetching }

// metadataLocked returns the discovery document, fetching it the first
// time. A failed discovery is tried again at most once per
// KeyRefreshInterval, as the keys are: an issuer that is down or answers
// garbage is not asked by every login in turn.
func (o *OAuth) metadataLocked(ctx context.Context) (*oidcMetadata, error) {
	if o.meta != nil {
		return o.meta, nil
	}
	now := o.cfg.Now()
	if o.metaErr != nil && now.Sub(o.metaTried) < o.cfg.KeyRefreshInterval {
		return nil, o.metaErr
	}
	meta, err := o.discover(ctx)
	if err != nil {
		if ctx.Err() == nil {
			// The login's own end is no failure of the issuer's.
			o.metaErr, o.metaTried = err, now
		}
		return nil, err
	}
	o.meta, o.metaErr = meta, nil
	return meta, nil
}

func (o *OAuth) discover(ctx context.Context) (*oidcMetadata, error) {
	var meta oidcMetadata
	if err := o.getJSON(ctx, o.DiscoveryURL(), &meta); err != nil {
		return nil, fmt.Errorf("oauth discovery: %w", err)
	}
	if meta.Issuer != o.cfg.Issuer {
		return nil, fmt.Errorf("oauth discovery: the document names issuer %q, not the configured %q", meta.Issuer, o.cfg.Issuer)
	}
	for _, u := range []string{meta.JWKSURI, meta.Introspection} {
		if u != "" && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("oauth discovery: endpoint %q is not https", u)
		}
	}
	if !o.cfg.Introspect && meta.JWKSURI == "" {
		return nil, errors.New("oauth discovery: the document names no jwks_uri")
	}
	return &meta, nil
}

// maxIntrospections bounds the introspection requests under way at once;
// a login beyond it waits for a turn until its deadline.
const maxIntrospections = 64

// maxIssuerAnswer bounds what is read of a discovery document, a JWKS or an
// introspection answer.
const maxIssuerAnswer = 1 << 20

func (o *OAuth) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	return o.do(req, v)
}

func (o *OAuth) do(req *http.Request, v any) error {
	resp, err := o.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerAnswer+1))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", req.URL.Redacted(), resp.Status)
	}
	if len(body) > maxIssuerAnswer {
		return fmt.Errorf("%s answered more than %d bytes", req.URL.Redacted(), maxIssuerAnswer)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s answered no valid JSON: %v", req.URL.Redacted(), err)
	}
	return nil
}

// jwk is one public key of the issuer's JWKS.
type jwk struct {
	kid string
	alg string // "" when the JWKS names none
	pub crypto.PublicKey
}

type rawJWK struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// fetchKeysLocked fetches the JWKS. Keys popgate cannot use (encryption
// keys, symmetric "oct" keys, unknown types, RSA under 2048 or over 8192
// bits) are left out: a symmetric key in the set must never verify
// anything.
func (o *OAuth) fetchKeysLocked(ctx context.Context, now time.Time) error {
	meta, err := o.metadataLocked(ctx)
	if err != nil {
		return err
	}
	o.fetched = now
	var set struct {
		Keys []rawJWK `json:"keys"`
	}
	if err := o.getJSON(ctx, meta.JWKSURI, &set); err != nil {
		return fmt.Errorf("oauth keys: %w", err)
	}
	keys := make([]jwk, 0, len(set.Keys))
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		pub, err := k.publicKey()
		if err != nil {
			continue
		}
		keys = append(keys, jwk{kid: k.Kid, alg: k.Alg, pub: pub})
	}
	o.keysMu.Lock()
	o.keys, o.keysAt = keys, now
	o.keysMu.Unlock()
	return nil
}

func b64big(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("bad key number")
	}
	return new(big.Int).SetBytes(b), nil
}

// maxRSABits bounds the RSA keys of a JWKS: no issuer uses larger ones,
// and each verification with a key of millions of bits (a JWKS may run to
// a MiB) would cost seconds of CPU, a token login's worth each.
const maxRSABits = 8192

func (k rawJWK) publicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64big(k.N)
		if err != nil {
			return nil, err
		}
		e, err := b64big(k.E)
		if err != nil || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, errors.New("bad RSA exponent")
		}
		if n.BitLen() < 2048 {
			return nil, errors.New("RSA key under 2048 bits")
		}
		if n.BitLen() > maxRSABits {
			return nil, errors.New("RSA key over 8192 bits")
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case "EC":
		var c elliptic.Curve
		switch k.Crv {
		case "P-256":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		case "P-521":
			c = elliptic.P521()
		default:
			return nil, errors.New("unknown curve")
		}
		size := (c.Params().BitSize + 7) / 8
		x, err1 := base64.RawURLEncoding.DecodeString(k.X)
		y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
		if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
			return nil, errors.New("bad EC point")
		}
		// ParseUncompressedPublicKey checks that the point is on the curve.
		return ecdsa.ParseUncompressedPublicKey(c, append(append([]byte{4}, x...), y...))
	case "OKP":
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("bad OKP key")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, errors.New("unusable key type")
}

// maxKeyAge is how long a fetched JWKS is used before it is fetched again:
// a key the issuer took out of its set (compromised, rotated away) stops
// verifying within it even when no token names a key popgate lacks.
const maxKeyAge = time.Hour

// keysFor returns the keys that may have signed a token with kid and alg.
// A kid not in the cached set fetches the set again, at most once per
// KeyRefreshInterval; within it, such a token is answered "try later"
// (a key the issuer has just rotated in), not refused. A set older than
// maxKeyAge is fetched again by one login while the others go on with it,
// and serves on while the issuer cannot be reached.
func (o *OAuth) keysFor(ctx context.Context, kid, alg string, now time.Time) ([]jwk, error) {
	match := func() (ks []jwk, fresh bool) {
		o.keysMu.RLock()
		defer o.keysMu.RUnlock()
		for _, k := range o.keys {
			if (kid == "" || k.kid == kid) && keyFits(k, alg) {
				ks = append(ks, k)
			}
		}
		return ks, now.Sub(o.keysAt) < maxKeyAge
	}
	ks, fresh := match()
	switch {
	case len(ks) > 0 && fresh:
		return ks, nil
	case len(ks) > 0:
		// Stale: this login fetches the set unless another one is.
		select {
		case o.fetching <- struct{}{}:
		default:
			return ks, nil
		}
	default:
		if err := o.lockFetch(ctx); err != nil {
			return nil, err
		}
	}
	defer o.unlockFetch()
	// Another login may have fetched the set while this one waited.
	if ks, fresh = match(); len(ks) > 0 && fresh {
		return ks, nil
	}
	if !o.fetched.IsZero() && now.Sub(o.fetched) < o.cfg.KeyRefreshInterval {
		if len(ks) > 0 {
			return ks, nil // stale, but the issuer was asked just now
		}
		if kid != "" && o.hasKid(kid) {
			return nil, refuse("key %q does not fit algorithm %s", clip(kid), alg)
		}
		return nil, errors.New("oauth keys: token names a key not in the issuer's set, fetched too recently to ask again")
	}
	if err := o.fetchKeysLocked(ctx, now); err != nil {
		if len(ks) > 0 {
			// The issuer cannot be asked: the keys held serve on
			// rather than every token login failing while it is down.
			return ks, nil
		}
		return nil, err
	}
	if ks, _ := match(); len(ks) > 0 {
		return ks, nil
	}
	return nil, refuse("no key of the issuer fits (kid %q, alg %s)", clip(kid), alg)
}

func (o *OAuth) hasKid(kid string) bool {
	o.keysMu.RLock()
	defer o.keysMu.RUnlock()
	for _, k := range o.keys {
		if k.kid == kid {
			return true
		}
	}
	return false
}

// keyFits reports whether k may verify alg: the key's type and curve must
// be the algorithm's (an RSA key never verifies ES256, a public key never
// an HMAC), and a key that names its algorithm only that one.
func keyFits(k jwk, alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch p := k.pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return alg == "ES256" && p.Curve == elliptic.P256() || alg == "ES384" && p.Curve == elliptic.P384() || alg == "ES512" && p.Curve == elliptic.P521()
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

func algHash(alg string) crypto.Hash {
	switch alg[len(alg)-3:] {
	case "384":
		return crypto.SHA384
	case "512":
		return crypto.SHA512
	}
	return crypto.SHA256
}

func verifySig(k jwk, alg string, signed, sig []byte) bool {
	if alg == "EdDSA" {
		return ed25519.Verify(k.pub.(ed25519.PublicKey), signed, sig)
	}
	h := algHash(alg).New()
	h.Write(signed)
	digest := h.Sum(nil)
	switch p := k.pub.(type) {
	case *rsa.PublicKey:
		if alg[0] == 'P' {
			return rsa.VerifyPSS(p, algHash(alg), digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
		}
		return rsa.VerifyPKCS1v15(p, algHash(alg), digest, sig) == nil
	case *ecdsa.PublicKey:
		size := (p.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(p, digest, r, s)
	}
	return false
}

// verifyJWT checks a JWS-signed JWT (RFC 7519, RFC 9068): the header's
// algorithm is one accepted, a key of the issuer fits it and verifies the
// signature, and the claims name the issuer, an accepted audience, a time
// window that holds now, and the user.
func (o *OAuth) verifyJWT(ctx context.Context, token string, now time.Time) (Identity, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Identity{}, refuse("not a signed JWT")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return Identity{}, refuse("header is not base64url")
	}
	var hdr struct {
		Alg  string          `json:"alg"`
		Kid  string          `json:"kid"`
		Typ  string          `json:"typ"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return Identity{}, refuse("header is not JSON")
	}
	if err := o.checkTokenType(hdr.Typ); err != nil {
		return Identity{}, err
	}
	if !o.algs[hdr.Alg] {
		return Identity{}, refuse("algorithm %q is not accepted", clip(hdr.Alg))
	}
	if hdr.Crit != nil {
		return Identity{}, refuse("header names critical extensions")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return Identity{}, refuse("signature is not base64url")
	}
	keys, err := o.keysFor(ctx, hdr.Kid, hdr.Alg, now)
	if err != nil {
		return Identity{}, err
	}
	signed := []byte(token[:len(parts[0])+1+len(parts[1])])
	ok := false
	for _, k := range keys {
		if verifySig(k, hdr.Alg, signed, sig) {
			ok = true
			break
		}
	}
	if !ok {
		return Identity{}, refuse("signature does not verify")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Identity{}, refuse("payload is not base64url")
	}
	claims, err := decodeClaims(pb)
	if err != nil {
		return Identity{}, err
	}
	if iss, _ := claims["iss"].(string); iss != o.cfg.Issuer {
		return Identity{}, refuse("issuer %q is not the configured one", clip(iss))
	}
	if !o.audienceOK(claims["aud"], true) {
		return Identity{}, refuse("audience is not accepted")
	}
	if err := notAccessToken(claims); err != nil {
		return Identity{}, err
	}
	return o.identity(claims, now, true)
}

// notAccessToken refuses the claims of a token that is not an access
// token. An ID token says who signed in to a client, for that client; it
// is no grant to anything, and any site the user signs in to with the
// issuer holds one. One that names an accepted audience (the mail
// client's own ID, configured as the audience) must not pass for an
// access token. OpenID Connect's at_hash and c_hash bind an ID token to
// its access token or code and appear in nothing else; Keycloak marks
// its tokens "typ": "ID", "Refresh", "Logout", its access tokens
// "Bearer". nonce is no sign: some issuers (Keycloak among them) copy it
// into access tokens.
func notAccessToken(claims map[string]any) error {
	if _, ok := claims["at_hash"]; ok {
		return refuse("an ID token (at_hash), not an access token")
	}
	if _, ok := claims["c_hash"]; ok {
		return refuse("an ID token (c_hash), not an access token")
	}
	if typ, ok := claims["typ"]; ok {
		if s, _ := typ.(string); !strings.EqualFold(s, "Bearer") {
			return refuse("the token's typ claim %q is not Bearer: not an access token", clip(fmt.Sprint(typ)))
		}
	}
	return nil
}

// checkTokenType refuses a JWT header's typ that names another kind of
// token: an explicitly typed JWT (RFC 8725 §3.11) other than an access
// token ("dpop+jwt", "logout+jwt", "secevent+jwt"), and anything but
// "at+jwt" under RequireAccessTokenType.
func (o *OAuth) checkTokenType(typ string) error {
	t := strings.ToLower(strings.TrimPrefix(strings.ToLower(typ), "application/"))
	if t == "at+jwt" {
		return nil
	}
	if o.cfg.RequireAccessTokenType {
		return refuse("header typ %q is not at+jwt (oauth.require_access_token_type)", clip(typ))
	}
	if strings.HasSuffix(t, "+jwt") {
		return refuse("header typ %q is not an access token's", clip(typ))
	}
	return nil
}

func decodeClaims(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil || claims == nil {
		return nil, refuse("claims are not a JSON object")
	}
	return claims, nil
}

// audienceOK reports whether aud (a string or a list of them) names an
// accepted audience. A missing aud passes only when required is false.
func (o *OAuth) audienceOK(aud any, required bool) bool {
	var auds []string
	switch a := aud.(type) {
	case nil:
		return !required || len(o.cfg.Audience) == 0
	case string:
		auds = []string{a}
	case []any:
		for _, v := range a {
			if s, ok := v.(string); ok {
				auds = append(auds, s)
			}
		}
	default:
		return false
	}
	if len(o.cfg.Audience) == 0 {
		return true
	}
	for _, a := range auds {
		if slices.Contains(o.cfg.Audience, a) {
			return true
		}
	}
	return false
}

// maxNumericDate bounds the seconds of a time claim (some 35,000 years
// either side of 1970): far past any token's life, well inside int64.
const maxNumericDate = 1 << 40

func numericDate(v any) (time.Time, bool, error) {
	if v == nil {
		return time.Time{}, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false, refuse("a time claim is not a number")
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false, refuse("a time claim is not a number")
	}
	// Past what an int64 of seconds holds, the conversion wraps: nbf
	// "at the end of time" would read as the distant past.
	if f < -maxNumericDate || f > maxNumericDate {
		return time.Time{}, false, refuse("a time claim is out of range")
	}
	return time.Unix(int64(f), 0), true, nil
}

// identity checks the time claims and reads the user claim. exp is required
// when needExp.
func (o *OAuth) identity(claims map[string]any, now time.Time, needExp bool) (Identity, error) {
	skew := o.cfg.ClockSkew
	exp, hasExp, err := numericDate(claims["exp"])
	if err != nil {
		return Identity{}, err
	}
	switch {
	case !hasExp && needExp:
		return Identity{}, refuse("token has no expiry")
	case hasExp && !now.Before(exp.Add(skew)):
		return Identity{}, refuse("token expired")
	}
	if nbf, ok, err := numericDate(claims["nbf"]); err != nil {
		return Identity{}, err
	} else if ok && now.Add(skew).Before(nbf) {
		return Identity{}, refuse("token not yet valid")
	}
	if iat, ok, err := numericDate(claims["iat"]); err != nil {
		return Identity{}, err
	} else if ok && now.Add(skew).Before(iat) {
		return Identity{}, refuse("token issued in the future")
	}
	user, _ := claims[o.cfg.UserClaim].(string)
	if o.cfg.UserClaim == "email" {
		// An address the user typed in and nobody confirmed may be
		// anyone's. Some issuers write the flag as a string ("false"
		// is as unverified as false); anything but true is no
		// confirmation.
		v, ok := claims["email_verified"]
		switch {
		case ok && !isTrue(v):
			return Identity{}, refuse("the token's email is not verified")
		case !ok && !o.cfg.AllowUnverifiedEmail:
			return Identity{}, refuse("the token has no email_verified claim (see oauth.require_email_verified)")
		}
	}
	if user == "" {
		return Identity{}, refuse("claim %q is missing", o.cfg.UserClaim)
	}
	if strings.ContainsAny(user, "\r\n\x00") || len(user) > MaxCredentialLen {
		return Identity{}, refuse("claim %q is not a usable name", o.cfg.UserClaim)
	}
	if !o.cfg.AllowUnnormalizedNames && !normalName(user) {
		return Identity{}, refuse("claim %q is not in Unicode normal form NFKC, or holds format characters or spaces around it (see oauth.allow_unnormalized_names)", o.cfg.UserClaim)
	}
	id := Identity{User: user}
	if hasExp {
		id.Expires = exp
	}
	return id, nil
}

// normalName reports whether user is its own NFKC form and holds no
// control or format character and no space at either end: no other
// spelling of a name a directory would take for it.
func normalName(user string) bool {
	if strings.TrimFunc(user, unicode.IsSpace) != user {
		return false
	}
	if strings.ContainsFunc(user, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }) {
		return false
	}
	return isASCII(user) || norm.NFKC.IsNormalString(user)
}

// isTrue reports whether a claim is true: the JSON boolean, or the string
// "true" that some issuers write.
func isTrue(v any) bool {
	switch v := v.(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// introspect asks the issuer's RFC 7662 endpoint about token. The answer is
// trusted until the token expires or IntrospectionCacheTTL passes, which
// comes first.
func (o *OAuth) introspect(ctx context.Context, token string, now time.Time) (Identity, time.Time, error) {
	if err := o.lockFetch(ctx); err != nil {
		return Identity{}, time.Time{}, err
	}
	meta, err := o.metadataLocked(ctx)
	o.unlockFetch()
	if err != nil {
		return Identity{}, time.Time{}, err
	}
	if meta.Introspection == "" {
		return Identity{}, time.Time{}, errors.New("oauth: the issuer's discovery document names no introspection_endpoint")
	}
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, meta.Introspection, strings.NewReader(form.Encode()))
	if err != nil {
		return Identity{}, time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// RFC 6749 §2.3.1: the client credentials are form-encoded first.
	req.SetBasicAuth(url.QueryEscape(o.cfg.ClientID), url.QueryEscape(string(o.cfg.ClientSecret)))
	select {
	case o.introspecting <- struct{}{}:
	case <-ctx.Done():
		return Identity{}, time.Time{}, fmt.Errorf("oauth introspection: waiting for a turn: %w", ctx.Err())
	}
	var raw json.RawMessage
	err = o.do(req, &raw)
	<-o.introspecting
	if err != nil {
		return Identity{}, time.Time{}, fmt.Errorf("oauth introspection: %w", err)
	}
	claims, err := decodeClaims(raw)
	if err != nil {
		return Identity{}, time.Time{}, errors.New("oauth introspection: the answer is not a JSON object")
	}
	if active, _ := claims["active"].(bool); !active {
		return Identity{}, time.Time{}, refuse("introspection says the token is not active (revoked, expired or unknown)")
	}
	if iss, ok := claims["iss"].(string); ok && iss != o.cfg.Issuer {
		return Identity{}, time.Time{}, refuse("issuer %q is not the configured one", clip(iss))
	}
	// With an audience configured, an answer without "aud" is not one
	// for popgate: the issuer calls any of its clients' tokens active,
	// and the web application a user gave one to must not open the
	// user's mailbox with it.
	if !o.audienceOK(claims["aud"], len(o.cfg.Audience) > 0) {
		return Identity{}, time.Time{}, refuse("audience is not accepted")
	}
	if err := notAccessToken(claims); err != nil {
		return Identity{}, time.Time{}, err
	}
	id, err := o.identity(claims, now, false)
	if err != nil {
		return Identity{}, time.Time{}, err
	}
	until := now.Add(o.cfg.IntrospectionCacheTTL)
	if !id.Expires.IsZero() && id.Expires.Before(until) {
		until = id.Expires
	}
	return id, until, nil
}

// MasterLogin is how popgate logs in to a backend for a user whose token
// it verified: as a master user that may open any mailbox.
type MasterLogin struct {
	User     string
	Password Password
	// Separator, when set, logs in as "mailbox" + Separator + User
	// (Dovecot's master_user_separator, "*"); "" sends SASL PLAIN with the
	// mailbox as the authorization identity and User as the
	// authentication identity (the backend needs relay_authzid).
	Separator string
}

// OAuthRouter routes bearer-token logins: it verifies the token, holds the
// name the token gives to the name the client logged in as, asks Next for
// the route by name alone (no password reaches a lookup service), and logs
// in to the backend with Master. Logins with a password go to Next
// unchanged.
type OAuthRouter struct {
	Next     Router
	Verifier *OAuth
	// Master logs in to every backend that Masters does not name.
	Master MasterLogin
	// Masters are backends' own master logins, by backend name.
	Masters map[string]MasterLogin
	// Domains lists the mailbox domains a token's name may have (ASCII,
	// compared without case); a name in another domain is refused as a
	// wrong token would be. A name without "@" names no domain and
	// passes. Empty: any domain, unless Next compares local parts only
	// ([DomainBlind]): then every token login is refused, since the
	// route of "alice@anywhere" is local alice's, and a backend that
	// ignores the domain too opens her mailbox for whoever had that
	// address verified at the issuer.
	Domains []string
}

// Route implements [Router].
func (r *OAuthRouter) Route(ctx context.Context, req *Request) (Decision, error) {
	if !IsTokenMethod(req.Method) {
		return r.Next.Route(ctx, req)
	}
	id, err := r.Verifier.Verify(ctx, string(req.Password))
	if err != nil {
		var te *TokenError
		if errors.As(err, &te) {
			return Decision{}, &DeniedError{Reason: te.Reason}
		}
		return Decision{}, err
	}
	// A token of one user never opens another's mailbox. The name
	// compared without case is the client's; the one routed and sent to
	// the backend is the token's, so that no other spelling (a backend
	// that tells "Alice" from "alice", Unicode's case folding of "K"
	// and the Kelvin sign) can reach another account. OAUTHBEARER
	// without "a=" leaves the name to the token.
	if req.User != "" && !strings.EqualFold(req.User, id.User) {
		return Decision{}, &DeniedError{Reason: "the token was issued to another user"}
	}
	user := id.User
	if err := r.checkDomain(user); err != nil {
		return Decision{}, err
	}
	named := *req
	named.Credentials = Credentials{User: user, Method: req.Method}
	dec, err := r.Next.Route(ctx, &named)
	if err != nil {
		return Decision{}, err
	}
	mailbox := dec.User
	if mailbox == "" {
		mailbox = user
	}
	m, ok := r.Masters[dec.Backend]
	if !ok {
		m = r.Master
	}
	if m.User == "" {
		return Decision{}, fmt.Errorf("oauth: no master login for backend %q", dec.Backend)
	}
	if m.Separator != "" && strings.Contains(mailbox, m.Separator) {
		// "bob*master" + "*master": the backend would split the
		// name where the claim says, not where popgate meant.
		return Decision{}, &DeniedError{Reason: "the mailbox name holds the master user separator"}
	}
	dec.Password, dec.Name, dec.Mailbox = m.Password, user, mailbox
	if m.Separator != "" {
		dec.User, dec.AuthzID = mailbox+m.Separator+m.User, ""
	} else {
		dec.User, dec.AuthzID = m.User, mailbox
	}
	return dec, nil
}

// checkDomain refuses a token's name whose domain is not one of Domains,
// and every name when Domains is empty and Next compares local parts only.
func (r *OAuthRouter) checkDomain(user string) error {
	if len(r.Domains) == 0 {
		if r.IgnoresDomain() {
			return &DeniedError{Reason: "the route compares local parts only and no mailbox domains are configured (oauth.domains)"}
		}
		return nil
	}
	at := strings.IndexByte(user, '@')
	if at < 0 {
		return nil
	}
	if strings.LastIndexByte(user, '@') != at {
		// A directory splits at the last "@", a backend perhaps at
		// the first: one name, two domains.
		return &DeniedError{Reason: "the token's name holds more than one @"}
	}
	domain := strings.TrimSuffix(user[at+1:], ".")
	for _, d := range r.Domains {
		if asciiEqualFold(domain, strings.TrimSuffix(d, ".")) {
			return nil
		}
	}
	return &DeniedError{Reason: fmt.Sprintf("the token's mailbox domain %q is not one of oauth.domains", clip(domain))}
}

// asciiEqualFold is strings.EqualFold for ASCII only: Unicode's folding
// would let "\u212a" (the Kelvin sign) stand for "k" in a domain.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// TokenVerifier is a [Router] that verifies bearer tokens itself (an
// [OAuthRouter]): only such a Router may be handed a token login, since
// any other would route it by the name the client chose, and one that
// names the backend's password itself would log it in unchecked.
type TokenVerifier interface {
	Router
	VerifiesTokens() bool
}

// VerifiesTokens implements [TokenVerifier].
func (r *OAuthRouter) VerifiesTokens() bool { return r.Verifier != nil }

// Close closes Next when it holds something open.
func (r *OAuthRouter) Close() error {
	if c, ok := r.Next.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// IgnoresDomain forwards Next's answer (see [DomainBlind]), so that the
// throttle keys logins as Next's sources compare names.
func (r *OAuthRouter) IgnoresDomain() bool {
	db, ok := r.Next.(DomainBlind)
	return ok && db.IgnoresDomain()
}
