package interop

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/conffile"
	"github.com/popgate/popgate/internal/dovecotrun"
)

// BenchmarkSQLRouting measures logins through popgate to one Dovecot,
// routed by route.users (static), by route.sql with its cache warm, and by
// route.sql without a cache (every login a query), on PostgreSQL and on
// MariaDB, in one run:
//
//	POPGATE_INTEROP=1 go test -run '^$' -bench SQLRouting -benchtime 2000x ./interop
//
// Each login is a full TLS handshake with popgate, USER, PASS (popgate's
// login to Dovecot, in plaintext on loopback) and QUIT, eight at a time.
// The sides take turns, 100 logins each, until each made b.N. It reports,
// per side, logins per second and popgate's CPU time per login (all its
// threads' time on a CPU, from /proc): the cost routing adds is the
// difference to static.
// The database's own CPU time is not popgate's and is not counted.
func BenchmarkSQLRouting(b *testing.B) {
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
	sides := []side{{"static", startPopgate(b, popgateConfig{Backends: backends, Users: static, LogLevel: "info"})}}
	for _, driver := range []string{"postgres", "mysql"} {
		db := startSQLDB(b, driver)
		var sql strings.Builder
		sql.WriteString(plainSchema(driver))
		for _, u := range names {
			fmt.Fprintf(&sql, "\nINSERT INTO users (email, backend) VALUES (%s, 'plain');", sqlQuote(u))
		}
		if err := db.exec(sql.String()); err != nil {
			b.Fatal(err)
		}
		for _, cache := range []string{"60s", "0s"} {
			name := driver + "-cached"
			if cache == "0s" {
				name = driver + "-uncached"
			}
			pg := startPopgate(b, popgateConfig{Backends: backends,
				SQL: &conffile.SQL{Driver: driver, DSN: db.dsn, Query: plainQuery, CacheTTL: cache}, LogLevel: "info"})
			sides = append(sides, side{name, pg})
		}
	}
	for _, s := range sides {
		conf := s.pg.ca.clientConfig(s.pg.ServerName)
		// Warm: every user once (the cache, the pool, the statements).
		for _, u := range names {
			if err := benchLogin(s.pg.POP3SAddr, conf, u, users[u]); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}
	}
	// The sides take turns, a round of logins each, so that the load of
	// the machine (shared, two cores) weighs on them alike.
	const round = 100
	cpu := make([]time.Duration, len(sides))
	wall := make([]time.Duration, len(sides))
	b.ResetTimer()
	for r, done := 0, 0; done < b.N; r, done = r+1, done+round {
		n := min(round, b.N-done)
		// Each round starts with another side: none always follows
		// the same one.
		for k := range sides {
			i := (r + k) % len(sides)
			s := sides[i]
			c, w, err := benchRound(s.pg, n, names, users)
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
	}
}

// benchRound makes n logins through pg, eight at a time, cycling through
// names, and returns popgate's CPU time and the wall time they took.
func benchRound(pg *popgate, n int, names []string, users map[string]string) (cpu, wall time.Duration, err error) {
	conf := pg.ca.clientConfig(pg.ServerName)
	pid := pg.process.Pid
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
				if err := benchLogin(pg.POP3SAddr, conf, u, users[u]); err != nil {
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

// benchLogin logs in through popgate at addr (implicit TLS, a full
// handshake) and quits.
func benchLogin(addr string, conf *tls.Config, user, pass string) error {
	c, err := tls.Dial("tcp", addr, conf)
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
