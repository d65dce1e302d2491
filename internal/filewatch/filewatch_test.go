package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replace writes data to name atomically (a rename), so that no round sees
// the file half written.
func replace(t *testing.T, name, data string) {
	t.Helper()
	tmp := name + ".tmp"
	write(t, tmp, data)
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// setTime gives name the modification time mtime.
func setTime(t *testing.T, name string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(name, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestStampEqual(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "f")
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name   string
		change func(t *testing.T)
		equal  bool
	}{
		{"unchanged", func(t *testing.T) {}, true},
		{"read again", func(t *testing.T) {
			if _, err := os.ReadFile(name); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"in place, other size", func(t *testing.T) { write(t, name, "longer"); setTime(t, name, mtime) }, false},
		{"in place, same size, other time", func(t *testing.T) { write(t, name, "other") }, false},
		{"renamed over, same size and time", func(t *testing.T) {
			tmp := filepath.Join(dir, "tmp")
			write(t, tmp, "other")
			setTime(t, tmp, mtime)
			if err := os.Rename(tmp, name); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"removed", func(t *testing.T) {
			if err := os.Remove(name); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(t, name, "first")
			setTime(t, name, mtime)
			before := Stat(name)
			tc.change(t)
			if got := Stat(name).Equal(before); got != tc.equal {
				t.Errorf("Stat after %s: Equal = %v, want %v", tc.name, got, tc.equal)
			}
		})
	}

	missing := filepath.Join(dir, "missing")
	if !Stat(missing).Equal(Stat(missing)) {
		t.Error("two stamps of a missing file differ")
	}
	if Stat(missing).Err() == nil {
		t.Error("Stat of a missing file has no error")
	}
	if (Stamp{}).Equal(Stamp{}) {
		t.Error("the zero Stamp equals itself")
	}
	write(t, name, "first")
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if !Of(fi).Equal(Stat(name)) {
		t.Error("Of(fstat) differs from Stat of the same file")
	}
}

func TestSnapshot(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "a")
	write(t, b, "b")
	s := StatAll([]string{a, b})
	if !s.Equal(StatAll([]string{a, b})) {
		t.Error("two snapshots of unchanged files differ")
	}
	if s.Equal(StatAll([]string{a})) || s.Equal(nil) || Snapshot(nil).Equal(s) {
		t.Error("snapshots of different lengths are equal")
	}
	old := time.Now().Add(-time.Hour)
	setTime(t, a, old)
	setTime(t, b, old)
	s = StatAll([]string{a, b})
	if s.ModifiedAfter(old.Add(time.Second)) || !s.ModifiedAfter(old.Add(-time.Second)) {
		t.Errorf("ModifiedAfter around %v is wrong", old)
	}
}

// TestWatch: a change made before the watch's first round is seen, because
// rounds compare with what the owner read; an unchanged file calls back
// nothing; Watch returns when ctx is done.
func TestWatch(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	write(t, name, "first")
	read := StatAll([]string{name}) // what the owner read
	replace(t, name, "second, before the watch starts")

	calls := make(chan Snapshot)
	reread := make(chan Snapshot) // what the owner reads when called
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, time.Millisecond, []string{name}, func() Snapshot { return read }, func(now Snapshot) {
			calls <- now
			read = <-reread
		})
	}()
	wait := func() Snapshot {
		t.Helper()
		select {
		case now := <-calls:
			return now
		case <-time.After(10 * time.Second): // against a hang, not a timing check
			t.Fatal("changed was not called")
			return nil
		}
	}
	now := wait()
	if !now.Equal(StatAll([]string{name})) {
		t.Error("changed got another snapshot than the file's")
	}
	reread <- now

	replace(t, name, "third")
	reread <- wait()

	// Nothing changes: a round that called back would block on calls.
	select {
	case <-calls:
		t.Error("changed called for an unchanged file")
	case <-time.After(20 * time.Millisecond):
	}

	// A nil last asks for a call whatever the file says.
	replace(t, name, "fourth")
	now = wait()
	reread <- nil
	if again := wait(); !again.Equal(now) {
		t.Error("the call after a nil last got another snapshot of an unchanged file")
	}
	reread <- now
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after ctx was done")
	}
}
