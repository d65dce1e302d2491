package promtext

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	m, err := Parse(strings.NewReader(`# HELP popgate_logins_total Login attempts.
# TYPE popgate_logins_total counter
popgate_logins_total{result="ok"} 3

popgate_sessions_active 0
popgate_certificate_expiry_timestamp_seconds{name="mail.example.com"} 1.7e+09
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`popgate_logins_total{result="ok"}`:                                     3,
		`popgate_sessions_active`:                                               0,
		`popgate_certificate_expiry_timestamp_seconds{name="mail.example.com"}`: 1.7e9,
	}
	if len(m) != len(want) {
		t.Errorf("Parse = %v, want %v", m, want)
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	for _, bad := range []string{"popgate_x", "popgate_x one"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) = nil error", bad)
		}
	}
}
