package proxy

import (
	"math/rand/v2"
	"sync"
	"time"
)

// failureTimes remembers how long the last logins that a backend refused
// for bad credentials took, from the login command to the refusal. A
// refusal popgate decides by itself (a name no route matches, a lookup's
// no) is answered no sooner than a time drawn from these, so that a client
// timing its attempts cannot tell a routed name with a wrong password from
// a name popgate does not know: both take what the backends take, with the
// backends' own spread. Until a backend has refused a login there is
// nothing to imitate, and nothing to tell apart either.
//
// The times live on the Server, across reloads; they follow the backends
// as popgate runs.
type failureTimes struct {
	mu   sync.Mutex
	d    [failureSamples]time.Duration
	n    int // samples held, up to failureSamples
	next int // where the next sample goes
}

// failureSamples is how many recent refusals are kept: enough to follow
// the backends' spread, few enough to follow a change within minutes.
const failureSamples = 64

// add records one backend refusal's duration.
func (f *failureTimes) add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.d[f.next] = d
	f.next = (f.next + 1) % failureSamples
	f.n = min(f.n+1, failureSamples)
}

// sample returns one of the recorded durations, picked at random, or 0
// when none is recorded.
func (f *failureTimes) sample() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return 0
	}
	return f.d[rand.IntN(f.n)]
}
