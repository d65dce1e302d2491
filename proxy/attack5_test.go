package proxy

// Regression tests from the attack review of the directory sources
// (route.sql, route.ldap) and the password hashes popgate checks.

import (
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// TestAttack5HashRefusalSetsFloor: a refusal that popgate's own password
// hash check gives (route.sql's or route.ldap's password_hash) takes the
// hash's time, bcrypt's or Argon2's tens to hundreds of milliseconds, and
// a name no directory knows is refused at once. With backends that refuse
// quickly (auth_failure_delay = 0 behind popgate's failure_delay), the
// floor followed only their refusals, so a wrong password for a name with
// a hash was answered later than a name nobody has, by the hash's time:
// the directory's names, told apart by timing. A lookup's refusals set the
// floor too.
func TestAttack5HashRefusalSetsFloor(t *testing.T) {
	cfg := &Config{AssumedFailureTime: 2 * time.Second}
	sess := &session{cfg: cfg, srv: &Server{}}
	// The backends refuse in 5ms, long enough for the seed to leave.
	for range failureSamples + 1 {
		sess.failureWait(classify(&backendRejected{backend: "store", reply: "-ERR [AUTH] no\r\n"}, cfg), 5*time.Millisecond)
	}
	const hashTime = 300 * time.Millisecond
	known := hashTime + sess.failureWait(classify(&auth.DeniedError{Reason: "route.sql: password does not match", Checked: true}, cfg), hashTime)
	unknown := time.Millisecond + sess.failureWait(classify(auth.ErrNoRoute, cfg), time.Millisecond)
	if unknown < known {
		t.Errorf("a name with a password hash is refused after %v, a name nobody has after %v", known, unknown)
	}
}

// TestAttack5FastRefusalsKeepFloor: refusals that checked no password (a
// name or password popgate refuses before any lookup, a disabled account,
// a SASL authorization identity refused, a cached refusal) are fast, and
// must not push the password hash checks' times out of the floor: a
// client could otherwise send 64 of them and then time names again.
func TestAttack5FastRefusalsKeepFloor(t *testing.T) {
	cfg := &Config{AssumedFailureTime: 2 * time.Second}
	sess := &session{cfg: cfg, srv: &Server{}}
	for range failureSamples + 1 {
		sess.failureWait(classify(&backendRejected{backend: "store", reply: "-ERR [AUTH] no\r\n"}, cfg), 5*time.Millisecond)
	}
	const hashTime = 300 * time.Millisecond
	sess.failureWait(classify(&auth.DeniedError{Reason: "route.sql: password does not match", Checked: true}, cfg), hashTime)
	for range 2 * failureSamples {
		sess.failureWait(classify(&auth.DeniedError{Reason: "auth: credentials contain CR, LF or NUL"}, cfg), time.Microsecond)
	}
	if unknown := time.Millisecond + sess.failureWait(classify(auth.ErrNoRoute, cfg), time.Millisecond); unknown < hashTime {
		t.Errorf("after fast refusals, a name nobody has is refused after %v, a password hash check takes %v", unknown, hashTime)
	}
}
