package admin

import (
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/popgate/popgate/proxy"
)

// fakeSessions is a proxy without sockets: its Stats and sessions are set
// by the test; ending sessions removes them from the list.
type fakeSessions struct {
	mu    sync.Mutex
	stats proxy.Stats
	list  []proxy.SessionInfo
}

func (f *fakeSessions) Stats() proxy.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.stats
	st.Active = maps.Clone(f.stats.Active)
	return st
}

func (f *fakeSessions) setStats(st proxy.Stats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = st
}

func (f *fakeSessions) SessionList() []proxy.SessionInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list)
}

func (f *fakeSessions) EndSessions(user string) int {
	return f.end(func(s proxy.SessionInfo) bool { return s.User != "" && strings.EqualFold(s.User, user) })
}

func (f *fakeSessions) EndSession(id string) bool {
	return f.end(func(s proxy.SessionInfo) bool { return s.ID == id }) > 0
}

func (f *fakeSessions) end(match func(proxy.SessionInfo) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.list)
	f.list = slices.DeleteFunc(f.list, match)
	return n - len(f.list)
}

// scrape GETs /metrics from h and returns every sample by series name
// with its labels sorted, as `name{a="x",b="y"}`; histograms give
// name_bucket (with le), name_sum and name_count. It also returns the
// families by name, for their help and type.
func scrape(t *testing.T, h http.Handler) (map[string]float64, map[string]*dto.MetricFamily) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	samples := make(map[string]float64)
	add := func(name string, labels []*dto.LabelPair, extra string, v float64) {
		var ls []string
		for _, l := range labels {
			ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
		}
		if extra != "" {
			ls = append(ls, extra)
		}
		sort.Strings(ls)
		key := name
		if len(ls) > 0 {
			key += "{" + strings.Join(ls, ",") + "}"
		}
		if _, dup := samples[key]; dup {
			t.Errorf("series %s exported twice", key)
		}
		samples[key] = v
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				add(name, m.GetLabel(), "", m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(name, m.GetLabel(), "", m.GetGauge().GetValue())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				add(name+"_count", m.GetLabel(), "", float64(h.GetSampleCount()))
				add(name+"_sum", m.GetLabel(), "", h.GetSampleSum())
				for _, b := range h.GetBucket() {
					add(name+"_bucket", m.GetLabel(), fmt.Sprintf("le=%q", fmt.Sprint(b.GetUpperBound())), float64(b.GetCumulativeCount()))
				}
			default:
				add(name, m.GetLabel(), "", m.GetUntyped().GetValue())
			}
		}
	}
	return samples, fams
}
