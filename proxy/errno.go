package proxy

import "syscall"

// errTooManyFiles is the accept error of a process at its descriptor limit;
// Serve backs off on it instead of failing.
var errTooManyFiles error = syscall.EMFILE
