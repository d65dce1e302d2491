package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and a ')' of its own, as prctl allows.
	line := []byte("4242 (pop3 (x) y) S 17 4242 4242 0 -1 4194560 905 0 0 0 123 45 6 7 20 0 1 0 1000 1234567 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n")
	s, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{PID: 4242, PPID: 17, State: 'S', UTime: 123, STime: 45, CUTime: 6, CSTime: 7}
	if s != want {
		t.Errorf("parseStat = %+v, want %+v", s, want)
	}
	if got := s.CPU(); got != 1680*time.Millisecond {
		t.Errorf("CPU() = %v, want 1.68s", got)
	}
	if got := s.ChildCPU(); got != 130*time.Millisecond {
		t.Errorf("ChildCPU() = %v, want 130ms", got)
	}
	for _, bad := range []string{"", "12 no parens S 1", "12 (x) S", "x (y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded, want an error", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := []byte("Name:\tpopgate\nVmPeak:\t 1266000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   16256 kB\nThreads:\t9\n")
	if v, err := parseStatusKiB(status, "VmRSS"); err != nil || v != 16256 {
		t.Errorf("VmRSS = %d, %v; want 16256", v, err)
	}
	if v, err := parseStatusKiB(status, "VmHWM"); err != nil || v != 20480 {
		t.Errorf("VmHWM = %d, %v; want 20480", v, err)
	}
	if v, err := parseStatusInt(status, "Threads"); err != nil || v != 9 {
		t.Errorf("Threads = %d, %v; want 9", v, err)
	}
	if _, err := parseStatusKiB(status, "VmSwap"); err == nil {
		t.Error("missing VmSwap: no error")
	}
	if _, err := parseStatusKiB(status, "Name"); err == nil {
		t.Error("Name is no size: no error")
	}
}

// TestProcSelf reads the test process's own entries, where /proc exists.
func TestProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	pid := os.Getpid()
	s, err := readStat(pid)
	if err != nil || s.PID != pid || s.PPID != os.Getppid() {
		t.Fatalf("readStat(self) = %+v, %v", s, err)
	}
	if _, err := treeCPU(pid); err != nil {
		t.Errorf("treeCPU(self): %v", err)
	}
	m, err := readMem(pid)
	if err != nil || m.RSSKiB <= 0 || m.Threads <= 0 {
		t.Errorf("readMem(self) = %+v, %v", m, err)
	}
	before, err := countFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if after, _ := countFDs(pid); after != before+1 {
		t.Errorf("countFDs: %d, then %d after opening a file", before, after)
	}
}
