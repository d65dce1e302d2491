// Package safefile reads files that a mistake or another user may have
// swapped for something else: a certificate path replaced by a symlink to
// /dev/zero must not fill the memory, a named pipe must not block the
// reader (and whatever lock it holds), a file another user can write must
// not be trusted where popgate keeps private keys.
//
//	data, err := safefile.ReadFile("/etc/popgate/tls/mail.crt", safefile.Options{})
//	f, err := safefile.Open("/etc/popgate/routes", safefile.Options{Limit: 64 << 20})
//	err := safefile.CheckDir("/var/lib/popgate/acme") // as OpenSSH's StrictModes
//
// Only a regular file is opened. Opening is itself an action for other
// files (it completes a named pipe's rendezvous with a waiting writer, arms
// a watchdog device, rewinds a tape), so every path is looked at first (a
// stat) and anything else is refused before any open. The file is then
// opened with O_NONBLOCK, so that one swapped in after the stat (a FIFO or
// a device) does not block, and checked again through the open descriptor
// (fstat): it must be the file the stat saw (device and inode) and regular.
// At most [Options.Limit] bytes of it are read. Symbolic links are followed
// unless [Options.NoFollow] says otherwise: certbot's live/ directory and
// Kubernetes' Secret volumes are made of them.
//
// Ownership and permission rules ([Options.Private], [CheckDir],
// [CheckPrivate]) exist only on Unix; elsewhere they pass.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// MaxSize is the default [Options.Limit]: 1 MiB, plenty for a certificate
// chain, a key or a CA bundle (the system bundle is about 200 KiB).
const MaxSize = 1 << 20

// Sentinel errors, wrapped in an [*Error] that names the file.
var (
	// ErrNotRegular: the file is a directory, a named pipe, a device, a
	// socket, or (with NoFollow) a symbolic link.
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge: the file holds more than the limit.
	ErrTooLarge = errors.New("too large")
	// ErrNotPrivate: the file or directory is owned by another user, or
	// another user can write it.
	ErrNotPrivate = errors.New("not private")
	// ErrChanged: the path named another file each time it was looked at
	// and opened (it is being replaced over and over).
	ErrChanged = errors.New("changed while being opened")
)

// Error is a file refused by the rules of this package.
type Error struct {
	Path   string
	Err    error  // ErrNotRegular, ErrTooLarge, ErrNotPrivate or ErrChanged
	Detail string // what the file is, e.g. "a named pipe"
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return e.Path + ": " + e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error() + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// Options say how a file is opened and what it must be.
type Options struct {
	// Limit is the most bytes read; a file holding more is refused with
	// ErrTooLarge. 0 means MaxSize.
	Limit int64
	// NoFollow refuses a symbolic link as the last component of the
	// path (ErrNotRegular), for directories whose files popgate wrote
	// itself and which never hold links.
	NoFollow bool
	// Private requires the file to be owned by the process's effective
	// user or by root and not writable by its group or others
	// (ErrNotPrivate), as OpenSSH's StrictModes does for authorized_keys.
	Private bool
}

func (o Options) limit() int64 {
	if o.Limit <= 0 {
		return MaxSize
	}
	return o.Limit
}

// File is an open regular file whose reads stop at the limit: reading past
// it fails with an *Error wrapping ErrTooLarge rather than returning a
// silently truncated file.
type File struct {
	f    *os.File
	info fs.FileInfo
	left int64 // bytes that may still be read
	path string
	max  int64
}

// openTries bounds how often Open looks at and opens a path that names
// another regular file each time: a file replaced by a rename (certbot,
// Kubernetes' volume updates) between the two is opened again, once or
// twice.
const openTries = 3

// Open opens name for reading under o's rules. The file is open only if
// the error is nil; close it.
func Open(name string, o Options) (*File, error) {
	var f *os.File
	var fi fs.FileInfo
	for try := 1; ; try++ {
		var err error
		f, fi, err = openRegular(name, o.NoFollow)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrChanged) || try == openTries {
			return nil, err
		}
	}
	if o.Private {
		if err := CheckPrivate(name, fi); err != nil {
			f.Close()
			return nil, err
		}
	}
	max := o.limit()
	if fi.Size() > max {
		f.Close()
		return nil, tooLarge(name, max)
	}
	return &File{f: f, info: fi, left: max, path: name, max: max}, nil
}

// openRegular looks at name (following links unless noFollow), refuses it
// unless it is a regular file, then opens it and checks that the open
// descriptor is that same file, still regular.
func openRegular(name string, noFollow bool) (*os.File, fs.FileInfo, error) {
	stat := os.Stat
	if noFollow {
		stat = os.Lstat
	}
	before, err := stat(name)
	if err != nil {
		return nil, nil, err
	}
	if !before.Mode().IsRegular() {
		return nil, nil, &Error{Path: name, Err: ErrNotRegular, Detail: kind(before.Mode())}
	}
	f, err := openFile(name, noFollow)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() { // swapped in after the stat
		f.Close()
		return nil, nil, &Error{Path: name, Err: ErrNotRegular, Detail: kind(fi.Mode())}
	}
	if !os.SameFile(before, fi) {
		f.Close()
		return nil, nil, &Error{Path: name, Err: ErrChanged, Detail: "another file each time"}
	}
	return f, fi, nil
}

// Read implements io.Reader.
func (f *File) Read(p []byte) (int, error) {
	if f.left <= 0 {
		// One byte more tells a file of exactly the limit from a larger
		// one (a file that grew after the open).
		var b [1]byte
		n, err := f.f.Read(b[:])
		if n > 0 {
			return 0, tooLarge(f.path, f.max)
		}
		return 0, err
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.f.Read(p)
	f.left -= int64(n)
	return n, err
}

// Stat returns what fstat said when the file was opened.
func (f *File) Stat() fs.FileInfo { return f.info }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// ReadFile reads the whole file name under o's rules.
func ReadFile(name string, o Options) ([]byte, error) {
	f, err := Open(name, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func tooLarge(name string, max int64) error {
	return &Error{Path: name, Err: ErrTooLarge, Detail: "more than " + size(max)}
}

// size prints a limit the way the documentation states it.
func size(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// kind names a file type that is not a regular file.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "of type " + m.Type().String()
}
