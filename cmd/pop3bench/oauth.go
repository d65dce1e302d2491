package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/popgate/popgate/internal/oidctest"
)

// The backend's master user popgate-oauth logs in as.
const (
	benchMasterUser = "popgate-master"
	benchMasterPass = "bench-master-pw-4Tq7"
)

// issuerIdleConns is the most idle connections to the issuer popgate's
// HTTPS client keeps (MaxIdleConnsPerHost in cmd/popgate/oauth.go).
const issuerIdleConns = 8

// oauthAudience is the audience of the benchmark's tokens.
const oauthAudience = "popgate-bench"

// oauthSide is the token workloads' side: the test OpenID provider and a
// popgate with [oauth] verifying its tokens.
type oauthSide struct {
	idp    *oidctest.Provider
	pg     *popgateProc
	fdBase int
	// cached holds one token per mailbox, for login-token-cached.
	cached map[string]string
}

// startOAuth starts the provider (once per run) and a popgate named name
// with [oauth] in front of the current backend, whose master user is
// benchMasterUser.
func (b *bench) startOAuth(ctx context.Context, name string, rep *Report) error {
	if b.oauth == nil {
		dir := filepath.Join(b.dir, "oidc")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		idp, err := oidctest.Start(dir)
		if err != nil {
			return fmt.Errorf("test OpenID provider: %w", err)
		}
		b.oauth = &oauthSide{idp: idp, cached: map[string]string{}}
		for _, a := range b.accounts {
			b.oauth.cached[a.User] = idp.Token(a.User, oauthAudience)
		}
		rep.Meta.OAuth = "internal/oidctest on 127.0.0.1 (HTTPS), RS256 JWTs; popgate logs in as the backend's master user (user*master)"
	}
	side := b.oauth
	masterFile := filepath.Join(b.dir, name+"-master-password")
	if err := writeFile0600(masterFile, benchMasterPass+"\n"); err != nil {
		return err
	}
	lines := []string{
		fmt.Sprintf("issuer = %q", side.idp.Issuer),
		fmt.Sprintf("audience = [%q]", oauthAudience),
		fmt.Sprintf("ca_file = %q", side.idp.CAFile),
		fmt.Sprintf("master_user = %q", benchMasterUser),
		fmt.Sprintf("master_password_file = %q", masterFile),
		`master_separator = "*"`,
	}
	pg, err := b.startPopgate(ctx, name, b.back.PlainAddr, "", lines)
	if err != nil {
		return err
	}
	side.pg = pg
	side.fdBase, err = settledFDs(pg.PID, 0)
	return err
}

// close stops the provider; the popgate is among b.procs, stopped before.
func (s *oauthSide) close() error {
	if s == nil || s.idp == nil {
		return nil
	}
	return s.idp.Close()
}

// tokenPool holds tokens signed ahead of a measurement, a queue per
// mailbox: login-token-new takes a new one for every session, so that the
// clients sign none while popgate is measured. An empty queue signs one
// on the spot.
type tokenPool struct {
	idp *oidctest.Provider
	mu  sync.Mutex
	q   map[string][]string
}

// newTokenPool signs about n tokens, spread over accounts, on every CPU.
func newTokenPool(idp *oidctest.Provider, accounts []account, n int) *tokenPool {
	p := &tokenPool{idp: idp, q: map[string][]string{}}
	// Workers do not share mailboxes evenly (runLoad): a margin.
	per := (n+len(accounts)-1)/len(accounts)*3/2 + 2
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := make(chan account)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for a := range next {
				toks := make([]string, per)
				for i := range toks {
					toks[i] = idp.Token(a.User, oauthAudience)
				}
				mu.Lock()
				p.q[a.User] = toks
				mu.Unlock()
			}
		})
	}
	for _, a := range accounts {
		next <- a
	}
	close(next)
	wg.Wait()
	return p
}

// token returns a token of a's that no session has used.
func (p *tokenPool) token(a account) string {
	p.mu.Lock()
	q := p.q[a.User]
	if len(q) > 0 {
		p.q[a.User] = q[1:]
		p.mu.Unlock()
		return q[0]
	}
	p.mu.Unlock()
	return p.idp.Token(a.User, oauthAudience)
}

func writeFile0600(name, content string) error {
	return os.WriteFile(name, []byte(content), 0o600)
}
