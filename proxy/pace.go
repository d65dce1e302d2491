package proxy

import (
	"sync"
	"time"
)

// failureTimes remembers, per backend, how long the last logins that the
// backend refused for bad credentials took, from the login command to the
// refusal. Every refusal of credentials, whoever gave it (a backend, a
// lookup, popgate for a name no route matches), is answered no sooner than
// the longest of these times across all backends (the floor), so that a
// client timing its attempts cannot tell a routed name from an unrouted
// one, nor a name on a fast backend from one on a slow backend: all take
// the floor. Only a refusal that itself took longer than the floor stands
// out, and it raises the floor for the ones after it.
//
// Backends' refusals are recorded, and a lookup's that checked the
// password (auth.DeniedError.Checked, under lookupRefusals: an auth_http
// service's, or popgate's check of a directory's password_hash, which
// takes bcrypt's or Argon2's time); never a refusal that checked nothing
// (a name nobody routes, unusable credentials, a disabled account, a
// cached answer), so a client cannot lower the floor by sending names
// nobody knows: the floor follows what the checks of passwords take. Each backend starts with one
// sample of the seed (Config.AssumedFailureTime, by default
// [DefaultAssumedFailureTime]), so that before a backend has refused
// failureSamples logins its speed is not learnt from the first few: a cold
// start gives nothing away either.
//
// The times live on the Server, across reloads; a backend's samples are
// kept by name (bare addresses from a lookup share one).
type failureTimes struct {
	mu       sync.Mutex
	backends map[string]*failureRing
}

// lookupRefusals is the name under which failureTimes records the
// refusals of lookups that checked the password; no backend is named so.
const lookupRefusals = "(lookup refusal)"

// failureSamples is how many recent refusals are kept per backend: enough
// to follow its spread, few enough to follow a change within minutes.
const failureSamples = 64

// DefaultAssumedFailureTime is what a backend is assumed to take to refuse
// a login until it has refused enough of them: Dovecot's default
// auth_failure_delay, the most common backend's.
const DefaultAssumedFailureTime = 2 * time.Second

type failureRing struct {
	d    [failureSamples]time.Duration
	n    int // samples held, up to failureSamples
	next int // where the next sample goes
}

func (r *failureRing) add(d time.Duration) {
	r.d[r.next] = d
	r.next = (r.next + 1) % failureSamples
	r.n = min(r.n+1, failureSamples)
}

func (r *failureRing) max() time.Duration {
	var m time.Duration
	for _, d := range r.d[:r.n] {
		m = max(m, d)
	}
	return m
}

// add records one refusal by backend that took d; seed is the first sample
// of a backend not seen before.
func (f *failureTimes) add(backend string, d, seed time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.backends == nil {
		f.backends = make(map[string]*failureRing)
	}
	r := f.backends[backend]
	if r == nil {
		r = &failureRing{}
		r.add(seed)
		f.backends[backend] = r
	}
	r.add(d)
}

// floor returns the longest recent refusal time across backends, or seed
// before any backend has refused a login.
func (f *failureTimes) floor(seed time.Duration) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.backends) == 0 {
		return seed
	}
	var m time.Duration
	for _, r := range f.backends {
		m = max(m, r.max())
	}
	return m
}
