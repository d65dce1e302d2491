package interop

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/conffile"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
)

// BenchmarkDirectoryRouting measures logins through popgate to one
// Dovecot, routed by route.users (static), and by route.sql on PostgreSQL
// and on MariaDB and by route.ldap on OpenLDAP, each with its cache warm
// and without a cache (every login a query or a search), in one run:
//
//	POPGATE_INTEROP=1 go test -run '^$' -bench DirectoryRouting -benchtime 1500x ./interop
//
// Each login is USER, PASS (popgate's login to Dovecot, in plaintext on
// loopback) and QUIT, eight at a time: in the sub-benchmark "tls" after a
// full TLS handshake with popgate (what a client costs), in "plain" over
// plaintext POP3 (so that no handshake hides what routing costs). The
// seven sides take turns, 100 logins each, until each made b.N. It reports,
// per side, logins per second, popgate's CPU time per login (all its
// threads' time on a CPU, from /proc) and that CPU time over static's: the
// cost routing adds is the difference to static. The directory servers'
// own CPU time is not popgate's and is not counted.
func BenchmarkDirectoryRouting(b *testing.B) {
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
		o.NoTLSInstance, o.HAProxy = false, false
	})
	backends := []conffile.Backend{{Name: "plain", Address: d.PlainAddr, TLS: "none"}}
	static := map[string]string{}
	for _, u := range names {
		static[u] = "plain"
	}
	type side struct {
		name string
		pg   *popgate
	}
	secrets := append(slices.Collect(maps.Values(users)), dirrun.Password)
	config := func(c popgateConfig) popgateConfig {
		c.Backends, c.LogLevel, c.PlainListener = backends, "info", true
		return c
	}
	sides := []side{{"static", startPopgate(b, config(popgateConfig{Users: static}), secrets...)}}
	cached := func(source, ttl string) string {
		if ttl == "0s" {
			return source + "-uncached"
		}
		return source + "-cached"
	}
	for _, driver := range []string{"postgres", "mysql"} {
		db := startSQLDB(b, driver)
		b.Logf("%s", db.version)
		var sql strings.Builder
		sql.WriteString(plainSchema(driver))
		for _, u := range names {
			fmt.Fprintf(&sql, "\nINSERT INTO users (email, backend) VALUES (%s, 'plain');", sqlQuote(u))
		}
		if err := db.exec(sql.String()); err != nil {
			b.Fatal(err)
		}
		for _, ttl := range []string{"60s", "0s"} {
			pg := startPopgate(b, config(popgateConfig{
				SQL: &conffile.SQL{Driver: driver, DSN: db.dsn, Query: plainQuery, CacheTTL: ttl}}), secrets...)
			sides = append(sides, side{cached(driver, ttl), pg})
		}
	}
	// OpenLDAP: inetOrgPerson entries with a mailHost, on route.ldap's
	// default filter; the host answer takes backend "plain"'s port.
	slapd := dirrun.SlapdFor(b)
	b.Logf("slapd %s", slapd.Version)
	var ldif strings.Builder
	for i, u := range names {
		fmt.Fprintf(&ldif, "dn: uid=bench%02d,%s\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n"+
			"uid: bench%02d\ncn: Bench\nsn: Example\nmail: %s\nmailHost: 127.0.0.1\n\n", i, dirrun.PeopleDN, i, u)
	}
	if err := slapd.Add(ldif.String()); err != nil {
		b.Fatal(err)
	}
	passFile := filepath.Join(b.TempDir(), "ldap-password")
	writeFile(b, passFile, []byte(dirrun.Password), 0o600)
	for _, ttl := range []string{"60s", "0s"} {
		pg := startPopgate(b, config(popgateConfig{LDAP: &conffile.LDAP{URL: slapd.URL(), CAFile: slapd.CAFile,
			BindDN: dirrun.BindDN, BindPasswordFile: passFile, Base: dirrun.PeopleDN, Backend: "plain", CacheTTL: ttl}}), secrets...)
		sides = append(sides, side{cached("ldap", ttl), pg})
	}

	for _, mode := range []string{"tls", "plain"} {
		addr := func(pg *popgate) (string, *tls.Config) {
			if mode == "plain" {
				return pg.PlainAddr, nil
			}
			return pg.POP3SAddr, pg.ca.clientConfig(pg.ServerName)
		}
		b.Run(mode, func(b *testing.B) {
			for _, s := range sides {
				// Warm: every user once (the cache, the pool, the
				// statements, the directory's connections).
				a, conf := addr(s.pg)
				for _, u := range names {
					if err := benchLogin(a, conf, u, users[u]); err != nil {
						b.Fatalf("%s: %v", s.name, err)
					}
				}
			}
			// The sides take turns, a round of logins each, so that
			// the load of the machine (shared, two cores) weighs on
			// them alike.
			const round = 100
			cpu := make([]time.Duration, len(sides))
			wall := make([]time.Duration, len(sides))
			b.ResetTimer()
			for r, done := 0, 0; done < b.N; r, done = r+1, done+round {
				n := min(round, b.N-done)
				// Each round starts with another side: none always
				// follows the same one.
				for k := range sides {
					i := (r + k) % len(sides)
					s := sides[i]
					a, conf := addr(s.pg)
					c, w, err := benchRound(s.pg.process.Pid, a, conf, n, names, users)
					if err != nil {
						b.Fatalf("%s: %v", s.name, err)
					}
					cpu[i] += c
					wall[i] += w
				}
			}
			b.StopTimer()
			for i, s := range sides {
				b.ReportMetric(float64(b.N)/wall[i].Seconds(), s.name+"-logins/s")
				b.ReportMetric(float64(cpu[i].Microseconds())/float64(b.N), s.name+"-cpu-µs/login")
				if i > 0 {
					b.ReportMetric(float64(cpu[i])/float64(cpu[0]), s.name+"-cpu/static")
				}
			}
		})
	}
}

// benchRound makes n logins at addr (TLS with conf, plaintext without),
// eight at a time, cycling through names, and returns the CPU time of
// popgate's process pid and the wall time they took.
func benchRound(pid int, addr string, conf *tls.Config, n int, names []string, users map[string]string) (cpu, wall time.Duration, err error) {
	cpu0, err := processCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				u := names[int(i)%len(names)]
				if err := benchLogin(addr, conf, u, users[u]); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	wall = time.Since(start)
	cpu1, err := processCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	if err, ok := failed.Load().(error); ok {
		return 0, 0, err
	}
	return cpu1 - cpu0, wall, nil
}

// benchLogin logs in through popgate at addr (implicit TLS with conf, a
// full handshake; plaintext without) and quits.
func benchLogin(addr string, conf *tls.Config, user, pass string) error {
	var c net.Conn
	var err error
	if conf != nil {
		c, err = tls.Dial("tcp", addr, conf)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	for _, line := range []string{"", "USER " + user, "PASS " + pass, "QUIT"} {
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
			return fmt.Errorf("%s for %s: %q", commandName(line), user, strings.TrimSpace(resp))
		}
	}
	return nil
}

// processCPU returns the CPU time process pid has used, all its threads
// together: the sum of their /proc/PID/task/TID/schedstat, in nanoseconds
// (/proc/PID/stat counts in ticks of 10 ms, too coarse for a round). A
// thread that has exited is no longer counted; Go's rarely exit.
func processCPU(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, task.Name(), b)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, task.Name(), b)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}
