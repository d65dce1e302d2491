//go:build unix

package main

import (
	"math"
	"syscall"
)

// fdLimit returns the soft RLIMIT_NOFILE, which Go has raised to the hard
// limit at start; 0 when it cannot be read.
func fdLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(rl.Cur)
}
