//go:build unix

package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// openFile opens name read-only and non-blocking: a FIFO without a writer
// or a device that waits for a carrier does not hold the caller up. For a
// regular file O_NONBLOCK changes nothing.
func openFile(name string, noFollow bool) (*os.File, error) {
	flag := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if noFollow {
		flag |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		if noFollow && errors.Is(err, syscall.ELOOP) { // open(2): O_NOFOLLOW met a link
			return nil, &Error{Path: name, Err: ErrNotRegular, Detail: "a symbolic link"}
		}
		return nil, err
	}
	return f, nil
}

// CheckPrivate applies the ownership rule of [Options.Private] to fi, which
// describes name: owned by the process's effective user or root, and not
// writable by the group or others. The error says how to fix it.
func CheckPrivate(name string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	euid := os.Geteuid()
	if int(st.Uid) != euid && st.Uid != 0 {
		return &Error{Path: name, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"owned by uid %d, neither this process's user (uid %d) nor root; fix: chown %d %s", st.Uid, euid, euid, name)}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return &Error{Path: name, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"writable by its group or others (mode %04o); fix: chmod go-w %s", perm, name)}
	}
	return nil
}

// CheckDir checks a directory that holds private keys the way OpenSSH's
// StrictModes checks ~/.ssh: the directory (after symbolic links) must pass
// [CheckPrivate], and each directory above it, up to the root, must be
// owned by root or the process's user and, if its group or others may
// write it, have the sticky bit (as /tmp has), so that nobody else can
// rename the directory away and put another in its place. The directories
// on the path as given are checked as well as those of the resolved path,
// since a symbolic link on the way is as good as the directory it is in.
func CheckDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &Error{Path: dir, Err: ErrNotRegular, Detail: "not a directory"}
	}
	if err := CheckPrivate(dir, fi); err != nil {
		return err
	}
	seen := map[string]bool{real: true}
	for _, p := range []string{abs, real} {
		for d := filepath.Dir(p); ; d = filepath.Dir(d) {
			if !seen[d] {
				seen[d] = true
				if err := checkAncestor(d, dir); err != nil {
					return err
				}
			}
			if d == filepath.Dir(d) { // the root
				break
			}
		}
	}
	return nil
}

// checkAncestor checks directory d above dir. A symbolic link is skipped:
// what it points to is on the resolved path, and whoever may replace the
// link must be able to write the directory it is in, which is checked.
func checkAncestor(d, dir string) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	euid := os.Geteuid()
	if int(st.Uid) != euid && st.Uid != 0 {
		return &Error{Path: dir, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"the directory above it, %s, is owned by uid %d, neither this process's user (uid %d) nor root, who could replace %s; fix: chown %d %s, or move it elsewhere",
			d, st.Uid, euid, dir, euid, d)}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return &Error{Path: dir, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"the directory above it, %s, is writable by its group or others (mode %04o) without the sticky bit, so they could replace %s; fix: chmod go-w %s, or move it elsewhere",
			d, perm, dir, d)}
	}
	return nil
}
