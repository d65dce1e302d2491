package admin

import (
	"testing"
	"time"

	"github.com/popgate/popgate/proxy"
)

// TestNodeMetrics: a replica's metrics (NewNodeMetrics) carry node on
// every series, those of the registry's own collectors and of the
// scrape-time sources included; NewMetrics's carry none.
func TestNodeMetrics(t *testing.T) {
	for _, node := range []string{"pop-1", ""} {
		m := NewMetrics("dev", "")
		if node != "" {
			m = NewNodeMetrics("dev", "", node)
		}
		m.SetSources(Sources{
			Sessions:         &fakeSessions{stats: proxy.Stats{Active: map[string]int{"pop3s": 1}}},
			Certificates:     func() map[string]time.Time { return map[string]time.Time{"a": t0} },
			ClusterUp:        func() bool { return true },
			ClusterFallbacks: func() map[string]uint64 { return map[string]uint64{"tickets": 2} },
		})
		m.Accepted("pop3s")
		m.Login("pop3s", proxy.LoginOK)
		_, fams := scrape(t, Handler(m, nil, nil, nil, nil))
		n := 0
		for name, f := range fams {
			for _, s := range f.GetMetric() {
				n++
				got, has := "", false
				for _, l := range s.GetLabel() {
					if l.GetName() == "node" {
						got, has = l.GetValue(), true
					}
				}
				switch {
				case node != "" && got != node:
					t.Errorf("node %q: a series of %s has node=%q (%v)", node, name, got, has)
				case node == "" && has:
					t.Errorf("without a node, a series of %s has node=%q", name, got)
				}
			}
		}
		for _, name := range []string{"popgate_cluster_up", "popgate_cluster_fallbacks_total", "popgate_logins_total", "go_goroutines", "popgate_build_info"} {
			if _, ok := fams[name]; !ok {
				t.Errorf("node %q: no %s", node, name)
			}
		}
		if n < 50 {
			t.Errorf("node %q: only %d series scraped", node, n)
		}
	}
}
