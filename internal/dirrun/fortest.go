package dirrun

// TB is the part of testing.TB that the ...For helpers use; it keeps the
// testing package out of the binaries that import dirrun.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// PostgresFor starts PostgreSQL for t and removes it when t ends; a server
// that is not installed, or does not start, fails t.
func PostgresFor(t TB) *Postgres {
	t.Helper()
	return startFor(t, PostgresAvailable(), "PostgreSQL is not installed (apt-get install postgresql; scripts/test does)", StartPostgres)
}

// MariaDBFor is PostgresFor for MariaDB.
func MariaDBFor(t TB) *MariaDB {
	t.Helper()
	return startFor(t, MariaDBAvailable(), "MariaDB is not installed (apt-get install mariadb-server; scripts/test does)", StartMariaDB)
}

// SlapdFor is PostgresFor for OpenLDAP's slapd.
func SlapdFor(t TB) *Slapd {
	t.Helper()
	return startFor(t, SlapdAvailable(), "OpenLDAP is not installed (apt-get install slapd ldap-utils; scripts/test does)", StartSlapd)
}

// RedisFor is PostgresFor for Redis.
func RedisFor(t TB) *Redis {
	t.Helper()
	return startFor(t, RedisAvailable(), "Redis is not installed (apt-get install redis-server; scripts/test does)", StartRedis)
}

func startFor[S interface{ Close() error }](t TB, available bool, missing string, start func() (S, error)) S {
	t.Helper()
	if !available {
		t.Fatal(missing)
	}
	s, err := start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
