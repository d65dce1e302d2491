package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestPasswordNeverPrints(t *testing.T) {
	const secret = "hunter2-secret"
	p := Password(secret)
	c := Credentials{User: "u", Password: p}
	var logBuf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logBuf, nil))
	log.Info("x", "password", p, "creds", c)
	log = slog.New(slog.NewTextHandler(&logBuf, nil))
	log.Info("x", "password", p, "creds", c)
	outs := []string{
		fmt.Sprint(p), fmt.Sprintf("%v %s %q %x %X %#v %+v %d", p, p, p, p, p, p, p, p),
		fmt.Sprintf("%v %+v %#v", c, c, c), fmt.Sprint(&c), logBuf.String(),
		fmt.Errorf("wrapped: %v", p).Error(),
	}
	for _, out := range outs {
		if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) {
			t.Errorf("password leaked: %s", out)
		}
	}
	if string(p) != secret {
		t.Errorf("string(p) = %q", string(p))
	}
}

func TestCredentialsCheck(t *testing.T) {
	cases := []struct {
		c    Credentials
		want error
	}{
		{Credentials{User: "alice", Password: "pw"}, nil},
		{Credentials{User: "alice", Password: ""}, nil},
		{Credentials{User: "", Password: "pw"}, errAny},
		{Credentials{User: "alice\r\nDELE 1", Password: "pw"}, ErrBadCredentialBytes},
		{Credentials{User: "alice", Password: "p\nw"}, ErrBadCredentialBytes},
		{Credentials{User: "alice", Password: "p\x00w"}, ErrBadCredentialBytes},
		{Credentials{User: "alice", AuthzID: "x\ry"}, ErrBadCredentialBytes},
		{Credentials{User: strings.Repeat("a", MaxCredentialLen+1)}, errAny},
	}
	for _, tc := range cases {
		err := tc.c.Check()
		switch {
		case tc.want == nil && err != nil,
			tc.want == errAny && err == nil,
			tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
			t.Errorf("Check(%q) = %v, want %v", tc.c.User, err, tc.want)
		}
	}
}

var errAny = errors.New("any error")

func TestStatic(t *testing.T) {
	s := NewStatic(
		map[string]string{"Alice@Example.com": "a", "bob": "b"},
		map[string]string{"example.com": "dom", "@example.org": "org"},
		"def",
	)
	cases := []struct{ user, want string }{
		{"alice@example.com", "a"},
		{"ALICE@EXAMPLE.COM", "a"},
		{"bob", "b"},
		{"carol@example.com", "dom"},
		{"carol@EXAMPLE.ORG", "org"},
		{"x@y@example.org", "org"}, // the part after the last @
		{"dave@other.net", "def"},
		{"nodomain", "def"},
	}
	for _, tc := range cases {
		d, err := s.Route(context.Background(), &Request{Credentials: Credentials{User: tc.user, Password: "pw"}})
		if err != nil || d.Backend != tc.want || d.User != tc.user || d.Password != "pw" {
			t.Errorf("Route(%q) = %+v, %v; want backend %q", tc.user, d, err, tc.want)
		}
	}
	s = NewStatic(nil, map[string]string{"example.com": "dom"}, "")
	if _, err := s.Route(context.Background(), &Request{Credentials: Credentials{User: "x@other.net"}}); !errors.Is(err, ErrNoRoute) {
		t.Errorf("Route without default = %v, want ErrNoRoute", err)
	}
}

func TestSASLPlain(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		in                  string
		user, pass, authzid string
		err                 bool
	}{
		{enc("\x00alice\x00pw"), "alice", "pw", "", false},
		{enc("admin\x00alice\x00pw"), "alice", "pw", "admin", false},
		{strings.TrimRight(enc("\x00alice\x00pw1"), "="), "alice", "pw1", "", false},
		{enc("\x00alice\x00"), "alice", "", "", false},
		{enc("alice\x00pw"), "", "", "", true},
		{enc("\x00\x00pw"), "", "", "", true},
		{enc("\x00a\x00b\x00c"), "", "", "", true},
		{"not base64!", "", "", "", true},
		{"YW Jj", "", "", "", true},
		{strings.Repeat("A", MaxSASLLen+4), "", "", "", true},
	}
	for _, tc := range cases {
		b, err := DecodeBase64(tc.in)
		var c Credentials
		if err == nil {
			c, err = ParsePlain(b)
		}
		if (err != nil) != tc.err || err == nil && (c.User != tc.user || string(c.Password) != tc.pass || c.AuthzID != tc.authzid) {
			t.Errorf("decode(%.20q) = %q/%q, %v; want %q/%q err=%v", tc.in, c.User, c.AuthzID, err, tc.user, tc.authzid, tc.err)
		}
		if err != nil && strings.Contains(err.Error(), tc.in) && tc.in != "" {
			t.Errorf("error quotes the payload: %v", err)
		}
	}
	if got := EncodePlain("alice", "pw"); got != enc("\x00alice\x00pw") {
		t.Errorf("EncodePlain = %q", got)
	}
}

func FuzzSASLPlain(f *testing.F) {
	for _, s := range []string{"AGFsaWNlAHB3", "YWRtaW4AYWxpY2UAcHc=", "=", "*", "", "AAAA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		b, err := DecodeBase64(in)
		if err != nil {
			return
		}
		c, err := ParsePlain(b)
		if err != nil {
			return
		}
		if c.User == "" || strings.ContainsRune(c.User, 0) || strings.ContainsRune(string(c.Password), 0) {
			t.Fatalf("ParsePlain(%q) = %q", b, c.User)
		}
		// Round trip without authzid.
		if c.AuthzID == "" {
			b2, err := DecodeBase64(EncodePlain(c.User, c.Password))
			if err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("EncodePlain round trip: %q vs %q", b, b2)
			}
		}
	})
}

func BenchmarkSASLPlain(b *testing.B) {
	in := EncodePlain("alice@example.com", "correct horse battery staple")
	b.ReportAllocs()
	for range b.N {
		raw, err := DecodeBase64(in)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ParsePlain(raw); err != nil {
			b.Fatal(err)
		}
	}
}
