package interop

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/popgate/popgate/internal/conffile"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
)

// docBlock returns the first ```lang code block of docs/routing.md after
// the line that starts with marker: the examples the tests run as written.
func docBlock(t testing.TB, marker, lang string) string {
	t.Helper()
	data, err := os.ReadFile("../docs/routing.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "\n"+marker)
	if !ok {
		t.Fatalf("docs/routing.md has no line starting with %q", marker)
	}
	_, block, ok := strings.Cut(after, "```"+lang+"\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatalf("docs/routing.md has no ```%s block after %q", lang, marker)
	}
	return block
}

// docSQL returns the driver and query of the [route.sql] example of
// docs/routing.md after marker.
func docSQL(t testing.TB, marker string) (driver, query string) {
	t.Helper()
	var c struct {
		Route struct {
			SQL struct{ Driver, Query string } `toml:"sql"`
		} `toml:"route"`
	}
	block := docBlock(t, marker, "toml")
	if _, err := toml.Decode(block, &c); err != nil {
		t.Fatalf("the example after %q: %v\n%s", marker, err, block)
	}
	if c.Route.SQL.Query == "" {
		t.Fatalf("the example after %q has no route.sql.query:\n%s", marker, block)
	}
	return c.Route.SQL.Driver, c.Route.SQL.Query
}

// postfixadminQuery is the query of docs/routing.md's Postfixadmin
// example, as written there: every active mailbox of an active, non-backup
// domain to the backend "dovecot", with its password hash checked.
func postfixadminQuery(t testing.TB) string {
	driver, query := docSQL(t, "**Postfixadmin on PostgreSQL.**")
	if driver != "postgres" {
		t.Fatalf("docs/routing.md's Postfixadmin example: driver %q, want postgres", driver)
	}
	return query
}

// TestSQLDocPlainMySQL: docs/routing.md's plain MySQL table and query, as
// written there, on MariaDB: a login routed by its row fetches the mail
// byte for byte from Dovecot, an inactive row is refused, and a name that
// differs from the row's in case finds nothing (the table's nopad_bin
// collation).
func TestSQLDocPlainMySQL(t *testing.T) {
	requireInterop(t, "dovecot")
	const marker = "**A plain MySQL (or MariaDB) table.**"
	driver, query := docSQL(t, marker)
	if driver != "mysql" {
		t.Fatalf("docs/routing.md's plain MySQL example: driver %q, want mysql", driver)
	}
	// The table as the example creates it; its CREATE USER and GRANT name
	// a host and a database of the reader's.
	create, _, ok := strings.Cut(docBlock(t, marker, "sql"), ";")
	if !ok || !strings.HasPrefix(create, "CREATE TABLE mailboxes") {
		t.Fatalf("docs/routing.md's plain MySQL example does not start with CREATE TABLE mailboxes: %q", create)
	}
	users := testUsers()
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.Users = users
		o.NoTLSInstance, o.HAProxy = false, false
	})
	msg := testMessage(2<<10, "docs-"+userAlice)
	d.addMessage(t, userAlice, msg)
	db := startSQLDB(t, "mysql")
	t.Logf("%s", db.version)
	if err := db.exec(create + ";\n" +
		"INSERT INTO mailboxes (address, mailhost) VALUES (" + sqlQuote(userAlice) + ", 'dovecot');\n" +
		"INSERT INTO mailboxes (address, mailhost, active) VALUES (" + sqlQuote(userBob) + ", 'dovecot', 0);\n"); err != nil {
		t.Fatal(err)
	}
	pg := startPopgate(t, popgateConfig{
		Backends:        []popgateBackend{{Name: "dovecot", Address: d.TLSAddr, TLS: "implicit", ServerName: d.ServerName, CAFile: d.CAFile}},
		SQL:             &conffile.SQL{Driver: driver, DSN: db.dsn, Query: query, CacheTTL: "0s"},
		NoFailureLimits: true,
	}, append(slices.Collect(maps.Values(users)), dirrun.Password)...)
	login := func(user, pass string) (string, *popConn) {
		c := dialPopgate(t, pg, "pop3s")
		if resp := c.cmd("USER " + user); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("USER %s: %q", user, resp)
		}
		return c.cmd("PASS " + pass), c
	}
	resp, c := login(userAlice, users[userAlice])
	if !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("%s: %q", userAlice, resp)
	}
	compareMessages(t, [][]byte{c.retr(1)}, [][]byte{msg})
	c.cmd("QUIT")
	// bob's row is inactive; ALICE@EXAMPLE.COM is alice's name in
	// another case, which the table's nopad_bin collation tells apart.
	for _, tt := range []struct{ user, pass string }{{userBob, users[userBob]}, {strings.ToUpper(userAlice), users[userAlice]}} {
		resp, c := login(tt.user, tt.pass)
		if !strings.HasPrefix(resp, "-ERR [AUTH]") {
			t.Errorf("%s (inactive, or another spelling): %q", tt.user, resp)
		}
		c.drop()
	}
}
