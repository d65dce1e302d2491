package main

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/admin"
)

// TestConsoleSources: the console sees the configuration's listeners and
// backends, and its routing form answers as popgate route does.
func TestConsoleSources(t *testing.T) {
	c, err := ParseConfig("t", []byte(listenNone+backendB+
		"[[backend]]\nname = \"c\"\naddress = \"127.0.0.1:1111\"\nfallbacks = [\"127.0.0.1:1112\"]\ntls = \"none\"\n\n"+
		"[route]\n[route.users]\n\"alice@example.com\" = \"c\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := build(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	var src admin.Sources
	consoleSources(&src, in)
	if l := src.Listeners(); len(l) != 1 || l[0].Address != "127.0.0.1:1100" || l[0].TLS != "none" {
		t.Errorf("Listeners() = %+v", l)
	}
	b := src.Backends()
	if len(b) != 2 || b[1].Name != "c" || !slices.Equal(b[1].Addresses, []string{"127.0.0.1:1111", "127.0.0.1:1112"}) {
		t.Errorf("Backends() = %+v", b)
	}
	if src.BackendHealth != nil || src.CertificateDetails != nil {
		t.Error("health or certificates set without health checks or TLS")
	}
	a, err := src.Route(t.Context(), "Alice@example.com")
	if err != nil || a.Backend != "c" || a.Address != "127.0.0.1:1111" || a.TLS != "none" || !strings.Contains(a.Why, `backend "c"`) {
		t.Errorf("Route(alice) = %+v, %v", a, err)
	}
	a, err = src.Route(t.Context(), "bob@example.com")
	if err != nil || a.Backend != "" || !strings.Contains(a.Why, "no route") {
		t.Errorf("Route(bob) = %+v, %v", a, err)
	}
}
