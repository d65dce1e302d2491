// Package admin serves popgate's admin address (metrics.address, by
// default 127.0.0.1:9110): Prometheus metrics, health and readiness
// checks, and the live sessions, which an operator can list and end.
//
// The binary wires it up:
//
//	m := admin.NewMetrics(version, commit)
//	srv, err := proxy.New(proxy.Config{Observer: m, ...})
//	m.SetSources(admin.Sources{Sessions: srv, Certificates: certs.Expiry})
//	h := admin.Handler(m, srv, ready, func() admin.Access { return access }, log)
//	go admin.Serve(ctx, ln, h, log)
//
// (or admin.ServeTLS with a function that gives the TLS config of the
// moment, for HTTPS: metrics.tls)
// and calls [Metrics.Reloaded] and [Metrics.SetSources] again after each
// configuration reload.
//
// The endpoints:
//
//	GET    /metrics           Prometheus text exposition
//	GET    /healthz           200 "ok" while the process runs
//	GET    /readyz            200 "ready", or 503 and the reason
//	GET    /sessions          JSON array of proxy.SessionInfo, oldest first
//	DELETE /sessions?user=U   end every session of user U: {"ended": N}
//	DELETE /sessions?id=ID    end the session with connection id ID
//
// With a [FleetSessions] (popgate's [cluster]) /sessions answers for the
// fleet: each session names its node, ids are "NODE:ID", DELETE ends
// sessions on every replica and counts them by node in the answer, and
// an answer that is not the whole fleet's carries a Popgate-Partial
// header saying why.
//
//	GET    /console/          the operator's console (console.go): HTML
//	                          pages behind a login with the token
//
// [Access] protects them: a bearer token for /sessions in every method
// (and for /metrics when asked), compared in constant time, and a Host
// check against DNS rebinding for loopback addresses. /healthz and
// /readyz stay open for probes. An address that sends ten wrong tokens
// within a minute gets 429 for any token until the minute ends. Without a token anyone who reaches the
// address can list and end sessions: bind it to loopback then.
package admin
