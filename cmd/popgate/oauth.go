package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/safefile"
)

// OAuthConfig is [oauth]: bearer-token logins (AUTH OAUTHBEARER and
// XOAUTH2) verified against an OpenID Connect issuer, and the master login
// that opens the mailbox on the backend (docs/routing.md, "OAuth 2.0
// sign-in").
type OAuthConfig struct {
	Issuer                 string   `toml:"issuer"`
	Audience               []string `toml:"audience"`
	Algorithms             []string `toml:"algorithms"`
	ClockSkew              Duration `toml:"clock_skew"`
	UserClaim              string   `toml:"user_claim"`
	Domains                []string `toml:"domains"`
	RequireEmailVerified   *bool    `toml:"require_email_verified"`
	AllowUnnormalizedNames bool     `toml:"allow_unnormalized_names"`
	RequireAccessTokenType bool     `toml:"require_access_token_type"`
	CAFile                 string   `toml:"ca_file"`
	Timeout                Duration `toml:"timeout"`
	KeyRefreshInterval     Duration `toml:"key_refresh_interval"`
	CacheSize              *int     `toml:"cache_size"`
	Introspection          bool     `toml:"introspection"`
	ClientID               string   `toml:"client_id"`
	ClientSecretFile       string   `toml:"client_secret_file"`
	IntrospectionCacheTTL  Duration `toml:"introspection_cache_ttl"`
	MasterUser             string   `toml:"master_user"`
	MasterPasswordFile     string   `toml:"master_password_file"`
	MasterSeparator        string   `toml:"master_separator"`
}

// masterSettings is a master login of bearer-token logins; the password
// file is read when the router is built.
type masterSettings struct {
	User, PasswordFile, Separator string
}

// oauthMaster checks the backend's own master login of bearer-token
// logins; nil when it has none.
func (b BackendConfig) oauthMaster(key string, add func(string, ...any)) *masterSettings {
	if b.OAuthMasterUser == "" && b.OAuthMasterPasswordFile == "" && b.OAuthMasterSeparator == nil {
		return nil
	}
	if b.OAuthMasterUser == "" || b.OAuthMasterPasswordFile == "" {
		add("%s.oauth_master_user and oauth_master_password_file: set both (or neither, for [oauth]'s master login)", key)
	}
	m := &masterSettings{User: b.OAuthMasterUser, PasswordFile: b.OAuthMasterPasswordFile}
	if b.OAuthMasterSeparator != nil {
		m.Separator = *b.OAuthMasterSeparator
		if badSeparator(m.Separator) {
			add("%s.oauth_master_separator: must be a few characters without spaces (Dovecot's auth_master_user_separator, e.g. \"*\"), or \"\"", key)
		}
	}
	return m
}

// oauthSettings is [oauth] checked; the files are read when the verifier
// is built (start and every reload).
type oauthSettings struct {
	auth.OAuthConfig   // without HTTPClient and ClientSecret
	CAFile             string
	Timeout            time.Duration
	ClientSecretFile   string
	MasterUser         string
	MasterPasswordFile string
	MasterSeparator    string
	Domains            []string // lower case, without a trailing dot
}

// warnOAuthDomains is the start-up warning without oauth.domains: popgate
// routes every token's name as it is, and only the backend can tell
// whether it compares the domain.
const warnOAuthDomains = "oauth.domains is not set: a token may name a mailbox in any domain the issuer verified; " +
	"a backend that compares local parts only (Dovecot's %n, %Ln) opens local alice's mailbox for a token naming alice@any-domain; " +
	"list the mailbox domains tokens may name"

// maxOAuthSecretLen bounds the client secret and master password files.
const maxOAuthSecretLen = 1024

func (o *OAuthConfig) settings(add func(string, ...any)) *oauthSettings {
	if o == nil {
		return nil
	}
	if u, err := url.Parse(o.Issuer); o.Issuer == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		add("oauth.issuer: must be the issuer's https URL, as its discovery document names it (such as https://idp.example.com/realms/mail)")
	}
	if !o.Introspection && len(o.Audience) == 0 {
		add("oauth.audience: missing; name the client or resource the mail clients' tokens are issued for (their aud claim)")
	}
	for _, a := range o.Algorithms {
		if !slices.Contains(auth.DefaultOAuthAlgorithms, a) {
			add("oauth.algorithms: %q is not accepted (only %s; never none or an HMAC algorithm)", a, strings.Join(auth.DefaultOAuthAlgorithms, ", "))
		}
	}
	if o.Algorithms != nil && len(o.Algorithms) == 0 {
		add("oauth.algorithms: empty; omit the key for the default")
	}
	if o.ClockSkew.Duration < 0 || o.ClockSkew.Duration > 10*time.Minute {
		add("oauth.clock_skew: must be between 0 and 10m")
	}
	if o.Timeout.Set && o.Timeout.Duration <= 0 {
		add("oauth.timeout: must be positive")
	}
	if o.CacheSize != nil && *o.CacheSize < 1 {
		add("oauth.cache_size: must be at least 1")
	}
	if o.Introspection {
		if o.ClientID == "" || o.ClientSecretFile == "" {
			add("oauth.introspection: needs client_id and client_secret_file (popgate's credentials at the introspection endpoint)")
		}
	} else if o.ClientID != "" || o.ClientSecretFile != "" || o.IntrospectionCacheTTL.Set {
		add("oauth.client_id, client_secret_file and introspection_cache_ttl: only used with introspection = true")
	}
	if o.RequireEmailVerified != nil && cmp.Or(o.UserClaim, defaultOAuthUserClaim) != "email" {
		add("oauth.require_email_verified: only used with user_claim = \"email\"")
	}
	if o.RequireAccessTokenType && o.Introspection {
		add("oauth.require_access_token_type: only used for signed tokens, not with introspection = true")
	}
	if o.Domains != nil && len(o.Domains) == 0 {
		add("oauth.domains: empty; list the mailbox domains tokens may name, or omit the key")
	}
	domains := make([]string, 0, len(o.Domains))
	for _, d := range o.Domains {
		// Checked before lower-casing: strings.ToLower makes "k" of
		// the Kelvin sign.
		if !validDomainName(strings.TrimSuffix(d, ".")) {
			add("oauth.domains: %q is not a domain name (ASCII; an IDN in its xn-- form)", d)
		}
		domains = append(domains, strings.ToLower(strings.TrimSuffix(d, ".")))
	}
	if (o.MasterUser == "") != (o.MasterPasswordFile == "") {
		add("oauth.master_user and master_password_file: set both, or neither when every backend has its own (oauth_master_user)")
	}
	if badSeparator(o.MasterSeparator) {
		add("oauth.master_separator: must be a few characters without spaces, as the backends' (Dovecot's auth_master_user_separator, e.g. \"*\"), or \"\"")
	}
	return &oauthSettings{
		OAuthConfig: auth.OAuthConfig{
			Issuer:                 o.Issuer,
			Audience:               o.Audience,
			Algorithms:             o.Algorithms,
			ClockSkew:              o.ClockSkew.or(defaultOAuthClockSkew),
			UserClaim:              cmp.Or(o.UserClaim, defaultOAuthUserClaim),
			AllowUnverifiedEmail:   o.RequireEmailVerified != nil && !*o.RequireEmailVerified,
			AllowUnnormalizedNames: o.AllowUnnormalizedNames,
			RequireAccessTokenType: o.RequireAccessTokenType,
			Introspect:             o.Introspection,
			ClientID:               o.ClientID,
			IntrospectionCacheTTL:  o.IntrospectionCacheTTL.or(defaultOAuthIntrospectionCacheTTL),
			CacheSize:              intOr(o.CacheSize, defaultOAuthCacheSize),
			KeyRefreshInterval:     o.KeyRefreshInterval.or(defaultOAuthKeyRefreshInterval),
		},
		CAFile:             o.CAFile,
		Timeout:            o.Timeout.or(defaultOAuthTimeout),
		ClientSecretFile:   o.ClientSecretFile,
		MasterUser:         o.MasterUser,
		MasterPasswordFile: o.MasterPasswordFile,
		MasterSeparator:    o.MasterSeparator,
		Domains:            domains,
	}
}

// badSeparator reports whether sep cannot be a backend's master user
// separator (Dovecot's auth_master_user_separator): more than a few
// characters, or a space or line break that would split the login.
func badSeparator(sep string) bool {
	return len(sep) > 8 || strings.ContainsAny(sep, " \t\r\n\x00")
}

// validDomainName reports whether s is a DNS name: labels of ASCII
// letters, digits and hyphens, not starting or ending with a hyphen.
func validDomainName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// readSecretFile reads a one-line secret from a private file.
func readSecretFile(key, path string) (auth.Password, error) {
	b, err := safefile.ReadFile(path, safefile.Options{Limit: maxOAuthSecretLen + 2, Private: true})
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" || strings.ContainsAny(s, "\r\n\x00") {
		return "", fmt.Errorf("%s: %s must hold one line, the secret", key, path)
	}
	return auth.Password(s), nil
}

// buildOAuth makes the verifier and the router that puts token logins
// through it in front of next; backends with their own master login get
// it.
//
// prev is the running instance's verifier (nil if none) and prevPrint what
// buildOAuth returned with it: when the verifier's settings, CA file and
// client secret are unchanged, prev is kept, with the issuer's keys and
// the verified tokens it holds, so that a reload during an issuer outage
// does not stop the token logins its caches serve. print identifies the
// verifier's inputs.
func buildOAuth(o *oauthSettings, backends []backendSettings, next auth.Router, prev *auth.OAuth, prevPrint [32]byte) (_ *auth.OAuthRouter, print [32]byte, _ error) {
	cfg := o.OAuthConfig
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	h := sha256.New()
	fmt.Fprintf(h, "%#v\x00%v\x00", o.OAuthConfig, o.Timeout)
	if o.CAFile != "" {
		pem, err := safefile.ReadFile(o.CAFile, safefile.Options{Limit: 1 << 20})
		if err != nil {
			return nil, print, fmt.Errorf("oauth.ca_file: %w", err)
		}
		h.Write(pem)
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, print, fmt.Errorf("oauth.ca_file: %s holds no PEM certificate", o.CAFile)
		}
	}
	tr := &http.Transport{
		TLSClientConfig:       tc,
		Proxy:                 http.ProxyFromEnvironment,
		TLSHandshakeTimeout:   o.Timeout,
		ResponseHeaderTimeout: o.Timeout,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
	}
	cfg.HTTPClient = &http.Client{Timeout: o.Timeout, Transport: tr,
		// The issuer's endpoints are used as discovery names them.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if cfg.Introspect {
		s, err := readSecretFile("oauth.client_secret_file", o.ClientSecretFile)
		if err != nil {
			return nil, print, err
		}
		cfg.ClientSecret = s
		h.Write([]byte("\x00secret\x00" + string(s)))
	}
	h.Sum(print[:0])
	r := &auth.OAuthRouter{Next: next, Masters: map[string]auth.MasterLogin{}, Domains: o.Domains}
	if len(r.Domains) == 0 && r.IgnoresDomain() {
		// The route of alice@anywhere would be local alice's entry, and
		// a backend that ignores the domain too (Dovecot's %Ln) would
		// open her mailbox for whoever had alice@anywhere verified at
		// the issuer.
		return nil, print, errors.New("oauth.domains: required: a [route] source compares local parts only (route.sql with :local, route.ldap with %n), " +
			"so a token naming alice@any-domain would be routed to local alice; list the mailbox domains tokens may name")
	}
	if o.MasterUser != "" {
		master, err := readSecretFile("oauth.master_password_file", o.MasterPasswordFile)
		if err != nil {
			return nil, print, err
		}
		r.Master = auth.MasterLogin{User: o.MasterUser, Password: master, Separator: o.MasterSeparator}
	}
	for _, b := range backends {
		if m := b.OAuthMaster; m != nil {
			pw, err := readSecretFile("backend "+strconv.Quote(b.Name)+" oauth_master_password_file", m.PasswordFile)
			if err != nil {
				return nil, print, err
			}
			r.Masters[b.Name] = auth.MasterLogin{User: m.User, Password: pw, Separator: m.Separator}
		}
	}
	if prev != nil && print == prevPrint {
		r.Verifier = prev
		return r, print, nil
	}
	v, err := auth.NewOAuth(cfg)
	if err != nil {
		return nil, print, err
	}
	r.Verifier = v
	return r, print, nil
}

// checkOAuthIssuer asks the issuer for its discovery document and keys:
// `popgate check`'s test of [oauth].
func checkOAuthIssuer(r *auth.OAuthRouter, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := r.Verifier.CheckIssuer(ctx); err != nil {
		return errors.New("oauth.issuer: " + err.Error())
	}
	return nil
}
