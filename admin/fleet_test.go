package admin

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

// fakeFleet is a fleet of replicas: this one's sessions (fakeSessions)
// and the others', with ids NODE:ID.
type fakeFleet struct {
	*fakeSessions
	others    []proxy.SessionInfo
	partial   string
	unreached []string
	ends      [][2]string // user, id of each FleetEnd
}

func (f *fakeFleet) FleetList(context.Context) ([]proxy.SessionInfo, string) {
	list := f.SessionList()
	for i := range list {
		list[i].Node, list[i].ID = "here", "here:"+list[i].ID
	}
	return append(list, f.others...), f.partial
}

func (f *fakeFleet) FleetEnd(_ context.Context, user, id string) (map[string]int, []string, string) {
	f.ends = append(f.ends, [2]string{user, id})
	ended := map[string]int{"here": f.EndSessions(user), "there": 0}
	for _, s := range f.others {
		if strings.EqualFold(s.User, user) {
			ended["there"]++
		}
	}
	return ended, f.unreached, f.partial
}

func newFakeFleet() *fakeFleet {
	now := time.Now()
	return &fakeFleet{
		fakeSessions: &fakeSessions{list: []proxy.SessionInfo{{ID: "a1", User: "alice", State: "relaying", Started: now}}},
		others: []proxy.SessionInfo{
			{ID: "there:b1", Node: "there", User: "Alice", State: "relaying", Started: now},
			{ID: "there:b2", Node: "there", User: "bob", State: "authorization", Started: now},
		},
	}
}

// TestHandlerFleet: with a FleetSessions, GET /sessions lists the
// fleet's, filtered by user, and DELETE ends through it and counts by
// node; a partial answer carries the header.
func TestHandlerFleet(t *testing.T) {
	f := newFakeFleet()
	h := Handler(nil, f, nil, nil, nil)
	get := func(path string) ([]proxy.SessionInfo, *httptest.ResponseRecorder) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var list []proxy.SessionInfo
		if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
			t.Fatalf("GET %s: %v in %q", path, err, rec.Body)
		}
		return list, rec
	}
	list, rec := get("/sessions")
	if len(list) != 3 || list[0].ID != "here:a1" || list[1].Node != "there" || rec.Header().Get(PartialHeader) != "" {
		t.Errorf("GET /sessions = %+v, %s %q", list, PartialHeader, rec.Header().Get(PartialHeader))
	}
	if list, _ = get("/sessions?user=ALICE"); len(list) != 2 {
		t.Errorf("GET /sessions?user=ALICE = %+v, want alice's two", list)
	}
	f.partial = "Redis is unreachable"
	if _, rec = get("/sessions"); rec.Header().Get(PartialHeader) != f.partial {
		t.Errorf("partial list: %s %q", PartialHeader, rec.Header().Get(PartialHeader))
	}

	f.unreached = []string{"gone"}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/sessions?user=alice", nil))
	want := `{"ended":2,"nodes":{"here":1,"there":1},"unreached":["gone"],"partial":"Redis is unreachable"}`
	if got := strings.TrimSpace(rec.Body.String()); got != want || rec.Header().Get(PartialHeader) != f.partial {
		t.Errorf("DELETE /sessions?user=alice = %s (%s %q), want %s", got, PartialHeader, rec.Header().Get(PartialHeader), want)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/sessions?id=there:b2", nil))
	if len(f.ends) != 2 || f.ends[1] != [2]string{"", "there:b2"} {
		t.Errorf("DELETE by id asked the fleet %v", f.ends)
	}

	// Without a fleet the answer is as before.
	rec = httptest.NewRecorder()
	Handler(nil, &fakeSessions{list: testSessions()}, nil, nil, nil).ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/sessions?user=nobody", nil))
	if got := strings.TrimSpace(rec.Body.String()); got != `{"ended":0}` || rec.Header().Get(PartialHeader) != "" {
		t.Errorf("DELETE without a fleet = %s", got)
	}
}

// TestConsoleFleet: the console's sessions page lists the fleet's with
// their nodes and says when the list is partial; ending reports by node.
func TestConsoleFleet(t *testing.T) {
	f := newFakeFleet()
	f.partial = "the lists of far were refused"
	c := newConsole(NewMetrics("v", "c"), f, func() Access { return Access{} }, slog.New(slog.DiscardHandler))
	rec := httptest.NewRecorder()
	c.sessionsPage(rec, httptest.NewRequest(http.MethodGet, "/console/sessions", nil), &consoleLogin{})
	body := rec.Body.String()
	for _, want := range []string{"<th>node</th>", "<td>there</td>", "/console/end?id=there%3ab1", "across the fleet", "the lists of far were refused"} {
		if !strings.Contains(body, want) {
			t.Errorf("the sessions page has no %q:\n%s", want, body)
		}
	}
	f.unreached = []string{"gone"}
	req := httptest.NewRequest(http.MethodPost, "/console/end", strings.NewReader(url.Values{"user": {"alice"}, "confirm": {"yes"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.ParseForm()
	rec = httptest.NewRecorder()
	c.end(rec, req, &consoleLogin{})
	body = rec.Body.String()
	for _, want := range []string{"Ended 2 session(s)", "<li>there: 1</li>", "Not reached: gone"} {
		if !strings.Contains(body, want) {
			t.Errorf("the end page has no %q:\n%s", want, body)
		}
	}
}
