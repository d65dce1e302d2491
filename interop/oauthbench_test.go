package interop

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/internal/oidctest"
)

// BenchmarkOAuthLogin measures logins through popgate to one Dovecot over
// TLS (a full handshake each): with a password (USER/PASS relayed), with
// an OAuth token popgate has verified before (cached), and with a token it
// must verify (cache_size = 1, so every login checks an RS256 signature;
// the keys are fetched once); the token logins reach Dovecot as
// "user*master". One run:
//
//	POPGATE_INTEROP=1 go test -run '^$' -bench OAuthLogin -benchtime 1500x ./interop
//
// The sides take turns, 100 logins each, eight at a time; it reports per
// side logins per second, popgate's CPU time per login (from /proc) and
// that over the password login's.
func BenchmarkOAuthLogin(b *testing.B) {
	requireInterop(b, "dovecot")
	const nUsers = 64
	users := map[string]string{}
	var names []string
	for i := range nUsers {
		u := fmt.Sprintf("bench%02d@example.com", i)
		users[u] = "Bench-pw-" + strconv.Itoa(i)
		names = append(names, u)
	}
	d := startDovecotWith(b, func(o *dovecotrun.Options) {
		o.Users = users
		o.MasterUsers = map[string]string{oauthMaster: oauthMasterPass}
		o.NoTLSInstance, o.HAProxy = false, false
	})
	idp, err := oidctest.Start(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(idp.Stop)
	masterFile := filepath.Join(b.TempDir(), "master")
	writeFile(b, masterFile, []byte(oauthMasterPass+"\n"), 0o600)
	tokens := map[string]string{}
	secrets := []string{oauthMasterPass}
	for _, u := range names {
		tokens[u] = idp.Token(u, oauthAudience)
		secrets = append(secrets, users[u], tokens[u])
	}
	start := func(cacheSize int) *popgate {
		return startPopgate(b, popgateConfig{
			Backends: []popgateBackend{{Name: "plain", Address: d.PlainAddr, TLS: "none"}},
			Default:  "plain",
			LogLevel: "info",
			OAuth: []string{
				fmt.Sprintf("issuer = %q", idp.Issuer),
				fmt.Sprintf("audience = [%q]", oauthAudience),
				fmt.Sprintf("ca_file = %q", idp.CAFile),
				fmt.Sprintf("cache_size = %d", cacheSize),
				fmt.Sprintf("master_user = %q", oauthMaster),
				fmt.Sprintf("master_password_file = %q", masterFile),
				`master_separator = "*"`,
			},
		}, secrets...)
	}
	cachedPG, uncachedPG := start(1000), start(1)
	password := func(u string) []string { return []string{"USER " + u, "PASS " + users[u]} }
	token := func(u string) []string { return []string{"AUTH XOAUTH2 " + xoauth2(u, tokens[u])} }
	sides := []struct {
		name  string
		pg    *popgate
		login func(string) []string
	}{
		{"password", cachedPG, password},
		{"token-cached", cachedPG, token},
		{"token-uncached", uncachedPG, token},
	}
	for _, s := range sides { // warm: the keys fetched, the cache filled
		for _, u := range names {
			if err := oauthBenchLogin(s.pg.POP3SAddr, s.pg.ca.clientConfig(s.pg.ServerName), s.login(u)); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}
	}
	const round = 100
	cpu := make([]time.Duration, len(sides))
	wall := make([]time.Duration, len(sides))
	b.ResetTimer()
	for r, done := 0, 0; done < b.N; r, done = r+1, done+round {
		n := min(round, b.N-done)
		for k := range sides {
			i := (r + k) % len(sides)
			s := sides[i]
			conf := s.pg.ca.clientConfig(s.pg.ServerName)
			cpu0, err := processCPU(s.pg.process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for {
						j := next.Add(1) - 1
						if j >= int64(n) {
							return
						}
						if err := oauthBenchLogin(s.pg.POP3SAddr, conf, s.login(names[int(j)%len(names)])); err != nil {
							failed.Store(err)
							return
						}
					}
				})
			}
			wg.Wait()
			wall[i] += time.Since(t0)
			cpu1, err := processCPU(s.pg.process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			if err, ok := failed.Load().(error); ok {
				b.Fatalf("%s: %v", s.name, err)
			}
			cpu[i] += cpu1 - cpu0
		}
	}
	b.StopTimer()
	for i, s := range sides {
		b.ReportMetric(float64(b.N)/wall[i].Seconds(), s.name+"-logins/s")
		b.ReportMetric(float64(cpu[i].Microseconds())/float64(b.N), s.name+"-cpu-µs/login")
		if i > 0 {
			b.ReportMetric(float64(cpu[i])/float64(cpu[0]), s.name+"-cpu/password")
		}
	}
}

// oauthBenchLogin logs in at addr over implicit TLS (a full handshake) with
// the commands of login, each answered +OK, and quits.
func oauthBenchLogin(addr string, conf *tls.Config, login []string) error {
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	for _, line := range append(append([]string{""}, login...), "QUIT") {
		if line != "" {
			if _, err := c.Write([]byte(line + "\r\n")); err != nil {
				return err
			}
		}
		resp, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(resp, "+OK") {
			return fmt.Errorf("%s: %q", commandName(line), strings.TrimSpace(resp))
		}
	}
	return nil
}
