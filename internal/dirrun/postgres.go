package dirrun

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// Postgres is a private PostgreSQL server on 127.0.0.1 with a database
// and a role, both called "popgate", whose password is [Password]
// (SCRAM-SHA-256 over TCP).
type Postgres struct {
	proc
	Dir     string // data directory's parent; removed by Stop
	Port    int
	Version string // "15"
	bin     string // the server's bin directory
}

// PostgresAvailable reports whether PostgreSQL's server binaries are
// installed (Debian's postgresql package).
func PostgresAvailable() bool { _, _, err := postgresBin(); return err == nil }

// postgresBin returns the newest /usr/lib/postgresql/VERSION/bin.
func postgresBin() (dir, version string, err error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(dirs) == 0 {
		return "", "", fmt.Errorf("dirrun: no /usr/lib/postgresql/*/bin/postgres (apt-get install postgresql)")
	}
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(a))))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(b))))
		return va - vb
	})
	bin := filepath.Dir(dirs[len(dirs)-1])
	return bin, filepath.Base(filepath.Dir(bin)), nil
}

// StartPostgres initialises a cluster in a new directory and starts it.
func StartPostgres() (_ *Postgres, err error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	bin, version, err := postgresBin()
	if err != nil {
		return nil, err
	}
	cred, err := serviceUser("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := workDir("pgrun-", cred)
	if err != nil {
		return nil, err
	}
	p := &Postgres{Dir: dir, Version: version, bin: bin,
		proc: proc{name: "postgres", cred: cred, dir: dir, logFile: filepath.Join(dir, "postgres.log"),
			// SIGINT is PostgreSQL's fast shutdown (pg_ctl stop's
			// default): SIGTERM's smart one waits for every client
			// to disconnect, which a pool never does by itself.
			stopSig: syscall.SIGINT}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.Chown(pwfile, int(cred.Uid), int(cred.Gid)); err != nil {
		return nil, err
	}
	if _, err := run(cred, nil, "", filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"),
		"-U", "popgate", "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	os.Remove(pwfile)
	if p.Port, err = freePort(); err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if _, err := p.query("postgres", "CREATE DATABASE popgate"); err != nil {
		return nil, err
	}
	return p, nil
}

// Start starts the server again after Stop, on the same port and data.
func (p *Postgres) Start() error {
	p.argv = []string{filepath.Join(p.bin, "postgres"), "-D", filepath.Join(p.Dir, "data"),
		"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-c", "unix_socket_directories=" + p.Dir, "-c", "fsync=off",
		"-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "logging_collector=off"}
	return p.proc.start(func() error {
		if err := dialable(p.Addr()); err != nil {
			return err
		}
		_, err := p.query("postgres", "SELECT 1")
		return err
	})
}

// Addr is the server's TCP address.
func (p *Postgres) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)) }

// DSN is a pgx connection string for the popgate database over TCP.
func (p *Postgres) DSN() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("popgate", Password), Host: p.Addr(),
		Path: "/popgate", RawQuery: "sslmode=disable"}
	return u.String()
}

// Exec runs SQL statements (one or more, ";"-separated) in the popgate
// database; it stops at the first error.
func (p *Postgres) Exec(sql string) error {
	_, err := p.query("popgate", sql)
	return err
}

// Query runs one statement in the popgate database and returns its rows
// unaligned, "|"-separated, one per line.
func (p *Postgres) Query(sql string) (string, error) { return p.query("popgate", sql) }

func (p *Postgres) query(db, sql string) (string, error) {
	return run(nil, []string{"PGPASSWORD=" + Password, "PGCONNECT_TIMEOUT=5"}, sql,
		filepath.Join(p.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "popgate", "-d", db, "-f", "-")
}

// Stop stops the server; with Start it restarts it. Close removes it.
func (p *Postgres) Stop() error { return p.proc.stop() }

// Close stops the server and removes its data.
func (p *Postgres) Close() error {
	err := p.proc.stop()
	os.RemoveAll(p.Dir)
	return err
}
