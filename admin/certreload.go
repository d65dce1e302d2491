package admin

import "github.com/prometheus/client_golang/prometheus"

// certReloadReasons are the reasons popgate_certificate_reload_errors_total
// shows from the start, as tlsconf's CertificateError names them.
var certReloadReasons = []string{"unreadable", "invalid", "expired", "not_yet_valid"}

func newCertReloadErrors() *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popgate_certificate_reload_errors_total",
		Help: "Static certificate files refused on a reload, the previous certificates kept, by reason: unreadable (missing, not a regular file, over 1 MiB), invalid (not PEM, key mismatch), expired, not_yet_valid (would have replaced a valid certificate).",
	}, []string{"reason"})
	for _, r := range certReloadReasons {
		v.WithLabelValues(r)
	}
	return v
}

// CertificateReloadFailed counts a reload of the static certificate files
// that was refused (by the file watch, SIGHUP or a configuration reload);
// reason is the tlsconf CertificateError's.
func (m *Metrics) CertificateReloadFailed(reason string) {
	m.certReloads.WithLabelValues(reason).Inc()
}
