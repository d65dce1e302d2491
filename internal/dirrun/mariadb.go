package dirrun

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MariaDB is a private MariaDB server on 127.0.0.1 with a database
// "popgate" and a user "popgate"@"127.0.0.1" whose password is
// [Password]; root connects over the server's UNIX socket only.
type MariaDB struct {
	proc
	Dir     string // data, socket and log; removed by Close
	Port    int
	Version string // "10.11.6-MariaDB-0+deb12u1"
	server  string // mariadbd
	client  string // mariadb
}

// mariadbBins are the server, the client and the installer.
var mariadbBins = []string{"mariadbd", "mariadb", "mariadb-install-db"}

// MariaDBAvailable reports whether MariaDB's server and client are
// installed (Debian's mariadb-server package).
func MariaDBAvailable() bool {
	_, err := lookPaths(mariadbBins...)
	return err == nil
}

// StartMariaDB initialises a data directory and starts the server.
func StartMariaDB() (_ *MariaDB, err error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	bins, err := lookPaths(mariadbBins...)
	if err != nil {
		return nil, err
	}
	server, client, install := bins[0], bins[1], bins[2]
	cred, err := serviceUser("mysql")
	if err != nil {
		return nil, err
	}
	dir, err := workDir("mdbrun-", cred)
	if err != nil {
		return nil, err
	}
	m := &MariaDB{Dir: dir, server: server, client: client,
		proc: proc{name: "mariadb", dir: dir, logFile: filepath.Join(dir, "mariadb.log")}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if _, err := run(nil, nil, "", install, "--no-defaults", "--datadir="+filepath.Join(dir, "data"),
		"--user=mysql", "--auth-root-authentication-method=socket", "--auth-root-socket-user=root",
		"--skip-test-db", "--skip-name-resolve"); err != nil {
		return nil, err
	}
	if m.Port, err = freePort(); err != nil {
		return nil, err
	}
	if err := m.Start(); err != nil {
		return nil, err
	}
	quoted := strings.ReplaceAll(Password, "'", "''")
	if err := m.rootExec("", "CREATE DATABASE popgate CHARACTER SET utf8mb4;\n"+
		"CREATE USER 'popgate'@'127.0.0.1' IDENTIFIED BY '"+quoted+"';\n"+
		"GRANT ALL ON popgate.* TO 'popgate'@'127.0.0.1';\n"); err != nil {
		return nil, err
	}
	out, err := m.rootQuery("", "SELECT VERSION()")
	if err != nil {
		return nil, err
	}
	m.Version = strings.TrimSpace(out)
	return m, nil
}

// Start starts the server again after Stop, on the same port and data.
// mariadbd starts as root and drops to the mysql user itself.
func (m *MariaDB) Start() error {
	m.argv = []string{m.server, "--no-defaults", "--datadir=" + filepath.Join(m.Dir, "data"),
		"--user=mysql", "--port=" + strconv.Itoa(m.Port), "--bind-address=127.0.0.1",
		"--socket=" + m.Socket(), "--pid-file=" + filepath.Join(m.Dir, "mariadb.pid"),
		"--skip-name-resolve", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
		"--innodb-buffer-pool-size=32M", "--max-connections=200", "--log-error=" + m.logFile}
	return m.proc.start(func() error {
		if err := dialable(m.Addr()); err != nil {
			return err
		}
		_, err := m.rootQuery("", "SELECT 1")
		return err
	})
}

// Addr is the server's TCP address.
func (m *MariaDB) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port)) }

// Socket is the server's UNIX socket.
func (m *MariaDB) Socket() string { return filepath.Join(m.Dir, "mariadb.sock") }

// DSN is a go-sql-driver/mysql data source name for the popgate database
// over TCP.
func (m *MariaDB) DSN() string {
	return fmt.Sprintf("popgate:%s@tcp(%s)/popgate", Password, m.Addr())
}

// Exec runs SQL statements (";"-separated, one or more) in the popgate
// database as root; it stops at the first error.
func (m *MariaDB) Exec(sql string) error { return m.rootExec("popgate", sql) }

// Query runs one statement in the popgate database and returns its rows,
// tab-separated, one per line, without column names.
func (m *MariaDB) Query(sql string) (string, error) { return m.rootQuery("popgate", sql) }

func (m *MariaDB) rootExec(db, sql string) error {
	_, err := m.rootQuery(db, sql)
	return err
}

func (m *MariaDB) rootQuery(db, sql string) (string, error) {
	args := []string{m.client, "--no-defaults", "--socket=" + m.Socket(), "-u", "root",
		"--batch", "--skip-column-names", "--connect-timeout=5"}
	if db != "" {
		args = append(args, db)
	}
	return run(nil, nil, sql, args...)
}

// Stop stops the server; Start starts it again.
func (m *MariaDB) Stop() error { return m.proc.stop() }

// Close stops the server and removes its data.
func (m *MariaDB) Close() error {
	err := m.proc.stop()
	os.RemoveAll(m.Dir)
	return err
}
