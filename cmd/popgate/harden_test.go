package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/dirrun"
)

// TestAttack7ThrottleHoldReload: a reload that lengthens
// limits.login_timeout lengthens the fleet throttle's reservations too:
// with the hold fixed at start, a reservation would expire while its
// attempt still runs and let other attempts past the budget.
func TestAttack7ThrottleHoldReload(t *testing.T) {
	rd := dirrun.RedisFor(t)
	dir := t.TempDir()
	cert := writeTestCert(t, dir, "one", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	keyFile := filepath.Join(dir, "cluster.key")
	writeFile(t, keyFile, []byte(strings.Repeat("ab", 32)+"\n"))
	config := func(timeout string) string {
		return pop3sConfig(cert, backend) + fmt.Sprintf(`
[limits]
login_timeout = %q
[metrics]
address = ""
[cluster]
redis = %q
key_file = %q
`, timeout, rd.URL(), keyFile)
	}
	path := writeConfig(t, config("30s"))
	r, _ := startRunner(t, path)
	st := r.current().throttleStore
	if st == nil {
		t.Fatal("no throttle store with [cluster]")
	}
	if got, want := st.Hold(), 30*time.Second+time.Minute; got != want {
		t.Errorf("hold at start = %v, want %v", got, want)
	}
	writeFile(t, path, []byte(config("5m")))
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	if r.current().throttleStore != st {
		t.Error("a reload replaced the throttle store")
	}
	if got, want := st.Hold(), 5*time.Minute+time.Minute; got != want {
		t.Errorf("hold after a reload to login_timeout 5m = %v, want %v", got, want)
	}
}

// TestAttack7ClusterAdminToken: with [cluster], /sessions lists and ends
// the sessions of the whole fleet, so the admin endpoints (even on
// loopback, open to every local user) need metrics.token_file; a
// configuration without it is refused with an error naming the key.
func TestAttack7ClusterAdminToken(t *testing.T) {
	const base = "[log]\n[[listen]]\naddress = \"127.0.0.1:1110\"\ntls = \"none\"\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:110\"\ntls = \"none\"\n[route]\ndefault = \"b\"\n"
	const cl = "[cluster]\nredis = \"redis://r:6379/0\"\nkey_file = \"/k\"\n"
	_, err := ParseConfig("cluster", []byte(base+"[metrics]\naddress = \"127.0.0.1:9100\"\n"+cl))
	if err == nil || !strings.Contains(err.Error(), "metrics.token_file: required with [cluster]") {
		t.Errorf("[cluster] with a loopback admin address and no token: err = %v, want metrics.token_file required", err)
	}
	_, err = ParseConfig("cluster", []byte(base+cl))
	if err == nil || !strings.Contains(err.Error(), "metrics.token_file") {
		t.Errorf("[cluster] with the default admin address and no token: err = %v, want metrics.token_file required", err)
	}
	for _, ok := range []string{
		"[metrics]\naddress = \"127.0.0.1:9100\"\ntoken_file = \"/t\"\n",
		"[metrics]\naddress = \"\"\n",
	} {
		if _, err := ParseConfig("cluster", []byte(base+ok+cl)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
