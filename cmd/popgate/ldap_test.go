package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/pop3test"
)

// The mail users of the LDAP tests, as Dovecot knows them.
const (
	ldapAlice    = "alice@example.com"
	ldapBob      = "bob@example.org"
	ldapCarol    = "carol@example.net"
	ldapDave     = "dave@example.com"
	ldapMasterPw = "Master-pw-8Rt3"
)

var ldapUsers = map[string]string{
	ldapAlice: "Alice-pw-7Qz4t",
	ldapBob:   "Bob-pw-3Kx9m",
	ldapCarol: "Carol-pw-5Hn2w",
	ldapDave:  "Dave-pw-2Lp6v",
}

// ssha is OpenLDAP's {SSHA} of pw (slappasswd's default scheme).
func ssha(pw, salt string) string {
	sum := sha1.Sum([]byte(pw + salt))
	return "{SSHA}" + base64.StdEncoding.EncodeToString(append(sum[:], salt...))
}

// ldapPeople are the entries: alice routed by mailHost, bob by a
// backend's name (in departmentNumber), carol through a Dovecot master
// user (the backend login in carLicense, the master's password in
// roomNumber, her own password hash in userPassword), dave disabled (in
// employeeType), and two entries for twin@example.com.
func ldapPeople() string {
	return `dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice
sn: Example
mail: alice@example.com
mailHost: 127.0.0.1

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
mail: bob@example.org
departmentNumber: tls

dn: uid=carol,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: carol
cn: Carol
sn: Example
mail: carol@example.net
mailHost: 127.0.0.1
carLicense: carol@example.net*master
roomNumber: ` + ldapMasterPw + `
userPassword: ` + ssha(ldapUsers[ldapCarol], "salt4321") + `

dn: uid=dave,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: dave
cn: Dave
sn: Example
mail: dave@example.com
mailHost: 127.0.0.1
employeeType: FALSE

dn: uid=twin1,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin1
cn: Twin
sn: Example
mail: twin@example.com
departmentNumber: tls

dn: uid=twin2,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin2
cn: Twin
sn: Example
mail: twin@example.com
departmentNumber: stls
`
}

// ldapSetup is a slapd with ldapPeople and a Dovecot with their mailboxes
// (and the master user), each with a message.
type ldapSetup struct {
	dir      *dirrun.Slapd
	dovecot  *dovecotrun.Instance
	msgs     map[string][]byte
	passFile string // the bind password, mode 0600
}

// startLDAPSetup starts the directory and Dovecot; more adds Dovecot
// users (name to password) and moreLDIF entries.
func startLDAPSetup(t *testing.T, more map[string]string, moreLDIF string) *ldapSetup {
	t.Helper()
	if !dovecotrun.Available() {
		t.Fatal("Dovecot is not installed (apt-get install dovecot-pop3d)")
	}
	s := dirrun.SlapdFor(t)
	if err := s.Add(ldapPeople() + moreLDIF); err != nil {
		t.Fatal(err)
	}
	users := maps.Clone(ldapUsers)
	maps.Copy(users, more)
	d, err := dovecotrun.Start(dovecotrun.Options{
		Users:       users,
		MasterUsers: map[string]string{"master": ldapMasterPw},
		Logf:        t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Dovecot's log:\n%s", d.Log())
		}
		d.Stop()
	})
	ls := &ldapSetup{dir: s, dovecot: d, msgs: map[string][]byte{}}
	for i, u := range []string{ldapAlice, ldapBob, ldapCarol, ldapDave} {
		m := pop3test.GenerateMessage(20_000 + i*7_001)
		if err := d.AddMessage(u, m); err != nil {
			t.Fatal(err)
		}
		ls.msgs[u] = m
	}
	ls.passFile = filepath.Join(t.TempDir(), "ldap-password")
	writeFile(t, ls.passFile, []byte(dirrun.Password+"\n"))
	return ls
}

// config is a popgate configuration routing by the directory: the
// StartTLS backend "stls" is the template for mailHost answers (its port
// is theirs), "tls" a backend an entry may name. extra is added to
// [route.ldap].
func (ls *ldapSetup) config(extra string) string {
	d := ls.dovecot
	return fmt.Sprintf(`[log]
format = "json"

[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"

[[backend]]
name = "stls"
address = %[1]q
tls = "starttls"
server_name = %[3]q
ca_file = %[4]q
relay_authzid = true

[[backend]]
name = "tls"
address = %[2]q
tls = "implicit"
server_name = %[3]q
ca_file = %[4]q

[route.ldap]
url = %[5]q
ca_file = %[6]q
bind_dn = %[7]q
bind_password_file = %[8]q
base = %[9]q
backend = "stls"
timeout = "1s"
cache_ttl = "0s"
%[10]s

[route.ldap.attributes]
host = "mailHost"
backend = "departmentNumber"
login = "carLicense"
password = "roomNumber"
password_hash = "userPassword"
enabled = "employeeType"

[limits]
failure_delay = "0s"
max_failures_per_ip = 0
max_failures_per_user = 0
max_login_failures = 10
master_user_separator = "*"

[metrics]
address = ""
`, d.PlainAddr, d.TLSAddr, d.ServerName, d.CAFile, ls.dir.URL(), ls.dir.CAFile, dirrun.HashBindDN, ls.passFile,
		dirrun.PeopleDN, extra)
}

// startLDAPRunner serves the configuration text as cmdRun does, with
// failed logins answered at once (no assumed backend failure time), and
// returns the runner (reload re-reads the text's file), the listener's
// address, the log and a function that stops it.
func startLDAPRunner(t *testing.T, text string) (r *runner, addr string, logs *logSink, stop func()) {
	t.Helper()
	path := writeConfig(t, text)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	logs = &logSink{listening: make(chan [2]string, 16)}
	log := newLogger(c.Log, logs)
	in, err := buildInstance(c, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	metrics := admin.NewMetrics("test", "test")
	in.proxyConfig.Observer = metrics
	in.proxyConfig.AssumedFailureTime = time.Millisecond
	if in.server, err = proxy.New(in.proxyConfig); err != nil {
		t.Fatal(err)
	}
	r = newRunner(in, log)
	r.path, r.metrics = path, metrics
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()
	for start := time.Now(); !r.serving.Load(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			cancel()
			t.Fatalf("popgate did not start; log:\n%s", logs)
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, r.addrOf("plain"), logs, stop
}

// pop is a POP3 client that reports answers instead of failing on -ERR.
type pop struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPop(t *testing.T, addr string) *pop {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard against a hang, not a timing assertion.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	p := &pop{t: t, c: c, r: bufio.NewReader(c)}
	if g := p.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

func (p *pop) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (after %q)", err, l)
	}
	return l
}

// do sends a command and returns the status line.
func (p *pop) do(cmd string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, cmd+"\r\n"); err != nil {
		p.t.Fatalf("write: %v", err)
	}
	return p.line()
}

// login logs in with USER/PASS and returns PASS's answer (or USER's, when
// that is not +OK).
func (p *pop) login(user, pass string) string {
	p.t.Helper()
	if r := p.do("USER " + user); !strings.HasPrefix(r, "+OK") {
		return r
	}
	return p.do("PASS " + pass)
}

// retr1 returns message 1, unstuffed.
func (p *pop) retr1() []byte {
	p.t.Helper()
	if r := p.do("RETR 1"); !strings.HasPrefix(r, "+OK") {
		p.t.Fatalf("RETR 1: %q", r)
	}
	var msg []byte
	for {
		l := p.line()
		if l == ".\r\n" {
			return msg
		}
		msg = append(msg, strings.TrimPrefix(l, ".")...)
	}
}

// fetch logs in as user and returns message 1; the login must work.
func (ls *ldapSetup) fetch(t *testing.T, addr, user string) {
	t.Helper()
	p := dialPop(t, addr)
	if r := p.login(user, ldapUsers[user]); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("%s: PASS = %q", user, r)
	}
	if got := p.retr1(); !bytes.Equal(got, ls.msgs[user]) {
		t.Errorf("%s: message 1 is %d bytes, not the %d delivered", user, len(got), len(ls.msgs[user]))
	}
	p.do("QUIT")
}

// TestLDAPRouting: logins routed by [route.ldap] through popgate to a real
// Dovecot: by mailHost, by a backend's name, through a master user after
// popgate checked the password hash; a disabled account, a wrong
// password, hostile names and a SASL authorization identity with a
// master login are refused; the directory stopped is [SYS/TEMP] and its
// return needs no popgate restart.
func TestLDAPRouting(t *testing.T) {
	ls := startLDAPSetup(t, nil, "")
	r, addr, logs, stop := startLDAPRunner(t, ls.config(""))

	for _, u := range []string{ldapAlice, ldapBob, ldapCarol, ldapAlice} {
		ls.fetch(t, addr, u)
	}
	for _, want := range []string{`"user":"` + ldapAlice + `","backend":"stls"`, `"user":"` + ldapBob + `","backend":"tls"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("popgate's log lacks %s:\n%s", want, logs)
		}
	}

	refused := func(user, pass, why string) {
		t.Helper()
		p := dialPop(t, addr)
		if r := p.login(user, pass); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("%s (%s): %q, want -ERR [AUTH]", user, why, r)
		}
	}
	refused(ldapDave, ldapUsers[ldapDave], "disabled")
	refused(ldapCarol, "Not-carols-pw", "wrong password against the hash")
	refused("nobody@example.com", "x", "no entry")
	p := dialPop(t, addr)
	if r := p.login("twin@example.com", "x"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Errorf("two entries for one name: %q, want -ERR [SYS/TEMP]", r)
	}
	if !strings.Contains(logs.String(), "more than one entry matches") {
		t.Error("popgate's log does not say that two entries match")
	}
	if l := ls.dovecot.Log(); strings.Contains(l, "Not-carols-pw") || strings.Contains(l, "dave@example.com") {
		t.Errorf("a refused login reached Dovecot:\n%s", l)
	}

	// carol's credentials with an authorization identity: the entry
	// rewrites the login to the master's, which must never act for
	// another mailbox.
	p = dialPop(t, addr)
	plain := base64.StdEncoding.EncodeToString([]byte(ldapAlice + "\x00" + ldapCarol + "\x00" + ldapUsers[ldapCarol]))
	if r := p.do("AUTH PLAIN " + plain); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Errorf("AUTH PLAIN as alice with carol's master-rewritten credentials: %q, want -ERR [AUTH]", r)
	}

	// Names made to widen the filter, at once.
	var wg sync.WaitGroup
	for _, user := range []string{"*", "*)(uid=*", `\2a`, ")(|(uid=*", "' OR 1=1 --", `"; DROP TABLE users; --`, "*)(|(mail=*", "alice@example.com)(mail=*",
		"*@example.com", strings.Repeat("*", 500), strings.Repeat("a", 2048), "alice@example.com\x00x"} {
		wg.Go(func() {
			p := dialPop(t, addr)
			if r := p.login(user, "x"); !strings.HasPrefix(r, "-ERR") || strings.Contains(r, "SYS/TEMP") {
				t.Errorf("%.40q: %q, want a refusal", user, r)
			}
		})
	}
	wg.Wait()
	ls.fetch(t, addr, ldapBob)

	// The directory stops: [SYS/TEMP] within the timeout, and back
	// without a restart of popgate.
	if err := ls.dir.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		p := dialPop(t, addr)
		start := time.Now()
		r := p.login(ldapAlice, ldapUsers[ldapAlice])
		if !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
			t.Errorf("directory stopped: %q, want -ERR [SYS/TEMP]", r)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("directory stopped: the answer took %v, timeout 1s", took)
		}
	}
	if n := strings.Count(logs.String(), `"reason":"lookup_error"`); n < 3 {
		t.Errorf("%d lookup_error lines in the log, want 3", n)
	}
	if err := ls.dir.Start(); err != nil {
		t.Fatal(err)
	}
	ls.fetch(t, addr, ldapAlice)
	ls.fetch(t, addr, ldapCarol)

	// The metrics: lookups by source and result, their latency, the
	// pool's connections in use and idle.
	m := scrapeRunner(t, r)
	lookups := func(result string) float64 {
		return m[`popgate_directory_lookups_total{result="`+result+`",source="route.ldap"}`]
	}
	if lookups("found") == 0 || lookups("not_found") == 0 || lookups("error") < 3 {
		t.Errorf("popgate_directory_lookups_total for route.ldap: found %v, not_found %v, error %v; want each above 0, error at least 3",
			lookups("found"), lookups("not_found"), lookups("error"))
	}
	if n, sum := m[`popgate_directory_lookup_seconds_count{source="route.ldap"}`], lookups("found")+lookups("not_found")+lookups("error"); n != sum {
		t.Errorf("popgate_directory_lookup_seconds_count{route.ldap} = %v, want the %v lookups", n, sum)
	}
	idle, ok := m[`popgate_directory_connections{source="route.ldap",state="idle"}`]
	if inUse := m[`popgate_directory_connections{source="route.ldap",state="in_use"}`]; !ok || idle == 0 || idle > defaultLDAPConnections || inUse != 0 {
		t.Errorf("popgate_directory_connections for route.ldap: idle %v (present %v), in_use %v; want 1 to %d idle, none in use",
			idle, ok, inUse, defaultLDAPConnections)
	}
	if n := m[`popgate_logins_total{result="lookup_error"}`]; n < 3 {
		t.Errorf("popgate_logins_total{lookup_error} = %v, want at least 3", n)
	}

	// Reloads replace the source; the connections of the old ones are
	// closed.
	if n := establishedTo(t, ls.dir.Port); n == 0 {
		t.Fatal("no connection to the directory is seen open")
	}
	for range 5 {
		if err := r.reload(); err != nil {
			t.Fatal(err)
		}
		ls.fetch(t, addr, ldapBob)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n := establishedTo(t, ls.dir.Port); n > defaultLDAPConnections; n = establishedTo(t, ls.dir.Port) {
		if time.Now().After(deadline) {
			t.Errorf("%d connections to the directory after 5 reloads, want at most %d", n, defaultLDAPConnections)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	if l := logs.String(); strings.Contains(l, dirrun.Password) || strings.Contains(l, ldapMasterPw) {
		t.Error("a password is in popgate's log")
	}
	stop()
	// Every connection to the directory is closed with the instance.
	if n := establishedTo(t, ls.dir.Port); n != 0 {
		t.Errorf("%d connections to the directory still open after popgate stopped", n)
	}
}

// scrapeRunner returns r's /metrics as series ("name{labels}") and values,
// from the admin handler (the configuration serves no admin address).
func scrapeRunner(t *testing.T, r *runner) map[string]float64 {
	t.Helper()
	h := admin.Handler(r.metrics, r.srv, r.ready, func() admin.Access { return admin.Access{} }, r.log)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d: %s", rec.Code, rec.Body)
	}
	return parseMetrics(t, rec.Body.String())
}

// TestLDAPCacheAndThrottle: [route.ldap] sits behind the cache and the
// failed-login throttle as every source does. A second login with the same
// password is answered from the cache, without a search; once a user's
// failures (passwords popgate checked against the entry's hash) reach
// max_failures_per_user, even the right password is refused with
// [SYS/TEMP] before the directory is asked.
func TestLDAPCacheAndThrottle(t *testing.T) {
	ls := startLDAPSetup(t, nil, "")
	text := ls.config("")
	for from, to := range map[string]string{`cache_ttl = "0s"`: `cache_ttl = "60s"`, "max_failures_per_user = 0": "max_failures_per_user = 2"} {
		if !strings.Contains(text, from) {
			t.Fatalf("the LDAP test configuration has no %s", from)
		}
		text = strings.Replace(text, from, to, 1)
	}
	r, addr, _, _ := startLDAPRunner(t, text)
	searches := func() float64 {
		m := scrapeRunner(t, r)
		return m[`popgate_directory_lookups_total{result="found",source="route.ldap"}`] +
			m[`popgate_directory_lookups_total{result="not_found",source="route.ldap"}`] +
			m[`popgate_directory_lookups_total{result="error",source="route.ldap"}`]
	}

	ls.fetch(t, addr, ldapCarol) // her password checked against userPassword
	n := searches()
	if n != 1 {
		t.Fatalf("%v searches for one login, want 1", n)
	}
	ls.fetch(t, addr, ldapCarol)
	if m := scrapeRunner(t, r); searches() != n || m[`popgate_lookup_cache_hits_total{source="route.ldap"}`] != 1 {
		t.Errorf("the second login: %v searches (want %v), %v cache hits (want 1)", searches(), n, m[`popgate_lookup_cache_hits_total{source="route.ldap"}`])
	}

	for i := range 2 {
		p := dialPop(t, addr)
		if resp := p.login(ldapBob, "Wrong-pw-"+strconv.Itoa(i)); !strings.HasPrefix(resp, "-ERR [AUTH]") {
			t.Errorf("bob, wrong password %d: %q, want -ERR [AUTH]", i, resp)
		}
	}
	n = searches()
	p := dialPop(t, addr)
	if resp := p.login(ldapBob, ldapUsers[ldapBob]); !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
		t.Errorf("bob's right password after max_failures_per_user failures: %q, want -ERR [SYS/TEMP]", resp)
	}
	if got := searches(); got != n {
		t.Errorf("a throttled login searched the directory (%v searches, %v before)", got, n)
	}
}

// establishedTo counts this host's established TCP connections to port on
// 127.0.0.1 (the client side, as /proc/net/tcp lists it).
func establishedTo(t *testing.T, port int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "01" {
			n++
		}
	}
	return n
}

// TestLDAPRouteCommand: `popgate route` names the entry, over StartTLS
// and ldaps://; a directory whose certificate the CA does not vouch for
// is refused.
func TestLDAPRouteCommand(t *testing.T) {
	ls := startLDAPSetup(t, nil, "")
	route := func(text, user string) (int, string, string) {
		return run(t.Context(), "route", "-config", writeConfig(t, text), user)
	}
	code, out, errOut := route(ls.config(""), ldapAlice)
	if code != 0 || !strings.Contains(out, `entry "uid=alice,ou=people,dc=example,dc=com", address 127.0.0.1:`+portOf(ls.dovecot.PlainAddr)) {
		t.Errorf("route %s = %d, %q, %q", ldapAlice, code, out, errOut)
	}
	// A host answer goes to the entry's host, on the port and with the
	// TLS of the template backend "stls": the headline shows that
	// address, not stls's own.
	if err := ls.dir.Add(`dn: uid=frank,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: frank
cn: Frank
sn: Example
mail: frank@example.com
mailHost: mail2.internal
`); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = route(ls.config(""), "frank@example.com")
	if want := "frank@example.com -> mail2.internal:" + portOf(ls.dovecot.PlainAddr) + " (tls=starttls)\n  why: route.ldap, "; code != 0 ||
		!strings.HasPrefix(out, want) || !strings.Contains(out, `entry "uid=frank,ou=people,dc=example,dc=com"`) || !strings.Contains(out, `backend "stls"'s settings`) {
		t.Errorf("route frank = %d, %q, %q; want it to start with %q", code, out, errOut, want)
	}
	code, out, _ = route(ls.config(""), ldapCarol)
	if code != 0 || !strings.Contains(out, `as "carol@example.net*master"`) || strings.Contains(out, ldapMasterPw) {
		t.Errorf("route %s = %d, %q", ldapCarol, code, out)
	}
	code, out, _ = route(ls.config(""), "nobody@example.com")
	if code != 0 || !strings.Contains(out, "no route") {
		t.Errorf("route nobody = %d, %q", code, out)
	}
	ldaps := strings.Replace(ls.config(""), ls.dir.URL(), ls.dir.TLSURL(), 1)
	code, out, errOut = route(ldaps, ldapBob)
	if code != 0 || !strings.Contains(out, `-> tls (`) {
		t.Errorf("ldaps: route %s = %d, %q, %q", ldapBob, code, out, errOut)
	}
	// server_name is the name checked on the certificate (which names
	// localhost and 127.0.0.1).
	for name, ok := range map[string]bool{"localhost": true, "ldap.example.com": false} {
		code, out, errOut := route(ls.config("server_name = "+strconv.Quote(name)), ldapBob)
		if (code == 0) != ok || !ok && !strings.Contains(errOut, "certificate") {
			t.Errorf("server_name %s: %d, %q, %q", name, code, out, errOut)
		}
	}
	for name, text := range map[string]string{
		"StartTLS": ls.config(""),
		"ldaps":    ldaps,
	} {
		wrongCA := strings.Replace(text, `ca_file = `+strconv.Quote(ls.dir.CAFile), `ca_file = `+strconv.Quote(ls.dovecot.CAFile), 1)
		code, out, errOut := route(wrongCA, ldapBob)
		if code == 0 || !strings.Contains(errOut, "certificate") {
			t.Errorf("%s with another CA: %d, %q, %q; want a certificate error", name, code, out, errOut)
		}
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// ldapBase is a configuration with a plain listener, backend b on port
// 110 and the start of a [route.ldap] that a test completes.
const ldapBase = `[[listen]]
address = "127.0.0.1:1110"
tls = "none"

[[backend]]
name = "b"
address = "127.0.0.1:110"
tls = "none"

[route.ldap]
base = "ou=people,dc=example,dc=com"
`

// TestLDAPSettings: [route.ldap]'s checks.
func TestLDAPSettings(t *testing.T) {
	const url = "url = \"ldap://ldap.example.com\"\n"
	parse := func(text string) (*settings, error) { return ParseConfig("t.toml", []byte(text)) }
	s, err := parse(ldapBase + url + "backend = \"b\"\n")
	if err != nil {
		t.Fatalf("minimal [route.ldap]: %v", err)
	}
	l := s.Route.LDAP
	if l.Port != 110 || l.Filter != defaultLDAPFilter || l.Attributes.Host != "mailHost" || l.Timeout != defaultLDAPTimeout {
		t.Errorf("defaults: %+v", l)
	}
	for _, tc := range []struct{ extra, err string }{
		{"", "route.ldap.port"},
		{"port = 110\nurl = \"http://x\"\n", "route.ldap.url"},
		{"port = 110\nurl = \"ldap://x/dc=example\"\n", "route.ldap.url"},
		{"port = 110\nurl = \"ldaps://x\"\ninsecure_plaintext = true\n", "insecure_plaintext"},
		{"port = 110\nbind_dn = \"cn=x\"\n", "bind_password_file"},
		{"port = 110\nbind_password = \"x\"\n", "bind_dn"},
		{"port = 110\nbind_dn = \"cn=x\"\nbind_password = \"x\"\nbind_password_file = \"/f\"\n", "set one"},
		{"port = 110\nscope = \"subtree\"\n", "route.ldap.scope"},
		{"port = 110\nfilter = \"(mail=%s)\"\n", "route.ldap.filter"},
		{"port = 110\nfilter = \"(mail=%u\"\n", "route.ldap.filter"},
		{"port = 110\nbackend = \"nope\"\n", "route.ldap.backend"},
		{"port = 0\n", "route.ldap.port"},
		{"port = 110\ntimeout = \"0s\"\n", "route.ldap.timeout"},
		{"port = 110\nconnections = 0\n", "route.ldap.connections"},
		{"port = 110\n[route.ldap.attributes]\nhost = \"\"\n", "neither backend nor host"},
		{"port = 110\n[route.ldap.attributes]\npassword = \"roomNumber\"\n", "password_hash"},
		{"port = 110\n[route.ldap.attributes]\nlogin = \"uid)(x\"\n", "not an attribute name"},
	} {
		extra := tc.extra
		if !strings.Contains(extra, "url =") {
			extra = url + extra
		}
		_, err := parse(ldapBase + extra)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: %v, want an error naming %s", tc.extra, err, tc.err)
		}
	}
	// The bind password file is read at build: missing, or others may
	// write it.
	s, err = parse(ldapBase + url + "backend = \"b\"\nbind_dn = \"cn=x\"\nbind_password_file = \"/nonexistent/pw\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := build(s, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "bind_password_file") {
		t.Errorf("missing bind_password_file: %v", err)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(pw, 0o666)
	s, _ = parse(ldapBase + url + "backend = \"b\"\nbind_dn = \"cn=x\"\nbind_password_file = " + strconv.Quote(pw) + "\n")
	if _, err := build(s, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("bind_password_file writable by others: %v", err)
	}
}

// TestLDAPPasswordHashes: popgate checks the password against the entry's
// userPassword in each scheme Dovecot writes (and OpenLDAP's {SSHA} and
// {BCRYPT}): the right password logs in, a wrong one is refused and never
// reaches Dovecot.
func TestLDAPPasswordHashes(t *testing.T) {
	doveadm, err := dovecotrun.LookBinary("doveadm")
	if err != nil {
		t.Fatal(err)
	}
	const pw = "Hash-pw-4Nc8"
	users := map[string]string{}
	var ldif strings.Builder
	for _, scheme := range []string{"BLF-CRYPT", "BCRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "ARGON2ID", "SSHA512", "SSHA256", "SSHA", "PLAIN"} {
		gen := scheme
		if scheme == "BCRYPT" {
			gen = "BLF-CRYPT" // OpenLDAP's name for the same hash
		}
		out, err := exec.Command(doveadm, "pw", "-s", gen, "-p", pw).Output()
		if err != nil {
			t.Fatalf("doveadm pw -s %s: %v", gen, err)
		}
		hash := strings.TrimSpace(string(out))
		hash = "{" + scheme + "}" + strings.TrimPrefix(hash, "{"+gen+"}")
		uid := "h-" + strings.ToLower(scheme)
		users[uid+"@example.com"] = pw
		fmt.Fprintf(&ldif, "\ndn: uid=%s,%s\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n"+
			"uid: %s\ncn: Hash\nsn: Example\nmail: %s@example.com\nmailHost: 127.0.0.1\nuserPassword: %s\n",
			uid, dirrun.PeopleDN, uid, uid, hash)
	}
	ls := startLDAPSetup(t, users, ldif.String())
	_, addr, _, _ := startLDAPRunner(t, ls.config(""))
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			p := dialPop(t, addr)
			if r := p.login(u, "Wrong-"+pw); !strings.HasPrefix(r, "-ERR [AUTH]") {
				t.Errorf("%s, wrong password: %q", u, r)
			}
			if r := p.login(u, pw); !strings.HasPrefix(r, "+OK") {
				t.Errorf("%s, right password: %q", u, r)
				return
			}
			if r := p.do("STAT"); !strings.HasPrefix(r, "+OK 0 ") {
				t.Errorf("%s: STAT = %q", u, r)
			}
		})
	}
	wg.Wait()
	l := ls.dovecot.Log()
	for u := range users {
		if !strings.Contains(l, "Login: user=<"+u+">") {
			t.Errorf("Dovecot did not log %s's login", u)
		}
	}
	if strings.Contains(l, "auth failed") || strings.Contains(l, "Wrong-") {
		t.Errorf("a wrong password reached Dovecot:\n%s", l)
	}
}

// TestLDAPPlaintextWarning: insecure_plaintext to a host that is not
// loopback is built, with a warning; to loopback without one.
func TestLDAPPlaintextWarning(t *testing.T) {
	for host, warn := range map[string]bool{"ldap.example.com": true, "127.0.0.1": false} {
		s, err := ParseConfig("t.toml", []byte(ldapBase+`url = "ldap://`+host+`"
insecure_plaintext = true
backend = "b"
`))
		if err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		in, err := build(s, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		in.server.Close()
		in.close()
		if got := strings.Contains(logs.String(), "insecure_plaintext"); got != warn {
			t.Errorf("%s: warned %v, want %v; log:\n%s", host, got, warn, logs.String())
		}
	}
}

// fakeStore is a POP3 server a hostile entry's mailHost could point at: it
// offers STLS with a certificate for the right name from another CA, and
// records whether a password ever arrived.
type fakeStore struct {
	ln       net.Listener
	gotLogin atomic.Bool
}

func startFakeStore(t *testing.T) *fakeStore {
	t.Helper()
	ca, err := certgen.NewCA("not the mail stores' CA", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(dovecotrun.DefaultServerName, certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeStore{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var conn net.Conn = c
				r := bufio.NewReader(conn)
				io.WriteString(conn, "+OK fake\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.ToUpper(strings.Fields(line + " x")[0]); cmd {
					case "CAPA":
						io.WriteString(conn, "+OK\r\nUSER\r\nSTLS\r\nSASL PLAIN\r\n.\r\n")
					case "STLS":
						io.WriteString(conn, "+OK begin TLS\r\n")
						tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
						if err := tc.Handshake(); err != nil {
							return
						}
						conn, r = tc, bufio.NewReader(tc)
					case "USER", "PASS", "AUTH":
						f.gotLogin.Store(true)
						io.WriteString(conn, "+OK\r\n")
					default:
						io.WriteString(conn, "-ERR\r\n")
					}
				}
			}()
		}
	}()
	return f
}

// TestLDAPHostileMailHost: an entry whose mailHost (and port) point at a
// server of someone else's gets no password from popgate: the template
// backend's TLS settings want a certificate from the mail stores' CA.
func TestLDAPHostileMailHost(t *testing.T) {
	f := startFakeStore(t)
	ldif := fmt.Sprintf(`
dn: uid=mallory,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: mallory
cn: Mallory
sn: Example
mail: mallory@example.com
mailHost: 127.0.0.1
postalCode: %s
`, portOf(f.ln.Addr().String()))
	ls := startLDAPSetup(t, nil, ldif)
	text := strings.Replace(ls.config(""), "[route.ldap.attributes]\n", "[route.ldap.attributes]\nport = \"postalCode\"\n", 1)
	_, addr, logs, _ := startLDAPRunner(t, text)
	p := dialPop(t, addr)
	if r := p.login("mallory@example.com", "Mallorys-pw"); !strings.HasPrefix(r, "-ERR") {
		t.Errorf("login at a store with a foreign certificate: %q", r)
	}
	if f.gotLogin.Load() {
		t.Error("the foreign store received a login")
	}
	if !strings.Contains(logs.String(), "certificate") {
		t.Errorf("popgate's log does not name the certificate:\n%s", logs)
	}
	// The port attribute works for a store that is the real one.
	ls.fetch(t, addr, ldapAlice)
}

// TestLDAPDocExample: the OpenLDAP example of docs/routing.md is a valid
// configuration (with a listener added; files aside, which build reads),
// and it works as written: with the example's entry in a real slapd and
// only the directory's URL and the files replaced, `popgate route` finds
// the entry by the example's filter as its bind DN, and sends the login to
// the entry's mailHost on the template backend's port, as the section
// shows it.
func TestLDAPDocExample(t *testing.T) {
	data, err := os.ReadFile("../../docs/routing.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(data), "\n## LDAP directory\n")
	if !ok {
		t.Fatal("docs/routing.md has no LDAP directory section")
	}
	_, block, ok := strings.Cut(sec, "```toml\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("the LDAP directory section has no TOML example")
	}
	s, err := ParseConfig("routing.md", []byte("[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n\n"+block))
	if err != nil {
		t.Fatalf("the example: %v\n%s", err, block)
	}
	l := s.Route.LDAP
	if l == nil || l.Attributes.Host != "mailHost" || l.Port != 110 || l.Backend != "mailstores" {
		t.Fatalf("the example's [route.ldap]: %+v", l)
	}

	_, ldif, ok := strings.Cut(sec, "```ldif\n")
	ldif, _, ok2 = strings.Cut(ldif, "```\n")
	if !ok || !ok2 {
		t.Fatal("the LDAP directory section has no LDIF example")
	}
	dir := dirrun.SlapdFor(t)
	if err := dir.Add(ldif); err != nil {
		t.Fatalf("the example's entry: %v", err)
	}
	passFile := filepath.Join(t.TempDir(), "ldap-password")
	writeFile(t, passFile, []byte(dirrun.Password+"\n"))
	if err := os.Chmod(passFile, 0o600); err != nil {
		t.Fatal(err)
	}
	text := block
	for from, to := range map[string]string{
		`"ldap://ldap.example.com"`:       strconv.Quote(dir.URL()),
		`"/etc/popgate/ldap-ca.pem"`:      strconv.Quote(dir.CAFile),
		`"/etc/popgate/mailstore-ca.pem"`: strconv.Quote(dir.CAFile), // any CA: route dials no store
		`"/etc/popgate/ldap-password"`:    strconv.Quote(passFile),
	} {
		if !strings.Contains(text, from) {
			t.Fatalf("the example has no %s", from)
		}
		text = strings.Replace(text, from, to, 1)
	}
	config := writeConfig(t, "[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n\n"+text)
	code, out, errOut := run(t.Context(), "route", "-config", config, "alice@example.com")
	// What the section shows `popgate route` print for it.
	_, want, ok := strings.Cut(sec, "$ popgate route -config /etc/popgate/popgate.toml alice@example.com\n")
	want, _, ok2 = strings.Cut(want, "```\n")
	if !ok || !ok2 {
		t.Fatal("the LDAP directory section shows no `popgate route` for alice@example.com")
	}
	if code != 0 || out != want || !strings.HasPrefix(out, "alice@example.com -> mail2.internal:110 (tls=starttls)\n") {
		t.Errorf("route alice@example.com with the example = %d, %q, %q; want what docs/routing.md shows: %q", code, out, errOut, want)
	}
}
