// Package interop holds tests against real Dovecot, curl, fetchmail and Python's poplib; run by scripts/test.
package interop
