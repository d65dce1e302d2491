// Package proxy is popgate's POP3 proxy: listeners and accept loops, the
// POP3 AUTHORIZATION state machine, backend dialing and login, and the
// splice that carries the rest of the session.
//
// A [Server] is built from a [Config] and serves any number of listeners:
//
//	srv, err := proxy.New(proxy.Config{
//		Router:   auth.NewStatic(nil, nil, "legacy"),
//		Backends: map[string]*proxy.Backend{"legacy": {Name: "legacy", Address: "10.0.0.10:110"}},
//	})
//	go srv.Serve(ctx, ln, proxy.Listener{Name: "pop3s", TLS: proxy.TLSImplicit, TLSConfig: tc})
//
// The session speaks POP3 to the client until it has credentials, asks the
// [auth.Router] where they go, logs in to that backend over plaintext, STLS
// or implicit TLS, relays the backend's +OK unchanged and then copies bytes
// both ways. A refusal of the credentials, whoever gave it, is answered in
// popgate's own words unless [Config.RelayBackendErrors] says otherwise. Nothing is rewritten after the login, and popgate never
// sends QUIT to a backend on a client's behalf: a session that ends without
// the client's QUIT leaves the mailbox as it was (RFC 1939 §6).
//
// Implementation notes:
//   - Bytes a client pipelines behind its login are read into the session's
//     buffer with the login itself; they are written to the backend before
//     anything else once the login succeeded (RFC 2449 §6.6).
//   - At STLS the buffered plaintext is dropped, never parsed
//     (CVE-2011-0411 class). As a client to a backend, a byte that follows
//     the backend's +OK to STLS aborts the login.
//   - While a session is idle after login it holds no copy buffer: reads
//     from TCP wait for readiness before they borrow one from a pool, reads
//     from TLS use a 512-byte buffer and borrow a large one only while
//     records keep arriving.
package proxy
