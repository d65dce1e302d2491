package auth

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseSQLQuery(t *testing.T) {
	tests := []struct {
		driver, query string
		want          string // the text sent; "" with wantErr
		args          []string
		wantErr       string
	}{
		{SQLPostgres, "SELECT backend FROM users WHERE username = :user", "SELECT backend FROM users WHERE username = $1", []string{"user"}, ""},
		{SQLMySQL, "SELECT backend FROM users WHERE username = :user", "SELECT backend FROM users WHERE username = ?", []string{"user"}, ""},
		// A parameter used twice: one placeholder in PostgreSQL, one
		// value per "?" in MySQL.
		{SQLPostgres, "SELECT 1 AS backend WHERE :local = 'x' OR :domain = :local", "SELECT 1 AS backend WHERE $1 = 'x' OR $2 = $1", []string{"local", "domain"}, ""},
		{SQLMySQL, "SELECT 1 AS backend WHERE :local = 'x' OR :domain = :local", "SELECT 1 AS backend WHERE ? = 'x' OR ? = ?", []string{"local", "domain", "local"}, ""},
		// Names inside literals, identifiers and comments are text.
		{SQLPostgres, `SELECT ':user' AS backend, ":user" FROM t WHERE a = :user -- :listener` + "\n" + `/* :domain */`, `SELECT ':user' AS backend, ":user" FROM t WHERE a = $1 -- :listener` + "\n" + `/* :domain */`, []string{"user"}, ""},
		{SQLMySQL, "SELECT ':user' AS backend, `:user` FROM t WHERE a = :user # :listener\n-- :domain", "SELECT ':user' AS backend, `:user` FROM t WHERE a = ? # :listener\n-- :domain", []string{"user"}, ""},
		{SQLPostgres, "SELECT 'it''s :user' AS backend WHERE x = :user", "SELECT 'it''s :user' AS backend WHERE x = $1", []string{"user"}, ""},
		{SQLPostgres, "SELECT $$ :user $$ AS backend, $q$ :domain $q$ WHERE x = :user", "SELECT $$ :user $$ AS backend, $q$ :domain $q$ WHERE x = $1", []string{"user"}, ""},
		// Casts and assignments are not parameters.
		{SQLPostgres, "SELECT host, port::text AS port FROM t WHERE :client_ip::inet << net AND u = :user", "SELECT host, port::text AS port FROM t WHERE $1::inet << net AND u = $2", []string{"client_ip", "user"}, ""},
		{SQLMySQL, "SELECT @a := 1 AS backend WHERE u = :user", "SELECT @a := 1 AS backend WHERE u = ?", []string{"user"}, ""},
		// A trailing semicolon is dropped, a comment after it kept.
		{SQLPostgres, "SELECT 1 AS backend WHERE u = :user; -- done", "SELECT 1 AS backend WHERE u = $1 -- done", []string{"user"}, ""},
		{SQLPostgres, "SELECT a$b AS backend WHERE u = :user", "SELECT a$b AS backend WHERE u = $1", []string{"user"}, ""},

		{SQLPostgres, "SELECT 1 AS backend WHERE u = :username", "", nil, "unknown parameter :username"},
		{SQLPostgres, "SELECT 1 AS backend WHERE u = $1", "", nil, "positional parameter"},
		{SQLMySQL, "SELECT 1 AS backend WHERE u = ?", "", nil, "positional parameter"},
		{SQLMySQL, `SELECT 1 AS backend WHERE u = 'a\' OR :user'`, "", nil, "backslash"},
		{SQLPostgres, `SELECT 1 AS backend WHERE u = E'\'' AND v = :user`, "", nil, "backslash"},
		{SQLPostgres, "SELECT 1 AS backend /* a /* b */ :user */", "", nil, "comment inside a comment"},
		{SQLMySQL, "SELECT 1 AS backend /*! , :user */", "", nil, "/*!"},
		{SQLMySQL, "SELECT 1 --:user\nAS backend", "", nil, "not followed by a space"},
		{SQLPostgres, "SELECT 1 AS backend WHERE u = :user; DROP TABLE users", "", nil, "more than one statement"},
		{SQLPostgres, "SELECT 1 AS backend WHERE u = ':user", "", nil, "not closed"},
		{SQLPostgres, "SELECT $x$ :user AS backend", "", nil, "not closed"},
		{SQLPostgres, "SELECT 1 /* :user", "", nil, "not closed"},
		{SQLPostgres, " ; ", "", nil, "empty"},
		{"sqlite", "SELECT 1", "", nil, "unknown driver"},
	}
	for _, tt := range tests {
		q, err := parseSQLQuery(tt.query, tt.driver)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s %q: err = %v, want one with %q", tt.driver, tt.query, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %q: %v", tt.driver, tt.query, err)
			continue
		}
		var args []string
		for _, a := range q.args {
			args = append(args, sqlParamNames[a])
		}
		if q.text != tt.want || !slices.Equal(args, tt.args) {
			t.Errorf("%s %q:\n got %q %v\nwant %q %v", tt.driver, tt.query, q.text, args, tt.want, tt.args)
		}
	}
}

func TestSQLArgs(t *testing.T) {
	q, err := parseSQLQuery("SELECT 1 AS backend WHERE :user = :local || '@' || :domain AND :listener <> :client_ip", SQLPostgres)
	if err != nil {
		t.Fatal(err)
	}
	s := &SQL{q: q}
	for _, tt := range []struct {
		user          string
		local, domain string
	}{
		{"alice@example.com", "alice", "example.com"},
		{"alice", "alice", ""},
		{`"a@b"@example.com`, `"a@b"`, "example.com"},
		{"alice@", "alice", ""},
	} {
		req := &Request{Credentials: Credentials{User: tt.user}, Listener: "pop3s", Client: netip.MustParseAddrPort("[::ffff:192.0.2.1]:4000")}
		got := s.args(req)
		want := []any{tt.user, tt.local, tt.domain, "pop3s", "192.0.2.1"}
		if !slices.Equal(got, want) {
			t.Errorf("args(%q) = %q, want %q", tt.user, got, want)
		}
	}
}

func TestSQLColumnIndex(t *testing.T) {
	for _, tt := range []struct {
		cols    []string
		wantErr string
	}{
		{[]string{"backend"}, ""},
		{[]string{"HOST", "Port", "login", "password", "password_hash", "enabled"}, ""},
		{[]string{"backend", "extra"}, `column "extra"`},
		{[]string{"backend", "Backend"}, "twice"},
		{[]string{"login"}, "neither a backend"},
		{[]string{"host"}, "without the other"},
		{[]string{"backend", "password"}, "without password_hash"},
	} {
		_, err := sqlColumnIndex(tt.cols)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("sqlColumnIndex(%q) = %v, want %q", tt.cols, err, tt.wantErr)
		}
	}
}
