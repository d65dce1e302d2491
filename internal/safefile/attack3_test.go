//go:build unix

package safefile

// Regression tests from the third attack review (certificates: the
// challenge answerers, orders and renewals, the approval hook, the cache
// and the files popgate reads): each TestAttack3* test failed while the
// defect it names was present.

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestAttack3CheckDirLinkInStickyDir: the cache path is a symbolic link
// that another user owns, in a sticky world-writable directory (/tmp).
// The sticky bit lets that user (the link's owner) replace the link at
// will, so "nobody else can rename the directory away and put another in
// its place" would not hold: they could point it at any other directory
// that passes the checks (an empty root-owned one makes every certificate
// a cache miss, and popgate orders them all again and writes their keys
// there), or swap it between CheckDir and the open that follows. CheckDir
// refuses it, as it refuses a directory of that user.
func TestAttack3CheckDirLinkInStickyDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a link to another user")
	}
	base := t.TempDir()
	sticky := filepath.Join(base, "tmp")
	if err := os.Mkdir(sticky, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(base, "state", "acme")
	if err := os.MkdirAll(good, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sticky, "acme")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(link); err == nil {
		t.Errorf("CheckDir(%s), a link of uid %d in a sticky directory, = nil; want it refused (uid %d can replace the link)", link, otherUID, otherUID)
	}
}

// TestAttack3OpensBeforeTypeCheck: a named pipe or a device is refused
// before it is opened, because opening is itself an action for many
// special files: it completes the rendezvous of a FIFO writer (shown here:
// a writer blocked in open stays blocked), arms a hardware watchdog
// (/dev/watchdog: a reboot when it is not closed with the magic
// character), rewinds a tape, raises DTR on a serial line, allocates a
// pseudo-terminal (/dev/ptmx). A certificate, key, CA or map file path
// that a mistake or another user points at such a file (the case safefile
// exists for) must not make popgate, often root at start, do that. A stat
// (following links) that is not a regular file is refused before any
// open, and the open's fstat is compared with it (device and inode) so
// that a swap in between is still caught.
func TestAttack3OpensBeforeTypeCheck(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "cert.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until a reader opens
		if err == nil {
			f.Close()
		}
		opened <- err
	}()
	time.Sleep(100 * time.Millisecond)
	_, err := ReadFile(fifo, Options{})
	if !errors.Is(err, ErrNotRegular) {
		t.Fatalf("ReadFile(fifo) = %v, want ErrNotRegular", err)
	}
	select {
	case <-opened:
		t.Errorf("ReadFile opened the named pipe before refusing it: a writer waiting on it was released")
	case <-time.After(500 * time.Millisecond):
		// Not opened. Release the writer.
		f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			<-opened
			f.Close()
		}
	}
}
