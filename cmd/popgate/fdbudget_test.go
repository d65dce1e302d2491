package main

import (
	"testing"

	"github.com/popgate/popgate/tlsconf"
)

// TestPlanFDs: the challenge answerers get at most a quarter of the
// descriptors beyond the reserve, POP3 the rest; an unknown limit lowers
// nothing.
func TestPlanFDs(t *testing.T) {
	acme := func(http string, total, perIP int) *settings {
		return &settings{TLS: tlsSettings{ACME: &acmeSettings{
			ACME:              tlsconf.ACMEConfig{HTTPChallenge: http},
			MaxChallengeConns: total, MaxChallengeConnsPerIP: perIP,
		}}}
	}
	const dflt, dfltPerIP = defaultChallengeConns, defaultChallengeConnsPerIP
	for _, tc := range []struct {
		name    string
		limit   int
		cfg     *settings
		want    fdBudget
		wantSes int
	}{
		{"no acme", 1024, &settings{}, fdBudget{Limit: 1024, POP3: 896}, 448},
		{"acme without answerers", 1024, acme("", dflt, dfltPerIP), fdBudget{Limit: 1024, POP3: 896}, 448},
		{"defaults, large limit", 65536, acme(":80", dflt, dfltPerIP),
			fdBudget{Limit: 65536, Challenges: 256, ChallengesPerIP: 16, POP3: 65536 - 128 - 256}, (65536 - 128 - 256) / 2},
		{"defaults, limit 1024: a quarter", 1024, acme(":80", dflt, dfltPerIP),
			fdBudget{Limit: 1024, Challenges: 224, ChallengesPerIP: 16, ChallengesLowered: true, POP3: 672}, 336},
		{"small limit lowers per-ip too", 160, acme(":80", dflt, dfltPerIP),
			fdBudget{Limit: 160, Challenges: 8, ChallengesPerIP: 8, ChallengesLowered: true, POP3: 24}, 12},
		{"limit under the reserve", 100, acme(":80", dflt, dfltPerIP),
			fdBudget{Limit: 100, Challenges: 1, ChallengesPerIP: 1, ChallengesLowered: true}, 0},
		{"configured caps fit", 65536, acme(":80", 1000, 4),
			fdBudget{Limit: 65536, Challenges: 1000, ChallengesPerIP: 4, POP3: 65536 - 128 - 1000}, (65536 - 128 - 1000) / 2},
		{"unknown limit", 0, acme(":80", 1000, 4), fdBudget{Challenges: 1000, ChallengesPerIP: 4}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planFDs(tc.limit, tc.cfg)
			if got != tc.want || got.pop3Sessions() != tc.wantSes {
				t.Errorf("planFDs(%d) = %+v (%d sessions), want %+v (%d)", tc.limit, got, got.pop3Sessions(), tc.want, tc.wantSes)
			}
			if lim := got.challengeLimits(); lim.MaxConns != got.Challenges || lim.MaxConnsPerIP != got.ChallengesPerIP {
				t.Errorf("challengeLimits() = %+v, want the budget's caps", lim)
			}
		})
	}
}
