package interop

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/promtext"
)

// scrape fetches popgate's /metrics into series ("name{labels}") and values.
func (p *popgate) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	addr, _ := p.waitRecords(t, "admin endpoints listening", 1)[0]["address"].(string)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %s", err, resp.Status)
	}
	m, err := promtext.Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkMetrics compares popgate's metrics, once its sessions have ended,
// with what its log says of the same sessions: every real client's login,
// TLS handshake and octet is counted, and nothing else.
func checkMetrics(t *testing.T, pg *popgate, backend string) {
	t.Helper()
	var m map[string]float64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m = pg.scrape(t)
		if m[`popgate_connections_active{listener="pop3s"}`]+m[`popgate_connections_active{listener="pop3"}`] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions still open: %v", m)
		}
	}
	ends := pg.records("session end")
	var ok, tlsSessions, conns, in, out float64
	for _, e := range ends {
		conns++
		if e["tls_version"] != nil {
			tlsSessions++
		}
		if e["result"] == "ok" {
			ok++
			i, _ := e["bytes_in"].(float64)
			o, _ := e["bytes_out"].(float64)
			in, out = in+i, out+o
		}
	}
	if ok == 0 {
		t.Fatal("no session in the log")
	}
	var handshakes float64
	for series, v := range m {
		if strings.HasPrefix(series, "popgate_tls_handshakes_total{") {
			handshakes += v
		}
	}
	for series, want := range map[string]float64{
		`popgate_logins_total{result="ok"}`:                                   ok,
		`popgate_logins_total{result="auth_failed"}`:                          0,
		`popgate_backend_logins_total{backend="` + backend + `",result="ok"}`: ok,
		`popgate_backend_login_seconds_count{backend="` + backend + `"}`:      ok,
		`popgate_bytes_total{direction="client_to_backend"}`:                  in,
		`popgate_bytes_total{direction="backend_to_client"}`:                  out,
		`popgate_sessions_active`:                                             0,
	} {
		if got, present := m[series]; !present || got != want {
			t.Errorf("%s = %v (present %v), want %v as the log has it", series, got, present, want)
		}
	}
	if got := m[`popgate_connections_total{listener="pop3s"}`] + m[`popgate_connections_total{listener="pop3"}`]; got != conns {
		t.Errorf("popgate_connections_total = %v, want %v (session end lines)", got, conns)
	}
	if handshakes != tlsSessions {
		t.Errorf("popgate_tls_handshakes_total = %v, want %v (sessions with tls_version)", handshakes, tlsSessions)
	}
	if out < 10<<20 {
		t.Errorf("backend_to_client = %v, want at least the 10 MiB message", out)
	}
}
