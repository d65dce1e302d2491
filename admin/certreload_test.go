package admin

import "testing"

// TestCertificateReloadFailed: every reason shows from the start at 0, and
// each refusal counts under its reason.
func TestCertificateReloadFailed(t *testing.T) {
	m := NewMetrics("1.2.3", "abc123")
	m.CertificateReloadFailed("expired")
	m.CertificateReloadFailed("expired")
	m.CertificateReloadFailed("unreadable")
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "popgate_certificate_reload_errors_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
		}
	}
	want := map[string]float64{"unreadable": 1, "invalid": 0, "expired": 2, "not_yet_valid": 0}
	for r, n := range want {
		if v, ok := got[r]; !ok || v != n {
			t.Errorf(`popgate_certificate_reload_errors_total{reason=%q} = %v (present %v), want %v`, r, v, ok, n)
		}
	}
}
