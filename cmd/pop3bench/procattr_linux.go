package main

import "syscall"

// childProcAttr makes the kernel send SIGTERM to popgate if the benchmark
// dies without stopping it, so no stray popgate keeps a port.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
