package auth

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SQL routes by a query to a PostgreSQL (pgx) or MySQL/MariaDB
// (go-sql-driver/mysql) database: the table a Postfix and Dovecot setup
// already keeps its mailboxes in (Postfixadmin's mailbox table, a plain
// users table). It is a [Decider]: the row it finds becomes the login's
// [Decision] by [Directory]'s rules, which may check the password
// (password_hash) and rewrite the backend login (a master user).
//
// The query names its parameters (:user, :local, :domain, :client_ip,
// :listener; see [SQLConfig.Query]), which are sent to the server as bound
// parameters of a prepared statement, never put into the query's text: no
// user name, however written, can change what the query does. The
// query's result columns are named: backend, or host and port; optionally
// login, password, password_hash, enabled and user (whose row it is: the
// row counts only for a user name equal to it, case aside). A NULL is as
// if the column were absent for that row. No row lets the next source decide
// ([ErrNoRoute]); more than one row, an unknown column, a value that
// cannot be used, a server that is down or slow: an error, and the client
// gets "-ERR [SYS/TEMP]", never a login.
//
// Connections come from a pool of at most MaxConnections; each query
// waits at most Timeout, for a connection and for the answer together. A
// server that went away is reconnected to by the pool on the next query.
// SQL is safe for concurrent use.
type SQL struct {
	cfg      SQLConfig
	q        *sqlQuery
	pgConfig *pgxpool.Config // postgres
	myConfig *mysql.Config   // mysql
	secret   string          // the DSN's password, kept out of error texts

	db     sqlDB       // set by OpenSQL, not changed after
	closed atomic.Bool // Close was called: db is closed
	// userColumn: the query returns the user column (as the server last
	// said), which keeps a row to its own name.
	userColumn atomic.Bool
}

// SQLConfig configures [OpenSQL].
type SQLConfig struct {
	// Driver is SQLPostgres or SQLMySQL.
	Driver string
	// DSN is the data source name: a PostgreSQL connection string
	// ("postgres://user:pass@host/db?sslmode=verify-full" or
	// "host=... user=..."), or a go-sql-driver/mysql DSN
	// ("user:pass@tcp(host:3306)/db?tls=true"). Its password never
	// appears in an error.
	DSN string
	// Query is one SELECT statement with named parameters, bound by the
	// server, never interpolated:
	//
	//	:user       the user name as the client sent it
	//	:local      the part of it before the last "@" (all of it without one)
	//	:domain     the part after the last "@" ("" without one)
	//	:client_ip  the client's IP address ("" in `popgate route`)
	//	:listener   the name of the listener the client came in on ("" in `popgate route`)
	//
	// Its result columns are named (case does not matter): backend, or
	// host and port; and optionally login, password, password_hash,
	// enabled and user.
	Query string
	// MaxConnections caps the pool; 0 means 8.
	MaxConnections int
	// Timeout bounds each query, waiting for a connection included,
	// and the password hash check after it, waiting for a turn
	// included; 0 means 2s.
	Timeout time.Duration
	// Directory turns a row into a Decision; its Source names the source
	// in errors ("route.sql").
	Directory Directory
	// Observe, when set, sees every query (LookupObserver).
	Observe LookupObserver
}

const (
	defaultSQLMaxConnections = 8
	defaultSQLTimeout        = 2 * time.Second
	// maxSQLValue bounds a value of the row: no backend name, address,
	// login, password or hash is longer.
	maxSQLValue = 4096
	// sqlIdleTime is how long an idle connection is kept.
	sqlIdleTime = 5 * time.Minute
)

// The result columns a route.sql query may return.
var sqlColumns = []string{"backend", "host", "port", "login", "password", "password_hash", "enabled", "user"}

const (
	colBackend = iota
	colHost
	colPort
	colLogin
	colPassword
	colPasswordHash
	colEnabled
	colUser
	nColumns
)

// ErrDirectoryUnavailable is wrapped by the error [OpenSQL] returns with a
// usable source when the server could not be reached to check the query:
// the source works once the server answers.
var ErrDirectoryUnavailable = errors.New("the directory server cannot be reached")

// OpenSQL checks cfg, makes the connection pool and checks the query's
// result columns against the server: an unknown column, a query that the
// server refuses, a password without password_hash is an error. When the
// server cannot be reached (or refuses connections for now), OpenSQL
// returns the source together with an error wrapping
// [ErrDirectoryUnavailable]: its logins fail with "-ERR [SYS/TEMP]" until
// the server answers, and their errors name what is wrong with the query
// then.
func OpenSQL(ctx context.Context, cfg SQLConfig) (*SQL, error) {
	q, err := parseSQLQuery(cfg.Query, cfg.Driver)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	if !q.usesParam("user") && !q.usesParam("local") {
		return nil, errors.New("query: uses neither :user nor :local; it would find the same row for everyone")
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = defaultSQLMaxConnections
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultSQLTimeout
	}
	s := &SQL{cfg: cfg, q: q}
	switch cfg.Driver {
	case SQLPostgres:
		pc, err := pgxpool.ParseConfig(cfg.DSN)
		if err != nil {
			// pgconn's parse errors show the DSN with its password
			// replaced; say less all the same.
			return nil, errors.New("dsn: not a PostgreSQL connection string (postgres://user:password@host:port/database?sslmode=verify-full, or key=value pairs)")
		}
		s.secret = pc.ConnConfig.Password
		pc.MaxConns = int32(min(cfg.MaxConnections, 1<<20))
		pc.MinConns = 0
		pc.MaxConnIdleTime = sqlIdleTime
		if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > cfg.Timeout {
			pc.ConnConfig.ConnectTimeout = cfg.Timeout
		}
		// Statements are prepared on each connection and kept
		// (pgx's default cache); results come as text, which is
		// what a row's values are read as.
		pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
		s.pgConfig = pc
	case SQLMySQL:
		mc, err := mysql.ParseDSN(cfg.DSN)
		if err != nil {
			return nil, errors.New("dsn: not a MySQL data source name (user:password@tcp(host:3306)/database?tls=true)")
		}
		if mc.InterpolateParams {
			return nil, errors.New("dsn: interpolateParams=true would put the parameters into the query's text; popgate binds them, leave it out")
		}
		if mc.MultiStatements {
			return nil, errors.New("dsn: multiStatements=true is not needed by one query; leave it out")
		}
		s.secret = mc.Passwd
		if mc.Timeout == 0 || mc.Timeout > cfg.Timeout {
			mc.Timeout = cfg.Timeout
		}
		// A connection's reads and writes are bounded too (a server
		// that stops answering halfway), beyond the query's own
		// timeout, which ends it first.
		if mc.ReadTimeout == 0 {
			mc.ReadTimeout = 2 * cfg.Timeout
		}
		if mc.WriteTimeout == 0 {
			mc.WriteTimeout = 2 * cfg.Timeout
		}
		// The driver's own log lines ("[mysql] ... unexpected EOF")
		// would bypass popgate's log format; the errors it returns
		// say the same.
		mc.Logger = log.New(io.Discard, "", 0)
		s.myConfig = mc
	default:
		return nil, fmt.Errorf("driver: %q is not postgres or mysql", cfg.Driver)
	}
	db, err := s.open(cfg.MaxConnections)
	if err != nil {
		return nil, s.redact(err)
	}
	s.db = db
	if err := s.check(ctx); err != nil {
		if errors.Is(err, ErrDirectoryUnavailable) {
			return s, err
		}
		s.Close()
		return nil, err
	}
	return s, nil
}

// check asks the server for the query's result columns.
func (s *SQL) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	cols, err := s.db.columns(ctx, s.q.text, s.args(&Request{}))
	if err != nil {
		err = s.redact(err)
		if s.unreachable(err) {
			return fmt.Errorf("%w: %v", ErrDirectoryUnavailable, err)
		}
		return fmt.Errorf("query: the server refuses it: %v", err)
	}
	idx, err := sqlColumnIndex(cols)
	if err != nil {
		return fmt.Errorf("query: %v", err)
	}
	s.userColumn.Store(idx[colUser] >= 0)
	return nil
}

// unreachable reports whether err says the server could not be asked, as
// opposed to an answer that refuses the query or the credentials.
func (s *SQL) unreachable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 08: connection exception; 53: insufficient resources (too
		// many connections); 57: operator intervention (shutting
		// down, starting up).
		c := pe.Code
		return strings.HasPrefix(c, "08") || strings.HasPrefix(c, "53") || strings.HasPrefix(c, "57")
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1040, 1053, 1203, 1226: // too many connections, shutting down, user limits
			return true
		}
		return false
	}
	return true
}

// open makes a pool of at most n connections.
func (s *SQL) open(n int) (sqlDB, error) {
	if s.pgConfig != nil {
		pc := s.pgConfig.Copy()
		pc.MaxConns = int32(min(n, 1<<20))
		pool, err := pgxpool.NewWithConfig(context.Background(), pc)
		if err != nil {
			return nil, err
		}
		return &pgDB{pool: pool}, nil
	}
	conn, err := mysql.NewConnector(s.myConfig)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	db.SetConnMaxIdleTime(sqlIdleTime)
	return &myDB{db: db}, nil
}

// Close closes the pool. SQL still answers after Close (a session that
// began before a configuration reload logs in through the source it began
// with): each query then opens a connection of its own and closes it.
func (s *SQL) Close() error {
	s.closed.Store(true)
	s.db.close()
	return nil
}

// PoolStats implements [Pooled].
func (s *SQL) PoolStats() PoolStats {
	if s.closed.Load() {
		return PoolStats{}
	}
	return s.db.stats()
}

// Lookup implements [Source] for `popgate route`: it runs the query for
// user (without a client address or listener) and says what the row
// would do, without its password or hash. No row is not found.
func (s *SQL) Lookup(ctx context.Context, user string) (backend, rule string, found bool, err error) {
	e, row, err := s.find(ctx, &Request{Credentials: Credentials{User: user}})
	if err != nil || e == nil {
		return "", "", false, err
	}
	backend, why := s.cfg.Directory.Explain(e)
	return backend, why + "; the row: " + row, true, nil
}

// Decide implements [Decider]: it is Route.
func (s *SQL) Decide(ctx context.Context, req *Request) (Decision, error) { return s.Route(ctx, req) }

// Route implements [Router]: the query's row for req, by the rules of
// [Directory].
func (s *SQL) Route(ctx context.Context, req *Request) (Decision, error) {
	return s.cfg.Directory.Route(ctx, req, s.cfg.Timeout, func(ctx context.Context) (*Entry, error) {
		e, _, err := s.find(ctx, req)
		return e, err
	})
}

// find runs the query for req and returns its row as an Entry and as text
// for `popgate route` (nil without a row).
func (s *SQL) find(ctx context.Context, req *Request) (*Entry, string, error) {
	// A name no row can hold: PostgreSQL refuses NUL and invalid UTF-8
	// in text with an error, which would be a [SYS/TEMP] for what is a
	// wrong name. Nor a name with spaces around it, which MySQL's PAD
	// SPACE collations would find under the name without them.
	if req.User == "" || !utf8.ValidString(req.User) || strings.IndexByte(req.User, 0) >= 0 || len(req.User) > MaxCredentialLen ||
		strings.TrimSpace(req.User) != req.User {
		return nil, "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	start := time.Now()
	e, row, err := s.query(ctx, req)
	s.cfg.Observe.Report(s.cfg.Directory.Source, start, e != nil, err)
	return e, row, err
}

func (s *SQL) query(ctx context.Context, req *Request) (*Entry, string, error) {
	closed := s.closed.Load()
	res, err := s.ask(ctx, closed, req)
	if err != nil && !closed && s.closed.Load() {
		// The pool was closed under the query: again, on a connection
		// of its own.
		res, err = s.ask(ctx, true, req)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", s.errorf("no answer within %v (route.sql.timeout): %v", s.cfg.Timeout, s.redact(err))
		}
		if !isASCII(req.User) && myCharsetError(err) {
			// A name the table's charset cannot hold (an emoji in
			// utf8mb3, "Ā" in latin1): no row holds it, and the
			// client gets the [AUTH] of an unknown name, counted as
			// one, not a [SYS/TEMP] it could ask for without end. A
			// query that is wrong fails for ASCII names too.
			return nil, "", nil
		}
		return nil, "", s.errorf("%v", s.redact(err))
	}
	idx, err := sqlColumnIndex(res.cols)
	if err != nil {
		return nil, "", s.errorf("query: %v", err)
	}
	s.userColumn.Store(idx[colUser] >= 0)
	switch len(res.rows) {
	case 0:
		return nil, "", nil
	case 1:
	default:
		return nil, "", s.errorf("the query returned more than one row for the user; it must find one at most")
	}
	if i := idx[colUser]; i >= 0 {
		// The row says whose it is: a collation that finds it for
		// another spelling ("alíce", "alice ") finds no row, so that
		// the row answers only spellings that differ from its name in
		// case, which the failed-login limits ([foldUser]) count as
		// that name.
		if u := res.rows[0][i]; u.null || !strings.EqualFold(u.s, req.User) {
			return nil, "", nil
		}
	}
	return s.entry(idx, res.rows[0])
}

// myCharsetError reports whether err is MySQL's refusal to compare a
// parameter with a column whose charset cannot hold it: "Illegal mix of
// collations" (1267, 1270, 1271), "Invalid character string" (1300),
// "Incorrect string value" (1366).
func myCharsetError(err error) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 1267, 1270, 1271, 1300, 1366:
		return true
	}
	return false
}

// ask runs the query for req on the pool, or, once the source is closed
// (by a reload while this login was under way), on a connection of its
// own.
func (s *SQL) ask(ctx context.Context, closed bool, req *Request) (*sqlResult, error) {
	db := s.db
	if closed {
		var err error
		if db, err = s.open(1); err != nil {
			return nil, err
		}
		defer db.close()
	}
	return db.query(ctx, s.q.text, s.args(req))
}

// entry turns a row into an Entry, and into the text that shows it.
func (s *SQL) entry(idx [nColumns]int, row []sqlValue) (*Entry, string, error) {
	var vals [nColumns]string
	var set [nColumns]bool
	var shown []string
	for c, i := range idx {
		if i < 0 || row[i].null {
			continue
		}
		v := row[i].s
		if len(v) > maxSQLValue {
			return nil, "", s.errorf("the row's %s is longer than %d bytes", sqlColumns[c], maxSQLValue)
		}
		vals[c], set[c] = v, true
		switch c {
		case colPassword, colPasswordHash:
			shown = append(shown, sqlColumns[c]+"=(set)")
		default:
			shown = append(shown, fmt.Sprintf("%s=%.64q", sqlColumns[c], v))
		}
	}
	e := &Entry{
		Where:        "the query's row",
		Backend:      vals[colBackend],
		Host:         vals[colHost],
		Port:         vals[colPort],
		Login:        vals[colLogin],
		Password:     Password(vals[colPassword]),
		PasswordHash: vals[colPasswordHash],
	}
	if set[colEnabled] {
		on, ok := parseSQLBool(vals[colEnabled])
		if !ok {
			return nil, "", s.errorf("the row's enabled is %.16q, which is neither true (1, t, true, y, yes, on) nor false (0, f, false, n, no, off)", vals[colEnabled])
		}
		e.Disabled = !on
	}
	text := strings.Join(shown, " ")
	if text == "" {
		text = "(every column NULL)"
	}
	return e, text, nil
}

// parseSQLBool reads an enabled column: PostgreSQL's booleans (t, f),
// MySQL's (1, 0), Postfixadmin's and Dovecot's habits (y, n, yes, no).
func parseSQLBool(v string) (on, ok bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "t", "true", "y", "yes", "on":
		return true, true
	case "0", "f", "false", "n", "no", "off":
		return false, true
	}
	return false, false
}

// sqlColumnIndex maps the query's result columns to sqlColumns: idx[c] is
// the place of column c, -1 when the query does not return it.
func sqlColumnIndex(cols []string) (idx [nColumns]int, err error) {
	for i := range idx {
		idx[i] = -1
	}
	for i, name := range cols {
		c := slices.Index(sqlColumns, strings.ToLower(name))
		switch {
		case c < 0:
			return idx, fmt.Errorf("returns column %.64q, which popgate does not know (it reads %s; name others away with AS or drop them)", name, strings.Join(sqlColumns, ", "))
		case idx[c] >= 0:
			return idx, fmt.Errorf("returns column %s twice", sqlColumns[c])
		}
		idx[c] = i
	}
	has := func(c int) bool { return idx[c] >= 0 }
	switch {
	case !has(colBackend) && !has(colHost):
		return idx, errors.New("returns neither a backend column nor host and port")
	case has(colHost) != has(colPort):
		return idx, errors.New("returns one of host and port without the other")
	case has(colPassword) && !has(colPasswordHash):
		return idx, errors.New("returns a password for the backend without password_hash: popgate hands a master password only to a client whose own password it checked")
	}
	return idx, nil
}

// args returns the query's parameter values for req.
func (s *SQL) args(req *Request) []any {
	var vals [5]string
	vals[0] = req.User
	vals[1], vals[2] = req.User, ""
	if i := strings.LastIndexByte(req.User, '@'); i >= 0 {
		vals[1], vals[2] = req.User[:i], req.User[i+1:]
	}
	if ip := req.Client.Addr(); ip.IsValid() {
		vals[3] = ip.Unmap().WithZone("").String()
	}
	vals[4] = req.Listener
	args := make([]any, len(s.q.args))
	for i, p := range s.q.args {
		args[i] = vals[p]
	}
	return args
}

// IgnoresDomain implements [DomainBlind]: the query has :local but
// neither :user nor :domain, and no user column (as far as the server has
// said: a source whose server was not reached yet counts as without).
func (s *SQL) IgnoresDomain() bool {
	return s.q.usesParam("local") && !s.q.usesParam("user") && !s.q.usesParam("domain") && !s.userColumn.Load()
}

// UsesClientIP reports whether the query uses :client_ip, whose answers
// a [Cache] (which keys by user, not by address) must not keep.
func (s *SQL) UsesClientIP() bool { return s.q.usesParam("client_ip") }

// errorf makes an error of the source, for the log.
func (s *SQL) errorf(format string, args ...any) error {
	return fmt.Errorf("auth: %s: "+format, append([]any{s.cfg.Directory.Source}, args...)...)
}

// redact returns err with the DSN's password replaced, should a driver's
// error text ever carry it.
func (s *SQL) redact(err error) error {
	if err == nil || s.secret == "" || !strings.Contains(err.Error(), s.secret) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), s.secret, redacted), err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// sqlDB is a pool of one driver.
type sqlDB interface {
	// query runs text and returns its columns and at most two rows.
	query(ctx context.Context, text string, args []any) (*sqlResult, error)
	// columns returns text's result columns (the query may run with
	// args to learn them).
	columns(ctx context.Context, text string, args []any) ([]string, error)
	stats() PoolStats
	close()
}

type sqlResult struct {
	cols []string
	rows [][]sqlValue
}

type sqlValue struct {
	s    string
	null bool
}

// pgDB is a pgx pool.
type pgDB struct{ pool *pgxpool.Pool }

// textResults asks for every result column as text: a row's values are
// read as strings whatever their type (boolean, integer, varchar).
var textResults = pgx.QueryResultFormats{pgx.TextFormatCode}

func (p *pgDB) query(ctx context.Context, text string, args []any) (*sqlResult, error) {
	res, err := p.query1(ctx, text, args)
	if err == nil || ctx.Err() != nil {
		return res, err
	}
	var pe *pgconn.PgError
	switch {
	case pgConnLost(err):
		// The server went away since the connection was made (a
		// restart): every idle connection is as dead as this one.
		// A SELECT can be asked again; once, on a new connection.
		p.pool.Reset()
		res, err = p.query1(ctx, text, args)
	case errors.As(err, &pe) && pe.Code == "0A000":
		// "cached plan must not change result type": a table of the
		// query changed under the statement this connection had
		// prepared, which pgx has now dropped; prepared again, the
		// query works.
		res, err = p.query1(ctx, text, args)
	}
	return res, err
}

// pgConnLost reports whether err says the connection failed, rather than
// the server refusing the query.
func pgConnLost(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 08: connection exception; 57P01-57P03: the server is
		// shutting down, crashed or starting.
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	return true
}

func (p *pgDB) query1(ctx context.Context, text string, args []any) (*sqlResult, error) {
	rows, err := p.pool.Query(ctx, text, append([]any{textResults}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	res := &sqlResult{}
	for _, f := range rows.FieldDescriptions() {
		res.cols = append(res.cols, f.Name)
	}
	for len(res.rows) < 2 && rows.Next() {
		raw := rows.RawValues()
		row := make([]sqlValue, len(raw))
		for i, v := range raw {
			row[i] = sqlValue{s: string(v), null: v == nil}
		}
		res.rows = append(res.rows, row)
	}
	rows.Close()
	return res, rows.Err()
}

func (p *pgDB) columns(ctx context.Context, text string, _ []any) ([]string, error) {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Release()
	// The unnamed statement: nothing is left prepared.
	sd, err := c.Conn().PgConn().Prepare(ctx, "", text, nil)
	if err != nil {
		return nil, err
	}
	var cols []string
	for _, f := range sd.Fields {
		cols = append(cols, f.Name)
	}
	return cols, nil
}

func (p *pgDB) stats() PoolStats {
	st := p.pool.Stat()
	return PoolStats{InUse: int(st.AcquiredConns()), Idle: int(st.IdleConns())}
}

func (p *pgDB) close() { p.pool.Close() }

// myDB is a database/sql pool of go-sql-driver/mysql connections with the
// query prepared on each (stmt), made on first use.
type myDB struct {
	db   *sql.DB
	mu   sync.Mutex
	stmt *sql.Stmt
	text string
}

func (m *myDB) prepared(ctx context.Context, text string) (*sql.Stmt, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stmt != nil && m.text == text {
		return m.stmt, nil
	}
	st, err := m.db.PrepareContext(ctx, text)
	if err != nil {
		return nil, err
	}
	m.stmt, m.text = st, text
	return st, nil
}

func (m *myDB) query(ctx context.Context, text string, args []any) (*sqlResult, error) {
	st, err := m.prepared(ctx, text)
	if err != nil {
		return nil, err
	}
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	res := &sqlResult{}
	if res.cols, err = rows.Columns(); err != nil {
		return nil, err
	}
	vals := make([]sql.NullString, len(res.cols))
	ptrs := make([]any, len(vals))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for len(res.rows) < 2 && rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make([]sqlValue, len(vals))
		for i, v := range vals {
			row[i] = sqlValue{s: v.String, null: !v.Valid}
		}
		res.rows = append(res.rows, row)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	return res, rows.Err()
}

func (m *myDB) columns(ctx context.Context, text string, args []any) ([]string, error) {
	res, err := m.query(ctx, text, args)
	if err != nil {
		return nil, err
	}
	return res.cols, nil
}

func (m *myDB) stats() PoolStats {
	st := m.db.Stats()
	return PoolStats{InUse: st.InUse, Idle: st.Idle}
}

func (m *myDB) close() {
	m.mu.Lock()
	if m.stmt != nil {
		m.stmt.Close()
	}
	m.mu.Unlock()
	m.db.Close()
}

// sqlHost returns the host of the DSN, for a warning about a directory
// reached without TLS; "" when unknown.
func (s *SQL) sqlHost() string {
	if s.pgConfig != nil {
		return s.pgConfig.ConnConfig.Host
	}
	if s.myConfig != nil && s.myConfig.Net == "tcp" {
		h, _, err := net.SplitHostPort(s.myConfig.Addr)
		if err == nil {
			return h
		}
	}
	return ""
}

// PlaintextRemote reports whether the source reaches a server that is not
// on this host without TLS (PostgreSQL's sslmode disable, allow or
// prefer; MySQL without tls): the DSN's password and the rows
// (password hashes, master passwords) may cross the network in clear.
func (s *SQL) PlaintextRemote() bool {
	h := s.sqlHost()
	if h == "" || strings.HasPrefix(h, "/") || strings.EqualFold(h, "localhost") {
		return false
	}
	if a, err := netip.ParseAddr(h); err == nil && a.IsLoopback() {
		return false
	}
	if s.pgConfig != nil {
		tc := s.pgConfig.ConnConfig.TLSConfig
		return tc == nil || len(s.pgConfig.ConnConfig.Fallbacks) > 0 && s.pgConfig.ConnConfig.Fallbacks[len(s.pgConfig.ConnConfig.Fallbacks)-1].TLSConfig == nil
	}
	return s.myConfig.TLS == nil || s.myConfig.AllowFallbackToPlaintext
}
