// Package filewatch polls files and calls back when they change. It is the
// one watch behind the certificate files (tlsconf), the route map file
// (auth) and the configuration file (cmd/popgate -watch-config): each of
// them re-reads its files, through internal/safefile, when Watch says so.
//
//	filewatch.Watch(ctx, 5*time.Second, paths, lastRead, func(now filewatch.Snapshot) {
//		reload() // reads the files and records what it read, for lastRead
//	})
//
// A file has changed when stat(2), following symbolic links, says it is
// another file (device and inode: a file replaced by a rename is another
// file even when its size and a coarse modification time match), of
// another size or modification time, or when it appeared, vanished, or
// fails to stat for another reason.
//
// Each round is compared with what the owner last read, not with what the
// round before saw: an owner stamps a file as it opened it ([Of] on the
// fstat that safefile's File.Stat returns) and hands those stamps back
// through last. So a change made between a load and the watch's first
// round is seen, and a reload made by someone else (SIGHUP) is not made
// again.
//
// Polling, rather than inotify (fsnotify), because it also sees files
// replaced through symlink swaps (Kubernetes ConfigMaps and Secrets), on
// network file systems and in containers where inotify is unavailable,
// costs one stat(2) per file and round, and needs no dependency. A change
// is seen within one interval.
package filewatch

import (
	"context"
	"io/fs"
	"os"
	"time"
)

// Stamp is what stat said about one file: which file it is, its size and
// modification time; or that stat failed, and why. The zero Stamp is
// unknown and equals no other.
type Stamp struct {
	info fs.FileInfo // nil when stat failed
	err  error       // why it failed
}

// Stat stamps the file name names now, following symbolic links.
func Stat(name string) Stamp {
	fi, err := os.Stat(name)
	if err != nil {
		return Stamp{err: err}
	}
	return Stamp{info: fi}
}

// Of stamps a file from what stat or fstat said about it: for a file an
// owner has read, the fstat of the descriptor it read, so that the stamp is
// of the very file read even when the path was replaced meanwhile.
func Of(info fs.FileInfo) Stamp { return Stamp{info: info} }

// Err returns why stat failed, or nil.
func (s Stamp) Err() error { return s.err }

// Equal reports whether s and t say the same about a file: the same file
// (device and inode) with the same size and modification time, or stat
// failing for the same reason (by its message).
func (s Stamp) Equal(t Stamp) bool {
	switch {
	case s.info != nil && t.info != nil:
		return os.SameFile(s.info, t.info) && s.info.Size() == t.info.Size() && s.info.ModTime().Equal(t.info.ModTime())
	case s.info == nil && t.info == nil:
		return s.err != nil && t.err != nil && s.err.Error() == t.err.Error()
	}
	return false
}

// Snapshot is the stamps of a list of files, in the list's order. A nil
// Snapshot equals none of one file or more: an owner's last returns nil to
// have the next round call changed whatever the files say.
type Snapshot []Stamp

// StatAll stamps each of names now.
func StatAll(names []string) Snapshot {
	s := make(Snapshot, len(names))
	for i, name := range names {
		s[i] = Stat(name)
	}
	return s
}

// Equal reports whether s and t have as many stamps and each is Equal.
func (s Snapshot) Equal(t Snapshot) bool {
	if len(s) != len(t) {
		return false
	}
	for i := range s {
		if !s[i].Equal(t[i]) {
			return false
		}
	}
	return true
}

// ModifiedAfter reports whether a file of s was last modified after t. A
// file rewritten in place within its file system's timestamp granularity
// (a clock tick on Linux before 6.13, up to two seconds on some network
// and FAT file systems) keeps its stamp when its size stays; an owner that
// compares content rather than stamps reads a file modified that recently
// again at the next round (as git treats a "racily clean" index entry).
func (s Snapshot) ModifiedAfter(t time.Time) bool {
	for _, st := range s {
		if st.info != nil && st.info.ModTime().After(t) {
			return true
		}
	}
	return false
}

// Watch polls the files at paths once every (which must be positive) until
// ctx is done, in the calling goroutine (run it in one of its own). Each
// round it stamps them ([StatAll]) and, when the result is not Equal to
// what last returns, calls changed with it. last returns what the owner
// last read of the files, in the order of paths; changed is expected to
// read them again and to record what it read, for last. Watch calls the
// two one at a time, and neither once it has returned. Without paths it
// returns at once.
func Watch(ctx context.Context, every time.Duration, paths []string, last func() Snapshot, changed func(now Snapshot)) {
	if len(paths) == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := StatAll(paths); !now.Equal(last()) {
			changed(now)
		}
	}
}
