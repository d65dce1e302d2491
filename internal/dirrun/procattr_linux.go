package dirrun

import "syscall"

// childProcAttr runs a server as cred's user (when set) and makes the
// kernel send it SIGTERM if the process that started it dies without
// stopping it (a test binary's timeout panic), so no stray server keeps a
// port.
func childProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Credential: cred}
}
