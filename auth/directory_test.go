package auth

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// plainHashes checks "{PLAIN}secret" hashes, and fails on "{BROKEN}".
type plainHashes struct{}

func (plainHashes) Check(_ context.Context, hash string, pw Password) error {
	if strings.HasPrefix(hash, "{BROKEN}") {
		return errors.New("passhash: malformed {BROKEN} hash")
	}
	if hash == "{PLAIN}"+string(pw) {
		return nil
	}
	return ErrPasswordMismatch
}

func TestDirectoryDecide(t *testing.T) {
	d := &Directory{Source: "route.sql", Backend: "tmpl", Hashes: plainHashes{},
		KnownBackend: func(n string) bool { return n == "store1" || n == "tmpl" }}
	req := &Request{Credentials: Credentials{User: "alice@example.com", Password: "client-pw", Method: "USER"}}
	const (
		ok = iota
		denied
		failed
	)
	for _, tc := range []struct {
		name string
		e    Entry
		want int
		dec  Decision
	}{
		{"backend", Entry{Backend: "store1"}, ok, Decision{Backend: "store1", User: "alice@example.com", Password: "client-pw"}},
		{"address", Entry{Host: "192.0.2.7", Port: "110"}, ok, Decision{Backend: "tmpl", Address: "192.0.2.7:110", User: "alice@example.com", Password: "client-pw"}},
		{"mapped address", Entry{Host: "::ffff:192.0.2.7", Port: "995"}, ok, Decision{Backend: "tmpl", Address: "192.0.2.7:995", User: "alice@example.com", Password: "client-pw"}},
		{"ipv6 address", Entry{Host: "[2001:db8::1]", Port: "110"}, ok, Decision{Backend: "tmpl", Address: "[2001:db8::1]:110", User: "alice@example.com", Password: "client-pw"}},
		{"host name", Entry{Host: "mail3.example.net.", Port: "110"}, ok, Decision{Backend: "tmpl", Address: "mail3.example.net.:110", User: "alice@example.com", Password: "client-pw"}},
		{"login rewrite", Entry{Backend: "store1", Login: "alice"}, ok, Decision{Backend: "store1", User: "alice", Password: "client-pw"}},
		{"hash matches", Entry{Backend: "store1", PasswordHash: "{PLAIN}client-pw"}, ok, Decision{Backend: "store1", User: "alice@example.com", Password: "client-pw"}},
		{"master login", Entry{Backend: "store1", Login: "alice@example.com*master", Password: "master-pw", PasswordHash: "{PLAIN}client-pw"}, ok,
			Decision{Backend: "store1", User: "alice@example.com*master", Password: "master-pw"}},
		{"hash mismatch", Entry{Backend: "store1", PasswordHash: "{PLAIN}other"}, denied, Decision{}},
		{"master login, wrong password", Entry{Backend: "store1", Login: "x*master", Password: "master-pw", PasswordHash: "{PLAIN}other"}, denied, Decision{}},
		{"disabled", Entry{Backend: "store1", Disabled: true, PasswordHash: "{PLAIN}client-pw"}, denied, Decision{}},
		{"master password without hash", Entry{Backend: "store1", Login: "x*master", Password: "master-pw"}, failed, Decision{}},
		{"broken hash", Entry{Backend: "store1", PasswordHash: "{BROKEN}zz"}, failed, Decision{}},
		{"no destination", Entry{Login: "alice"}, failed, Decision{}},
		{"backend and host", Entry{Backend: "store1", Host: "192.0.2.7", Port: "110"}, failed, Decision{}},
		{"unknown backend", Entry{Backend: "nope"}, failed, Decision{}},
		{"host without port", Entry{Host: "192.0.2.7"}, failed, Decision{}},
		{"port without host", Entry{Port: "110"}, failed, Decision{}},
		{"port 0", Entry{Host: "192.0.2.7", Port: "0"}, failed, Decision{}},
		{"port too big", Entry{Host: "192.0.2.7", Port: "65536"}, failed, Decision{}},
		{"port with junk", Entry{Host: "192.0.2.7", Port: "110 "}, failed, Decision{}},
		{"host with port", Entry{Host: "192.0.2.7:25", Port: "110"}, failed, Decision{}},
		{"host with zone", Entry{Host: "fe80::1%eth0", Port: "110"}, failed, Decision{}},
		{"host with slash", Entry{Host: "evil.example/x", Port: "110"}, failed, Decision{}},
		{"host with space", Entry{Host: "a b", Port: "110"}, failed, Decision{}},
		{"host label too long", Entry{Host: strings.Repeat("a", 64) + ".example", Port: "110"}, failed, Decision{}},
		{"login with CRLF", Entry{Backend: "store1", Login: "alice\r\nDELE 1"}, failed, Decision{}},
		{"password with NUL", Entry{Backend: "store1", Login: "x*m", Password: "a\x00b", PasswordHash: "{PLAIN}client-pw"}, failed, Decision{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.e.Where = "row 1 of route.sql.query"
			dec, err := d.Decide(t.Context(), req, &tc.e)
			var de *DeniedError
			switch {
			case tc.want == ok && err != nil:
				t.Fatalf("Decide = %v, want a decision", err)
			case tc.want == ok && dec != tc.dec:
				t.Fatalf("Decide = %+v, want %+v", dec, tc.dec)
			case tc.want == denied && !errors.As(err, &de):
				t.Fatalf("Decide = %+v, %v; want a refusal", dec, err)
			case tc.want == failed && (err == nil || errors.As(err, &de)):
				t.Fatalf("Decide = %+v, %v; want an error that is not a refusal", dec, err)
			}
			if err != nil {
				for _, secret := range []string{"client-pw", "master-pw", "{PLAIN}", "other"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q contains %q", err, secret)
					}
				}
			}
			_, why := d.Explain(&tc.e)
			if strings.Contains(why, "pw") {
				t.Errorf("Explain = %q names a password", why)
			}
		})
	}
}

// TestDirectoryExplain: a host answer is explained as its own address
// (with the template backend's settings), a backend answer as the
// backend's name; neither shows a password.
func TestDirectoryExplain(t *testing.T) {
	for _, tc := range []struct {
		name, template string
		e              Entry
		via, addr      string // want an AddressRoute of these
		backend        string // or want this backend name
		why            string
	}{
		{"host with template", "tmpl", Entry{Host: "mail2.internal", Port: "110"}, "tmpl", "mail2.internal:110", "",
			`route.ldap, uid=alice, address mail2.internal:110 with backend "tmpl"'s settings`},
		{"host without template", "", Entry{Host: "192.0.2.7", Port: "995"}, "", "192.0.2.7:995", "",
			"route.ldap, uid=alice, address 192.0.2.7:995"},
		{"backend", "tmpl", Entry{Backend: "store1", Login: "alice*master", Password: "master-pw", PasswordHash: "{PLAIN}client-pw"}, "", "", "store1",
			`route.ldap, uid=alice, logs in to the backend as "alice*master", with the directory's password once the client's matches password_hash`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Directory{Source: "route.ldap", Backend: tc.template}
			tc.e.Where = "uid=alice"
			b, why := d.Explain(&tc.e)
			via, addr, isAddr := SplitAddressRoute(b)
			switch {
			case tc.addr != "" && (!isAddr || via != tc.via || addr != tc.addr):
				t.Errorf("Explain backend = %q, want the address %s with backend %q", b, tc.addr, tc.via)
			case tc.addr == "" && (isAddr || b != tc.backend):
				t.Errorf("Explain backend = %q, want %q", b, tc.backend)
			}
			if why != tc.why {
				t.Errorf("Explain why = %q, want %q", why, tc.why)
			}
			c := &Chain{Sources: []Source{explained{b, why}}}
			cb, cwhy, err := c.Explain(t.Context(), "alice")
			want := "backend " + strconv.Quote(tc.backend) + " (" + why + ")"
			if tc.addr != "" {
				want = why
			}
			if err != nil || cb != b || cwhy != want {
				t.Errorf("Chain.Explain = %q, %q, %v; want %q, %q", cb, cwhy, err, b, want)
			}
		})
	}
}

// explained is a Source whose Lookup answers what a directory's Explain
// said.
type explained struct{ backend, why string }

func (e explained) Lookup(context.Context, string) (string, string, bool, error) {
	return e.backend, e.why, true, nil
}
func (explained) Close() error { return nil }

// TestDirectoryNoChecker: an entry with a password_hash on a source that
// checks none is an error, never a login with the hash unchecked.
func TestDirectoryNoChecker(t *testing.T) {
	d := &Directory{Source: "route.ldap"}
	req := &Request{Credentials: Credentials{User: "alice", Password: "pw"}}
	_, err := d.Decide(t.Context(), req, &Entry{Where: "uid=alice", Backend: "b", PasswordHash: "{PLAIN}pw"})
	var de *DeniedError
	if err == nil || errors.As(err, &de) {
		t.Fatalf("Decide = %v, want an error that is not a refusal", err)
	}
}
