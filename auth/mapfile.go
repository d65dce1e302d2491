package auth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/popgate/popgate/internal/filewatch"
	"github.com/popgate/popgate/internal/safefile"
)

// MaxMapLine bounds one line of a map file.
const MaxMapLine = 4096

// MaxMapFileSize bounds a map file: 64 MiB, room for over a million routes
// (200,000 lines of "user@example.com backend" take about 6 MiB). A larger
// file, or one that is not a regular file (a named pipe, a device), is
// refused without being read.
const MaxMapFileSize = 64 << 20

// maxListedBadLines bounds how many bad lines a [MapFileError] lists.
const maxListedBadLines = 20

// MapFile routes from a file with one route per line:
//
//	# comment
//	alice@example.com   legacy     # a user, as the client sends the name
//	bob                 legacy     # a user without a domain
//	@example.org        new        # everyone else at a domain
//
// A line holds a key and a backend name separated by blanks; "#" starts a
// comment where a field would start. Keys are compared case-insensitively
// (ASCII), as [Static] does; a user line wins over a domain line; the domain
// is the part after the last "@". A backend name the caller does not know,
// a duplicate key or a malformed line makes the whole file bad.
//
// The table sits behind an atomic pointer: [MapFile.Lookup] never waits for
// a reload, and [MapFile.Reload] swaps in a new table only when the whole file
// is good, keeping the previous one otherwise. Lookups are two map reads.
type MapFile struct {
	path  string
	known func(string) bool

	table atomic.Pointer[mapTable]

	mu   sync.Mutex      // serialises Reload; guards read
	read filewatch.Stamp // the file as the last reload opened it, for Watch
}

type mapTable struct {
	users   map[string]mapRule
	domains map[string]mapRule
}

type mapRule struct {
	backend string
	line    int
}

// MapFileError is returned by [LoadMapFile] and [MapFile.Reload] for a file
// with bad lines. It lists the first 20 of them; Total counts all.
type MapFileError struct {
	Path  string
	Lines []MapLineError
	Total int
}

// MapLineError is one bad line of a map file.
type MapLineError struct {
	Line int    // 1-based
	Msg  string // what is wrong with it
}

func (e *MapFileError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "auth: map file %s: %d bad line", e.Path, e.Total)
	if e.Total != 1 {
		b.WriteByte('s')
	}
	for _, l := range e.Lines {
		fmt.Fprintf(&b, "; line %d: %s", l.Line, l.Msg)
	}
	if e.Total > len(e.Lines) {
		fmt.Fprintf(&b, "; and %d more", e.Total-len(e.Lines))
	}
	return b.String()
}

// LoadMapFile reads the map file at path, a regular file (symlinks
// followed) of at most [MaxMapFileSize]. known reports whether a backend
// name is configured; a line naming another backend is bad. A nil known
// accepts every name (tests only: a typo would then route to nowhere).
func LoadMapFile(path string, known func(backend string) bool) (*MapFile, error) {
	m := &MapFile{path: path, known: known}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// Path returns the file's path.
func (m *MapFile) Path() string { return m.path }

// Len returns the number of routes in the current table.
func (m *MapFile) Len() int {
	t := m.table.Load()
	return len(t.users) + len(t.domains)
}

// Reload reads the file again. On any error (unreadable file, bad lines) the
// previous table stays in use and the error says why; bad lines come as a
// *[MapFileError].
func (m *MapFile) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := safefile.Open(m.path, safefile.Options{Limit: MaxMapFileSize})
	if err != nil {
		// A file refused for what it is (a named pipe, too large), or
		// gone, is remembered as stat sees it, so that Watch reports
		// it once, not every round.
		m.read = filewatch.Stat(m.path)
		return fmt.Errorf("auth: map file: %w", err)
	}
	defer f.Close()
	fi := f.Stat()
	// Remembered even when the file turns out bad, so Watch does not
	// re-read (and re-report) an unchanged broken file every round.
	m.read = filewatch.Of(fi)
	// About 25 bytes a line; a hint only, bounded so that a huge file
	// does not allocate before it is read.
	hint := int(min(fi.Size()/25, 1<<20))
	t, err := parseMap(f, hint, m.path, m.known)
	if err != nil {
		return err
	}
	m.table.Store(t)
	return nil
}

func parseMap(r io.Reader, sizeHint int, path string, known func(string) bool) (*mapTable, error) {
	t := &mapTable{users: make(map[string]mapRule, sizeHint), domains: make(map[string]mapRule)}
	ferr := &MapFileError{Path: path}
	bad := func(n int, format string, args ...any) {
		ferr.Total++
		if len(ferr.Lines) < maxListedBadLines {
			ferr.Lines = append(ferr.Lines, MapLineError{n, fmt.Sprintf(format, args...)})
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxMapLine), MaxMapLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf")) // UTF-8 BOM
		}
		key, backend, msg := splitMapLine(line)
		switch {
		case msg != "":
			bad(n, "%s", msg)
			continue
		case key == "":
			continue // blank or comment
		case known != nil && !known(backend):
			bad(n, "unknown backend %q", backend)
			continue
		}
		tab, kind := t.users, "user"
		if strings.HasPrefix(key, "@") {
			key, tab, kind = DomainKey(key), t.domains, "domain"
			if key == "" || strings.ContainsRune(key, '@') {
				bad(n, "bad domain %q", "@"+key)
				continue
			}
		} else {
			key = UserKey(key)
		}
		if prev, dup := tab[key]; dup {
			bad(n, "%s %q already routed on line %d", kind, key, prev.line)
			continue
		}
		tab[key] = mapRule{backend: backend, line: n}
	}
	if err := sc.Err(); err != nil {
		switch {
		case errors.Is(err, bufio.ErrTooLong):
			bad(n+1, "longer than %d bytes", MaxMapLine)
		case errors.Is(err, safefile.ErrTooLarge): // grew while being read
			return nil, fmt.Errorf("auth: map file: %w", err)
		default:
			return nil, fmt.Errorf("auth: map file %s: %w", path, err)
		}
	}
	if ferr.Total > 0 {
		return nil, ferr
	}
	return t, nil
}

// splitMapLine returns the key and backend of a line, both "" for a blank
// or comment line, or a message saying what is wrong with it.
func splitMapLine(line []byte) (key, backend, msg string) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	var fields [2][]byte
	n := 0
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			i++
			continue
		case c < ' ' || c == 0x7f:
			return "", "", "control character"
		case c == '#':
			i = len(line) // a comment to the end of the line
			continue
		}
		j := i
		for j < len(line) && line[j] > ' ' && line[j] != 0x7f {
			j++
		}
		if n < len(fields) {
			fields[n] = line[i:j]
		}
		n++
		i = j
	}
	switch {
	case n == 0:
		return "", "", ""
	case n != 2:
		return "", "", fmt.Sprintf("want \"USER backend\" or \"@domain backend\", got %d fields", n)
	case !utf8.Valid(fields[0]) || !utf8.Valid(fields[1]):
		return "", "", "not UTF-8"
	case len(fields[0]) > MaxCredentialLen:
		return "", "", "key too long"
	}
	return string(fields[0]), string(fields[1]), ""
}

// Lookup implements [Source]: the backend for user, exact user first, then
// the domain, and the rule that matched, such as
// `map file routes:12 user "alice@example.com"`.
func (m *MapFile) Lookup(_ context.Context, user string) (backend, rule string, found bool, err error) {
	r, kind, key, ok := m.lookup(user)
	if !ok {
		return "", "", false, nil
	}
	return r.backend, "map file " + m.path + ":" + strconv.Itoa(r.line) + " " + kind + " " + strconv.Quote(key), true, nil
}

// Close implements [Source]; a MapFile holds nothing open ([MapFile.Watch]
// ends with its context).
func (m *MapFile) Close() error { return nil }

func (m *MapFile) lookup(user string) (r mapRule, kind, key string, ok bool) {
	if m == nil {
		return mapRule{}, "", "", false
	}
	t := m.table.Load()
	u := UserKey(user)
	if r, ok := t.users[u]; ok {
		return r, "user", u, true
	}
	if d, ok := userDomain(user); ok {
		if r, ok := t.domains[d]; ok {
			return r, "domain", d, true
		}
	}
	return mapRule{}, "", "", false
}

// HasDomain implements [DomainSource]: it reports whether the current
// table has a "@domain backend" line for domain (case-insensitive, a
// trailing dot ignored). It reads the live table, so a reload is seen at
// once; for the ACME on-demand policy.
func (m *MapFile) HasDomain(domain string) bool {
	if m == nil {
		return false
	}
	_, ok := m.table.Load().domains[DomainKey(strings.TrimSuffix(domain, "."))]
	return ok
}

// Route implements [Router]: the backend from the file, the client's own
// credentials, [ErrNoRoute] when no line matches.
func (m *MapFile) Route(_ context.Context, req *Request) (Decision, error) {
	r, _, _, ok := m.lookup(req.User)
	if !ok {
		return Decision{}, ErrNoRoute
	}
	return Decision{Backend: r.backend, User: req.User, Password: req.Password}, nil
}

// Watch polls the file every interval (5s when interval <= 0) and reloads it
// when its size, modification time or identity (inode; a file replaced by
// rename is a new one) differs from the file the last reload read, by
// Watch or by a call to [MapFile.Reload]. It calls onReload, when not nil,
// after each reload it makes: with nil on success, else with the error
// (the previous table stays in use). A file that cannot be stat'ed is
// reported once until it changes. Watch returns when ctx is done; run it in
// its own goroutine. It polls, rather than using inotify, for the reasons
// internal/filewatch gives; SIGHUP can call [MapFile.Reload] for an
// immediate read.
func (m *MapFile) Watch(ctx context.Context, interval time.Duration, onReload func(error)) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if onReload == nil {
		onReload = func(error) {}
	}
	filewatch.Watch(ctx, interval, []string{m.path}, m.lastRead, func(now filewatch.Snapshot) {
		if err := now[0].Err(); err != nil {
			m.mu.Lock()
			m.read = now[0]
			m.mu.Unlock()
			onReload(fmt.Errorf("auth: map file: %w", err))
			return
		}
		onReload(m.Reload())
	})
}

// lastRead is what Watch compares the file with: the file as the last
// reload read it.
func (m *MapFile) lastRead() filewatch.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return filewatch.Snapshot{m.read}
}
