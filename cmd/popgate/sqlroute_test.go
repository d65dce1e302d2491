package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/dirrun"
)

// TestRouteSQLSettings: [route.sql]'s keys are checked, with the defaults
// of defaults.go.
func TestRouteSQLSettings(t *testing.T) {
	c, err := ParseConfig("sql", []byte(minimal+"[route.sql]\ndriver = \"postgres\"\ndsn = \"postgres://u@h/db\"\nquery = \"SELECT 'b' AS backend WHERE :user <> ''\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := sqlRouteSettings{Driver: "postgres", DSN: "postgres://u@h/db", Query: "SELECT 'b' AS backend WHERE :user <> ''",
		MaxConnections: defaultSQLMaxConnections, Timeout: defaultSQLTimeout, CacheTTL: defaultSQLCacheTTL,
		NegativeCacheTTL: defaultSQLNegativeCacheTTL, CacheSize: defaultSQLCacheSize}
	if q := c.Route.SQL; q == nil || *q != want {
		t.Errorf("route.sql = %+v, want %+v", q, want)
	}
	if ss := c.Route.sources(); len(ss) != 1 || ss[0].key != "route.sql" {
		t.Errorf("sources = %+v", ss)
	}
	for _, tt := range []struct{ body, want string }{
		{"dsn = \"x\"\nquery = \"q\"\n", "route.sql.driver: missing"},
		{"driver = \"sqlite\"\ndsn = \"x\"\nquery = \"q\"\n", `route.sql.driver: "sqlite" is not postgres or mysql`},
		{"driver = \"mysql\"\nquery = \"q\"\n", "set dsn, or dsn_file"},
		{"driver = \"mysql\"\ndsn = \"x\"\ndsn_file = \"/f\"\nquery = \"q\"\n", "contradict"},
		{"driver = \"mysql\"\ndsn = \"x\"\n", "route.sql.query: missing"},
		{"driver = \"mysql\"\ndsn = \"x\"\nquery = \"q\"\nmax_connections = 0\n", "max_connections: must be at least 1"},
		{"driver = \"mysql\"\ndsn = \"x\"\nquery = \"q\"\ntimeout = \"0s\"\n", "route.sql.timeout: must be positive"},
		{"driver = \"mysql\"\ndsn = \"x\"\nquery = \"q\"\ncache_size = -1\n", "route.sql.cache_size"},
		{"driver = \"mysql\"\ndsn = \"x\"\nquery = \"q\"\nbackend = \"nope\"\n", `route.sql.backend: backend "nope" is not defined`},
	} {
		_, err := ParseConfig("sql", []byte(minimal+"[route.sql]\n"+tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.body, err, tt.want)
		}
	}
}

// TestRouteSQL: `popgate route` and `popgate check` against a real
// PostgreSQL: the row is shown without its password, a broken query stops
// the check, a database that is down does not, and the DSN's password is
// never printed.
func TestRouteSQL(t *testing.T) {
	pg := dirrun.PostgresFor(t)
	if err := pg.Exec(`CREATE TABLE users (email text PRIMARY KEY, backend text, login text, password text, password_hash text, enabled boolean);
INSERT INTO users VALUES ('dave@example.com', 'b', 'dave@example.com*master', 'Master-pw-9', '{PLAIN}Dave-pw', true);
INSERT INTO users VALUES ('erin@example.com', 'b', NULL, NULL, NULL, false);`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dsnFile := filepath.Join(dir, "dsn")
	writeFile(t, dsnFile, []byte(pg.DSN()+"\n"))
	config := func(query, dsnKey string) string {
		return writeConfig(t, minimal+"[route.sql]\ndriver = \"postgres\"\n"+dsnKey+"\nquery = "+strconv.Quote(query)+"\n")
	}
	const query = "SELECT backend, login, password, password_hash, enabled FROM users WHERE email = :user"
	good := config(query, "dsn_file = "+strconv.Quote(dsnFile))
	secrets := []string{dirrun.Password, "Master-pw-9", "Dave-pw"}
	noSecret := func(what, s string) {
		t.Helper()
		for _, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("%s shows a password: %s", what, s)
			}
		}
	}

	for _, tt := range []struct{ user, want string }{
		{"dave@example.com", `dave@example.com -> b (127.0.0.1:1110, tls=none)`},
		{"dave@example.com", `logs in to the backend as "dave@example.com*master", with the directory's password once the client's matches password_hash; the row: backend="b" login="dave@example.com*master" password=(set) password_hash=(set) enabled="t"`},
		{"erin@example.com", "account disabled"},
		// No row: the next source, here route.default.
		{"nobody@example.com", `nobody@example.com -> b (127.0.0.1:1110, tls=none)`},
	} {
		code, out, errOut := run(t.Context(), "route", "-config", good, tt.user)
		if code != 0 || !strings.Contains(out, tt.want) {
			t.Errorf("route %s = %d, %q (stderr %q), want %q", tt.user, code, out, errOut, tt.want)
		}
		noSecret("popgate route", out+errOut)
	}
	if code, out, errOut := run(t.Context(), "check", "-config", good); code != 0 {
		t.Errorf("check = %d, %q, %q", code, out, errOut)
	}

	for _, tt := range []struct{ config, want string }{
		{config("SELECT backend, email FROM users WHERE email = :user", "dsn = "+strconv.Quote(pg.DSN())), `route.sql: query: returns column "email"`},
		{config("SELECT backend FROM nosuch WHERE email = :user", "dsn = "+strconv.Quote(pg.DSN())), "route.sql: query: the server refuses it"},
		{config("SELECT backend FROM users WHERE email = :user AND :client_ip <> ''", "dsn = "+strconv.Quote(pg.DSN())), "uses :client_ip"},
		{config(query, "dsn = "+strconv.Quote(strings.Replace(pg.DSN(), dirrun.Password, "Wrong-pw-1", 1))), "route.sql"},
	} {
		code, out, errOut := run(t.Context(), "check", "-config", tt.config)
		if code != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("check = %d, %q, stderr %q; want 1 and %q", code, out, errOut, tt.want)
		}
		noSecret("popgate check", out+errOut)
		if strings.Contains(errOut, "Wrong-pw-1") {
			t.Errorf("popgate check shows the DSN's password: %s", errOut)
		}
	}

	// A DSN file others may write is refused.
	if err := os.Chmod(dsnFile, 0o666); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := run(t.Context(), "check", "-config", good); code != 1 || !strings.Contains(errOut, "dsn_file") || !strings.Contains(errOut, "not private") {
		t.Errorf("check with a DSN file anyone may write = %d, %q", code, errOut)
	}
	if err := os.Chmod(dsnFile, 0o600); err != nil {
		t.Fatal(err)
	}

	// The database down: check passes (popgate would start and log an
	// ERROR), route says why it cannot tell.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t.Context(), "check", "-config", good)
	if code != 0 || !strings.Contains(errOut, "cannot be reached") {
		t.Errorf("check with the database down = %d, %q, %q", code, out, errOut)
	}
	noSecret("popgate check", out+errOut)
	code, out, errOut = run(t.Context(), "route", "-config", good, "dave@example.com")
	if code != 1 || !strings.Contains(errOut, "route.sql") {
		t.Errorf("route with the database down = %d, %q, %q", code, out, errOut)
	}
	noSecret("popgate route", out+errOut)
}

// TestReloadSQL: every reload makes route.sql a new pool and closes the
// old one, so the database never sees more of popgate's connections than
// one pool holds; logins keep working through reloads, and one the
// database refuses (a query with an unknown column) keeps the running
// configuration; the password hash verifier, with its bound on concurrent
// checks, is the same throughout.
func TestReloadSQL(t *testing.T) {
	pg := dirrun.PostgresFor(t)
	if err := pg.Exec(`CREATE TABLE users (email text PRIMARY KEY, backend text, password_hash text);
INSERT INTO users VALUES ('` + procUser + `', 'mbox', '{PLAIN}` + procPass + `');`); err != nil {
		t.Fatal(err)
	}
	backend := mailbox(t, messages(1)...)
	const maxConns = 3
	config := func(query, cacheTTL string) string {
		return fmt.Sprintf(`[log]
format = "json"
level = "warn"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "mbox"
address = %q
tls = "none"
[route.sql]
driver = "postgres"
dsn = %q
query = %q
max_connections = %d
cache_ttl = %q
[metrics]
address = "127.0.0.1:0"
`, backend, pg.DSN(), query, maxConns, cacheTTL)
	}
	const query = "SELECT backend, password_hash FROM users WHERE email = :user"
	path := writeConfig(t, config(query, "0s"))
	r, logs := startRunner(t, path)
	login := func() {
		t.Helper()
		c, err := net.Dial("tcp", r.addrOf("plain"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		p := newPOPClient(t, c)
		if stat := p.login(procUser, procPass); !strings.HasPrefix(stat, "+OK 1 ") {
			t.Errorf("STAT = %q", stat)
		}
		p.cmd("QUIT")
	}
	connections := func() int {
		t.Helper()
		out, err := pg.Query("SELECT count(*) FROM pg_stat_activity WHERE usename = 'popgate' AND application_name <> 'psql'")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}
	login()
	hashes := r.current().hashes
	if hashes == nil {
		t.Fatal("no password hash verifier with route.sql")
	}
	for i := range 12 {
		text := config(query, []string{"0s", "60s"}[i%2])
		if i%4 == 3 {
			text = config("SELECT backend, email FROM users WHERE email = :user", "0s")
		}
		writeFile(t, path, []byte(text))
		err := r.reload()
		if (err != nil) != (i%4 == 3) {
			t.Fatalf("reload %d = %v", i, err)
		}
		for range 2 {
			login()
		}
		if r.current().hashes != hashes {
			t.Errorf("reload %d made a new password hash verifier; its bound on concurrent checks must hold across reloads", i)
		}
		if n := connections(); n > maxConns {
			t.Errorf("after reload %d the database sees %d connections from popgate (max_connections %d)", i, n, maxConns)
		}
	}
	if strings.Contains(logs.String(), procPass) || strings.Contains(logs.String(), dirrun.Password) {
		t.Errorf("the log shows a password")
	}
}

// TestSQLDocExamples: the [route.sql] examples of docs/routing.md are valid
// configurations (with a listener, and for the MySQL one a backend,
// added). interop's TestSQLRoutingPostfixadmin and TestSQLDocPlainMySQL
// run their queries, as written, on the real servers.
func TestSQLDocExamples(t *testing.T) {
	data, err := os.ReadFile("../../docs/routing.md")
	if err != nil {
		t.Fatal(err)
	}
	const listen = "[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n\n"
	for _, tt := range []struct {
		marker, extra, driver string
	}{
		{"**Postfixadmin on PostgreSQL.**", "", "postgres"},
		{"**A plain MySQL (or MariaDB) table.**", "[[backend]]\nname = \"mail1\"\naddress = \"10.0.0.11:110\"\ntls = \"none\"\n\n", "mysql"},
	} {
		_, sec, ok := strings.Cut(string(data), "\n"+tt.marker)
		_, block, ok2 := strings.Cut(sec, "```toml\n")
		block, _, ok3 := strings.Cut(block, "```\n")
		if !ok || !ok2 || !ok3 {
			t.Fatalf("docs/routing.md has no TOML example after %q", tt.marker)
		}
		s, err := ParseConfig("routing.md", []byte(listen+tt.extra+block))
		if err != nil {
			t.Errorf("the example after %q: %v\n%s", tt.marker, err, block)
			continue
		}
		if q := s.Route.SQL; q == nil || q.Driver != tt.driver || !strings.Contains(q.Query, ":user") {
			t.Errorf("the example after %q: route.sql = %+v", tt.marker, q)
		}
	}
}
