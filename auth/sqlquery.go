package auth

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// SQL dialects of [SQLConfig.Driver].
const (
	SQLPostgres = "postgres" // PostgreSQL through pgx: $1, $2, ... placeholders
	SQLMySQL    = "mysql"    // MySQL and MariaDB: ? placeholders
)

// The named parameters a route.sql query may use, in the order of
// sqlParamValues.
var sqlParamNames = []string{"user", "local", "domain", "client_ip", "listener"}

// sqlQuery is a route.sql query with its named parameters replaced by the
// driver's placeholders.
type sqlQuery struct {
	// text is the query as sent to the server.
	text string
	// args lists, for each placeholder in the order of its number
	// (PostgreSQL) or of its place (MySQL), the index in sqlParamNames of
	// the parameter it binds.
	args []int
	// uses reports, by index in sqlParamNames, whether the query uses the
	// parameter.
	uses [5]bool
}

// uses reports whether q uses the parameter named name.
func (q *sqlQuery) usesParam(name string) bool {
	i := slices.Index(sqlParamNames, name)
	return i >= 0 && q.uses[i]
}

// parseSQLQuery replaces q's named parameters (":user" and the rest of
// sqlParamNames) with driver's placeholders, which the server binds: the
// values never become part of the query's text. It reads q as the server
// would, skipping string literals, quoted identifiers and comments, so that
// ":user" inside them is left alone; where PostgreSQL and MySQL (or one
// server's settings) would read the text differently, it refuses the query
// rather than guess:
//
//   - a backslash inside a quoted string or identifier (an escape in MySQL
//     and in PostgreSQL's E'...' strings, a plain character in
//     PostgreSQL's standard strings);
//   - "/*" inside a comment (PostgreSQL nests comments, MySQL does not);
//   - MySQL's "--" not followed by a space (a comment in PostgreSQL, two
//     minus signs in MySQL) and its executable comments "/*! ... */";
//   - positional placeholders ("$1", MySQL's "?") and unknown ":names";
//   - more than one statement.
//
// "::" (PostgreSQL's cast) and ":=" (MySQL's assignment) are not
// parameters.
func parseSQLQuery(q, driver string) (*sqlQuery, error) {
	mysql := driver == SQLMySQL
	if !mysql && driver != SQLPostgres {
		return nil, fmt.Errorf("unknown driver %q", driver)
	}
	var out strings.Builder
	res := &sqlQuery{}
	pgNum := map[int]int{} // PostgreSQL: parameter index → placeholder number
	n := len(q)
	end := -1 // the index of a ';' that ends the statement
	for i := 0; i < n; {
		c := q[i]
		comment := c == '-' && i+1 < n && q[i+1] == '-' || c == '/' && i+1 < n && q[i+1] == '*' || c == '#' && mysql
		if end >= 0 && !isSQLSpace(c) && !comment {
			return nil, errors.New("holds more than one statement (a ';' in the middle); popgate sends exactly one")
		}
		switch {
		case c == '\'' || c == '"' || c == '`':
			j, err := skipQuoted(q, i, c)
			if err != nil {
				return nil, err
			}
			out.WriteString(q[i:j])
			i = j
		case c == '-' && i+1 < n && q[i+1] == '-':
			if mysql && i+2 < n && !isSQLSpace(q[i+2]) {
				return nil, fmt.Errorf("at byte %d: \"--\" not followed by a space starts a comment in PostgreSQL but not in MySQL; write \"-- \" or \"- -\"", i)
			}
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = n - i
			}
			out.WriteString(q[i : i+j])
			i += j
		case c == '#' && mysql:
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = n - i
			}
			out.WriteString(q[i : i+j])
			i += j
		case c == '/' && i+1 < n && q[i+1] == '*':
			if mysql && i+2 < n && q[i+2] == '!' {
				return nil, fmt.Errorf("at byte %d: MySQL runs the text of a \"/*!\" comment; write the query without one", i)
			}
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return nil, fmt.Errorf("at byte %d: a comment that is not closed", i)
			}
			body := q[i+2 : i+2+j]
			if strings.Contains(body, "/*") {
				return nil, fmt.Errorf("at byte %d: a comment inside a comment (PostgreSQL nests them, MySQL does not); write the query without one", i)
			}
			out.WriteString(q[i : i+4+j])
			i += 4 + j
		case c == '$' && !mysql && (i == 0 || !isIdentByte(q[i-1])):
			if i+1 < n && q[i+1] >= '0' && q[i+1] <= '9' {
				return nil, fmt.Errorf("at byte %d: a positional parameter; use the named ones (%s)", i, paramList())
			}
			j, err := skipDollarQuoted(q, i)
			if err != nil {
				return nil, err
			}
			out.WriteString(q[i:j])
			i = j
		case c == '?' && mysql:
			return nil, fmt.Errorf("at byte %d: a positional parameter \"?\"; use the named ones (%s)", i, paramList())
		case c == ':' && i+1 < n && (q[i+1] == ':' || q[i+1] == '='):
			out.WriteString(q[i : i+2])
			i += 2
		case c == ':' && i+1 < n && isIdentStart(q[i+1]):
			j := i + 1
			for j < n && isIdentByte(q[j]) {
				j++
			}
			name := q[i+1 : j]
			p := slices.Index(sqlParamNames, name)
			if p < 0 {
				return nil, fmt.Errorf("at byte %d: unknown parameter :%s (known: %s)", i, name, paramList())
			}
			res.uses[p] = true
			if mysql {
				out.WriteByte('?')
				res.args = append(res.args, p)
			} else {
				num, ok := pgNum[p]
				if !ok {
					res.args = append(res.args, p)
					num = len(res.args)
					pgNum[p] = num
				}
				out.WriteString("$" + strconv.Itoa(num))
			}
			i = j
		case c == ';':
			end = i
			i++
		case c == 0:
			return nil, errors.New("holds a NUL byte")
		default:
			out.WriteByte(c)
			i++
		}
	}
	res.text = strings.TrimSpace(out.String())
	if res.text == "" {
		return nil, errors.New("is empty")
	}
	return res, nil
}

// skipQuoted returns the index after the string or identifier quoted with
// quote that starts at q[i]; a doubled quote stands for one.
func skipQuoted(q string, i int, quote byte) (int, error) {
	for j := i + 1; j < len(q); j++ {
		switch q[j] {
		case '\\':
			return 0, fmt.Errorf("at byte %d: a backslash inside quotes, which PostgreSQL and MySQL (and their settings) read differently; write the query without one", j)
		case quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("at byte %d: a %c that is not closed", i, quote)
}

// skipDollarQuoted returns the index after PostgreSQL's dollar-quoted
// string ($tag$...$tag$) that starts at q[i], or after the lone '$' when
// none starts there.
func skipDollarQuoted(q string, i int) (int, error) {
	j := i + 1
	for j < len(q) && isIdentByte(q[j]) && q[j] != '$' {
		j++
	}
	if j >= len(q) || q[j] != '$' {
		return i + 1, nil
	}
	tag := q[i : j+1]
	k := strings.Index(q[j+1:], tag)
	if k < 0 {
		return 0, fmt.Errorf("at byte %d: a %s string that is not closed", i, tag)
	}
	return j + 1 + k + len(tag), nil
}

func paramList() string { return ":" + strings.Join(sqlParamNames, ", :") }

func isSQLSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isIdentStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }

func isIdentByte(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' || c >= 0x80
}
