package main

import (
	"context"

	"github.com/popgate/popgate/admin"
	"github.com/popgate/popgate/proxy"
)

// consoleSources sets what the operator's console shows of in: its
// listeners, backends, certificates and router. Backend health is left
// unset: without active checks the console says "not checked".
func consoleSources(src *admin.Sources, in *instance) {
	c := in.cfg
	listeners := make([]admin.ListenerInfo, 0, len(c.Listeners))
	for _, l := range c.Listeners {
		listeners = append(listeners, admin.ListenerInfo{Name: l.Name, Address: l.Address, TLS: l.TLS.String()})
	}
	src.Listeners = func() []admin.ListenerInfo { return listeners }
	backends := make([]admin.BackendInfo, 0, len(c.Backends))
	byName := map[string]*proxy.Backend{}
	for _, b := range c.Backends {
		backends = append(backends, admin.BackendInfo{Name: b.Name, Addresses: append([]string{b.Address}, b.Fallbacks...), TLS: b.TLS.String()})
		byName[b.Name] = &b.Backend
	}
	src.Backends = func() []admin.BackendInfo { return backends }
	if certs := in.certs; certs != nil {
		src.CertificateDetails = func() []admin.CertificateInfo {
			var out []admin.CertificateInfo
			for _, ci := range certs.Certificates() {
				out = append(out, admin.CertificateInfo{Names: ci.Names, Issuer: ci.Issuer, NotAfter: ci.NotAfter,
					Source: ci.Source, LastRenewal: ci.LastOrder.At, RenewalErr: ci.LastOrder.Err})
			}
			return out
		}
	}
	if router := in.router; router != nil {
		// As popgate route answers (cmdRoute).
		src.Route = func(ctx context.Context, user string) (admin.RouteAnswer, error) {
			name, why, err := router.Explain(ctx, user)
			if err != nil {
				return admin.RouteAnswer{}, err
			}
			a := admin.RouteAnswer{Why: why}
			if b := byName[name]; b != nil {
				a.Backend, a.Address, a.TLS = name, b.Address, b.TLS.String()
			}
			return a, nil
		}
	}
}
