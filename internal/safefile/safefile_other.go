//go:build !unix

package safefile

import (
	"io/fs"
	"os"
)

// openFile opens name read-only. Without O_NONBLOCK and O_NOFOLLOW here,
// only the stat before the open and the checks after it apply.
func openFile(name string, noFollow bool) (*os.File, error) {
	if noFollow {
		if fi, err := os.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return nil, &Error{Path: name, Err: ErrNotRegular, Detail: "a symbolic link"}
		}
	}
	return os.Open(name)
}

// CheckPrivate has no ownership to check outside Unix; it passes.
func CheckPrivate(name string, fi fs.FileInfo) error { return nil }

// CheckDir checks only that dir is a directory outside Unix.
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &Error{Path: dir, Err: ErrNotRegular, Detail: "not a directory"}
	}
	return nil
}
