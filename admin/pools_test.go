package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/popgate/popgate/pool"
	"github.com/popgate/popgate/proxy"
)

// TestPoolEndpoints: /pools answers with the Director's status, changes
// it with the operator's token only, says why a change is refused (404
// for an unknown pool or backend, 409 for a change that does not apply,
// 400 for a bad request), and a move ends the user's sessions.
func TestPoolEndpoints(t *testing.T) {
	d := pool.New(pool.Config{
		Pools:    []pool.Pool{{Name: "mx", Members: []pool.Member{{Backend: "a", Weight: 1}, {Backend: "b", Weight: 1}}}},
		Backends: []string{"a", "b", "c"},
	})
	sessions := &fakeSessions{list: []proxy.SessionInfo{{ID: "1", User: "Alice"}, {ID: "2", User: "bob"}}}
	h := Handler(nil, sessions, nil, func() Access { return Access{Token: "tok"} }, nil, WithPools(d))
	do := func(method, path, token string) (int, map[string]any) {
		t.Helper()
		req := httptest.NewRequest(method, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var m map[string]any
		json.Unmarshal(w.Body.Bytes(), &m)
		return w.Code, m
	}
	if code, _ := do("POST", "/pools/mx/drain?backend=a", ""); code != http.StatusUnauthorized {
		t.Errorf("drain without the token: %d", code)
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/pools/mx/drain?backend=a", http.StatusOK},
		{"/pools/mx/drain?backend=zz", http.StatusNotFound},
		{"/pools/nx/drain?backend=a", http.StatusNotFound},
		{"/pools/mx/add?backend=a", http.StatusConflict},
		{"/pools/mx/weight?backend=b&weight=x", http.StatusBadRequest},
		{"/pools/mx/weight?backend=b&weight=3", http.StatusOK},
		{"/pools/mx/add?backend=c&weight=2", http.StatusOK},
		{"/pools/mx/frob?backend=c", http.StatusConflict},
		{"/pools/mx/move", http.StatusBadRequest},
	} {
		if code, m := do("POST", tc.path, "tok"); code != tc.want {
			t.Errorf("POST %s: %d %v, want %d", tc.path, code, m, tc.want)
		}
	}
	code, m := do("POST", "/pools/mx/move?user=alice&backend=c", "tok")
	if code != http.StatusOK || m["backend"] != "c" || m["ended"] != 1.0 {
		t.Errorf("move: %d %v", code, m)
	}
	if l := sessions.SessionList(); len(l) != 1 || l[0].User != "bob" {
		t.Errorf("sessions after the move: %v", l)
	}
	if b, release, _, _ := d.Assign(context.Background(), "mx", "ALICE"); b != "c" {
		t.Errorf("alice after the move: %s", b)
	} else {
		release(true)
	}
	req := httptest.NewRequest("GET", "/pools", nil)
	req.Header.Set("Authorization", "Bearer tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var st []pool.PoolStatus
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || len(st) != 1 || len(st[0].Backends) != 3 {
		t.Fatalf("GET /pools: %v %s", err, w.Body)
	}
	if a := st[0].Backends[0]; !a.Drained || a.Weight != 0 || a.Configured != 1 {
		t.Errorf("a: %+v", a)
	}
	if b := st[0].Backends[1]; b.Weight != 3 || b.Override.Weight == nil {
		t.Errorf("b: %+v", b)
	}
	req = httptest.NewRequest("GET", "/", nil)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if !strings.Contains(w.Body.String(), "/pools") {
		t.Errorf("the index does not name /pools:\n%s", w.Body)
	}
}

// flakyFleet is a fleet whose replicas answer the first end and not the
// second.
type flakyFleet struct {
	*fakeFleet
	calls int
}

func (f *flakyFleet) FleetEnd(ctx context.Context, user, id string) (map[string]int, []string, string) {
	f.calls++
	if f.calls > 1 {
		f.partial = "there unreached"
	}
	return f.fakeFleet.FleetEnd(ctx, user, id)
}

// TestPoolMovePartial: a move whose second round of ends misses a
// replica says so, though the first round reached every one.
func TestPoolMovePartial(t *testing.T) {
	d := pool.New(pool.Config{
		Pools:    []pool.Pool{{Name: "mx", Members: []pool.Member{{Backend: "a", Weight: 1}, {Backend: "b", Weight: 1}}}},
		Backends: []string{"a", "b"},
	})
	f := &flakyFleet{fakeFleet: newFakeFleet()}
	h := Handler(nil, f, nil, func() Access { return Access{Token: "tok"} }, nil, WithPools(d))
	req := httptest.NewRequest("POST", "/pools/mx/move?user=alice&backend=b", nil)
	req.Header.Set("Authorization", "Bearer tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var ans poolAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil || w.Code != http.StatusOK {
		t.Fatalf("move: %d %s %v", w.Code, w.Body, err)
	}
	if f.calls != 2 || ans.Partial != "there unreached" {
		t.Errorf("move after %d ends: partial %q, want %q", f.calls, ans.Partial, "there unreached")
	}
}
