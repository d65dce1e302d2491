package interop

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/pool"
)

// poolRig is four Dovecot instances over one shared Maildir tree, the
// backends d1 to d4 of a popgate pool "mx" that starts with d1, d2 and d3
// (weights 3, 3, 6: shares of 1, 1, 2); d4 joins with weight 4, a quarter
// of the users.
type poolRig struct {
	d     []*dovecot // d[0] is d1
	users []string
	pass  map[string]string
}

const (
	poolTTL      = 2 * time.Second
	poolUsers    = 1000
	poolPassword = "Pool-pw-8Rt3v-"
)

// poolDovecotConfig logs microseconds: the load run orders logins and logouts
// of different instances by them.
var poolDovecotConfig = []string{`log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "`}

func startPoolRig(t *testing.T, instances int) *poolRig {
	t.Helper()
	requireInterop(t, "dovecot")
	r := &poolRig{pass: map[string]string{}}
	for i := range poolUsers {
		u := fmt.Sprintf("puser%04d", i)
		r.users = append(r.users, u)
		r.pass[u] = fmt.Sprintf("%s%d", poolPassword, i)
	}
	root := filepath.Join(t.TempDir(), "mail")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for p := root; p != "/"; p = filepath.Dir(p) {
		if strings.HasPrefix(p, os.TempDir()) && p != os.TempDir() {
			os.Chmod(p, 0o755)
		}
	}
	for range instances {
		r.d = append(r.d, startDovecotWith(t, func(o *dovecotrun.Options) {
			o.Users = r.pass
			o.MailRoot = root
			o.NoTLSInstance, o.HAProxy = false, false
			o.ExtraConfig = poolDovecotConfig
			o.MaxUserIPConnections = 1000
		}))
	}
	return r
}

// backends is the [[backend]] list: d1..dN, plaintext on loopback, checked
// every 200 ms and down after two failed checks.
func (r *poolRig) backends() []popgateBackend {
	var bs []popgateBackend
	for i, d := range r.d {
		bs = append(bs, popgateBackend{Name: fmt.Sprint("d", i+1), Address: d.PlainAddr, TLS: "none", HealthInterval: "200ms", HealthFailures: 2, HealthTimeout: "2s"})
	}
	return bs
}

const poolSection = `
[[pool]]
name = "mx"
backends = ["d1", "d2", "d3"]
weights = { d1 = 3, d2 = 3, d3 = 6 }
affinity_ttl = "2s"
`

func (r *poolRig) popgate(t *testing.T, extra string) *popgate {
	t.Helper()
	secrets := []string{poolPassword}
	return startPopgate(t, popgateConfig{
		Backends: r.backends(), Default: "mx", PlainListener: true, LogLevel: "info", NoFailureLimits: true,
		ExtraLimits: []string{"max_connections_per_ip = 0"},
		Extra:       poolSection + extra,
		// /pools needs it; [cluster] requires one.
		AdminToken: poolAdminToken,
	}, secrets...)
}

// poolAdminToken is the admin token of the pool tests' popgates.
const poolAdminToken = "pool-admin-token-0123456789abcdef"

// admin calls popgate's admin endpoint; out, when set, takes the JSON.
func (p *popgate) admin(t *testing.T, method, path string, out any) {
	t.Helper()
	addr, _ := p.waitRecords(t, "admin endpoints listening", 1)[0]["address"].(string)
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+poolAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, body)
		}
	}
}

// backendOf returns the backend of user's open sessions on p.
func (p *popgate) backendOf(t *testing.T, user string) string {
	t.Helper()
	return p.backendOn(t, user, "")
}

// backendOn is backendOf for replica node of a fleet: the fleet's list
// holds the other replicas' sessions as they last published them.
func (p *popgate) backendOn(t *testing.T, user, node string) string {
	t.Helper()
	var all, list []struct {
		User    string `json:"user"`
		Backend string `json:"backend"`
		Node    string `json:"node"`
	}
	p.admin(t, "GET", "/sessions?user="+user, &all)
	for _, s := range all {
		if s.Node == node {
			list = append(list, s)
		}
	}
	if len(list) == 0 {
		t.Fatalf("no session of %s", user)
	}
	b := list[0].Backend
	for _, s := range list {
		if s.Backend != b {
			t.Fatalf("%s has sessions on %s and %s", user, b, s.Backend)
		}
	}
	return b
}

// open logs user in through p's plaintext listener.
func (r *poolRig) open(t *testing.T, p *popgate, user string) *popConn {
	t.Helper()
	c := dialPOP3(t, p.PlainAddr, nil)
	c.login(user, r.pass[user])
	return c
}

// visit logs user in, notes the backend and quits.
func (r *poolRig) visit(t *testing.T, p *popgate, user string, node ...string) string {
	t.Helper()
	c := r.open(t, p, user)
	b := p.backendOn(t, user, strings.Join(node, ""))
	quit(t, c)
	return b
}

func quit(t *testing.T, c *popConn) {
	t.Helper()
	if resp := c.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("QUIT: %q", resp)
	}
	c.c.Close()
}

// visitAll visits every user, eight at a time, and returns their backends.
func (r *poolRig) visitAll(t *testing.T, p *popgate, users []string, node ...string) map[string]string {
	t.Helper()
	on := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ch := make(chan string)
	for range 8 {
		wg.Go(func() {
			// A worker that fails the test (Fatal ends its
			// goroutine) still takes the rest, so that the sender
			// does not wait for ever.
			defer func() {
				for range ch {
				}
			}()
			for u := range ch {
				b := r.visit(t, p, u, node...)
				mu.Lock()
				on[u] = b
				mu.Unlock()
			}
		})
	}
	for _, u := range users {
		ch <- u
	}
	close(ch)
	wg.Wait()
	return on
}

func count(on map[string]string) map[string]int {
	n := map[string]int{}
	for _, b := range on {
		n[b]++
	}
	return n
}

// TestPoolDirector: popgate in front of three Dovecot instances over one
// shared Maildir tree, as Dovecot's Director was. 1,000 users spread by
// the weights; a user with an open session keeps its backend when a
// fourth joins and moves only after its sessions ended and affinity_ttl
// passed, while users without sessions move at once, about a quarter of
// them, all to the new backend; a drain moves a backend's users off
// without cutting a session; an operator's move ends the user's session
// and sends it elsewhere; a stopped backend's users land on the others.
func TestPoolDirector(t *testing.T) {
	requireInterop(t, "dovecot")
	t.Parallel()
	r := startPoolRig(t, 4)
	pg := r.popgate(t, "")

	// The spread.
	on := r.visitAll(t, pg, r.users)
	n := count(on)
	for b, w := range map[string]float64{"d1": 3, "d2": 3, "d3": 6} {
		want := poolUsers * w / 12
		if got := float64(n[b]); math.Abs(got-want) > 0.15*want {
			t.Errorf("%s has %v users, want %v ± 15%% (all: %v)", b, got, want, n)
		}
	}
	if n["d4"] != 0 {
		t.Errorf("d4, not in the pool, has %d users", n["d4"])
	}
	// Dovecot's own logs say the same.
	for i, d := range r.d[:3] {
		if got := strings.Count(d.mainLog(t), "Login: user=<"); got != n[fmt.Sprint("d", i+1)] {
			t.Errorf("d%d logged %d logins, popgate sent it %d", i+1, got, n[fmt.Sprint("d", i+1)])
		}
	}

	// A user whom the fourth backend will take, with a session open.
	four := []pool.Member{{Backend: "d1", Weight: 3}, {Backend: "d2", Weight: 3}, {Backend: "d3", Weight: 6}, {Backend: "d4", Weight: 4}}
	var held string
	for _, u := range r.users {
		if pool.Pick(u, four, nil) == "d4" {
			held = u
			break
		}
	}
	time.Sleep(poolTTL + 500*time.Millisecond) // every affinity of the spread ran out
	heldConn := r.open(t, pg, held)
	was := pg.backendOf(t, held)
	pg.admin(t, "POST", "/pools/mx/add?backend=d4&weight=4", nil)
	second := r.open(t, pg, held)
	if b := pg.backendOf(t, held); b != was {
		t.Fatalf("a second session of %s went to %s, the first is on %s", held, b, was)
	}
	quit(t, second)
	var others []string
	for _, u := range r.users {
		if u != held {
			others = append(others, u)
		}
	}
	after := r.visitAll(t, pg, others)
	moved := 0
	for u, b := range after {
		if b != on[u] {
			moved++
			if b != "d4" {
				t.Errorf("%s moved from %s to %s, not to the new d4", u, on[u], b)
			}
		}
	}
	if f := float64(moved) / float64(len(others)); f < 0.2 || f > 0.3 {
		t.Errorf("%.3f of the users without a session moved, want about a quarter (d4's weight 4 of 16)", f)
	}
	t.Logf("d4 joined: %d of %d users without a session moved (%v)", moved, len(others), count(after))
	if resp := heldConn.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("the held session after d4 joined: STAT %q", resp)
	}
	quit(t, heldConn)
	if b := r.visit(t, pg, held); b != was {
		t.Errorf("%s moved to %s within affinity_ttl of its last session", held, b)
	}
	time.Sleep(poolTTL + 500*time.Millisecond)
	if b := r.visit(t, pg, held); b != "d4" {
		t.Errorf("%s is on %s after its sessions ended and affinity_ttl passed, want d4", held, b)
	}

	// A drain: the open session of a d1 user goes on; its new sessions
	// stay with it; once they ended and the TTL passed, nobody is on d1.
	time.Sleep(poolTTL + 500*time.Millisecond)
	var d1user string
	for u, b := range after {
		if b == "d1" {
			d1user = u
			break
		}
	}
	open := r.open(t, pg, d1user)
	pg.admin(t, "POST", "/pools/mx/drain?backend=d1", nil)
	if b := r.visit(t, pg, d1user); b != "d1" {
		t.Errorf("%s, with a session on d1, went to %s after the drain", d1user, b)
	}
	drained := r.visitAll(t, pg, others[:300])
	for u, b := range drained {
		if b == "d1" && u != d1user {
			t.Errorf("%s went to the drained d1", u)
		}
	}
	if resp := open.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("the session on d1 was cut by the drain: STAT %q", resp)
	}
	quit(t, open)
	time.Sleep(poolTTL + 500*time.Millisecond)
	if b := r.visit(t, pg, d1user); b == "d1" {
		t.Errorf("%s still on the drained d1 after its sessions ended", d1user)
	}
	var st []pool.PoolStatus
	pg.admin(t, "GET", "/pools", &st)
	if len(st) != 1 || st[0].Backends[0].Backend != "d1" || !st[0].Backends[0].Drained || st[0].Backends[0].Weight != 0 {
		t.Errorf("GET /pools after the drain: %+v", st)
	}
	pg.admin(t, "POST", "/pools/mx/undrain?backend=d1", nil)

	// An operator's move: the session ends (no QUIT reaches Dovecot) and
	// the next login goes where the operator said.
	mover := r.users[1]
	c := r.open(t, pg, mover)
	from := pg.backendOf(t, mover)
	to := "d2"
	if from == "d2" {
		to = "d3"
	}
	var ans struct {
		Backend string `json:"backend"`
		Ended   int    `json:"ended"`
	}
	pg.admin(t, "POST", "/pools/mx/move?user="+mover+"&backend="+to, &ans)
	if ans.Backend != to || ans.Ended != 1 {
		t.Errorf("move answered %+v, want backend %s and 1 session ended", ans, to)
	}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.r.ReadString('\n'); err == nil {
		t.Error("the moved user's session still answers")
	}
	if b := r.visit(t, pg, mover); b != to {
		t.Errorf("after the move %s logs in on %s, want %s", mover, b, to)
	}

	// A stopped backend: its users land on the others at once.
	time.Sleep(poolTTL + 500*time.Millisecond)
	if err := r.d[1].StopMain(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for pg.scrape(t)[`popgate_backend_up{backend="d2"}`] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("d2 stopped but not down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var d2users []string
	for u, b := range after {
		if b == "d2" {
			d2users = append(d2users, u)
		}
	}
	for u, b := range r.visitAll(t, pg, d2users[:min(50, len(d2users))]) {
		if b == "d2" {
			t.Errorf("%s went to the stopped d2", u)
		}
	}
	m := pg.scrape(t)
	if m[`popgate_pool_moves_total{reason="rebalance"}`] == 0 || m[`popgate_pool_moves_total{reason="admin"}`] != 1 || m[`popgate_pool_moves_total{reason="down"}`] == 0 || m[`popgate_pool_affinity_total{result="hit"}`] == 0 {
		t.Errorf("pool metrics: %v", poolSeries(m))
	}
	t.Logf("metrics: %v", poolSeries(m))
	pg.checkLog(t)
}

func poolSeries(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, "popgate_pool_") {
			out[k] = v
		}
	}
	return out
}

// TestPoolFleet: two popgate replicas sharing Redis send every user to
// the same backend, also while a fourth backend joins through one of
// them; then a load run, concurrent logins of each user on both replicas
// with a pool change in the middle, in which no user ever has sessions
// on two backends at once, by the backends' own logs.
func TestPoolFleet(t *testing.T) {
	requireInterop(t, "dovecot", "redis-server")
	t.Parallel()
	r := startPoolRig(t, 4)
	redis := dirrun.RedisFor(t)
	dir := t.TempDir()
	pw, key := filepath.Join(dir, "redis-password"), filepath.Join(dir, "cluster.key")
	writeFile(t, pw, []byte(dirrun.Password+"\n"), 0o600)
	writeFile(t, key, []byte(strings.Repeat("5a", 32)+"\n"), 0o600)
	cluster := func(i int) string {
		return fmt.Sprintf("\n[cluster]\nredis = \"redis://%s/0\"\nuser = \"popgate\"\npassword_file = %q\nkey_file = %q\nnode_name = \"node%d\"\n", redis.Addr(), pw, key, i)
	}
	a, b := r.popgate(t, cluster(0)), r.popgate(t, cluster(1))
	node := map[*popgate]string{a: "node0", b: "node1"}

	users := r.users[:200]
	onA := r.visitAll(t, a, users, "node0")
	onB := r.visitAll(t, b, users, "node1")
	for _, u := range users {
		if onA[u] != onB[u] {
			t.Errorf("%s: replica a sends it to %s, b to %s", u, onA[u], onB[u])
		}
	}
	// While d4 joins through a, before b reads the change: users with
	// an affinity keep it on both, users without one agree by the first
	// replica's answer.
	time.Sleep(poolTTL + 500*time.Millisecond)
	held := map[string]*popConn{}
	for _, u := range users[:20] {
		held[u] = r.open(t, a, u)
	}
	a.admin(t, "POST", "/pools/mx/add?backend=d4&weight=4", nil)
	for i, u := range users {
		first, second := a, b
		if i%2 == 1 {
			first, second = b, a
		}
		c1 := r.open(t, first, u)
		b1 := first.backendOn(t, u, node[first])
		c2 := r.open(t, second, u)
		b2 := second.backendOn(t, u, node[second])
		if b1 != b2 {
			t.Errorf("%s during the change: %s on one replica, %s on the other", u, b1, b2)
		}
		if held[u] != nil && b1 != onA[u] {
			t.Errorf("%s, with a session open, moved from %s to %s", u, onA[u], b1)
		}
		quit(t, c1)
		quit(t, c2)
	}
	for _, c := range held {
		quit(t, c)
	}

	// The load run: per user, sessions on both replicas at once, in
	// bursts of 1.5 s with 2.5 s (more than affinity_ttl) between them,
	// so that users may move between bursts; d1 is drained in the
	// middle, d3's weight lowered later.
	loadUsers := r.users[200:260]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	const cycle, burst = 4 * time.Second, 1500 * time.Millisecond
	for i, u := range loadUsers {
		offset := time.Duration(i) * cycle / time.Duration(len(loadUsers))
		for j, p := range []*popgate{a, b, a, b} {
			wg.Go(func() {
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					if (time.Since(start)+offset)%cycle > burst {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					c := r.open(t, p, u)
					if resp := c.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
						t.Errorf("%s STAT: %q", u, resp)
					}
					time.Sleep(time.Duration((i+j+k)%7) * 30 * time.Millisecond)
					quit(t, c)
				}
			})
		}
	}
	time.Sleep(3 * time.Second)
	b.admin(t, "POST", "/pools/mx/drain?backend=d1", nil)
	time.Sleep(5 * time.Second)
	a.admin(t, "POST", "/pools/mx/weight?backend=d3&weight=3", nil)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	for i, p := range []*popgate{a, b} {
		m := p.scrape(t)
		fb := m[fmt.Sprintf(`popgate_cluster_fallbacks_total{feature="pools",node="node%d"}`, i)]
		t.Logf("node%d: pool fallbacks %v, moves %v", i, fb, poolSeries(m))
		if fb != 0 {
			// Without Redis a replica assigns on its own: the
			// guarantee below needs the shared affinities.
			t.Errorf("node%d fell back to local state %v times during the load run (Redis too slow on this machine?)", i, fb)
		}
	}
	checkNoOverlap(t, r, loadUsers)
	a.checkLog(t)
	b.checkLog(t)
}

var (
	loginRE  = regexp.MustCompile(`^(\S+ \S+) pop3-login: Info: Login: user=<([^>]+)>.*session=<([^>]+)>`)
	logoutRE = regexp.MustCompile(`^(\S+ \S+) pop3\(([^)]+)\)<\d+><([^>]+)>: Info: Disconnected`)
)

// checkNoOverlap reads every backend's log: no user of users may have a
// session open on one backend while another begins on a different one.
func checkNoOverlap(t *testing.T, r *poolRig, users []string) {
	t.Helper()
	type event struct {
		at      time.Time
		backend int
		user    string
		login   bool
		session string
	}
	want := map[string]bool{}
	for _, u := range users {
		want[u] = true
	}
	var events []event
	// Dovecot logs a logout a moment after popgate's session ended;
	// wait for the last ones.
	time.Sleep(time.Second)
	for i, d := range r.d {
		for _, line := range strings.Split(d.mainLog(t), "\n") {
			var m []string
			login := false
			if m = loginRE.FindStringSubmatch(line); m != nil {
				login = true
			} else if m = logoutRE.FindStringSubmatch(line); m == nil {
				continue
			}
			if !want[m[2]] {
				continue
			}
			at, err := time.Parse("2006-01-02 15:04:05.000000", m[1])
			if err != nil {
				t.Fatalf("d%d: log_timestamp: %v in %q", i+1, err, line)
			}
			events = append(events, event{at: at, backend: i, user: m[2], login: login, session: m[3]})
		}
	}
	slices.SortStableFunc(events, func(x, y event) int { return x.at.Compare(y.at) })
	open := map[string]map[int]int{} // user → backend → sessions
	logins, overlaps := 0, 0
	backends := map[string]map[int]bool{}
	for _, e := range events {
		if open[e.user] == nil {
			open[e.user] = map[int]int{}
			backends[e.user] = map[int]bool{}
		}
		if !e.login {
			open[e.user][e.backend]--
			continue
		}
		logins++
		backends[e.user][e.backend] = true
		for other, n := range open[e.user] {
			if other != e.backend && n > 0 {
				overlaps++
				if overlaps <= 10 {
					t.Errorf("%s: session %s began on d%d at %s while %d were open on d%d", e.user, e.session, e.backend+1, e.at.Format("15:04:05.000000"), n, other+1)
				}
			}
		}
		open[e.user][e.backend]++
	}
	movedUsers := 0
	for _, bs := range backends {
		if len(bs) > 1 {
			movedUsers++
		}
	}
	t.Logf("load run: %d logins of %d users, %d of them moved during it, %d overlaps", logins, len(users), movedUsers, overlaps)
	if logins < len(users)*4 {
		t.Errorf("only %d logins in the backends' logs", logins)
	}
	if movedUsers == 0 {
		t.Error("no user moved during the load run: the pool change proved nothing")
	}
}
