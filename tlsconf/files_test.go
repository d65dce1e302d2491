//go:build unix

package tlsconf

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guard runs f and fails the test if it has not returned within a minute:
// a guard against a read that blocks, not a timing check.
func guard(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s blocked", what)
	}
}

// badFile makes at path something that is not a certificate file to read:
// a named pipe without a writer, a symlink to /dev/zero, a directory, or a
// regular file over the 1 MiB limit. It returns what the error must say.
func badFile(t *testing.T, kind, path string) string {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	var err error
	switch kind {
	case "fifo":
		err = syscall.Mkfifo(path, 0o600)
		kind = "a named pipe"
	case "dev-zero":
		err = os.Symlink("/dev/zero", path)
		kind = "a character device"
	case "directory":
		err = os.Mkdir(path, 0o700)
		kind = "a directory"
	case "large":
		// A valid PEM block first: the size, not the content, is refused.
		data := append([]byte("-----BEGIN CERTIFICATE-----\n"), bytes.Repeat([]byte("QUFB\n"), 1<<18)...)
		err = os.WriteFile(path, data, 0o600)
		kind = "more than 1 MiB"
	}
	if err != nil {
		t.Fatal(err)
	}
	return kind
}

var badKinds = []string{"fifo", "dev-zero", "directory", "large"}

// TestCertificateFileKinds: a certificate, key or CA file that is a named
// pipe, a link to /dev/zero, a directory or over 1 MiB is refused at once
// with an error naming it, at start and on a reload (which keeps the
// previous certificates); a symlink to a regular file (certbot's live/)
// loads.
func TestCertificateFileKinds(t *testing.T) {
	for _, kind := range badKinds {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			good := writePair(t, dir, "good", newCert(t, "mail.example.com"))
			bad := filepath.Join(dir, "bad")
			want := badFile(t, kind, bad)
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), want) {
					t.Errorf("%s = %v, want an error naming %s and %q", what, err, bad, want)
				}
			}
			for _, f := range []CertFile{{bad, good.Key}, {good.Cert, bad}} {
				var err error
				guard(t, "NewServer", func() { _, err = NewServer(ServerConfig{Certificates: []CertFile{f}}) })
				check("NewServer("+f.Cert+", "+f.Key+")", err)
			}
			guard(t, "Backend", func() {
				_, err := Backend(BackendConfig{Address: "127.0.0.1:995", CAFile: bad})
				check("Backend(CAFile)", err)
			})
			guard(t, "NewServer with acme ca_file", func() {
				_, err := NewServer(ServerConfig{ACME: &ACMEConfig{
					Domains: []string{"mail.example.com"}, CacheDir: filepath.Join(dir, "acme"), CAFile: bad,
				}})
				check("NewServer(ACME.CAFile)", err)
			})

			// A reload: the files are swapped for the bad one; the
			// previous certificate stays.
			live := writePair(t, dir, "live", newCert(t, "old.example.com"))
			srv, err := NewServer(ServerConfig{Certificates: []CertFile{live}})
			if err != nil {
				t.Fatal(err)
			}
			for _, path := range []string{live.Cert, live.Key} {
				saved, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				badFile(t, kind, path)
				guard(t, "Reload", func() { err = srv.Reload() })
				if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
					t.Errorf("Reload() with %s as %s = %v, want an error naming it and %q", path, kind, err, want)
				}
				if got := srv.Names(); !slices.Equal(got, []string{"old.example.com"}) {
					t.Errorf("Names() after the refused reload = %q, want the previous certificate", got)
				}
				if err := os.RemoveAll(path); err != nil {
					t.Fatal(err)
				}
				writeFile(t, path, saved)
			}
		})
	}

	// certbot: live/NAME/fullchain.pem and privkey.pem are symlinks into
	// archive/.
	dir := t.TempDir()
	real := writePair(t, dir, "archive", newCert(t, "mail.example.com"))
	links := CertFile{Cert: filepath.Join(dir, "fullchain.pem"), Key: filepath.Join(dir, "privkey.pem")}
	if err := os.Symlink(real.Cert, links.Cert); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real.Key, links.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(ServerConfig{Certificates: []CertFile{links}}); err != nil {
		t.Errorf("NewServer(symlinks to regular files) = %v", err)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadConcurrent: reloads from several goroutines (the file watch
// and SIGHUP) while the files change; the last reload after the last
// change decides what is served.
func TestReloadConcurrent(t *testing.T) {
	dir := t.TempDir()
	live := writePair(t, dir, "live", newCert(t, "v0.example.com"))
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{live}})
	if err != nil {
		t.Fatal(err)
	}
	const versions = 5
	pairs := make([]CertFile, versions)
	for i := range pairs {
		pairs[i] = writePair(t, t.TempDir(), "p", newCert(t, "v"+string(rune('1'+i))+".example.com"))
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				srv.Reload() // errors expected: a pair caught half replaced
			}
		})
	}
	for _, p := range pairs {
		replace(t, p.Key, live.Key)
		replace(t, p.Cert, live.Cert)
	}
	close(done)
	wg.Wait()
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := srv.Names(); !slices.Equal(got, []string{"v5.example.com"}) {
		t.Errorf("Names() = %q, want the last pair's", got)
	}
}
