package main

import "github.com/popgate/popgate/tlsconf"

// fdReserve is the part of the file descriptor limit kept for everything
// but client connections: the listening sockets, the log, ACME cache and
// map files, connections to the lookup service, the ACME CA and DNS, the
// admin endpoint.
const fdReserve = 128

// fdBudget is how popgate shares the process's file descriptors
// (RLIMIT_NOFILE; Go raises the soft limit to the hard one at start, since
// Go 1.19, so the hard limit is what counts): fdReserve for the process,
// at most a quarter of the rest for the ACME challenge answerers, and
// all else for POP3 sessions, two each (client and backend). The
// challenge answerers never hold more than their share, so however many
// connections reach ports 80 and 443, the POP3 listeners keep theirs.
type fdBudget struct {
	Limit int // the descriptor limit; 0: unknown, nothing is lowered
	// Challenges caps the challenge answerers' connections
	// (tls.acme.max_challenge_connections, lowered to the answerers'
	// share); 0 without answerers. ChallengesPerIP is the per-address
	// cap, at most Challenges.
	Challenges, ChallengesPerIP int
	// ChallengesLowered reports that the limit lowered
	// max_challenge_connections.
	ChallengesLowered bool
	// POP3 is what is left for POP3 sessions (0 when Limit is unknown).
	POP3 int
}

// planFDs splits limit (0: unknown) for c.
func planFDs(limit int, c *settings) fdBudget {
	b := fdBudget{Limit: limit}
	if a := c.TLS.ACME; a.answersChallenges() {
		b.Challenges, b.ChallengesPerIP = a.MaxChallengeConns, a.MaxChallengeConnsPerIP
	}
	if limit <= 0 {
		return b
	}
	rest := max(limit-fdReserve, 0)
	if share := max(rest/4, 1); b.Challenges > share {
		b.Challenges, b.ChallengesLowered = share, true
	}
	b.ChallengesPerIP = min(b.ChallengesPerIP, b.Challenges)
	b.POP3 = max(rest-b.Challenges, 0)
	return b
}

// challengeLimits returns the caps for tlsconf.
func (b fdBudget) challengeLimits() tlsconf.ChallengeLimits {
	return tlsconf.ChallengeLimits{MaxConns: b.Challenges, MaxConnsPerIP: b.ChallengesPerIP}
}

// pop3Sessions is the number of POP3 sessions the budget holds.
func (b fdBudget) pop3Sessions() int { return b.POP3 / 2 }
