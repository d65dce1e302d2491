package main

// Regression tests from the attack review of the directory sources
// (route.sql, route.ldap) and the password hashes popgate checks.

import (
	"encoding/base64"
	"strings"
	"testing"
)

// TestAttack5LDAPSpellingsShareBudget: OpenLDAP finds carol's entry for
// "carol@example.net" with spaces around it or in full-width letters, and
// popgate checks her password_hash and logs in with the master
// credentials. Each spelling was a failed-login budget of its own
// (max_failures_per_user), so a client could guess at her password
// without end; now they share hers.
func TestAttack5LDAPSpellingsShareBudget(t *testing.T) {
	ls := startLDAPSetup(t, nil, "")
	cfg := strings.Replace(ls.config(""), "max_failures_per_user = 0", "max_failures_per_user = 3", 1)
	_, addr, _, _ := startLDAPRunner(t, cfg)
	plain := func(p *pop, user, pass string) string {
		return p.do("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
	}
	// The spellings find carol's entry: her password logs in with each.
	p := dialPop(t, addr)
	if r := plain(p, " "+ldapCarol+" ", ldapUsers[ldapCarol]); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("carol with spaces around, right password: %q; the test no longer shows what it is about", r)
	}
	for i, u := range []string{ldapCarol + " ", " " + ldapCarol, "ｃａｒｏｌ@example.net"} {
		p := dialPop(t, addr)
		if r := plain(p, u, "Guess-"+u); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("guess %d as %q: %q", i+1, u, r)
		}
	}
	p = dialPop(t, addr)
	if r := plain(p, "  "+ldapCarol, ldapUsers[ldapCarol]); !strings.Contains(r, "Too many failed logins") {
		t.Errorf("a fourth spelling after three failures under other spellings: %q; want the per-user limit", r)
	}
}

// TestAttack5LDAPLocalPartShareBudget: a filter that compares the local
// part only ("(uid=%n)", Dovecot's classic user_filter) finds carol's
// entry for "carol@" and any domain, and each such name was a
// failed-login budget of its own: guesses at her password without end.
// With such a source the limit counts the local part.
func TestAttack5LDAPLocalPartShareBudget(t *testing.T) {
	ls := startLDAPSetup(t, nil, "")
	cfg := strings.Replace(ls.config(`filter = "(&(objectClass=inetOrgPerson)(uid=%n))"`), "max_failures_per_user = 0", "max_failures_per_user = 3", 1)
	_, addr, _, _ := startLDAPRunner(t, cfg)
	p := dialPop(t, addr)
	if r := p.login("carol@x.example", ldapUsers[ldapCarol]); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("carol@x.example, right password: %q; the test no longer shows what it is about", r)
	}
	for i, u := range []string{"carol@a.example", "carol@b.example", "carol"} {
		p := dialPop(t, addr)
		if r := p.login(u, "Guess-"+u); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("guess %d as %q: %q", i+1, u, r)
		}
	}
	p = dialPop(t, addr)
	if r := p.login("carol@c.example", ldapUsers[ldapCarol]); !strings.Contains(r, "Too many failed logins") {
		t.Errorf("a fourth domain after three failures under others: %q; want the per-user limit", r)
	}
}
