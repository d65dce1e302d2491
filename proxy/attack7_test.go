package proxy

import (
	"testing"

	"github.com/popgate/popgate/auth"
)

// TestAttack7EndSessionsFolds: a client that logs in with another
// spelling of a user name, one the directory takes for the same entry
// (full-width letters, a soft hyphen, spaces around it, a long s), is
// ended by a kick of the user: the failed-login limits count those
// spellings as one name, and the kick must not miss a session that an
// attacker opened with a stolen password under one of them.
func TestAttack7EndSessionsFolds(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var clients []*client
	for _, u := range []string{"ａｌｉｃｅ@example.com", "al\u00adice@example.com", "  ALICE@example.com ", "alice@example.com\u200b", "ali\u0301ce@example.com"} {
		c := h.dial("plain")
		c.send("USER " + u + "\r\nPASS wrong\r\n")
		c.expect("+OK")
		c.expect("-ERR")
		clients = append(clients, c)
	}
	other := h.dial("plain")
	other.send("USER bob@example.com\r\nPASS wrong\r\n")
	other.expect("+OK")
	other.expect("-ERR")
	waitFor(t, "the sessions", func() bool { return len(h.srv.SessionList()) == len(clients)+1 })
	if n := h.srv.EndSessions(testUser); n != len(clients) {
		t.Errorf("EndSessions(%s) = %d, want %d (every spelling of the name)", testUser, n, len(clients))
	}
	if n := h.srv.EndSessions("sam@example.com"); n != 0 {
		t.Errorf("EndSessions(sam) = %d", n)
	}
	waitFor(t, "the kicked sessions to end", func() bool { return len(h.srv.SessionList()) == 1 })
	if l := h.srv.SessionList(); l[0].User != "bob@example.com" {
		t.Errorf("after the kick: %+v, want bob's session only", l)
	}
}

// blindRouter is a Router whose source compares local parts only.
type blindRouter struct{ auth.Router }

func (blindRouter) IgnoresDomain() bool { return true }

// TestAttack7EndSessionsDomainBlind: with a source that compares local
// parts only, "alice@elsewhere.example" logs in to alice's entry (and
// shares her failed-login budget); a kick of alice@example.com must end
// that session too.
func TestAttack7EndSessionsDomainBlind(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Router = blindRouter{auth.NewStatic(nil, nil, "b1")}
	}})
	c := h.dial("plain")
	c.send("USER alice@elsewhere.example\r\nPASS wrong\r\n")
	c.expect("+OK")
	c.expect("-ERR")
	other := h.dial("plain")
	other.send("USER bob@example.com\r\nPASS wrong\r\n")
	other.expect("+OK")
	other.expect("-ERR")
	waitFor(t, "the sessions", func() bool { return len(h.srv.SessionList()) == 2 })
	if n := h.srv.EndSessions(testUser); n != 1 {
		t.Errorf("EndSessions(%s) = %d, want 1 (alice@elsewhere.example is alice's entry)", testUser, n)
	}
	waitFor(t, "the kicked sessions to end", func() bool { return len(h.srv.SessionList()) == 1 })
	if l := h.srv.SessionList(); l[0].User != "bob@example.com" {
		t.Errorf("after the kick: %+v, want bob's session only", l)
	}
}

// TestAttack7UserMatcherAgrees: the admin's ?user= filter uses
// UserMatcher; it must pick the sessions EndSessions ends, the domain
// ignored with a domain-blind Router.
func TestAttack7UserMatcherAgrees(t *testing.T) {
	h := newHarness(t, harnessOpts{config: func(c *Config) {
		c.Router = blindRouter{auth.NewStatic(nil, nil, "b1")}
	}})
	for _, u := range []string{"alice@elsewhere.example", "ALICE", "bob@example.com"} {
		c := h.dial("plain")
		c.send("USER " + u + "\r\nPASS wrong\r\n")
		c.expect("+OK")
		c.expect("-ERR")
	}
	waitFor(t, "the sessions", func() bool { return len(h.srv.SessionList()) == 3 })
	match := h.srv.UserMatcher(testUser)
	var matched int
	for _, s := range h.srv.SessionList() {
		if match(s.User) {
			matched++
		}
	}
	if n := h.srv.EndSessions(testUser); matched != 2 || n != matched {
		t.Errorf("UserMatcher(%s) picks %d sessions, EndSessions ends %d; want 2 and 2", testUser, matched, n)
	}
	if h.srv.UserMatcher("")("") || h.srv.UserMatcher("")("alice") {
		t.Error("the matcher of an empty user matches")
	}
}
