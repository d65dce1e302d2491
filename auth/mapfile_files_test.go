//go:build unix

package auth

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMapFileNotAFile: a map file swapped for a named pipe, a link to
// /dev/zero or a file over MaxMapFileSize is refused at once, at load and
// on a reload (the previous table stays); a symlink to a regular file
// (a Kubernetes ConfigMap) loads.
func TestMapFileNotAFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		make   func(path string) error
		detail string
	}{
		{"named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "a named pipe"},
		{"link to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "a character device"},
		{"over 64 MiB", func(p string) error {
			f, err := os.Create(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Truncate(64<<20 + 1) // sparse: nothing written
		}, "more than 64 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bad := filepath.Join(dir, "bad")
			if err := tc.make(bad); err != nil {
				t.Fatal(err)
			}
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), tc.detail) {
					t.Errorf("%s = %v, want an error naming %s and %q", what, err, bad, tc.detail)
				}
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, err := LoadMapFile(bad, knownTest)
				check("LoadMapFile", err)
			}()
			select {
			case <-done:
			case <-time.After(time.Minute): // a guard against a hang, not a timing check
				t.Fatal("LoadMapFile blocked")
			}

			path := filepath.Join(dir, "routes")
			writeFile(t, path, "alice legacy\n")
			m, err := LoadMapFile(path, knownTest)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(bad, path); err != nil {
				t.Fatal(err)
			}
			bad = path
			check("Reload", m.Reload())
			if b, _, _ := mapLookup(m, "alice"); b != "legacy" {
				t.Errorf("after the refused reload alice -> %q, want the old legacy", b)
			}
		})
	}

	dir := t.TempDir()
	target := filepath.Join(dir, "..data-routes")
	writeFile(t, target, "alice legacy\n")
	link := filepath.Join(dir, "routes")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if m, err := LoadMapFile(link, knownTest); err != nil || m.Len() != 1 {
		t.Errorf("LoadMapFile(symlink to a regular file) = %v", err)
	}
}
