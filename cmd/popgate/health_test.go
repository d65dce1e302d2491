package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// TestReloadHealthChecks: the runner's health checks follow the backends
// of each reload, and popgate_backend_up and popgate_backend_address_up
// say what they found; health_interval = "0s" leaves a backend unchecked
// and out of the metrics.
func TestReloadHealthChecks(t *testing.T) {
	good := mailbox(t, messages(1)...)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.Addr().String()
	closed.Close()
	config := func(backends string) string {
		return fmt.Sprintf(`[log]
level = "warn"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
%s
[route]
default = "a"
[metrics]
address = "127.0.0.1:0"
`, backends)
	}
	backendA := fmt.Sprintf("[[backend]]\nname = \"a\"\naddress = %q\ntls = \"none\"\nhealth_interval = \"50ms\"\n", good)
	path := writeConfig(t, config(backendA))
	r, _ := startRunner(t, path)
	scrape := func() map[string]float64 {
		t.Helper()
		resp, err := http.Get("http://" + r.adminAddress() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return parseMetrics(t, string(body))
	}
	checked := func(n int) bool {
		list := r.srv.BackendHealth()
		if len(list) != n {
			return false
		}
		for _, h := range list {
			if h.LastCheck.IsZero() {
				return false
			}
		}
		return true
	}
	waitUntil(t, "backend a checked", func() bool { return checked(1) })
	if m := scrape(); m[`popgate_backend_up{backend="a"}`] != 1 || m[fmt.Sprintf(`popgate_backend_address_up{address=%q,backend="a"}`, good)] != 1 {
		t.Errorf("metrics with a up: %v", m)
	}

	// b: its address refuses, its fallback answers; c: checks off.
	writeFile(t, path, []byte(config(backendA+fmt.Sprintf(`[[backend]]
name = "b"
address = %q
fallbacks = [%q]
tls = "none"
health_interval = "50ms"
health_failures = 1
[[backend]]
name = "c"
address = %q
tls = "none"
health_interval = "0s"
`, dead, good, dead))))
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b's addresses checked", func() bool { return checked(3) })
	waitUntil(t, "b's address down", func() bool {
		m := scrape()
		return m[fmt.Sprintf(`popgate_backend_address_up{address=%q,backend="b"}`, dead)] == 0 &&
			m[fmt.Sprintf(`popgate_backend_address_up{address=%q,backend="b"}`, good)] == 1
	})
	m := scrape()
	if m[`popgate_backend_up{backend="b"}`] != 1 {
		t.Errorf(`popgate_backend_up{backend="b"} = %v with its fallback up, want 1`, m[`popgate_backend_up{backend="b"}`])
	}
	if _, ok := m[`popgate_backend_up{backend="c"}`]; ok {
		t.Error(`popgate_backend_up{backend="c"} exported for a backend without checks`)
	}

	// Back to a alone: b's checks stop and its series go.
	writeFile(t, path, []byte(config(backendA)))
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	if list := r.srv.BackendHealth(); len(list) != 1 || list[0].Backend != "a" {
		t.Errorf("after the reload: %+v", list)
	}
	if _, ok := scrape()[`popgate_backend_up{backend="b"}`]; ok {
		t.Error(`popgate_backend_up{backend="b"} still exported after b was removed`)
	}
}
