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
