//go:build !linux

package interop

import "syscall"

// childProcAttr has nothing to add outside Linux; the interop tests run on
// Linux only, this keeps `go vet` working elsewhere.
func childProcAttr() *syscall.SysProcAttr { return nil }
