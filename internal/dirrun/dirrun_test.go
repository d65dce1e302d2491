package dirrun

import (
	"strconv"
	"strings"
	"testing"
)

func TestPostgres(t *testing.T) {
	if !PostgresAvailable() {
		t.Fatal("PostgreSQL is not installed (apt-get install postgresql)")
	}
	p, err := StartPostgres()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Exec("CREATE TABLE t (name text); INSERT INTO t VALUES ('alice'), ('bob')"); err != nil {
		t.Fatal(err)
	}
	out, err := p.Query("SELECT name FROM t ORDER BY name")
	if err != nil || strings.TrimSpace(out) != "alice\nbob" {
		t.Fatalf("Query = %q, %v", out, err)
	}
	pid := p.PID()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Query("SELECT 1"); err == nil {
		t.Fatal("query after Stop succeeded")
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.PID() == pid || p.PID() == 0 {
		t.Errorf("PID after restart = %d (was %d)", p.PID(), pid)
	}
	out, err = p.Query("SELECT count(*) FROM t")
	if err != nil || strings.TrimSpace(out) != "2" {
		t.Fatalf("after restart: Query = %q, %v", out, err)
	}
}

func TestMariaDB(t *testing.T) {
	if !MariaDBAvailable() {
		t.Fatal("MariaDB is not installed (apt-get install mariadb-server)")
	}
	m, err := StartMariaDB()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.Contains(m.Version, "MariaDB") {
		t.Errorf("Version = %q", m.Version)
	}
	if err := m.Exec("CREATE TABLE t (name varchar(64)); INSERT INTO t VALUES ('alice'), ('bob')"); err != nil {
		t.Fatal(err)
	}
	out, err := m.Query("SELECT name FROM t ORDER BY name")
	if err != nil || strings.TrimSpace(out) != "alice\nbob" {
		t.Fatalf("Query = %q, %v", out, err)
	}
	// The popgate user over TCP, as the driver connects (DSN).
	out, err = run(nil, nil, "SELECT count(*) FROM t", m.client, "--no-defaults", "-h", "127.0.0.1",
		"-P", strconv.Itoa(m.Port), "-u", "popgate", "-p"+Password, "--batch", "--skip-column-names", "popgate")
	if err != nil || strings.TrimSpace(out) != "2" {
		t.Fatalf("as popgate over TCP: %q, %v", out, err)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Query("SELECT 1"); err == nil {
		t.Fatal("query after Stop succeeded")
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	out, err = m.Query("SELECT count(*) FROM t")
	if err != nil || strings.TrimSpace(out) != "2" {
		t.Fatalf("after restart: Query = %q, %v", out, err)
	}
}

func TestSlapd(t *testing.T) {
	if !SlapdAvailable() {
		t.Fatal("OpenLDAP is not installed (apt-get install slapd ldap-utils)")
	}
	s, err := StartSlapd()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Add(`dn: uid=alice,` + PeopleDN + `
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice
sn: Example
mail: alice@example.com
mailHost: 127.0.0.1
userPassword: never-shown
`); err != nil {
		t.Fatal(err)
	}
	out, err := s.Search(PeopleDN, "(mail=alice@example.com)", "mailHost", "userPassword")
	if err != nil || !strings.Contains(out, "mailHost: 127.0.0.1") {
		t.Fatalf("Search = %q, %v", out, err)
	}
	if strings.Contains(out, "userPassword") {
		t.Errorf("the service account reads userPassword:\n%s", out)
	}
	out, err = run(nil, nil, "", s.ldapsrch, "-x", "-LLL", "-H", s.URL(), "-D", HashBindDN, "-w", Password,
		"-b", PeopleDN, "(mail=alice@example.com)", "userPassword")
	if err != nil || !strings.Contains(out, "userPassword:: bmV2ZXItc2hvd24=") { // base64 of never-shown
		t.Errorf("the hash reading account: %q, %v", out, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Search(PeopleDN, "(uid=alice)"); err == nil {
		t.Fatal("search after Stop succeeded")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Search(PeopleDN, "(uid=alice)", "uid"); err != nil || !strings.Contains(out, "uid: alice") {
		t.Fatalf("after restart: Search = %q, %v", out, err)
	}
	if s.Version == "" {
		t.Error("Version is empty")
	}
	// ldaps:// and StartTLS with the CA.
	for _, args := range [][]string{{"-H", s.TLSURL()}, {"-H", s.URL(), "-ZZ"}} {
		cmd := append([]string{"ldapsearch", "-x", "-LLL", "-D", BindDN, "-w", Password, "-b", PeopleDN, "(uid=alice)", "uid"}, args...)
		out, err := run(nil, []string{"LDAPTLS_CACERT=" + s.CAFile, "LDAPTLS_REQCERT=demand"}, "", cmd...)
		if err != nil || !strings.Contains(out, "uid: alice") {
			t.Errorf("%q: %q, %v", cmd, out, err)
		}
	}
	t.Logf("slapd %s", s.Version)
}

func TestRedis(t *testing.T) {
	if !RedisAvailable() {
		t.Fatal("Redis is not installed (apt-get install redis-server)")
	}
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Do("GET", "k"); err != nil || strings.TrimSpace(out) != "v" {
		t.Fatalf("GET = %q, %v", out, err)
	}
	// The default user is off: no command without the password.
	if out, err := run(nil, nil, "", r.cli, "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port), "GET", "k"); err == nil && !strings.Contains(out, "NOAUTH") {
		t.Errorf("GET without a password: %q, %v", out, err)
	}
	if _, err := r.Do("FLUSHALL"); err == nil {
		t.Error("FLUSHALL (@dangerous) allowed")
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Do("PING"); err == nil {
		t.Fatal("PING after Stop succeeded")
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Do("GET", "k"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("after restart: GET = %q, %v; want empty (nothing saved)", out, err)
	}
	t.Logf("redis %s", r.Version)
}
