package admin

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/popgate/popgate/proxy"
)

// blindSessions are sessions behind a Router that compares local parts
// only: their UserMatcher (proxy.Server's) ignores the domain, as their
// EndSessions does.
type blindSessions struct{ *fakeSessions }

func (b blindSessions) UserMatcher(user string) func(string) bool {
	local := func(u string) string { return strings.ToLower(u[:max(strings.LastIndexByte(u, '@'), 0)]) }
	return func(u string) bool { return u != "" && local(u) == local(user) }
}

// TestAttack7SessionsFilterMatchesEnd: GET /sessions?user=U lists what
// DELETE /sessions?user=U ends; with a domain-blind Router, that is the
// sessions of every domain of the name, so the filter must ask the
// sessions' own matcher rather than compare folded names.
func TestAttack7SessionsFilterMatchesEnd(t *testing.T) {
	s := blindSessions{&fakeSessions{list: []proxy.SessionInfo{
		{ID: "1", User: "alice@elsewhere.example"},
		{ID: "2", User: "bob@example.com"},
	}}}
	h := Handler(NewMetrics("dev", ""), s, nil, nil, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/sessions?user=alice@example.com", nil))
	var list []proxy.SessionInfo
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if len(list) != 1 || list[0].ID != "1" {
		t.Errorf("GET /sessions?user=alice@example.com = %s, want alice@elsewhere.example's session (the same entry)", rec.Body)
	}
}
