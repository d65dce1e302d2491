package admin

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCounters: counters sums a vector's children by the labels asked
// for, summing over the others, sorted by name.
func TestCounters(t *testing.T) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"backend", "result", "other"})
	v.WithLabelValues("b2", "ok", "a").Add(2)
	v.WithLabelValues("b2", "ok", "b").Add(3)
	v.WithLabelValues("b1", "error", "a").Inc()
	got := counters(v, "backend", "result")
	want := []Counter{{"b1 error", 1}, {"b2 ok", 5}}
	if !slices.Equal(got, want) {
		t.Errorf("counters = %v, want %v", got, want)
	}
	if got := counters(v, "result"); !slices.Equal(got, []Counter{{"error", 1}, {"ok", 5}}) {
		t.Errorf("counters by result = %v", got)
	}
}
