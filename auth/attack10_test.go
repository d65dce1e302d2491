package auth

import (
	"context"
	"testing"
)

// TestAttack10OAuthNamesMailbox: an OAuthRouter's master login names the
// mailbox it opens (Decision.Mailbox), in both forms, so that a backend
// pool keys a token login as it keys the user's password login; the
// "bob*master" form is split by oauth's separator, which the proxy does
// not know.
func TestAttack10OAuthNamesMailbox(t *testing.T) {
	p := startProvider(t)
	r := &OAuthRouter{Next: &routeRecorder{}, Verifier: newVerifier(t, p, nil), Master: MasterLogin{User: "master", Password: "m-secret", Separator: "*"}}
	alice := p.Token("alice@example.com", testAudience)
	for _, sep := range []string{"*", ""} {
		r.Master.Separator = sep
		dec, err := r.Route(context.Background(), &Request{Credentials: Credentials{Password: Password(alice), Method: MethodOAuthBearer}})
		if err != nil || dec.Mailbox != "alice@example.com" {
			t.Errorf("separator %q: mailbox %q (%+v, %v), want alice@example.com", sep, dec.Mailbox, dec, err)
		}
	}
}
