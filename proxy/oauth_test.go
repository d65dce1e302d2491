package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/oidctest"
	"github.com/popgate/popgate/proxy/pop3test"
)

const oauthAudience = "popgate-mail"

// oauthHarness is a harness whose router verifies bearer tokens against a
// loopback provider and logs in to the backend as a master user.
func oauthHarness(t *testing.T, separator string, introspect bool, extra ...func(*Config)) (*harness, *oidctest.Provider) {
	t.Helper()
	return oauthHarnessWith(t, separator, introspect, 0, extra...)
}

// oauthHarnessWith is oauthHarness with the verifier's cache size (0: the
// default).
func oauthHarnessWith(t testing.TB, separator string, introspect bool, cacheSize int, extra ...func(*Config)) (*harness, *oidctest.Provider) {
	t.Helper()
	p, err := oidctest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	v, err := auth.NewOAuth(auth.OAuthConfig{
		Issuer: p.Issuer, Audience: []string{oauthAudience}, HTTPClient: p.Client(),
		Introspect: introspect, ClientID: p.ClientID, ClientSecret: auth.Password(p.ClientSecret),
		CacheSize: cacheSize,
		// A failed fetch from the issuer is tried again this soon
		// (TestOAuthIssuerDown restarts it).
		KeyRefreshInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOpts{
		backend: func(s *pop3test.Server) {
			s.MasterUsers = map[string]string{"master": "master-SECRET-never-logged"}
			s.MasterSeparator = separator
			if separator == "" {
				s.SASL = []string{"PLAIN"} // the authorization identity needs it
			}
		},
		config: func(c *Config) {
			c.Router = &auth.OAuthRouter{Next: c.Router, Verifier: v, Master: auth.MasterLogin{User: "master", Password: "master-SECRET-never-logged", Separator: separator}}
			c.OAuthError = auth.OAuthErrorChallenge(v.DiscoveryURL(), "openid email")
			if separator == "" {
				c.Backends["b1"].RelayAuthzID = true
			}
			for _, f := range extra {
				f(c)
			}
		},
		listeners: []Listener{
			{Name: "pop3s", TLS: TLSImplicit, OAuth: true},
			{Name: "pop3", TLS: TLSStartTLS, OAuth: true},
			{Name: "plain", TLS: TLSNone, OAuth: true},
		},
	})
	t.Cleanup(func() {
		if logs := h.logs.String(); strings.Contains(logs, "master-SECRET") || strings.Contains(logs, "eyJ") {
			t.Errorf("log holds a secret or a token:\n%s", logs)
		}
	})
	return h, p
}

func xoauth2(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func oauthbearer(user, token string) string {
	a := ""
	if user != "" {
		a = "a=" + user
	}
	return base64.StdEncoding.EncodeToString([]byte("n," + a + ",\x01host=localhost\x01port=995\x01auth=Bearer " + token + "\x01\x01"))
}

func TestOAuthCapabilities(t *testing.T) {
	h, _ := oauthHarness(t, "*", false)
	sasl := func(c *client) string {
		c.send("CAPA\r\n")
		c.expect("+OK")
		for _, l := range c.multi() {
			if strings.HasPrefix(l, "SASL") {
				return l
			}
		}
		return ""
	}
	if got := sasl(h.dial("pop3s")); got != "SASL PLAIN LOGIN OAUTHBEARER XOAUTH2" {
		t.Errorf("pop3s: %q", got)
	}
	c := h.dial("pop3")
	if got := sasl(c); strings.Contains(got, "OAUTH") {
		t.Errorf("before STLS: %q", got)
	}
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, "x")); !strings.HasPrefix(got, "-ERR") || strings.HasPrefix(got, "+ ") {
		t.Errorf("XOAUTH2 before STLS: %q", got)
	}
	c.send("STLS\r\n")
	c.stls(h.front.client)
	if got := sasl(c); !strings.Contains(got, "OAUTHBEARER XOAUTH2") {
		t.Errorf("after STLS: %q", got)
	}
	if got := sasl(h.dial("plain")); strings.Contains(got, "OAUTH") {
		t.Errorf("plaintext listener: %q", got)
	}
}

// retr2 checks that the session reads alice's second message.
func retr2(c *client) {
	c.t.Helper()
	c.send("RETR 2\r\n")
	c.expect("+OK")
	if got, want := c.multi(), []string{"Subject: two", "", ".dotted line", "second"}; !slices.Equal(got, want) {
		c.t.Errorf("RETR 2 = %q, want %q", got, want)
	}
	c.cmd("QUIT")
	c.eof()
}

func TestOAuthLoginThroughMasterUser(t *testing.T) {
	for _, tc := range []struct {
		sep, want string // the backend command the master login used
	}{{"*", "USER " + testUser + "*master"}, {"", "AUTH PLAIN ***"}} {
		h, p := oauthHarness(t, tc.sep, false)
		tok := p.Token(testUser, oauthAudience)
		logins := []func(c *client) string{
			func(c *client) string { return c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, tok)) },
			func(c *client) string {
				if got := c.cmd("AUTH OAUTHBEARER"); got != "+ " {
					t.Fatalf("AUTH OAUTHBEARER = %q, want a continuation", got)
				}
				return c.cmd(oauthbearer(testUser, tok))
			},
			// No a=: the token names the mailbox.
			func(c *client) string { return c.cmd("AUTH OAUTHBEARER " + oauthbearer("", tok)) },
		}
		for i, login := range logins {
			c := h.dial("pop3s")
			if got := login(c); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("separator %q, login %d = %q", tc.sep, i, got)
			}
			retr2(c)
		}
		if !slices.Contains(h.backend.Commands(), tc.want) {
			t.Errorf("separator %q: backend commands %q lack %q", tc.sep, h.backend.Commands(), tc.want)
		}
	}
}

// TestOAuthRefusals: every refused token gets RFC 7628's error exchange and
// "-ERR [AUTH]", and nothing reaches the backend.
func TestOAuthRefusals(t *testing.T) {
	h, p := oauthHarness(t, "*", false)
	now := time.Now()
	claims := func(user string, mod func(map[string]any)) map[string]any {
		c := p.Claims(user, oauthAudience, time.Hour)
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(mod func(map[string]any)) string {
		tok, err := p.Sign(nil, claims(testUser, mod))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := p.Token(testUser, oauthAudience)
	parts := strings.Split(good, ".")
	sig := []byte(parts[2])
	// Another base64url letter: flipping a bit could make "-" a ",",
	// which the SASL parser refuses before the signature is checked.
	sig[5] = map[bool]byte{true: 'B', false: 'A'}[sig[5] == 'A']
	for name, tok := range map[string]string{
		"expired":          sign(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() }),
		"not yet valid":    sign(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }),
		"wrong audience":   sign(func(c map[string]any) { c["aud"] = "another-app" }),
		"wrong issuer":     sign(func(c map[string]any) { c["iss"] = "https://127.0.0.2" }),
		"tampered":         parts[0] + "." + parts[1] + "." + string(sig),
		"alg none":         oidctest.UnsignedToken(claims(testUser, nil)),
		"HMAC, public key": p.SignHMACWithPublicKey(claims(testUser, nil)),
		"bob's token":      p.Token("bob@example.com", oauthAudience),
	} {
		c := h.dial("pop3s")
		got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, tok))
		js, ok := strings.CutPrefix(got, "+ ")
		if !ok {
			t.Fatalf("%s: got %q, want the error challenge", name, got)
		}
		raw, err := base64.StdEncoding.DecodeString(js)
		var v map[string]string
		if err != nil || json.Unmarshal(raw, &v) != nil || v["status"] != "invalid_token" || !strings.HasSuffix(v["openid-configuration"], "/.well-known/openid-configuration") {
			t.Fatalf("%s: challenge %q", name, raw)
		}
		if got := c.cmd("AQ=="); got != "-ERR [AUTH] Authentication failed" {
			t.Fatalf("%s: after AQ==: %q", name, got)
		}
	}
	// OAUTHBEARER the same way, and a cancel in place of AQ==.
	c := h.dial("pop3s")
	if got := c.cmd("AUTH OAUTHBEARER " + oauthbearer(testUser, p.Token("bob@example.com", oauthAudience))); !strings.HasPrefix(got, "+ ey") {
		t.Fatalf("OAUTHBEARER: %q", got)
	}
	if got := c.cmd("*"); got != "-ERR [AUTH] Authentication failed" {
		t.Fatalf("after *: %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != 0 {
		t.Errorf("refused tokens reached the backend: %q", cmds)
	}
}

func TestOAuthIssuerDown(t *testing.T) {
	h, p := oauthHarness(t, "*", false)
	tok := p.Token(testUser, oauthAudience)
	p.Stop()
	c := h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, tok)); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("issuer down: %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != 0 {
		t.Errorf("the backend was asked: %q", cmds)
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // past key_refresh_interval since the failed discovery
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, tok)); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("issuer back: %q", got)
	}
	retr2(c)
}

func TestOAuthIntrospectionRevoked(t *testing.T) {
	h, p := oauthHarness(t, "*", true)
	tok := p.Opaque(p.Claims(testUser, oauthAudience, time.Hour))
	c := h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, tok)); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("opaque token: %q", got)
	}
	retr2(c)
	n := len(h.backend.Commands())
	revoked := p.Opaque(p.Claims(testUser, oauthAudience, time.Hour))
	p.Revoke(revoked)
	c = h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, revoked)); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("revoked token: %q", got)
	}
	if got := c.cmd("AQ=="); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("revoked token: %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != n {
		t.Errorf("the revoked token reached the backend: %q", cmds[n:])
	}
}

// TestOAuthCountsInThrottle: a refused token is a failed login for the
// throttle, like a wrong password.
func TestOAuthCountsInThrottle(t *testing.T) {
	h, p := oauthHarness(t, "*", false, func(c *Config) {
		c.Throttle = auth.NewThrottle(auth.ThrottleConfig{MaxPerUser: 2, Window: time.Minute})
		c.FailureDelay = time.Millisecond
	})
	bobs := p.Token("bob@example.com", oauthAudience)
	for range 2 {
		c := h.dial("pop3s")
		if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, bobs)); !strings.HasPrefix(got, "+ ") {
			t.Fatalf("another's token: %q", got)
		}
		if got := c.cmd("AQ=="); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("another's token: %q", got)
		}
	}
	// Alice's own token now waits out the throttle like a password would.
	c := h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, p.Token(testUser, oauthAudience))); !strings.HasPrefix(got, "-ERR [SYS/TEMP] Too many failed logins") {
		t.Fatalf("after two refused tokens: %q", got)
	}
}

// BenchmarkLoginOAuth compares a whole login over TLS (full handshakes, no
// resumption) with a password, with a token popgate verified before
// (cached) and with a token it has not seen (its signature checked,
// RS256). Run it with -cpu 1: ns/op is then the CPU of one login of the
// whole process (client, popgate and the in-memory backend together), and
// the differences between the three are popgate's.
func BenchmarkLoginOAuth(b *testing.B) {
	for _, mode := range []string{"password", "token-cached", "token-uncached"} {
		b.Run(mode, func(b *testing.B) {
			cacheSize := 0
			if mode == "token-uncached" {
				cacheSize = 1
			}
			h, p := oauthHarnessWith(b, "*", false, cacheSize, func(c *Config) {
				c.Router.(*auth.OAuthRouter).Next = auth.NewStatic(nil, nil, "b1")
			})
			h.backend.Mailboxes = map[string]*pop3test.Mailbox{}
			var lines []string
			for i := range 256 {
				user := fmt.Sprintf("u%d@example.com", i)
				h.backend.Mailboxes[user] = &pop3test.Mailbox{Password: testPass}
				switch mode {
				case "password":
					lines = append(lines, "USER "+user+"\r\nPASS "+testPass+"\r\n")
				default:
					lines = append(lines, "AUTH XOAUTH2 "+xoauth2(user, p.Token(user, oauthAudience))+"\r\n")
				}
			}
			cfg := h.front.client.Clone()
			cfg.ClientSessionCache = nil
			login := func(i int) {
				c, err := tls.Dial("tcp", h.addrs["pop3s"], cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				br := bufio.NewReader(c)
				br.ReadString('\n')
				io.WriteString(c, lines[i%len(lines)]+"STAT\r\nQUIT\r\n")
				all, _ := io.ReadAll(br)
				if strings.Contains(string(all), "-ERR") || !strings.Contains(string(all), "+OK 0 0") {
					b.Fatalf("login %d: %q", i, all)
				}
			}
			for i := range len(lines) { // warm: the keys fetched, the cache filled
				login(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					login(int(n.Add(1)))
				}
			})
		})
	}
}

// TestOAuthWithoutVerifier: a listener that offers the mechanisms in front
// of a router that does not verify tokens never hands a token to the
// backend as a password.
func TestOAuthWithoutVerifier(t *testing.T) {
	h := newHarness(t, harnessOpts{listeners: []Listener{{Name: "pop3s", TLS: TLSImplicit, OAuth: true}}})
	c := h.dial("pop3s")
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2(testUser, testPass)); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("got %q", got)
	}
	if cmds := h.backend.Commands(); len(cmds) != 0 {
		t.Errorf("the backend was asked: %q", cmds)
	}
}
