// Package pool assigns the users of a backend pool to its backends, as
// Dovecot's Director did for backends that share one mail store: a stable
// weighted hash picks a user's backend, and an affinity keeps the user
// there while any of their sessions lives and for a while after, so that
// a mailbox is never open on two backends at once.
//
// A [Director] holds the pools of the configuration, the operator's
// changes to them (drain, weight, add, remove) and the affinities, in
// memory on one replica or, through a [Store] and an [AdminStore] the
// cluster package provides, in Redis for a fleet.
package pool

import (
	"math"

	"github.com/popgate/popgate/auth"
)

// Member is one backend of a pool.
type Member struct {
	// Backend names a [[backend]].
	Backend string `json:"backend"`
	// Weight is the backend's share of the pool's users relative to the
	// others'; 0 takes no new users (drained).
	Weight int `json:"weight"`
}

// Pick returns the member of members that user is assigned to: the one
// with the highest weighted rendezvous score (highest random weight
// hashing with weights: -weight/ln(u), u the user's and the backend's
// hash mapped to (0,1)). Every replica computes the same answer from the
// same members without talking; a member that joins takes about its
// share of the users from every other, and one that leaves gives only
// its own users away. Members with weight 0, and those skip rejects, are
// passed over; "" when none is left. user is compared as given: callers
// fold it first.
func Pick(user string, members []Member, skip func(backend string) bool) string {
	best, bestScore := "", math.Inf(-1)
	uh := hashString(fnvOffset, user)
	for _, m := range members {
		if m.Weight <= 0 || skip != nil && skip(m.Backend) {
			continue
		}
		if s := score(uh, m); s > bestScore || s == bestScore && m.Backend < best {
			best, bestScore = m.Backend, s
		}
	}
	return best
}

// score is a member's weighted rendezvous score for a user whose name
// hashed to uh.
func score(uh uint64, m Member) float64 {
	h := mix(hashString(uh^0x9e3779b97f4a7c15, m.Backend))
	// The top 53 bits as a float in (0,1): never 0, never 1.
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(m.Weight) / math.Log(u)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// hashString is FNV-1a over s, from h. The hash is part of the contract
// between replicas (and versions of popgate): changing it moves users.
func hashString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix is SplitMix64's finalizer: FNV's low bits alone spread poorly.
func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Fold is the form of a user name the assignment and the affinity key
// on: [auth.FoldUser], lower case as Director's default
// director_username_hash (%Lu) for plain ASCII names, and one form for
// every spelling a directory takes for one entry (compatibility forms,
// format characters, spaces), so that one mailbox has one affinity and is
// never open on two backends because its user typed it two ways.
func Fold(user string) string { return auth.FoldUser(user) }
