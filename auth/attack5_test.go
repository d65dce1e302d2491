package auth

// Regression tests from the attack review of the directory sources
// (route.sql, route.ldap), password hashes and their caches.

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// throttleShares reports whether the failed-login limit per user counts
// a and b as one name: one failure for a, from one address, leaves b no
// attempt from another address under max_failures_per_user = 1.
func throttleShares(t *testing.T, a, b string) bool {
	t.Helper()
	th := NewThrottle(ThrottleConfig{MaxPerUser: 1, Window: time.Minute})
	tk, ok, _ := th.Begin(context.Background(), netip.MustParseAddr("192.0.2.1"), a)
	if !ok {
		t.Fatalf("Begin(%q) refused on a fresh throttle", a)
	}
	th.End(tk, AttemptFailed)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	tk, ok, _ = th.Begin(ctx, netip.MustParseAddr("198.51.100.1"), b)
	if ok {
		th.End(tk, AttemptSucceeded)
	}
	return !ok
}

// TestAttack5ThrottleSpellings: the spellings that a directory's matching
// rules find one entry for share one budget of failed logins. OpenLDAP's
// caseIgnoreMatch drops spaces around a value and compares compatibility
// forms ("ｃａｒｏｌ", "car𝐨l"); the route.sql user column compares with
// Unicode case folding, which takes "ſam" for "sam" (as MariaDB's
// collations do). Counted apart, each spelling was a fresh budget of
// guesses at the one password.
func TestAttack5ThrottleSpellings(t *testing.T) {
	for _, s := range []string{
		"carol ", " carol", "  carol   ", "carol\u00a0", "carol\u3000",
		"ｃａｒｏｌ", "ⓒarol", "car𝐨l", "CAROL",
	} {
		if !throttleShares(t, "carol", s) {
			t.Errorf("a failure for %q leaves %q a budget of its own", "carol", s)
		}
	}
	// MariaDB's utf8mb4_general_ci finds sam's row for these (a query
	// without the user column, or a backend that looks names up there
	// behind route.default).
	for _, s := range []string{"sám@example.com", "SÀM@example.com", "sam@exämple.com", "ṡam@example.com", "sa\u0301m@example.com", "s\u200bam@example.com"} {
		if !throttleShares(t, "sam@example.com", s) {
			t.Errorf("a failure for sam leaves %q a budget of its own", s)
		}
	}
	if !throttleShares(t, "sam@example.com", "ſam@example.com") {
		t.Errorf("a failure for sam leaves ſam (which strings.EqualFold takes for it) a budget of its own")
	}
	if throttleShares(t, "carol", "carl") || throttleShares(t, "ca rol", "carol") {
		t.Errorf("different names share a budget")
	}
}

// TestAttack5SQLUserColumnFold: every spelling for which route.sql's user
// column lets the row be used counts against the row's name in the
// throttle.
func TestAttack5SQLUserColumnFold(t *testing.T) {
	s := startSQLServer(t, SQLMySQL)
	if err := s.exec(`DROP TABLE IF EXISTS attack5;
CREATE TABLE attack5 (username varchar(255) PRIMARY KEY, backend varchar(255), password_hash varchar(255)) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO attack5 VALUES ('sam@example.com', 'tls', '{PLAIN}Sam-pw');`); err != nil {
		t.Fatal(err)
	}
	src := openSQL(t, s, "SELECT backend, password_hash, username AS user FROM attack5 WHERE username = :user", nil)
	for _, u := range []string{"sam@example.com", "SAM@example.com", "ſam@example.com", "ſAM@EXAMPLE.COM", "ｓam@example.com"} {
		_, err := src.Decide(context.Background(), sqlReq(u, "Sam-pw"))
		switch {
		case errors.Is(err, ErrNoRoute):
		case err != nil:
			t.Errorf("%q: %v", u, err)
		case !throttleShares(t, "sam@example.com", u):
			t.Errorf("%q logs in to sam's row with a failed-login budget of its own", u)
		}
	}
}

// deadlineHashes records the deadline of the context each check is given.
type deadlineHashes struct {
	mu   *sync.Mutex
	left *[]time.Duration // time left to the deadline at the check; -1: none
}

func (h deadlineHashes) Check(ctx context.Context, hash string, pw Password) error {
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	h.mu.Lock()
	*h.left = append(*h.left, left)
	h.mu.Unlock()
	return plainHashes{}.Check(ctx, hash, pw)
}

// TestAttack5SQLHashWaitBounded: route.sql's password hash check, which may
// wait for a turn (passhash's bound on concurrent checks) while argon2 or
// bcrypt checks flood the verifier, is bounded by route.sql.timeout as
// route.ldap's is. It was given the login's own context: a login waited
// until login_timeout (and the verdict grace past it) and the client was
// closed on without the [SYS/TEMP] a timed-out lookup gets.
func TestAttack5SQLHashWaitBounded(t *testing.T) {
	s := startSQLServer(t, SQLPostgres)
	var mu sync.Mutex
	var left []time.Duration
	const timeout = 2 * time.Second
	src := openSQL(t, s, usersQuery, func(c *SQLConfig) {
		c.Timeout = timeout
		c.Directory.Hashes = deadlineHashes{&mu, &left}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a login's deadline, far off
	defer cancel()
	if _, err := src.Decide(ctx, sqlReq("carol@example.net", "Carol-pw")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(left) != 1 || left[0] < 0 || left[0] > timeout {
		t.Errorf("the hash check's context had %v left (-1: no deadline); want at most route.sql.timeout (%v)", left, timeout)
	}
}

// TestAttack5SQLNameOutsideCharset: a MariaDB table in utf8mb3 (the
// charset older Postfixadmin schemas were made in) or latin1 cannot hold
// a name with a character outside it (an emoji, "Ā" in latin1), and MariaDB
// refuses the comparison ("Illegal mix of collations"). That was a lookup
// error: the client got [SYS/TEMP] and the attempt counted in no
// failed-login limit, so a client could send such names without end, each
// a query, a WARN line and a lookup_error; no row holds such a name: it is
// an unknown name, refused and counted as one.
func TestAttack5SQLNameOutsideCharset(t *testing.T) {
	s := startSQLServer(t, SQLMySQL)
	if err := s.exec(`DROP TABLE IF EXISTS attack5mb3; DROP TABLE IF EXISTS attack5latin1;
CREATE TABLE attack5mb3 (username varchar(255) PRIMARY KEY, backend varchar(255)) DEFAULT CHARSET=utf8mb3;
CREATE TABLE attack5latin1 (username varchar(255) PRIMARY KEY, backend varchar(255)) DEFAULT CHARSET=latin1;
INSERT INTO attack5mb3 VALUES ('sam@example.com', 'tls');
INSERT INTO attack5latin1 VALUES ('sam@example.com', 'tls');`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ table, user string }{
		{"attack5mb3", "s\U0001F600m@example.com"},
		{"attack5latin1", "s\U0001F600m@example.com"},
		{"attack5latin1", "s\u0100m@example.com"},
	} {
		src := openSQL(t, s, "SELECT backend FROM "+tc.table+" WHERE username = :user", nil)
		if _, err := src.Decide(context.Background(), sqlReq(tc.user, "pw")); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%s, %q: %v; want ErrNoRoute", tc.table, tc.user, err)
		}
		if d, err := src.Decide(context.Background(), sqlReq("sam@example.com", "pw")); err != nil || d.Backend != "tls" {
			t.Errorf("%s, sam: %+v, %v", tc.table, d, err)
		}
	}
}

// TestAttack5PostgresNameOutsideEncoding: the same for a PostgreSQL
// database in LATIN1: a name with a character the encoding lacks finds no
// row (this held: PostgreSQL compares without an error).
func TestAttack5PostgresNameOutsideEncoding(t *testing.T) {
	s := startSQLServer(t, SQLPostgres)
	s.exec("DROP DATABASE IF EXISTS attack5latin1")
	if err := s.exec("CREATE DATABASE attack5latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"); err != nil {
		t.Fatal(err)
	}
	dsn := strings.Replace(s.dsn, "/popgate?", "/attack5latin1?", 1)
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	var enc string
	if err := conn.QueryRow(context.Background(), "SHOW server_encoding").Scan(&enc); err != nil || enc != "LATIN1" {
		t.Fatalf("server_encoding %q, %v", enc, err)
	}
	_, err = conn.Exec(context.Background(), `CREATE TABLE users (username text PRIMARY KEY, backend text);
INSERT INTO users VALUES ('sam@example.com', 'tls')`)
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	src := openSQL(t, &sqlServer{driver: SQLPostgres, dsn: dsn}, "SELECT backend FROM users WHERE username = :user", nil)
	for _, u := range []string{"s\U0001F600m@example.com", "s\u0100m@example.com"} {
		if _, err := src.Decide(context.Background(), sqlReq(u, "pw")); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%q: %v; want ErrNoRoute", u, err)
		}
	}
	if d, err := src.Decide(context.Background(), sqlReq("sam@example.com", "pw")); err != nil || d.Backend != "tls" {
		t.Errorf("sam: %+v, %v", d, err)
	}
}

// TestAttack5CheckedRefusals: a refusal by the password_hash check says it
// checked the password (the proxy counts its time into the floor every
// refusal waits for); a disabled account's and a cached refusal do not,
// being fast.
func TestAttack5CheckedRefusals(t *testing.T) {
	d := &Directory{Source: "route.sql", Hashes: plainHashes{}}
	req := &Request{Credentials: Credentials{User: "carol", Password: "wrong", Method: "USER"}}
	var de *DeniedError
	_, err := d.Decide(context.Background(), req, &Entry{Where: "row", Backend: "b", PasswordHash: "{PLAIN}right"})
	if !errors.As(err, &de) || !de.Checked {
		t.Errorf("hash mismatch: %#v, want a checked refusal", err)
	}
	_, err = d.Decide(context.Background(), req, &Entry{Where: "row", Backend: "b", PasswordHash: "{PLAIN}right", Disabled: true})
	if !errors.As(err, &de) || de.Checked {
		t.Errorf("disabled: %#v, want a refusal that checked nothing", err)
	}
	c := NewCache(RouterFunc(func(ctx context.Context, r *Request) (Decision, error) {
		return d.Decide(ctx, r, &Entry{Where: "row", Backend: "b", PasswordHash: "{PLAIN}right"})
	}), 10, time.Minute, time.Minute, nil)
	if _, err := c.Route(context.Background(), req); !errors.As(err, &de) || !de.Checked {
		t.Errorf("first, uncached: %#v, want a checked refusal", err)
	}
	if _, err := c.Route(context.Background(), req); !errors.As(err, &de) || de.Checked || c.Hits() != 1 {
		t.Errorf("cached: %#v (hits %d), want a refusal that checked nothing", err, c.Hits())
	}
}

// TestAttack5EmptyPasswordNeverMatches: a directory whose password_hash
// column is made of an empty password ("{PLAIN}" || password, for an
// account whose empty password means "no login", as Dovecot reads an
// empty password) handed the master credentials to any client that sent
// an empty password (SASL PLAIN allows one through; RFC 4616 does not).
// An empty password matches no hash.
func TestAttack5EmptyPasswordNeverMatches(t *testing.T) {
	d := &Directory{Source: "route.sql", Hashes: plainHashes{}}
	req := &Request{Credentials: Credentials{User: "carol", Password: "", Method: "PLAIN"}}
	dec, err := d.Decide(context.Background(), req, &Entry{Where: "row", Backend: "b", Login: "carol*master", Password: "Master-pw", PasswordHash: "{PLAIN}"})
	var de *DeniedError
	if !errors.As(err, &de) {
		t.Errorf("empty password against {PLAIN}: %+v, %v; want a refusal", dec, err)
	}
}

// TestAttack5SQLIgnoresDomain: a query on :local alone, without the user
// column, finds one row for every domain; the throttle is told so.
func TestAttack5SQLIgnoresDomain(t *testing.T) {
	s := startSQLServer(t, SQLPostgres)
	for _, tc := range []struct {
		query string
		blind bool
	}{
		{"SELECT backend FROM users WHERE split_part(username, '@', 1) = :local", true},
		{"SELECT backend, username AS user FROM users WHERE split_part(username, '@', 1) = :local", false},
		{"SELECT backend FROM users WHERE username = :local || '@' || :domain", false},
		{usersQuery, false},
	} {
		src := openSQL(t, s, tc.query, nil)
		if got := src.IgnoresDomain(); got != tc.blind {
			t.Errorf("%s: IgnoresDomain() = %v", tc.query, got)
		}
		c := &Chain{Sources: []Source{NewCache(src, 10, time.Minute, time.Minute, nil)}}
		if got := c.IgnoresDomain(); got != tc.blind {
			t.Errorf("%s: through a cache and a chain, IgnoresDomain() = %v", tc.query, got)
		}
	}
}
