package auth

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
)

// The SQL source is tested against real servers (internal/dirrun), never
// a mock: what PostgreSQL and MariaDB do with a bound parameter, a NULL, a
// boolean column or a restart is what is under test. A missing server is
// a failure (scripts/test installs them).

var sqlServers struct {
	pgOnce, myOnce sync.Once
	pg             *dirrun.Postgres
	my             *dirrun.MariaDB
	pgErr, myErr   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if s := sqlServers.pg; s != nil {
		s.Close()
	}
	if s := sqlServers.my; s != nil {
		s.Close()
	}
	os.Exit(code)
}

// sqlServer is one server a test runs against, with its tables made.
type sqlServer struct {
	driver string
	dsn    string
	exec   func(string) error
	query  func(string) (string, error)
	stop   func() error
	start  func() error
}

// startSQLServer starts (once per test binary) the server of driver and
// returns it with the test tables made afresh.
func startSQLServer(t *testing.T, driver string) *sqlServer {
	t.Helper()
	var s *sqlServer
	switch driver {
	case SQLPostgres:
		if !dirrun.PostgresAvailable() {
			t.Fatal("PostgreSQL is not installed (apt-get install postgresql; scripts/test does)")
		}
		sqlServers.pgOnce.Do(func() { sqlServers.pg, sqlServers.pgErr = dirrun.StartPostgres() })
		if sqlServers.pgErr != nil {
			t.Fatal(sqlServers.pgErr)
		}
		p := sqlServers.pg
		s = &sqlServer{driver, p.DSN(), p.Exec, p.Query, p.Stop, p.Start}
	case SQLMySQL:
		if !dirrun.MariaDBAvailable() {
			t.Fatal("MariaDB is not installed (apt-get install mariadb-server; scripts/test does)")
		}
		sqlServers.myOnce.Do(func() { sqlServers.my, sqlServers.myErr = dirrun.StartMariaDB() })
		if sqlServers.myErr != nil {
			t.Fatal(sqlServers.myErr)
		}
		m := sqlServers.my
		s = &sqlServer{driver, m.DSN(), m.Exec, m.Query, m.Stop, m.Start}
	}
	boolType, text, long := "boolean NOT NULL DEFAULT true", "text", "text"
	if driver == SQLMySQL {
		boolType, text, long = "tinyint(1) NOT NULL DEFAULT 1", "varchar(255)", "text"
	}
	huge := strings.Repeat("x", maxSQLValue+1)
	if err := s.exec(`DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS odd;
CREATE TABLE users (username ` + text + ` PRIMARY KEY, backend ` + text + `, host ` + text + `, port integer,
  login ` + text + `, password ` + text + `, password_hash ` + text + `, enabled ` + boolType + `);
INSERT INTO users (username, backend) VALUES ('alice@example.com', 'tls');
INSERT INTO users (username, host, port) VALUES ('bob@example.org', '127.0.0.1', 1110);
INSERT INTO users (username, backend, password_hash) VALUES ('carol@example.net', 'tls', '{PLAIN}Carol-pw');
INSERT INTO users (username, backend, login, password, password_hash) VALUES ('dave@example.com', 'tls', 'dave@example.com*master', 'Master-pw', '{PLAIN}Dave-pw');
INSERT INTO users (username, backend, enabled) VALUES ('erin@example.com', 'tls', false);
INSERT INTO users (username, backend, password) VALUES ('frank@example.com', 'tls', 'Master-pw');
CREATE TABLE odd (username ` + long + `, backend ` + long + `, host ` + long + `, port ` + long + `, login ` + long + `, enabled ` + long + `);
INSERT INTO odd (username, backend, enabled) VALUES ('maybe', 'tls', 'maybe');
INSERT INTO odd (username, host, port) VALUES ('space', 'evil host', '110');
INSERT INTO odd (username, host, port) VALUES ('bigport', '127.0.0.1', '99999');
INSERT INTO odd (username, backend, login) VALUES ('crlf', 'tls', 'x` + "\r\n" + `DELE 1');
INSERT INTO odd (username, backend) VALUES ('nobackend', 'nowhere');
INSERT INTO odd (username, backend, host, port) VALUES ('both', 'tls', '127.0.0.1', '110');
INSERT INTO odd (username, backend) VALUES ('huge', '` + huge + `');
INSERT INTO odd (username, backend, enabled) VALUES ('twin', 'tls', 'y'), ('twin', 'plain', 'y');
INSERT INTO odd (username, backend, enabled) VALUES ('yes', 'tls', 'YES'), ('no', 'tls', 'n'), ('nulls', NULL, NULL);
`); err != nil {
		t.Fatal(err)
	}
	return s
}

const usersQuery = "SELECT backend, host, port, login, password, password_hash, enabled FROM users WHERE username = :user"

func openSQL(t *testing.T, s *sqlServer, query string, mod func(*SQLConfig)) *SQL {
	t.Helper()
	cfg := SQLConfig{
		Driver: s.driver, DSN: s.dsn, Query: query, Timeout: 2 * time.Second,
		Directory: Directory{Source: "route.sql", Backend: "plain", Hashes: plainHashes{},
			KnownBackend: func(n string) bool { return n == "tls" || n == "plain" }},
	}
	if mod != nil {
		mod(&cfg)
	}
	src, err := OpenSQL(context.Background(), cfg)
	if err != nil {
		t.Fatalf("OpenSQL: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func sqlReq(user, pass string) *Request {
	return &Request{Credentials: Credentials{User: user, Password: Password(pass), Method: "USER"}, Listener: "pop3s"}
}

func forSQLDrivers(t *testing.T, f func(t *testing.T, s *sqlServer)) {
	for _, d := range []string{SQLPostgres, SQLMySQL} {
		t.Run(d, func(t *testing.T) { f(t, startSQLServer(t, d)) })
	}
}

// TestSQLDecide: rows become decisions by Directory's rules; no row is
// ErrNoRoute; a row that cannot be used is an error, never a login.
func TestSQLDecide(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		src := openSQL(t, s, usersQuery, nil)
		ctx := context.Background()
		tests := []struct {
			user, pass string
			want       Decision
			err        string // "norute", "denied", or a part of the error
		}{
			{"alice@example.com", "any", Decision{Backend: "tls", User: "alice@example.com", Password: "any"}, ""},
			{"bob@example.org", "pw", Decision{Backend: "plain", Address: "127.0.0.1:1110", User: "bob@example.org", Password: "pw"}, ""},
			{"carol@example.net", "Carol-pw", Decision{Backend: "tls", User: "carol@example.net", Password: "Carol-pw"}, ""},
			{"carol@example.net", "wrong", Decision{}, "denied"},
			{"dave@example.com", "Dave-pw", Decision{Backend: "tls", User: "dave@example.com*master", Password: "Master-pw"}, ""},
			{"dave@example.com", "Master-pw", Decision{}, "denied"},
			{"erin@example.com", "any", Decision{}, "denied"},
			{"frank@example.com", "any", Decision{}, "no password_hash"},
			{"nobody@example.com", "any", Decision{}, "noroute"},
			// Case and spaces are the server's business (MariaDB's
			// default collation ignores case); the name is bound as sent.
			{"ALICE@EXAMPLE.COM", "any", Decision{}, map[string]string{SQLPostgres: "noroute", SQLMySQL: ""}[s.driver]},
		}
		for _, tt := range tests {
			d, err := src.Decide(ctx, sqlReq(tt.user, tt.pass))
			switch tt.err {
			case "":
				if err != nil {
					t.Errorf("%s: %v", tt.user, err)
				} else if tt.want.Backend != "" && d != tt.want {
					t.Errorf("%s: %+v, want %+v", tt.user, d, tt.want)
				}
			case "noroute":
				if !errors.Is(err, ErrNoRoute) {
					t.Errorf("%s: %v, want ErrNoRoute", tt.user, err)
				}
			case "denied":
				var de *DeniedError
				if !errors.As(err, &de) {
					t.Errorf("%s: %v, want a DeniedError", tt.user, err)
				}
			default:
				var de *DeniedError
				if err == nil || errors.As(err, &de) || errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("%s: %v, want an error with %q", tt.user, err, tt.err)
				}
			}
			if err != nil && strings.Contains(err.Error(), "Master-pw") {
				t.Errorf("%s: the error shows the row's password: %v", tt.user, err)
			}
		}
	})
}

// TestSQLOddRows: a hostile or broken row is an error ([SYS/TEMP]), never
// a login, and more than one row for a user is one too.
func TestSQLOddRows(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		src := openSQL(t, s, "SELECT backend, host, port, login, enabled FROM odd WHERE username = :user", nil)
		for user, want := range map[string]string{
			"maybe":     "enabled",
			"space":     "neither an IP address nor a host name",
			"bigport":   "bad port",
			"crlf":      "unusable login",
			"nobackend": "unknown backend",
			"both":      "both a backend and a host",
			"huge":      "longer than",
			"twin":      "more than one row",
			"nulls":     "no backend and no host",
		} {
			_, err := src.Decide(context.Background(), sqlReq(user, "pw"))
			var de *DeniedError
			if err == nil || errors.As(err, &de) || errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want an error with %q", user, err, want)
			}
		}
		if d, err := src.Decide(context.Background(), sqlReq("yes", "pw")); err != nil || d.Backend != "tls" {
			t.Errorf("enabled YES: %+v, %v", d, err)
		}
		var de *DeniedError
		if _, err := src.Decide(context.Background(), sqlReq("no", "pw")); !errors.As(err, &de) {
			t.Errorf("enabled n: %v, want a refusal", err)
		}
	})
}

// TestSQLInjection: user names that would change an interpolated query
// match nothing and break nothing; the table is whole afterwards.
func TestSQLInjection(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		queries := []string{
			usersQuery,
			"SELECT backend FROM users WHERE username = :local || '@' || :domain",
		}
		if s.driver == SQLMySQL {
			queries[1] = "SELECT backend FROM users WHERE username = CONCAT(:local, '@', :domain)"
		}
		names := []string{
			"' OR 1=1 --", "' OR '1'='1", `"; DROP TABLE users; --`, "'; DROP TABLE users; --",
			`\2a`, `*)(uid=*`, `\' OR 1=1 #`, "alice@example.com' --", "alice@example.com\x00",
			":user", "x:user", "$1", "?", "%", "_", "alice@example.com\\", strings.Repeat("A", 2048),
			"\xff\xfe", "' UNION SELECT 'tls' --",
		}
		for _, q := range queries {
			src := openSQL(t, s, q, nil)
			for _, name := range names {
				_, err := src.Decide(context.Background(), sqlReq(name, "pw"))
				if len(name) > MaxCredentialLen || strings.IndexByte(name, 0) >= 0 {
					// Refused before any query, as the proxy does.
					if !errors.Is(err, ErrNoRoute) && err == nil {
						t.Errorf("%q: no error", name)
					}
					continue
				}
				if !errors.Is(err, ErrNoRoute) {
					t.Errorf("query %q, user %q: %v, want ErrNoRoute", q, name, err)
				}
			}
			// Through Lookup too (popgate route), which skips the
			// credential check.
			for _, name := range names {
				if _, _, found, err := src.Lookup(context.Background(), name); found || err != nil {
					t.Errorf("Lookup(%.40q) = %v, %v", name, found, err)
				}
			}
		}
		out, err := s.query("SELECT count(*) FROM users")
		if err != nil || strings.TrimSpace(out) != "6" {
			t.Fatalf("users afterwards: %q, %v", out, err)
		}
	})
}

// TestSQLLookup: popgate route shows the row without its password or
// hash.
func TestSQLLookup(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		src := openSQL(t, s, usersQuery, nil)
		b, rule, found, err := src.Lookup(context.Background(), "dave@example.com")
		if err != nil || !found || b != "tls" {
			t.Fatalf("Lookup = %q, %q, %v, %v", b, rule, found, err)
		}
		for _, want := range []string{`logs in to the backend as "dave@example.com*master"`, "password=(set)", "password_hash=(set)", `backend="tls"`} {
			if !strings.Contains(rule, want) {
				t.Errorf("rule %q lacks %q", rule, want)
			}
		}
		if strings.Contains(rule, "Master-pw") || strings.Contains(rule, "Dave-pw") {
			t.Errorf("rule shows a password: %q", rule)
		}
		if _, _, found, err := src.Lookup(context.Background(), "nobody"); found || err != nil {
			t.Errorf("Lookup(nobody) = %v, %v", found, err)
		}
		b, rule, found, err = src.Lookup(context.Background(), "erin@example.com")
		if err != nil || !found || b != "" || !strings.Contains(rule, "disabled") {
			t.Errorf("Lookup(erin) = %q, %q, %v, %v", b, rule, found, err)
		}
	})
}

// TestSQLOpenChecks: what is wrong with the query or the DSN is said at
// start, without the DSN's password.
func TestSQLOpenChecks(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		for _, tt := range []struct{ query, want string }{
			{"SELECT backend, username FROM users WHERE username = :user", `column "username"`},
			{"SELECT backend, password FROM users WHERE username = :user", "without password_hash"},
			{"SELECT login FROM users WHERE username = :user", "neither a backend"},
			{"SELECT backend FROM nosuchtable WHERE username = :user", "refuses it"},
			{"SELEKT backend FROM users WHERE username = :user", "refuses it"},
			{"SELECT backend FROM users WHERE username = 'x'", "neither :user nor :local"},
			{"SELECT backend FROM users WHERE username = :usr", "unknown parameter"},
		} {
			_, err := OpenSQL(context.Background(), SQLConfig{Driver: s.driver, DSN: s.dsn, Query: tt.query,
				Directory: Directory{Source: "route.sql"}})
			if err == nil || errors.Is(err, ErrDirectoryUnavailable) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%q: %v, want an error with %q", tt.query, err, tt.want)
			}
		}
		// A wrong password: the server answers, so it is a start
		// error, and neither password shows in it.
		const wrong = "Wrong-secret-4711"
		dsn := strings.Replace(s.dsn, dirrun.Password, wrong, 1)
		_, err := OpenSQL(context.Background(), SQLConfig{Driver: s.driver, DSN: dsn, Query: usersQuery, Directory: Directory{Source: "route.sql"}})
		if err == nil || errors.Is(err, ErrDirectoryUnavailable) {
			t.Errorf("wrong password: %v, want a start error", err)
		} else if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), dirrun.Password) {
			t.Errorf("wrong password: the error shows the DSN's password")
		}
		bad := map[string]string{SQLPostgres: "postgres://popgate:" + wrong + "@127.0.0.1:5432/popgate?sslmode=bogus", SQLMySQL: "popgate:" + wrong + "@tcp(127.0.0.1:1)popgate"}[s.driver]
		if _, err := OpenSQL(context.Background(), SQLConfig{Driver: s.driver, DSN: bad, Query: usersQuery}); err == nil || strings.Contains(err.Error(), wrong) {
			t.Errorf("malformed DSN: %v", err)
		}
	})
	if _, err := OpenSQL(context.Background(), SQLConfig{Driver: SQLMySQL, DSN: "u:p@tcp(127.0.0.1:1)/db?interpolateParams=true", Query: usersQuery}); err == nil || !strings.Contains(err.Error(), "interpolateParams") {
		t.Errorf("interpolateParams: %v", err)
	}
}

// TestSQLOutage: a server that stops fails logins with an error (not a
// refusal) within the timeout, leaks no connection, and the same source
// works again once the server is back; a server down at start too.
func TestSQLOutage(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		goroutines := runtime.NumGoroutine()
		src := openSQL(t, s, usersQuery, func(c *SQLConfig) { c.Timeout = time.Second; c.MaxConnections = 4 })
		ctx := context.Background()
		login := func() error {
			_, err := src.Decide(ctx, sqlReq("alice@example.com", "pw"))
			return err
		}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if err := login(); err != nil {
					t.Errorf("before the outage: %v", err)
				}
			})
		}
		wg.Wait()
		if err := s.stop(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				s.start()
			}
		}()
		for range 3 {
			start := time.Now()
			err := login()
			var de *DeniedError
			if err == nil || errors.Is(err, ErrNoRoute) || errors.As(err, &de) {
				t.Errorf("server stopped: %v, want an error", err)
			}
			// Bounded by the timeout, not by a connect or read that
			// hangs; the margin is for a loaded machine.
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("server stopped: the error took %v (timeout 1s)", took)
			}
		}
		// Down at start: the source is made and says so.
		down, err := OpenSQL(ctx, SQLConfig{Driver: s.driver, DSN: s.dsn, Query: usersQuery, Timeout: time.Second,
			Directory: Directory{Source: "route.sql", KnownBackend: func(string) bool { return true }}})
		if !errors.Is(err, ErrDirectoryUnavailable) || down == nil {
			t.Fatalf("OpenSQL with the server down: %v", err)
		}
		defer down.Close()
		if err := s.start(); err != nil {
			t.Fatal(err)
		}
		restarted = true
		for i := range 2 {
			if err := login(); err != nil {
				t.Errorf("after the restart, login %d: %v", i+1, err)
			}
			if _, err := down.Decide(ctx, sqlReq("alice@example.com", "pw")); err != nil {
				t.Errorf("source made while the server was down, login %d: %v", i+1, err)
			}
		}
		if st := src.PoolStats(); st.InUse != 0 || st.Idle > 4 {
			t.Errorf("pool after the outage: %+v (max 4 connections, none in use)", st)
		}
		src.Close()
		down.Close()
		// After Close the source still answers, a connection at a time.
		if err := login(); err != nil {
			t.Errorf("after Close: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > goroutines {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines after Close, %d before the source:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
		}
	})
}

// TestSQLTimeout: a slow query fails within the timeout and leaves the
// pool usable.
func TestSQLTimeout(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		slow := "SELECT backend FROM users WHERE username = :user AND (SELECT 1 FROM pg_sleep(CASE WHEN :local = 'slow' THEN 3 ELSE 0 END)) = 1"
		if s.driver == SQLMySQL {
			slow = "SELECT backend FROM users WHERE username = :user OR SLEEP(CASE WHEN :local = 'slow' THEN 3 ELSE 0 END) = 1"
		}
		src := openSQL(t, s, slow, func(c *SQLConfig) { c.Timeout = 300 * time.Millisecond; c.MaxConnections = 1 })
		start := time.Now()
		_, err := src.Decide(context.Background(), sqlReq("slow", "pw"))
		if err == nil || errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("slow query: %v, want a timeout error", err)
		}
		// The query sleeps 3 s; the margin below that is for a loaded
		// machine.
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Errorf("slow query took %v (timeout 300ms)", took)
		}
		if d, err := src.Decide(context.Background(), sqlReq("alice@example.com", "pw")); err != nil || d.Backend != "tls" {
			t.Errorf("after the timeout: %+v, %v", d, err)
		}
	})
}

// TestSQLSchemaChange: a column of the query that changes its type under
// the statements prepared on the pool's connections costs no login.
func TestSQLSchemaChange(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		src := openSQL(t, s, usersQuery, func(c *SQLConfig) { c.MaxConnections = 1 })
		login := func() error {
			d, err := src.Decide(context.Background(), sqlReq("bob@example.org", "pw"))
			if err == nil && d.Address != "127.0.0.1:1110" {
				err = errors.New("routed to " + d.Address)
			}
			return err
		}
		if err := login(); err != nil {
			t.Fatal(err)
		}
		alter := "ALTER TABLE users ALTER COLUMN port TYPE bigint"
		if s.driver == SQLMySQL {
			alter = "ALTER TABLE users MODIFY port bigint"
		}
		if err := s.exec(alter); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := login(); err != nil {
				t.Errorf("login %d after the change: %v", i+1, err)
			}
		}
	})
}

// TestSQLPlaintextRemote: a DSN that reaches another host without TLS is
// told apart (popgate warns about it at start).
func TestSQLPlaintextRemote(t *testing.T) {
	for _, tt := range []struct {
		driver, dsn string
		want        bool
	}{
		{SQLPostgres, "postgres://u:p@192.0.2.1/db?sslmode=disable", true},
		{SQLPostgres, "postgres://u:p@192.0.2.1/db?sslmode=prefer", true},
		{SQLPostgres, "postgres://u:p@192.0.2.1/db?sslmode=verify-full", false},
		{SQLPostgres, "postgres://u:p@127.0.0.1:1/db?sslmode=disable", false},
		{SQLPostgres, "host=/run/postgresql user=u dbname=db", false},
		{SQLMySQL, "u:p@tcp(192.0.2.1:3306)/db", true},
		{SQLMySQL, "u:p@tcp(192.0.2.1:3306)/db?tls=preferred", true},
		{SQLMySQL, "u:p@tcp(192.0.2.1:3306)/db?tls=true", false},
		{SQLMySQL, "u:p@tcp(localhost:3306)/db", false},
		{SQLMySQL, "u:p@unix(/run/mysqld/mysqld.sock)/db", false},
	} {
		src, err := OpenSQL(context.Background(), SQLConfig{Driver: tt.driver, DSN: tt.dsn, Query: usersQuery,
			Timeout: 100 * time.Millisecond, Directory: Directory{Source: "route.sql"}})
		if src == nil {
			t.Errorf("%s: %v", tt.dsn, err)
			continue
		}
		if got := src.PlaintextRemote(); got != tt.want {
			t.Errorf("%s: PlaintextRemote = %v, want %v", tt.dsn, got, tt.want)
		}
		src.Close()
	}
}

// TestSQLCloseUnderLoad: logins under way when a reload closes the source
// finish through it, each on a connection of its own.
func TestSQLCloseUnderLoad(t *testing.T) {
	forSQLDrivers(t, func(t *testing.T, s *sqlServer) {
		src := openSQL(t, s, usersQuery, func(c *SQLConfig) { c.MaxConnections = 2 })
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				for range 15 {
					if _, err := src.Decide(context.Background(), sqlReq("alice@example.com", "pw")); err != nil {
						t.Errorf("login: %v", err)
						return
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		src.Close()
		wg.Wait()
	})
}

// TestSQLDocsPlainMySQL: the plain MySQL table and query of
// docs/routing.md, as written there, on MariaDB.
func TestSQLDocsPlainMySQL(t *testing.T) {
	s := startSQLServer(t, SQLMySQL)
	if err := s.exec(`DROP TABLE IF EXISTS mailboxes;
CREATE TABLE mailboxes (
  address  varchar(255) NOT NULL PRIMARY KEY,
  mailhost varchar(64)  NOT NULL,
  active   tinyint(1)   NOT NULL DEFAULT 1
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
INSERT INTO mailboxes (address, mailhost) VALUES ('alice@example.com', 'tls');
INSERT INTO mailboxes (address, mailhost, active) VALUES ('bob@example.com', 'tls', 0);`); err != nil {
		t.Fatal(err)
	}
	src := openSQL(t, s, "SELECT mailhost AS backend, active AS enabled FROM mailboxes WHERE address = :user", nil)
	if d, err := src.Decide(context.Background(), sqlReq("alice@example.com", "pw")); err != nil || d.Backend != "tls" {
		t.Errorf("alice: %+v, %v", d, err)
	}
	var de *DeniedError
	if _, err := src.Decide(context.Background(), sqlReq("bob@example.com", "pw")); !errors.As(err, &de) {
		t.Errorf("bob (inactive): %v, want a refusal", err)
	}
	// The nopad_bin collation: case and trailing spaces matter.
	for _, u := range []string{"ALICE@example.com", "alice@example.com "} {
		if _, err := src.Decide(context.Background(), sqlReq(u, "pw")); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%q: %v, want ErrNoRoute", u, err)
		}
	}
}

// TestSQLUserColumn: a collation that finds a row for another spelling of
// the name (MariaDB's default ignores case, accents and trailing spaces)
// finds none when the query returns the row's user, case aside; and a name
// with spaces around it finds none either way.
func TestSQLUserColumn(t *testing.T) {
	s := startSQLServer(t, SQLMySQL)
	loose := openSQL(t, s, "SELECT backend FROM users WHERE username = :user", nil)
	exact := openSQL(t, s, "SELECT backend, username AS user FROM users WHERE username = :user", nil)
	for _, tt := range []struct {
		user         string
		loose, exact bool // found
	}{
		{"alice@example.com", true, true},
		{"ALICE@Example.com", true, true}, // case aside, as the throttle counts names
		{"alíce@example.com", true, false},
		{"alice@example.com ", false, false},
		{" alice@example.com", false, false},
	} {
		for _, c := range []struct {
			name string
			src  *SQL
			want bool
		}{{"loose", loose, tt.loose}, {"exact", exact, tt.exact}} {
			_, err := c.src.Decide(context.Background(), sqlReq(tt.user, "pw"))
			if found := err == nil; found != c.want || err != nil && !errors.Is(err, ErrNoRoute) {
				t.Errorf("%s query, %q: %v, want found %v", c.name, tt.user, err, c.want)
			}
		}
	}
}
