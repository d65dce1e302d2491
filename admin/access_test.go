package admin

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// testToken is the admin token of the tests; no test output may show it.
const testToken = "test-admin-token-0123456789abcdef"

func TestHandlerAccess(t *testing.T) {
	token := Access{Token: testToken}
	metricsToo := Access{Token: testToken, ProtectMetrics: true}
	loopback := Access{Token: testToken, CheckHost: true, Hosts: []string{"127.0.0.1"}}
	named := Access{CheckHost: true, Hosts: []string{"10.0.0.5", "Popgate-Admin.internal", "[2001:db8::5]"}}
	const (
		bearer = "Bearer " + testToken
		wrong  = "Bearer test-admin-token-0123456789abcdeX"
		all    = "c1 c2 c3"
	)
	challenge := `Bearer realm="popgate admin"`
	invalid := challenge + `, error="invalid_token"`

	tests := []struct {
		name   string
		access Access
		method string
		target string
		host   string // default 127.0.0.1:9110; "-" sends none
		auth   string // the Authorization header

		wantCode      int
		wantChallenge string // WWW-Authenticate
		wantLeft      string // IDs of the sessions left, when set
		wantLog       string // in the log
	}{
		// Without a token, the address alone protects the endpoints.
		{name: "no token: list", method: "GET", target: "/sessions", wantCode: 200},
		{name: "no token: end", method: "DELETE", target: "/sessions?user=alice@example.com", wantCode: 200, wantLeft: "c3"},
		{name: "no token, no host check: any Host", method: "DELETE", target: "/sessions?id=c1", host: "attacker.example", wantCode: 200, wantLeft: "c2 c3"},

		// A token guards /sessions in every method.
		{name: "list without token", access: token, method: "GET", target: "/sessions", wantCode: 401, wantChallenge: challenge,
			wantLog: `"msg":"admin: request without a valid token refused","method":"GET","path":"/sessions"`},
		{name: "list of a user without token", access: token, method: "GET", target: "/sessions?user=alice@example.com", wantCode: 401, wantChallenge: challenge},
		{name: "HEAD without token", access: token, method: "HEAD", target: "/sessions", wantCode: 401, wantChallenge: challenge},
		{name: "end without token", access: token, method: "DELETE", target: "/sessions?user=alice@example.com", wantCode: 401, wantChallenge: challenge, wantLeft: all},
		{name: "end by id without token", access: token, method: "DELETE", target: "/sessions?id=c1", wantCode: 401, wantLeft: all},
		{name: "PUT without token", access: token, method: "PUT", target: "/sessions", wantCode: 401, wantChallenge: challenge},
		{name: "list with a wrong token", access: token, method: "GET", target: "/sessions", auth: wrong, wantCode: 401, wantChallenge: invalid,
			wantLog: `"token_given":true`},
		{name: "end with a wrong token", access: token, method: "DELETE", target: "/sessions?user=alice@example.com", auth: wrong, wantCode: 401, wantChallenge: invalid, wantLeft: all},
		{name: "a prefix of the token", access: token, method: "GET", target: "/sessions", auth: "Bearer " + testToken[:20], wantCode: 401, wantChallenge: invalid},
		{name: "the token and more", access: token, method: "GET", target: "/sessions", auth: bearer + "x", wantCode: 401},
		{name: "an empty token", access: token, method: "GET", target: "/sessions", auth: "Bearer ", wantCode: 401},
		{name: "the token as Basic", access: token, method: "GET", target: "/sessions", auth: "Basic " + testToken, wantCode: 401, wantChallenge: challenge},
		{name: "the token without a scheme", access: token, method: "GET", target: "/sessions", auth: testToken, wantCode: 401},
		{name: "list with the token", access: token, method: "GET", target: "/sessions", auth: bearer, wantCode: 200},
		{name: "scheme in lower case", access: token, method: "GET", target: "/sessions", auth: "bearer " + testToken, wantCode: 200},
		{name: "end with the token", access: token, method: "DELETE", target: "/sessions?user=alice@example.com", auth: bearer, wantCode: 200, wantLeft: "c3"},
		{name: "PUT with the token", access: token, method: "PUT", target: "/sessions", auth: bearer, wantCode: 405},
		{name: "escaped path without token", access: token, method: "DELETE", target: "/%73essions?id=c1", wantCode: 401, wantLeft: all},
		{name: "unknown path without token", access: token, method: "GET", target: "/debug/pprof/", wantCode: 401},
		{name: "unknown path with the token", access: token, method: "GET", target: "/debug/pprof/", auth: bearer, wantCode: 404},

		// /metrics is open unless protected; probes and the index always.
		{name: "metrics open by default", access: token, method: "GET", target: "/metrics", wantCode: 200},
		{name: "metrics protected", access: metricsToo, method: "GET", target: "/metrics", wantCode: 401, wantChallenge: challenge},
		{name: "metrics protected, wrong token", access: metricsToo, method: "GET", target: "/metrics", auth: wrong, wantCode: 401},
		{name: "metrics protected, with the token", access: metricsToo, method: "GET", target: "/metrics", auth: bearer, wantCode: 200},
		{name: "healthz open", access: metricsToo, method: "GET", target: "/healthz", wantCode: 200},
		{name: "readyz open", access: metricsToo, method: "GET", target: "/readyz", wantCode: 200},
		{name: "index open", access: metricsToo, method: "GET", target: "/", wantCode: 200},

		// The Host check (a loopback address), before the token.
		{name: "rebinding: end with the token", access: loopback, method: "DELETE", target: "/sessions?user=alice@example.com", host: "attacker.example", auth: bearer,
			wantCode: 421, wantLeft: all, wantLog: `"msg":"admin: request for another host name refused (DNS rebinding?)","host":"attacker.example"`},
		{name: "rebinding with a port", access: loopback, method: "GET", target: "/sessions", host: "attacker.example:9110", auth: bearer, wantCode: 421},
		{name: "rebinding: metrics", access: loopback, method: "GET", target: "/metrics", host: "attacker.example:9110", wantCode: 421},
		{name: "rebinding: index", access: loopback, method: "GET", target: "/", host: "attacker.example:9110", wantCode: 421},
		{name: "probes are not Host-checked: healthz", access: loopback, method: "GET", target: "/healthz", host: "10.1.2.3:9110", wantCode: 200},
		{name: "probes are not Host-checked: readyz", access: named, method: "GET", target: "/readyz", host: "10.1.2.3:9110", wantCode: 200},
		{name: "rebinding without a token set", access: Access{CheckHost: true}, method: "DELETE", target: "/sessions?id=c1", host: "attacker.example", wantCode: 421, wantLeft: all},
		{name: "a name ending in localhost", access: loopback, method: "GET", target: "/sessions", host: "localhost.attacker.example", auth: bearer, wantCode: 421},
		{name: "a name starting with the address", access: loopback, method: "GET", target: "/sessions", host: "127.0.0.1.attacker.example:9110", auth: bearer, wantCode: 421},
		{name: "another IP address", access: loopback, method: "GET", target: "/sessions", host: "192.0.2.1:9110", auth: bearer, wantCode: 421},
		{name: "Host 127.0.0.1", access: loopback, method: "GET", target: "/sessions", host: "127.0.0.1:9110", auth: bearer, wantCode: 200},
		{name: "Host 127.0.0.1 without port", access: loopback, method: "GET", target: "/sessions", host: "127.0.0.1", auth: bearer, wantCode: 200},
		{name: "Host 127.0.0.2", access: loopback, method: "GET", target: "/sessions", host: "127.0.0.2:9110", auth: bearer, wantCode: 200},
		{name: "Host [::1]", access: loopback, method: "GET", target: "/sessions", host: "[::1]:9110", auth: bearer, wantCode: 200},
		{name: "Host [::1] without port", access: loopback, method: "GET", target: "/sessions", host: "[::1]", auth: bearer, wantCode: 200},
		{name: "Host localhost", access: loopback, method: "GET", target: "/sessions", host: "localhost:9110", auth: bearer, wantCode: 200},
		{name: "Host LOCALHOST.", access: loopback, method: "GET", target: "/sessions", host: "LOCALHOST.", auth: bearer, wantCode: 200},
		{name: "no Host (HTTP/1.0)", access: loopback, method: "GET", target: "/sessions", host: "-", auth: bearer, wantCode: 200},
		{name: "right Host, no token", access: loopback, method: "GET", target: "/sessions", host: "localhost:9110", wantCode: 401},

		// Further names (allowed_hosts, a non-loopback bind address).
		{name: "allowed name", access: named, method: "GET", target: "/sessions", host: "popgate-admin.INTERNAL.:9110", wantCode: 200},
		{name: "bind address", access: named, method: "GET", target: "/sessions", host: "10.0.0.5:9110", wantCode: 200},
		{name: "bind address IPv6", access: named, method: "GET", target: "/sessions", host: "[2001:db8::5]:9110", wantCode: 200},
		{name: "IPv4-mapped bind address", access: named, method: "GET", target: "/sessions", host: "[::ffff:10.0.0.5]:9110", wantCode: 200},
		{name: "loopback still accepted", access: named, method: "GET", target: "/sessions", host: "localhost:9110", wantCode: 200},
		{name: "other name", access: named, method: "GET", target: "/sessions", host: "admin.example:9110", wantCode: 421},
		{name: "other address", access: named, method: "GET", target: "/sessions", host: "10.0.0.6:9110", wantCode: 421},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&logBuf, nil))
			sessions := &fakeSessions{list: testSessions()}
			access := tc.access
			h := Handler(NewMetrics("dev", ""), sessions, nil, func() Access { return access }, log)

			req := httptest.NewRequest(tc.method, tc.target, nil)
			switch tc.host {
			case "":
				req.Host = "127.0.0.1:9110"
			case "-":
				req.Host = ""
			default:
				req.Host = tc.host
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			what := tc.method + " " + tc.target + " (Host " + req.Host + ")"
			if rec.Code != tc.wantCode {
				t.Errorf("%s = %d %q, want %d", what, rec.Code, rec.Body, tc.wantCode)
			}
			if got := rec.Header().Get("WWW-Authenticate"); tc.wantChallenge != "" && got != tc.wantChallenge {
				t.Errorf("%s: WWW-Authenticate = %q, want %q", what, got, tc.wantChallenge)
			}
			if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("%s: 401 without a Bearer challenge", what)
			}
			if tc.wantLeft != "" {
				var left []string
				for _, s := range sessions.SessionList() {
					left = append(left, s.ID)
				}
				if want := strings.Fields(tc.wantLeft); !reflect.DeepEqual(left, want) {
					t.Errorf("%s: sessions left = %q, want %q", what, left, want)
				}
			}
			logs := logBuf.String()
			if !strings.Contains(logs, tc.wantLog) {
				t.Errorf("%s: log = %q, want it to contain %q", what, logs, tc.wantLog)
			}
			if rec.Code == 401 || rec.Code == 421 {
				if !strings.Contains(logs, `"level":"WARN"`) {
					t.Errorf("%s: refusal not logged at WARN: %q", what, logs)
				}
			}
			if strings.Contains(logs, testToken[:20]) || strings.Contains(rec.Body.String(), testToken[:20]) {
				t.Errorf("%s: the token is in the log or the answer", what)
			}
		})
	}
}

// TestHandlerAccessChanges: the access rules are asked for on every
// request, so that a reload that changes the token applies at once.
func TestHandlerAccessChanges(t *testing.T) {
	access := Access{Token: testToken}
	h := Handler(nil, &fakeSessions{}, nil, func() Access { return access }, nil)
	get := func(auth string) int {
		req := httptest.NewRequest("GET", "/sessions", nil)
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	const newToken = "new-admin-token-fedcba9876543210"
	for _, step := range []struct {
		name     string
		token    string
		auth     string
		wantCode int
	}{
		{"old token", testToken, "Bearer " + testToken, 200},
		{"old token after the change", newToken, "Bearer " + testToken, 401},
		{"new token after the change", newToken, "Bearer " + newToken, 200},
	} {
		access.Token = step.token
		if got := get(step.auth); got != step.wantCode {
			t.Errorf("%s: GET /sessions = %d, want %d", step.name, got, step.wantCode)
		}
	}
}
