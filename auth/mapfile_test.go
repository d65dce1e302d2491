package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var testBackends = map[string]bool{"legacy": true, "new": true, "b1": true, "b2": true}

func knownTest(name string) bool { return testBackends[name] }

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const goodMap = "\xef\xbb\xbf# routes\n" +
	"\n" +
	"Alice@Example.com   legacy\n" +
	"bob new # trailing comment\r\n" +
	"   @example.ORG\tnew\n" +
	"@example.com legacy\n" +
	"x@y@other.net b1\n" +
	"#@example.net b2\n"

func TestMapFileLookup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, goodMap)
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != 5 {
		t.Errorf("Len() = %d, want 5", m.Len())
	}
	cases := []struct {
		user, backend, rule string
		ok                  bool
	}{
		{"alice@example.com", "legacy", `:3 user "alice@example.com"`, true},
		{"ALICE@EXAMPLE.COM", "legacy", `:3 user "alice@example.com"`, true},
		{"bob", "new", `:4 user "bob"`, true},
		{"Bob", "new", `:4 user "bob"`, true},
		{"carol@example.org", "new", `:5 domain "example.org"`, true},
		{"carol@example.com", "legacy", `:6 domain "example.com"`, true},
		{"x@y@other.net", "b1", `:7 user "x@y@other.net"`, true},
		{"z@y@example.com", "legacy", `:6 domain "example.com"`, true}, // after the last @
		{"dave@example.net", "", "", false},                            // commented out
		{"bob@example.net", "", "", false},
		{"nodomain", "", "", false},
		{"", "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.user, func(t *testing.T) {
			b, rule, ok, err := m.Lookup(context.Background(), tc.user)
			if b != tc.backend || ok != tc.ok || err != nil || tc.ok && rule != "map file "+path+tc.rule {
				t.Errorf("Lookup(%q) = %q, %q, %v, %v; want %q, %q, %v", tc.user, b, rule, ok, err, tc.backend, "map file "+path+tc.rule, tc.ok)
			}
			d, err := m.Route(context.Background(), &Request{Credentials: Credentials{User: tc.user, Password: "pw"}})
			if tc.ok && (err != nil || d.Backend != tc.backend || d.User != tc.user || d.Password != "pw") {
				t.Errorf("Route(%q) = %+v, %v", tc.user, d, err)
			}
			if !tc.ok && !errors.Is(err, ErrNoRoute) {
				t.Errorf("Route(%q) = %v, want ErrNoRoute", tc.user, err)
			}
		})
	}
}

func TestMapFileBadLines(t *testing.T) {
	cases := []struct {
		name, content string
		lines         []int
		msg           string
	}{
		{"unknown backend", "a legacy\nb legcy\n", []int{2}, `unknown backend "legcy"`},
		{"one field", "a\n", []int{1}, "got 1 fields"},
		{"three fields", "a legacy new\n", []int{1}, "got 3 fields"},
		{"duplicate user", "a legacy\nA new\n", []int{2}, `user "a" already routed on line 1`},
		{"duplicate domain", "@x.org legacy\n@X.ORG legacy\n", []int{2}, "already routed"},
		{"bare at", "@ legacy\n", []int{1}, "bad domain"},
		{"domain with at", "@a@b legacy\n", []int{1}, "bad domain"},
		{"control", "a\x00b legacy\n", []int{1}, "control character"},
		{"not utf8", "a\xff legacy\n", []int{1}, "not UTF-8"},
		{"too long", "a legacy\n" + strings.Repeat("x", MaxMapLine+10) + " legacy\n", []int{2}, "longer than"},
		{"several", "ok legacy\nbad\n\nworse x y\n# fine\nz nope\n", []int{2, 4, 6}, "3 bad lines"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "routes")
			writeFile(t, path, tc.content)
			m, err := LoadMapFile(path, knownTest)
			var fe *MapFileError
			if m != nil || !errors.As(err, &fe) {
				t.Fatalf("LoadMapFile = %v, %v; want *MapFileError", m, err)
			}
			var got []int
			for _, l := range fe.Lines {
				got = append(got, l.Line)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.lines) || fe.Total != len(tc.lines) {
				t.Errorf("bad lines %v (total %d), want %v", got, fe.Total, tc.lines)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "auth: ") || !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q, want it to contain %q", msg, tc.msg)
			}
		})
	}
}

func TestMapFileManyBadLinesListed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, strings.Repeat("bad\n", 100))
	_, err := LoadMapFile(path, knownTest)
	var fe *MapFileError
	if !errors.As(err, &fe) || fe.Total != 100 || len(fe.Lines) != maxListedBadLines || !strings.Contains(err.Error(), "and 80 more") {
		t.Fatalf("err = %v", err)
	}
}

func TestMapFileMissing(t *testing.T) {
	_, err := LoadMapFile(filepath.Join(t.TempDir(), "nope"), knownTest)
	if !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "auth: ") {
		t.Fatalf("err = %v", err)
	}
}

func TestMapFileReloadKeepsOldTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, "alice legacy\n")
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "alice new\nbob typo\n")
	if err := m.Reload(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("Reload = %v, want line 2 error", err)
	}
	if b, _, _ := mapLookup(m, "alice"); b != "legacy" {
		t.Errorf("after bad reload alice -> %q, want the old legacy", b)
	}
	os.Remove(path)
	if err := m.Reload(); err == nil {
		t.Fatal("Reload of a missing file succeeded")
	}
	if b, _, _ := mapLookup(m, "alice"); b != "legacy" {
		t.Errorf("after failed reload alice -> %q", b)
	}
	writeFile(t, path, "alice new\n")
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if b, _, _ := mapLookup(m, "alice"); b != "new" {
		t.Errorf("after good reload alice -> %q, want new", b)
	}
}

func TestMapFileWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "routes")
	writeFile(t, path, "alice legacy\n")
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan error, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Watch(ctx, 5*time.Millisecond, func(err error) { events <- err })
	}()
	t.Cleanup(func() { cancel(); <-done })
	next := func() error {
		t.Helper()
		select {
		case err := <-events:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload seen")
			return nil
		}
	}

	// In place, different size.
	writeFile(t, path, "alice new\nbob new\n")
	if err := next(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if b, _, _ := mapLookup(m, "bob"); b != "new" {
		t.Errorf("bob -> %q after in-place change", b)
	}

	// Broken: reported once, old table kept.
	writeFile(t, path, "alice new\nbob typo\n")
	if err := next(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("broken reload reported %v", err)
	}
	if b, _, _ := mapLookup(m, "bob"); b != "new" {
		t.Errorf("bob -> %q after broken change", b)
	}

	// Replaced by rename, same size: a new inode.
	tmp := filepath.Join(dir, "routes.tmp")
	writeFile(t, tmp, "alice b1\nbob b2\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if err := next(); err != nil {
		t.Fatalf("reload after rename: %v", err)
	}
	if b, _, _ := mapLookup(m, "bob"); b != "b2" {
		t.Errorf("bob -> %q after rename", b)
	}
	select {
	case err := <-events:
		t.Errorf("unexpected event for an unchanged file: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestMapFileLarge(t *testing.T) {
	const n = 200_000
	path := filepath.Join(t.TempDir(), "routes")
	var b strings.Builder
	b.WriteString("# generated\n")
	for i := range n {
		if i%10 == 0 {
			fmt.Fprintf(&b, "@domain%d.example b%d\n", i, i%2+1)
		} else {
			fmt.Fprintf(&b, "user%d@example.com b%d\n", i, i%2+1)
		}
	}
	writeFile(t, path, b.String())
	start := time.Now()
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d lines (%d bytes) in %v", n, b.Len(), time.Since(start))
	if m.Len() != n {
		t.Errorf("Len() = %d, want %d", m.Len(), n)
	}
	for _, i := range []int{1, 2, 99_999, 199_999} {
		user := fmt.Sprintf("USER%d@example.com", i)
		if got, _, ok := mapLookup(m, user); !ok || got != fmt.Sprintf("b%d", i%2+1) {
			t.Errorf("Lookup(%q) = %q, %v", user, got, ok)
		}
	}
	if got, rule, ok := mapLookup(m, "anyone@domain150000.example"); !ok || got != "b1" || !strings.HasSuffix(rule, `:150002 domain "domain150000.example"`) {
		t.Errorf("domain lookup = %q, %q, %v", got, rule, ok)
	}
}

func BenchmarkMapFileLookup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "routes")
	var sb strings.Builder
	for i := range 10_000 {
		fmt.Fprintf(&sb, "user%d@example.com legacy\n", i)
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		b.Fatal(err)
	}
	req := &Request{Credentials: Credentials{User: "User5000@Example.com"}}
	b.ReportAllocs()
	for range b.N {
		if _, err := m.Route(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMapFileHasDomain: only "@domain" lines count, case-insensitively, and
// a reload is seen at once.
func TestMapFileHasDomain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	writeFile(t, path, goodMap)
	m, err := LoadMapFile(path, knownTest)
	if err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{
		"example.org": true, "Example.COM": true, "example.com.": true,
		"example.net": false, // commented out
		"y@other.net": false, "other.net": false, "bob": false, "": false,
	} {
		if got := m.HasDomain(d); got != want {
			t.Errorf("HasDomain(%q) = %v, want %v", d, got, want)
		}
	}
	writeFile(t, path, "@customer.test new\n")
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if !m.HasDomain("customer.test") || m.HasDomain("example.org") {
		t.Error("HasDomain does not follow a reload")
	}
	var nilMap *MapFile
	if nilMap.HasDomain("example.org") {
		t.Error("nil MapFile has a domain")
	}
}

// mapLookup is m.Lookup for a test: the backend, the rule and whether one
// matched. A MapFile's Lookup never fails.
func mapLookup(m *MapFile, user string) (backend, rule string, ok bool) {
	backend, rule, ok, _ = m.Lookup(context.Background(), user)
	return backend, rule, ok
}
