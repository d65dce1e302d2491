package auth

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestParseOAuthBearer(t *testing.T) {
	for _, tc := range []struct {
		msg, user, token string
		bad              bool
	}{
		// RFC 7628 §4.1's example, with a shorter token.
		{msg: "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01", user: "user@example.com", token: "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="},
		{msg: "n,,\x01auth=Bearer abc.def-ghi\x01\x01", user: "", token: "abc.def-ghi"},
		{msg: "y,a=a=2Cb=3Dc,\x01auth=bearer t\x01\x01", user: "a,b=c", token: "t"},
		{msg: "p=tls-unique,a=u,\x01auth=Bearer t\x01\x01", bad: true},
		{msg: "n,a=u,\x01auth=Bearer t\x01", bad: true},       // no final kvsep
		{msg: "n,a=u,\x01auth=Bearer t\x01\x01x", bad: true},  // trailing bytes
		{msg: "n,a=u,\x01host=h\x01\x01", bad: true},          // no auth
		{msg: "n,a=u,\x01auth=Basic dTpw\x01\x01", bad: true}, // not a bearer token
		{msg: "n,a=u,\x01auth=Bearer a b\x01\x01", bad: true}, // space in token
		{msg: "n,a=u,\x01auth=Bearer t\x01auth=Bearer s\x01\x01", bad: true},
		{msg: "n,a=u=,\x01auth=Bearer t\x01\x01", bad: true},  // bad escape
		{msg: "n,a=u=2,\x01auth=Bearer t\x01\x01", bad: true}, // short escape
		{msg: "n,a=,\x01auth=Bearer t\x01\x01", bad: true},
		{msg: "n,a=u\x01auth=Bearer t\x01\x01", bad: true},
		{msg: "\x01", bad: true},
		{msg: "", bad: true},
	} {
		c, err := ParseOAuthBearer([]byte(tc.msg))
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted", tc.msg)
			}
			continue
		}
		if err != nil || c.User != tc.user || string(c.Password) != tc.token || c.Method != MethodOAuthBearer {
			t.Errorf("%q: got %q %v %v", tc.msg, c.User, c.Method, err)
		}
	}
}

func TestParseXOAuth2(t *testing.T) {
	c, err := ParseXOAuth2([]byte("user=alice@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"))
	if err != nil || c.User != "alice@example.com" || string(c.Password) != "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg" || c.Method != MethodXOAuth2 {
		t.Fatalf("got %+v %v", c.User, err)
	}
	for _, m := range []string{
		"auth=Bearer t\x01\x01",          // no user
		"user=\x01auth=Bearer t\x01\x01", // empty user
		"user=u\x01auth=Bearer t\x01",
		"user=u\x01\x01",
		"user=u\rx\x01auth=Bearer t\x01\x01",
	} {
		if _, err := ParseXOAuth2([]byte(m)); err == nil {
			t.Errorf("%q: accepted", m)
		}
	}
}

func TestOAuthErrorChallengeIsJSON(t *testing.T) {
	b := OAuthErrorChallenge("https://idp.example/.well-known/openid-configuration", `mail "x"`)
	var v map[string]string
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v["status"] != "invalid_token" || v["scope"] != `mail "x"` || !strings.HasSuffix(v["openid-configuration"], "openid-configuration") {
		t.Fatalf("%s", b)
	}
}

// FuzzParseBearer checks that the OAUTHBEARER and XOAUTH2 parsers never
// panic, and that what they accept is usable: a token of RFC 6750's
// characters, no control characters in the user, and no token quoted in
// the error.
func FuzzParseBearer(f *testing.F) {
	f.Add([]byte("n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4q==\x01\x01"))
	f.Add([]byte("user=alice\x01auth=Bearer ya29.x\x01\x01"))
	f.Add([]byte("n,,\x01auth=Bearer t\x01\x01"))
	f.Add([]byte("n,a=a=2Cb,\x01\x01"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, parse := range []func([]byte) (Credentials, error){ParseOAuthBearer, ParseXOAuth2} {
			c, err := parse(msg)
			if err != nil {
				if err != ErrBadBearer {
					t.Fatalf("unexpected error %v", err)
				}
				continue
			}
			if len(c.Password) == 0 || strings.ContainsAny(string(c.Password), " \x00\x01\r\n") {
				t.Fatalf("accepted token %q", c.Password)
			}
			if bytes.ContainsAny([]byte(c.User), "\x00\x01\r\n") {
				t.Fatalf("accepted user %q", c.User)
			}
		}
	})
}
