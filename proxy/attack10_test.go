package proxy

import (
	"testing"

	"github.com/popgate/popgate/auth"
)

// TestAttack10TokenLoginPoolKey: a token login goes to the backend as
// the master user, "bob*master" with oauth's own separator, whatever
// limits.master_user_separator says (it may be unset). The pool must key
// the session by bob's mailbox, as bob's password logins are, or bob's
// mailbox is open on two backends: one for his password, one for his
// token.
func TestAttack10TokenLoginPoolKey(t *testing.T) {
	sess := &session{cfg: &Config{}}
	// What an OAuthRouter decides for bob's token with a master
	// separator "*" (oauth.master_user_separator).
	dec := auth.Decision{Backend: "mx", User: "bob*master", Password: "master-secret", Name: "bob", Mailbox: "bob"}
	creds := auth.Credentials{Method: "OAUTHBEARER", Password: "token"}
	if got := sess.mailbox(creds, dec); got != "bob" {
		t.Errorf("a token login of bob keys the pool by %q, his password login by %q", got, "bob")
	}
}

// TestAttack10DomainBlindPoolKey: behind a route that compares local
// parts only, "carol@a.example" and "carol@b.example" log in to one
// directory entry, one mailbox: the pool keys them alike, and an
// operator's move of either spelling moves that key.
func TestAttack10DomainBlindPoolKey(t *testing.T) {
	srv := &Server{}
	sess := &session{srv: srv, cfg: &Config{Router: blindRouter{}}}
	a := sess.mailbox(auth.Credentials{User: "carol@a.example"}, auth.Decision{Backend: "mx"})
	b := sess.mailbox(auth.Credentials{User: "carol@b.example"}, auth.Decision{Backend: "mx"})
	if a != b {
		t.Errorf("one entry's mailbox keys the pool as %q and as %q", a, b)
	}
}

// TestDomainBlindPoolKeyAuthzID: behind a route that compares local
// parts only, a login that opens carol's mailbox through an
// authorization identity keys the pool as carol's own logins do, or her
// mailbox could be open on two backends at once.
func TestDomainBlindPoolKeyAuthzID(t *testing.T) {
	sess := &session{srv: &Server{}, cfg: &Config{Router: blindRouter{}}}
	own := sess.mailbox(auth.Credentials{User: "carol@b.example"}, auth.Decision{Backend: "mx"})
	for _, tc := range []struct {
		creds auth.Credentials
		dec   auth.Decision
	}{
		{auth.Credentials{User: "admin", AuthzID: "carol@a.example"}, auth.Decision{Backend: "mx"}},
		{auth.Credentials{User: "admin"}, auth.Decision{Backend: "mx", User: "admin", AuthzID: "carol@a.example"}},
		{auth.Credentials{Method: "OAUTHBEARER"}, auth.Decision{Backend: "mx", Mailbox: "carol@a.example"}},
	} {
		if got := sess.mailbox(tc.creds, tc.dec); got != own {
			t.Errorf("mailbox(authzid %q, %+v) = %q, carol's own logins key %q", tc.creds.AuthzID, tc.dec, got, own)
		}
	}
}

// TestDomainBlindEndPoolMailbox: behind a route that compares local
// parts only, ending the sessions of carol@a.example ends a master
// user's session on carol's mailbox, which the pool keys as "carol": an
// operator's move would otherwise leave it open on the old backend.
func TestDomainBlindEndPoolMailbox(t *testing.T) {
	sess := &session{srv: &Server{}, cfg: &Config{Router: blindRouter{}}, clientUser: "admin*master", poolMailbox: "carol"}
	if !sessionsOf("Carol@a.example")(sess) {
		t.Errorf("ending carol@a.example's sessions spares the one on her mailbox %q", sess.poolMailbox)
	}
	if sessionsOf("dave@a.example")(sess) {
		t.Errorf("ending dave@a.example's sessions ends the one on carol's mailbox")
	}
	if sessionsOf("") != nil {
		t.Errorf("an empty user matches sessions")
	}
}
