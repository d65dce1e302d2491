//go:build unix

package safefile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// otherUID is a user that owns nothing on a test machine.
const otherUID = 54321

func write(t *testing.T, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(name, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return name
}

// guard runs f and fails the test if it has not returned within a minute:
// a guard against a hang (an open that blocks), not a timing check.
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

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	regular := write(t, filepath.Join(dir, "regular"), []byte("data\n"), 0o644)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	exact := write(t, filepath.Join(dir, "exact"), bytes.Repeat([]byte("a"), MaxSize), 0o600)
	big := write(t, filepath.Join(dir, "big"), bytes.Repeat([]byte("a"), MaxSize+1), 0o600)
	small := write(t, filepath.Join(dir, "small"), bytes.Repeat([]byte("a"), 11), 0o600)
	groupW := write(t, filepath.Join(dir, "group-writable"), []byte("data\n"), 0o620)
	worldW := write(t, filepath.Join(dir, "world-writable"), []byte("data\n"), 0o606)

	for _, tc := range []struct {
		name    string
		path    string
		opt     Options
		wantErr error
		detail  string // in the error
		wantLen int
	}{
		{"regular", regular, Options{}, nil, "", 5},
		{"symlink to a regular file", link, Options{}, nil, "", 5},
		{"symlink with NoFollow", link, Options{NoFollow: true}, ErrNotRegular, "a symbolic link", 0},
		{"named pipe", fifo, Options{}, ErrNotRegular, "a named pipe", 0},
		{"named pipe with NoFollow", fifo, Options{NoFollow: true}, ErrNotRegular, "a named pipe", 0},
		{"symlink to /dev/zero", zero, Options{}, ErrNotRegular, "a character device", 0},
		{"directory", dir, Options{}, ErrNotRegular, "a directory", 0},
		{"exactly the limit", exact, Options{}, nil, "", MaxSize},
		{"over the limit", big, Options{}, ErrTooLarge, "more than 1 MiB", 0},
		{"over a given limit", small, Options{Limit: 10}, ErrTooLarge, "more than 10 bytes", 0},
		{"private", regular, Options{Private: true}, nil, "", 5},
		{"private, group-writable", groupW, Options{Private: true}, ErrNotPrivate, "chmod go-w", 0},
		{"private, world-writable", worldW, Options{Private: true}, ErrNotPrivate, "mode 0606", 0},
		{"not private, world-writable", worldW, Options{}, nil, "", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			var err error
			guard(t, "ReadFile("+tc.path+")", func() { data, err = ReadFile(tc.path, tc.opt) })
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("ReadFile(%s) = %v, want %v", tc.path, err, tc.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.detail) {
					t.Errorf("ReadFile(%s) error %q, want the path and %q", tc.path, err, tc.detail)
				}
				return
			}
			if len(data) != tc.wantLen {
				t.Errorf("ReadFile(%s) read %d bytes, want %d", tc.path, len(data), tc.wantLen)
			}
		})
	}
}

// TestReadFileGrows: a file that grows past the limit after the open is
// refused, not returned cut at the limit.
func TestReadFileGrows(t *testing.T) {
	name := write(t, filepath.Join(t.TempDir(), "grows"), []byte("0123456789"), 0o600)
	f, err := Open(name, Options{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.WriteFile(name, []byte("0123456789abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	var n int
	for {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			if !errors.Is(err, ErrTooLarge) || n != 10 {
				t.Errorf("Read after %d bytes = %v, want ErrTooLarge after 10", n, err)
			}
			return
		}
		if n > 10 {
			t.Fatalf("read %d bytes, more than the limit", n)
		}
	}
}

func TestPrivateOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	dir := t.TempDir()
	name := write(t, filepath.Join(dir, "planted"), []byte("data\n"), 0o600)
	if err := os.Chown(name, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile(name, Options{Private: true})
	if !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), "owned by uid 54321") || !strings.Contains(err.Error(), "chown 0 "+name) {
		t.Errorf("ReadFile(file of uid %d) = %v, want ErrNotPrivate naming the owner and the fix", otherUID, err)
	}
	if _, err := ReadFile(name, Options{}); err != nil {
		t.Errorf("ReadFile without Private = %v", err)
	}
}

func TestCheckDir(t *testing.T) {
	base := t.TempDir()
	mkdir := func(rel string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(base, rel)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mkdir("good/acme", 0o700)
	readable := mkdir("readable/acme", 0o755)
	worldW := mkdir("world/acme", 0o777)
	groupW := mkdir("group/acme", 0o770)
	underOpen := mkdir("open/acme", 0o700)
	mkdir("open", 0o777)
	underSticky := mkdir("sticky/acme", 0o700)
	mkdir("sticky", 0o777|os.ModeSticky)
	linkToGood := filepath.Join(base, "link")
	if err := os.Symlink(good, linkToGood); err != nil {
		t.Fatal(err)
	}
	linkInOpen := filepath.Join(base, "open", "link")
	if err := os.Symlink(good, linkInOpen); err != nil {
		t.Fatal(err)
	}
	// A link whose target passes through a link in a world-writable
	// directory, which is on neither the path as given nor the resolved
	// one.
	linkThroughOpen := filepath.Join(base, "via")
	if err := os.Symlink(linkInOpen, linkThroughOpen); err != nil {
		t.Fatal(err)
	}
	linkInSticky := filepath.Join(base, "sticky", "link")
	if err := os.Symlink(good, linkInSticky); err != nil {
		t.Fatal(err)
	}
	loop := filepath.Join(base, "loop")
	if err := os.Symlink(loop, loop); err != nil {
		t.Fatal(err)
	}
	file := write(t, filepath.Join(base, "file"), nil, 0o600)

	for _, tc := range []struct {
		name   string
		dir    string
		detail string // in the error; "" for none
	}{
		{"0700", good, ""},
		{"0755", readable, ""},
		{"world-writable", worldW, "writable by its group or others (mode 0777); fix: chmod go-w " + worldW},
		{"group-writable", groupW, "mode 0770"},
		{"parent world-writable", underOpen, "the directory above it, " + filepath.Dir(underOpen) + ", is writable by its group or others (mode 0777) without the sticky bit"},
		{"parent world-writable with sticky bit", underSticky, ""},
		{"symlink to a good directory", linkToGood, ""},
		{"symlink in a world-writable directory", linkInOpen, "is writable by its group or others"},
		{"symlink through a symlink in a world-writable directory", linkThroughOpen, "the directory above it, " + filepath.Dir(linkInOpen) + ", is writable"},
		{"our symlink in a sticky directory", linkInSticky, ""},
		{"symlink loop", loop, "too many levels of symbolic links"},
		{"a file", file, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckDir(tc.dir)
			if tc.detail == "" {
				if err != nil {
					t.Errorf("CheckDir(%s) = %v, want nil", tc.dir, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.detail) || !strings.HasPrefix(err.Error(), tc.dir+": ") {
				t.Errorf("CheckDir(%s) = %v, want an error naming it and %q", tc.dir, err, tc.detail)
			}
		})
	}

	if os.Geteuid() == 0 {
		other := mkdir("other/acme", 0o700)
		if err := os.Chown(other, otherUID, otherUID); err != nil {
			t.Fatal(err)
		}
		if err := CheckDir(other); !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), "owned by uid 54321") {
			t.Errorf("CheckDir(directory of uid %d) = %v, want ErrNotPrivate naming the owner", otherUID, err)
		}
		above := mkdir("above/acme", 0o700)
		if err := os.Chown(filepath.Dir(above), otherUID, otherUID); err != nil {
			t.Fatal(err)
		}
		if err := CheckDir(above); !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), "is owned by uid 54321") {
			t.Errorf("CheckDir(under a directory of uid %d) = %v, want ErrNotPrivate naming the owner", otherUID, err)
		}
		// Where only its directory's owner can replace it, a link of
		// another user is as good as one of root.
		theirs := filepath.Join(base, "theirs")
		if err := os.Symlink(good, theirs); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(theirs, otherUID, otherUID); err != nil {
			t.Fatal(err)
		}
		if err := CheckDir(theirs); err != nil {
			t.Errorf("CheckDir(link of uid %d in a directory only root writes) = %v, want nil", otherUID, err)
		}
	}
}
