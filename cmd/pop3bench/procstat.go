package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Process figures come from /proc (Linux only): utime and stime in clock
// ticks from /proc/PID/stat, VmRSS from /proc/PID/status, open descriptors
// from /proc/PID/fd.

// clockTick is one unit of /proc/PID/stat's CPU times: USER_HZ, which the
// kernel fixes at 100 on every architecture Go supports.
const clockTick = 10 * time.Millisecond

// procStat is the part of /proc/PID/stat the benchmark reads.
type procStat struct {
	PID, PPID      int
	UTime, STime   uint64 // this process, in clock ticks
	CUTime, CSTime uint64 // its waited-for children, in clock ticks
	State          byte
}

// CPU is user plus system time of the process itself.
func (s procStat) CPU() time.Duration { return time.Duration(s.UTime+s.STime) * clockTick }

// ChildCPU is user plus system time of the children it has reaped.
func (s procStat) ChildCPU() time.Duration { return time.Duration(s.CUTime+s.CSTime) * clockTick }

// parseStat parses one /proc/PID/stat line. The command name (field 2) is
// in parentheses and may itself hold spaces and parentheses, so the fields
// after it are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	var s procStat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return s, fmt.Errorf("malformed stat line %.60q", b)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return s, fmt.Errorf("malformed stat line %.60q: pid: %v", b, err)
	}
	s.PID = pid
	// After ")": state(3) ppid(4) pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime(14) stime(15) cutime(16) cstime(17) ...
	f := bytes.Fields(b[end+1:])
	if len(f) < 15 {
		return s, fmt.Errorf("malformed stat line %.60q: %d fields after the name", b, len(f))
	}
	if len(f[0]) != 1 {
		return s, fmt.Errorf("malformed stat line %.60q: state %q", b, f[0])
	}
	s.State = f[0][0]
	if s.PPID, err = strconv.Atoi(string(f[1])); err != nil {
		return s, fmt.Errorf("malformed stat line %.60q: ppid: %v", b, err)
	}
	for i, dst := range []*uint64{&s.UTime, &s.STime, &s.CUTime, &s.CSTime} {
		v, err := strconv.ParseInt(string(f[11+i]), 10, 64)
		if err != nil {
			return s, fmt.Errorf("malformed stat line %.60q: field %d: %v", b, 14+i, err)
		}
		*dst = uint64(max(v, 0)) // cutime/cstime are signed in proc(5)
	}
	return s, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// processCPU returns the CPU time pid has used so far.
func processCPU(pid int) (time.Duration, error) {
	s, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return s.CPU(), nil
}

// treeCPU returns the CPU time of root and every live descendant, plus
// what root's reaped children used (cutime+cstime). For a process manager
// such as Dovecot's master, which forks every service itself, the delta
// of this figure over a run is what the whole server spent in it: a child
// that exits during the run moves from the live sum into root's cutime.
func treeCPU(root int) (time.Duration, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := readStat(pid)
		if err != nil {
			continue // gone between ReadDir and now
		}
		stats[pid] = s
		children[s.PPID] = append(children[s.PPID], pid)
	}
	rs, ok := stats[root]
	if !ok {
		return 0, fmt.Errorf("process %d not found", root)
	}
	total := rs.ChildCPU()
	for queue := []int{root}; len(queue) > 0; queue = queue[1:] {
		pid := queue[0]
		total += stats[pid].CPU()
		queue = append(queue, children[pid]...)
	}
	return total, nil
}

// parseStatusKiB returns the value of a "Key:   123 kB" line of
// /proc/PID/status, in KiB.
func parseStatusKiB(b []byte, key string) (int64, error) {
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte(key+":"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("status line %q: want \"%s: N kB\"", bytes.TrimSpace(line), key)
		}
		return strconv.ParseInt(string(f[0]), 10, 64)
	}
	return 0, fmt.Errorf("no %s line in status", key)
}

// parseStatusInt returns the value of a "Key:   123" line of /proc/PID/status.
func parseStatusInt(b []byte, key string) (int64, error) {
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte(key+":")); ok {
			return strconv.ParseInt(string(bytes.TrimSpace(rest)), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s line in status", key)
}

// memInfo is what /proc/PID/status tells of a process's memory and threads.
type memInfo struct {
	RSSKiB  int64 // VmRSS
	HWMKiB  int64 // VmHWM, the peak RSS
	Threads int64
}

func readMem(pid int) (memInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	var m memInfo
	var errs [3]error
	m.RSSKiB, errs[0] = parseStatusKiB(b, "VmRSS")
	m.HWMKiB, errs[1] = parseStatusKiB(b, "VmHWM")
	m.Threads, errs[2] = parseStatusInt(b, "Threads")
	return m, errors.Join(errs[:]...)
}

// countFDs returns how many file descriptors pid has open.
func countFDs(pid int) (int, error) {
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, err
	}
	return len(entries), nil
}

// selfCPU returns the benchmark process's own CPU time (its clients, and
// the in-memory backend when that runs in-process), at microsecond
// resolution.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
