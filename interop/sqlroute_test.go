package interop

import (
	"cmp"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/conffile"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
)

// sqlDB is a private database server of internal/dirrun for one test.
type sqlDB struct {
	driver, dsn, version string
	exec                 func(string) error
	query                func(string) (string, error)
	stop, start          func() error
}

// startSQLDB starts PostgreSQL or MariaDB for t and removes it when t
// ends; a server that is not installed fails t (scripts/test installs
// both).
func startSQLDB(t testing.TB, driver string) *sqlDB {
	t.Helper()
	switch driver {
	case "postgres":
		p := dirrun.PostgresFor(t)
		return &sqlDB{driver, p.DSN(), "PostgreSQL " + p.Version, p.Exec, p.Query, p.Stop, p.Start}
	case "mysql":
		m := dirrun.MariaDBFor(t)
		return &sqlDB{driver, m.DSN(), m.Version, m.Exec, m.Query, m.Stop, m.Start}
	}
	t.Fatalf("no driver %q", driver)
	return nil
}

// postfixadminSchema returns Postfixadmin's domain and mailbox tables as
// its upgrade.php creates them (3.3), for driver.
func postfixadminSchema(driver string) string {
	if driver == "postgres" {
		return `
CREATE TABLE domain (
  domain character varying(255) NOT NULL PRIMARY KEY,
  description character varying(255) NOT NULL DEFAULT '',
  aliases integer NOT NULL DEFAULT 0,
  mailboxes integer NOT NULL DEFAULT 0,
  maxquota bigint NOT NULL DEFAULT 0,
  quota bigint NOT NULL DEFAULT 0,
  transport character varying(255) DEFAULT NULL,
  backupmx boolean NOT NULL DEFAULT false,
  created timestamp with time zone DEFAULT now(),
  modified timestamp with time zone DEFAULT now(),
  active boolean NOT NULL DEFAULT true
);
CREATE TABLE mailbox (
  username character varying(255) NOT NULL PRIMARY KEY,
  password character varying(255) NOT NULL DEFAULT '',
  name character varying(255) NOT NULL DEFAULT '',
  maildir character varying(255) NOT NULL DEFAULT '',
  quota bigint NOT NULL DEFAULT 0,
  local_part character varying(255) NOT NULL,
  domain character varying(255) REFERENCES domain,
  created timestamp with time zone DEFAULT now(),
  modified timestamp with time zone DEFAULT now(),
  active boolean NOT NULL DEFAULT true,
  phone character varying(30) NOT NULL DEFAULT '',
  email_other character varying(255) NOT NULL DEFAULT '',
  token character varying(255) NOT NULL DEFAULT '',
  token_validity timestamp with time zone DEFAULT '2000-01-01 00:00:00+00',
  password_expiry timestamp with time zone DEFAULT '2000-01-01 00:00:00+00'
);
CREATE INDEX mailbox_username_active ON mailbox(username, active);
CREATE INDEX mailbox_domain_idx ON mailbox(domain);
`
	}
	return "CREATE TABLE `domain` (\n" +
		"  `domain` varchar(255) NOT NULL,\n" +
		"  `description` varchar(255) CHARACTER SET utf8 NOT NULL DEFAULT '',\n" +
		"  `aliases` int(10) NOT NULL default '0',\n" +
		"  `mailboxes` int(10) NOT NULL default '0',\n" +
		"  `maxquota` bigint(20) NOT NULL default '0',\n" +
		"  `quota` bigint(20) NOT NULL default '0',\n" +
		"  `transport` varchar(255) NOT NULL DEFAULT '',\n" +
		"  `backupmx` tinyint(1) NOT NULL default '0',\n" +
		"  `created` datetime NOT NULL default '2000-01-01 00:00:00',\n" +
		"  `modified` datetime NOT NULL default '2000-01-01 00:00:00',\n" +
		"  `active` tinyint(1) NOT NULL default '1',\n" +
		"  PRIMARY KEY (`domain`)\n" +
		") ENGINE=InnoDB DEFAULT CHARSET=latin1 COMMENT='Postfix Admin - Virtual Domains';\n" +
		"CREATE TABLE `mailbox` (\n" +
		"  `username` varchar(255) NOT NULL,\n" +
		"  `password` varchar(255) NOT NULL,\n" +
		"  `name` varchar(255) CHARACTER SET utf8 NOT NULL DEFAULT '',\n" +
		"  `maildir` varchar(255) NOT NULL DEFAULT '',\n" +
		"  `quota` bigint(20) NOT NULL default '0',\n" +
		"  `local_part` varchar(255) NOT NULL,\n" +
		"  `domain` varchar(255) NOT NULL,\n" +
		"  `created` datetime NOT NULL default '2000-01-01 00:00:00',\n" +
		"  `modified` datetime NOT NULL default '2000-01-01 00:00:00',\n" +
		"  `active` tinyint(1) NOT NULL default '1',\n" +
		"  `phone` varchar(30) CHARACTER SET utf8 NOT NULL DEFAULT '',\n" +
		"  `email_other` varchar(255) CHARACTER SET utf8 NOT NULL DEFAULT '',\n" +
		"  `token` varchar(255) CHARACTER SET utf8 NOT NULL DEFAULT '',\n" +
		"  `token_validity` datetime NOT NULL DEFAULT '2000-01-01 00:00:00',\n" +
		"  `password_expiry` datetime NOT NULL default '2000-01-01 00:00:00',\n" +
		"  PRIMARY KEY (`username`),\n" +
		"  KEY domain (`domain`)\n" +
		") ENGINE=InnoDB DEFAULT CHARSET=latin1 COMMENT='Postfix Admin - Virtual Mailboxes';\n"
}

// plainSchema is a table of one's own: a backend by name, or a host and
// port, a master-user rewrite and an enabled flag.
func plainSchema(driver string) string {
	text, flag := "text", "boolean NOT NULL DEFAULT true"
	if driver == "mysql" {
		text, flag = "varchar(255)", "tinyint(1) NOT NULL DEFAULT 1"
	}
	return fmt.Sprintf(`CREATE TABLE users (
  email %[1]s NOT NULL PRIMARY KEY,
  backend %[1]s, host %[1]s, port integer,
  master_login %[1]s, master_password %[1]s, password_hash %[1]s,
  enabled %[2]s
);`, text, flag)
}

const plainQuery = `SELECT backend, host, port, master_login AS login, master_password AS password, password_hash, enabled
FROM users WHERE email = :user`

// sqlQuote quotes s as an SQL string literal, for the tests' own INSERTs.
func sqlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// doveadmHash returns password hashed with scheme as Dovecot writes it.
func doveadmHash(t testing.TB, scheme, password string) string {
	t.Helper()
	bin, err := lookBinary("doveadm")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-c", "/dev/null", "pw", "-s", scheme, "-p", password).Output()
	if err != nil {
		t.Fatalf("doveadm pw -s %s: %v", scheme, err)
	}
	return strings.TrimSpace(string(out))
}

// sqlUsers of the Postfixadmin test: one mailbox per password scheme popgate
// checks, besides the shared test users.
var sqlSchemes = []string{"BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "ARGON2ID", "SSHA512", "SSHA256", "PLAIN"}

func schemeUser(scheme string) string { return "s-" + strings.ToLower(scheme) + "@example.com" }

// TestSQLRoutingPostfixadmin: with Postfixadmin's tables on PostgreSQL and
// on MariaDB, popgate routes logins to a real Dovecot and checks each
// mailbox's password hash itself, one mailbox per scheme Dovecot writes:
// the right password fetches the mail byte for byte, a wrong one is
// refused without a connection to Dovecot; an inactive mailbox or domain,
// a backup MX domain and an unknown name are refused.
func TestSQLRoutingPostfixadmin(t *testing.T) {
	requireInterop(t, "dovecot", "doveadm")
	for _, driver := range []string{"postgres", "mysql"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			testSQLRoutingPostfixadmin(t, driver)
		})
	}
}

func testSQLRoutingPostfixadmin(t *testing.T, driver string) {
	users := testUsers() // alice@example.com, bob@example.org, carol@example.net
	users["off@example.com"] = "Off-pw-1Qa8z"
	users["backup@backup.example"] = "Backup-pw-2Ws7x"
	for _, s := range sqlSchemes {
		users[schemeUser(s)] = "Scheme-" + strings.ToLower(s) + "-pw"
	}
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.Users = users
		o.NoTLSInstance, o.HAProxy = false, false
	})
	msgs := map[string][]byte{}
	for u := range users {
		msgs[u] = testMessage(3<<10, "sql-"+u)
		d.addMessage(t, u, msgs[u])
	}
	db := startSQLDB(t, driver)
	t.Logf("%s", db.version)
	var b strings.Builder
	b.WriteString(postfixadminSchema(driver))
	yes, no := "true", "false"
	if driver == "mysql" {
		yes, no = "1", "0"
	}
	for _, dom := range []struct {
		name           string
		active, backup string
	}{{"example.com", yes, no}, {"example.org", yes, no}, {"example.net", no, no}, {"backup.example", yes, yes}} {
		fmt.Fprintf(&b, "INSERT INTO domain (domain, transport, active, backupmx) VALUES (%s, 'virtual', %s, %s);\n", sqlQuote(dom.name), dom.active, dom.backup)
	}
	mailbox := func(user, hash, active string) {
		local, dom, _ := strings.Cut(user, "@")
		fmt.Fprintf(&b, "INSERT INTO mailbox (username, password, name, maildir, local_part, domain, active) VALUES (%s, %s, '', %s, %s, %s, %s);\n",
			sqlQuote(user), sqlQuote(hash), sqlQuote(dom+"/"+local+"/"), sqlQuote(local), sqlQuote(dom), active)
	}
	hash := func(u string) string { return doveadmHash(t, "SHA512-CRYPT", users[u]) } // Postfixadmin's dovecot:SHA512-CRYPT
	mailbox(userAlice, hash(userAlice), yes)
	mailbox(userBob, hash(userBob), yes)
	mailbox(userCarol, hash(userCarol), yes) // in the inactive domain example.net
	mailbox("off@example.com", hash("off@example.com"), no)
	mailbox("backup@backup.example", hash("backup@backup.example"), yes) // a backup MX domain
	for _, s := range sqlSchemes {
		u := schemeUser(s)
		mailbox(u, doveadmHash(t, s, users[u]), yes)
	}
	if err := db.exec(b.String()); err != nil {
		t.Fatal(err)
	}

	// The query of docs/routing.md, as written there, sends every login
	// to backend "dovecot": here Dovecot over implicit TLS.
	backends := append(dovecotBackends(d), conffile.Backend{Name: "dovecot", Address: d.TLSAddr, TLS: "implicit",
		ServerName: d.ServerName, CAFile: d.CAFile})
	pg := startPopgate(t, popgateConfig{
		Backends:        backends,
		SQL:             &conffile.SQL{Driver: driver, DSN: db.dsn, Query: postfixadminQuery(t)},
		NoFailureLimits: true,
	}, append(slices.Collect(maps.Values(users)), dirrun.Password)...)

	login := func(user, pass string) (string, *popConn) {
		c := dialPopgate(t, pg, "pop3s")
		if resp := c.cmd("USER " + user); !strings.HasPrefix(resp, "+OK") {
			t.Fatalf("USER %s: %q", user, resp)
		}
		return c.cmd("PASS " + pass), c
	}
	mentions := func(user string) bool { return strings.Contains(d.mainLog(t), "<"+user+">") }

	// Wrong passwords first: popgate refuses them against the hash, and
	// Dovecot never hears of the user.
	accounts := append([]string{userAlice, userBob}, func() []string {
		var us []string
		for _, s := range sqlSchemes {
			us = append(us, schemeUser(s))
		}
		return us
	}()...)
	for _, u := range accounts {
		resp, c := login(u, users[u]+"-wrong")
		if !strings.HasPrefix(resp, "-ERR [AUTH]") {
			t.Errorf("%s, wrong password: %q", u, resp)
		}
		c.drop()
	}
	for _, u := range []string{userCarol, "off@example.com", "backup@backup.example", "nobody@example.com"} {
		resp, c := login(u, cmp.Or(users[u], "Nobody-pw"))
		if !strings.HasPrefix(resp, "-ERR [AUTH]") {
			t.Errorf("%s (inactive, backup MX or unknown): %q", u, resp)
		}
		c.drop()
	}
	for _, u := range append(accounts, userCarol, "off@example.com", "backup@backup.example") {
		if mentions(u) {
			t.Errorf("Dovecot heard of %s, whose logins popgate refused", u)
		}
	}
	// The right passwords: each scheme verified, the mail fetched as it
	// is in the Maildir.
	for _, u := range accounts {
		resp, c := login(u, users[u])
		if !strings.HasPrefix(resp, "+OK") {
			t.Errorf("%s: %q", u, resp)
			continue
		}
		compareMessages(t, [][]byte{c.retr(1)}, [][]byte{msgs[u]})
		c.cmd("QUIT")
	}
	logs := pg.log()
	if !strings.Contains(logs, `"user":"`+userAlice+`","backend":"dovecot"`) {
		t.Errorf("popgate's log lacks alice's route")
	}
	m := pg.scrape(t)
	if n := m[`popgate_directory_lookups_total{result="found",source="route.sql"}`]; n < float64(len(accounts)) {
		t.Errorf("popgate_directory_lookups_total{found} = %v, want at least %d", n, len(accounts))
	}
	if n := m[`popgate_lookup_cache_hits_total{source="route.sql"}`] + m[`popgate_lookup_cache_misses_total{source="route.sql"}`]; n == 0 {
		t.Errorf("route.sql's lookup cache counted nothing")
	}
}

// TestSQLRoutingPlainTable: with a users table of one's own on PostgreSQL
// and on MariaDB: a backend by name and a host and port route to Dovecot;
// a master-user rewrite opens the mailbox with the row's master login,
// and never with a SASL authorization identity of the client's; a
// disabled account is refused; user names made to inject SQL match
// nothing and break nothing; a database that stops gives [SYS/TEMP]
// within route.sql.timeout, and logins work again once it is back,
// without a restart of popgate and without a connection left over.
func TestSQLRoutingPlainTable(t *testing.T) {
	requireInterop(t, "dovecot")
	for _, driver := range []string{"postgres", "mysql"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			testSQLRoutingPlainTable(t, driver)
		})
	}
}

func testSQLRoutingPlainTable(t *testing.T, driver string) {
	const (
		dave        = "dave@example.com" // a master-user rewrite
		daveClient  = "Dave-client-pw-4Kf"
		erin        = "erin@example.com" // disabled
		master      = "popgate-master"
		masterPass  = "Master-pw-8Rv2p"
		maxConns    = 4
		queryTimout = time.Second
	)
	users := testUsers()
	users[dave] = "Dave-dovecot-pw-7Lp" // not the client's: only the master login opens it
	users[erin] = "Erin-pw-3Vc5n"
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.Users = users
		o.MasterUsers = map[string]string{master: masterPass}
		o.NoTLSInstance, o.HAProxy = false, false
	})
	msgs := map[string][]byte{}
	for u := range users {
		msgs[u] = testMessage(4<<10, "plain-"+u)
		d.addMessage(t, u, msgs[u])
	}
	db := startSQLDB(t, driver)
	t.Logf("%s", db.version)
	_, dport := splitHostPort(t, d.PlainAddr)
	no := "false"
	if driver == "mysql" {
		no = "0"
	}
	if err := db.exec(plainSchema(driver) + `
INSERT INTO users (email, backend) VALUES (` + sqlQuote(userAlice) + `, 'tls');
INSERT INTO users (email, host, port) VALUES (` + sqlQuote(userBob) + `, '127.0.0.1', ` + strconv.Itoa(dport) + `);
INSERT INTO users (email, backend, master_login, master_password, password_hash) VALUES (` +
		sqlQuote(dave) + `, 'tls', ` + sqlQuote(dave+"*"+master) + `, ` + sqlQuote(masterPass) + `, ` + sqlQuote("{PLAIN}"+daveClient) + `);
INSERT INTO users (email, backend, enabled) VALUES (` + sqlQuote(erin) + `, 'tls', ` + no + `);
`); err != nil {
		t.Fatal(err)
	}
	pg := startPopgate(t, popgateConfig{
		Backends: dovecotBackends(d),
		SQL: &conffile.SQL{Driver: driver, DSN: db.dsn, Query: plainQuery, Backend: "stls",
			Timeout: queryTimout.String(), CacheTTL: "0s", MaxConnections: maxConns},
		NoFailureLimits: true,
	}, append(slices.Collect(maps.Values(users)), daveClient, masterPass, dirrun.Password)...)

	pass := func(user, password string) (string, *popConn) {
		c := dialPopgate(t, pg, "pop3s")
		if resp := c.cmd("USER " + user); !strings.HasPrefix(resp, "+OK") {
			return resp, c
		}
		return c.cmd("PASS " + password), c
	}
	fetch := func(user, password string) {
		t.Helper()
		resp, c := pass(user, password)
		if !strings.HasPrefix(resp, "+OK") {
			t.Errorf("%s: %q", user, resp)
			return
		}
		compareMessages(t, [][]byte{c.retr(1)}, [][]byte{msgs[user]})
		c.cmd("QUIT")
	}
	fetch(userAlice, users[userAlice]) // backend by name
	fetch(userBob, users[userBob])     // host and port, with route.sql.backend's STLS settings
	fetch(dave, daveClient)            // dave*popgate-master with the master's password
	for _, tt := range []struct{ user, pass, why string }{
		{dave, users[dave], "Dovecot's own password, not the row's hash"},
		{erin, users[erin], "disabled"},
		{userCarol, users[userCarol], "no row"},
	} {
		if resp, c := pass(tt.user, tt.pass); !strings.HasPrefix(resp, "-ERR [AUTH]") {
			t.Errorf("%s (%s): %q", tt.user, tt.why, resp)
		} else {
			c.drop()
		}
	}
	// A client asking, with dave's credentials, to act as alice: the row
	// rewrote the login to the master's, so the identity is refused, never
	// relayed (it would open alice's mailbox).
	c := dialPopgate(t, pg, "pop3s")
	if resp := c.cmd("AUTH PLAIN " + saslPlain(userAlice, dave, daveClient)); !strings.HasPrefix(resp, "-ERR [AUTH]") {
		t.Errorf("dave acting as alice: %q", resp)
	}
	c.drop()

	// Injection attempts as user names: no row, nothing broken.
	for _, name := range []string{
		"' OR 1=1 --", "' OR '1'='1", `"; DROP TABLE users; --`, "'; DROP TABLE users; --", `\2a`, `*)(uid=*`,
		`\' OR 1=1 #`, userAlice + "' --", ":user", "x:user", "$1", "?", "%", strings.Repeat("A", 2048),
		"' UNION SELECT 'tls', NULL, NULL, NULL, NULL, NULL, NULL --",
	} {
		// Refused like a wrong password (a 2 KB name already at USER);
		// a [SYS/TEMP] would mean the database choked on it.
		resp, c := pass(name, "pw")
		if !strings.HasPrefix(resp, "-ERR") || strings.Contains(resp, "SYS/TEMP") {
			t.Errorf("user %.40q: %q", name, resp)
		}
		c.drop()
	}
	// A NUL cannot be sent in USER; AUTH PLAIN carries one inside a field
	// only as its separator, so a name with an extra one is malformed.
	c = dialPopgate(t, pg, "pop3s")
	if resp := c.cmd("AUTH PLAIN " + saslPlain("", userAlice+"\x00x", users[userAlice])); !strings.HasPrefix(resp, "-ERR") {
		t.Errorf("NUL in the name: %q", resp)
	}
	c.drop()
	if out, err := db.query("SELECT count(*) FROM users"); err != nil || strings.TrimSpace(out) != "4" {
		t.Fatalf("the users table after the injection attempts: %q, %v", out, err)
	}

	// The database stops: [SYS/TEMP] within the timeout, never a login.
	settled := func() map[string]float64 {
		t.Helper()
		var m map[string]float64
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			m = pg.scrape(t)
			if m["popgate_connections_active{listener=\"pop3s\"}"] == 0 && m[`popgate_directory_connections{source="route.sql",state="in_use"}`] == 0 {
				break
			}
		}
		return m
	}
	before := settled()
	if err := db.stop(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			db.start()
		}
	}()
	for range 3 {
		start := time.Now()
		resp, c := pass(userAlice, users[userAlice])
		if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
			t.Errorf("database stopped: %q, want -ERR [SYS/TEMP]", resp)
		}
		// Bounded by route.sql.timeout, not the login timeout (60s);
		// the margin is for a loaded machine.
		if took := time.Since(start); took > queryTimout+4*time.Second {
			t.Errorf("database stopped: the answer took %v (route.sql.timeout %v)", took, queryTimout)
		}
		c.drop()
	}
	if err := db.start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// Back: the very next logins work, with the same popgate.
	fetch(userAlice, users[userAlice])
	fetch(dave, daveClient)

	after := settled()
	if !strings.Contains(pg.log(), `"login_user":"`+dave+"*"+master+`"`) {
		t.Errorf("popgate's log does not show dave's master login")
	}
	if got := after[`popgate_logins_total{result="lookup_error"}`] - before[`popgate_logins_total{result="lookup_error"}`]; got != 3 {
		t.Errorf("popgate_logins_total{lookup_error} grew by %v during the outage, want 3", got)
	}
	if got := after[`popgate_directory_lookups_total{result="error",source="route.sql"}`] - before[`popgate_directory_lookups_total{result="error",source="route.sql"}`]; got != 3 {
		t.Errorf("popgate_directory_lookups_total{error} grew by %v, want 3", got)
	}
	if n := after[`popgate_directory_connections{source="route.sql",state="idle"}`]; n > maxConns || after[`popgate_directory_connections{source="route.sql",state="in_use"}`] != 0 {
		t.Errorf("pool after the outage: %v idle (max %d), %v in use", n, maxConns, after[`popgate_directory_connections{source="route.sql",state="in_use"}`])
	}
	// No goroutine left by the outage: as many as before it, give or
	// take the runtime's own. Goroutines of ended sessions and of the
	// pool's closed connections may take a moment to return on a loaded
	// machine, so the count is read again until it settles.
	g0, g1 := before["go_goroutines"], after["go_goroutines"]
	for deadline := time.Now().Add(10 * time.Second); g1 > g0+3 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		g1 = pg.scrape(t)["go_goroutines"]
	}
	if g1 > g0+3 {
		t.Errorf("go_goroutines %v after the outage, %v before", g1, g0)
	}
	// The server's view: no more connections from popgate than the pool
	// may hold.
	count := "SELECT count(*) FROM pg_stat_activity WHERE usename = 'popgate' AND application_name <> 'psql'"
	if driver == "mysql" {
		count = "SELECT count(*) FROM information_schema.processlist WHERE user = 'popgate'"
	}
	if out, err := db.query(count); err != nil {
		t.Error(err)
	} else if n, _ := strconv.Atoi(strings.TrimSpace(out)); n > maxConns {
		t.Errorf("the database sees %d connections from popgate, more than max_connections %d", n, maxConns)
	}
}
