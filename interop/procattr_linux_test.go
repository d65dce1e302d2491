package interop

import "syscall"

// childProcAttr makes the kernel send SIGTERM to a long-running child
// (Dovecot, popgate) if the test binary dies without running its cleanups,
// for example on a `go test -timeout` panic, so no stray server keeps a port.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
