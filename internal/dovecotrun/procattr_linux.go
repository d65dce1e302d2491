package dovecotrun

import "syscall"

// childProcAttr makes the kernel send SIGTERM to the Dovecot master if the
// process that started it dies without calling Stop (a test binary's
// timeout panic, a benchmark killed by ^C), so no stray Dovecot keeps a
// port.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
