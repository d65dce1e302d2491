package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
)

// BenchmarkLDAPLogin: logins per second and popgate's CPU per login
// routed by [route.ldap], uncached (a search per login) and cached (the
// directory asked once per user), beside static routing (route.default),
// in one run. popgate runs as its own process, built from this source, and
// its CPU is read from /proc; clients log in over plaintext POP3 (so that
// no TLS handshake hides the routing's cost) to a real Dovecot, 4 at a
// time, over 20 users, in three rounds that take turns:
//
//	go test -run '^$' -bench BenchmarkLDAPLogin -benchtime 3s ./cmd/popgate
//
// It reports logins/s and popgate-cpu-us/login; on a shared machine,
// compare the sub-benchmarks of one run with each other.
func BenchmarkLDAPLogin(b *testing.B) {
	if !dirrun.SlapdAvailable() || !dovecotrun.Available() {
		b.Fatal("needs slapd, ldap-utils and Dovecot (apt-get install slapd ldap-utils dovecot-pop3d)")
	}
	const users = 20
	pw := map[string]string{}
	var ldif strings.Builder
	for i := range users {
		u := fmt.Sprintf("user%02d@example.com", i)
		pw[u] = fmt.Sprintf("Pw-%02d-x7Kq", i)
		fmt.Fprintf(&ldif, "dn: uid=user%02d,%s\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n"+
			"uid: user%02d\ncn: User\nsn: Example\nmail: %s\nmailHost: 127.0.0.1\n\n", i, dirrun.PeopleDN, i, u)
	}
	s, err := dirrun.StartSlapd()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Add(ldif.String()); err != nil {
		b.Fatal(err)
	}
	d, err := dovecotrun.Start(dovecotrun.Options{Users: pw})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	dir := b.TempDir()
	bin := filepath.Join(dir, "popgate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	passFile := filepath.Join(dir, "ldap-password")
	if err := os.WriteFile(passFile, []byte(dirrun.Password), 0o600); err != nil {
		b.Fatal(err)
	}
	common := fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "dovecot"
address = %q
tls = "none"

[limits]
max_connections_per_ip = 0
max_failures_per_ip = 0
max_failures_per_user = 0

[metrics]
address = ""
`, d.PlainAddr)
	ldap := func(cacheTTL string) string {
		return fmt.Sprintf(`
[route.ldap]
url = %q
ca_file = %q
bind_dn = %q
bind_password_file = %q
base = %q
backend = "dovecot"
cache_ttl = %q
`, s.URL(), s.CAFile, dirrun.BindDN, passFile, dirrun.PeopleDN, cacheTTL)
	}
	// Every popgate runs from the start; the rounds take turns with them,
	// so that a machine's changing load weighs on each alike.
	type variant struct {
		name, route string
		cmd         *exec.Cmd
		addr        string
		logs        *logSink
	}
	variants := []*variant{
		{name: "static", route: "\n[route]\ndefault = \"dovecot\"\n"},
		{name: "ldap-cached", route: ldap("10m")},
		{name: "ldap-uncached", route: ldap("0s")},
	}
	for _, v := range variants {
		path := filepath.Join(dir, v.name+".toml")
		if err := os.WriteFile(path, []byte(common+v.route), 0o600); err != nil {
			b.Fatal(err)
		}
		v.logs = &logSink{listening: make(chan [2]string, 4)}
		v.cmd = exec.Command(bin, "run", "-config", path)
		v.cmd.Stderr = v.logs
		if err := v.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() {
			v.cmd.Process.Signal(syscall.SIGTERM) // our own child, by PID
			if err := v.cmd.Wait(); err != nil {
				b.Errorf("%s: popgate exited with %v; log:\n%s", v.name, err, v.logs)
			}
			if strings.Contains(v.logs.String(), `"level":"ERROR"`) || strings.Contains(v.logs.String(), "lookup_error") {
				b.Errorf("%s: errors in popgate's log:\n%s", v.name, v.logs)
			}
		}()
		select {
		case l := <-v.logs.listening:
			v.addr = l[1]
		case <-time.After(20 * time.Second):
			b.Fatalf("%s: popgate did not listen; log:\n%s", v.name, v.logs)
		}
	}
	for range 3 {
		for _, v := range variants {
			b.Run(v.name, func(b *testing.B) {
				var n atomic.Int64
				login := func() error {
					i := n.Add(1) % users
					u := fmt.Sprintf("user%02d@example.com", i)
					return benchLogin(v.addr, u, pw[u])
				}
				// One login per user first: a warm cache, a full pool.
				for range users {
					if err := login(); err != nil {
						b.Fatal(err)
					}
				}
				pid := v.cmd.Process.Pid
				cpu0 := popgateCPU(b, pid)
				b.SetParallelism(2) // 4 clients on 2 cores
				b.ResetTimer()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := login(); err != nil {
							b.Error(err)
							return
						}
					}
				})
				took := time.Since(start)
				b.StopTimer()
				cpu := popgateCPU(b, pid) - cpu0
				b.ReportMetric(float64(b.N)/took.Seconds(), "logins/s")
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "popgate-cpu-us/login")
			})
		}
	}
}

// benchLogin logs in at addr as user, then quits.
func benchLogin(addr, user, pass string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	read := func(what string) error {
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if !bytes.HasPrefix(buf[:n], []byte("+OK")) {
			return fmt.Errorf("%s: %q", what, buf[:n])
		}
		return nil
	}
	if err := read("greeting"); err != nil {
		return err
	}
	for _, cmd := range []string{"USER " + user, "PASS " + pass, "QUIT"} {
		if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
			return err
		}
		if err := read(strings.Fields(cmd)[0]); err != nil {
			return err
		}
	}
	return nil
}

// popgateCPU is the user plus system time pid has used (/proc/PID/stat,
// in USER_HZ ticks of 10 ms).
func popgateCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}
