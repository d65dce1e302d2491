package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/proxy/pop3test"
)

// TestRunLoad drives the clients against the in-memory server over TLS:
// login sessions on workers that never share a mailbox (the server would
// answer [IN-USE]), and RETR of a dot-stuffed message checked to the byte.
func TestRunLoad(t *testing.T) {
	ca, err := certgen.NewCA("test", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("pop.test", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	msg := pop3test.GenerateMessage(200 << 10)
	var accounts []account
	mb := map[string]*pop3test.Mailbox{}
	for i := range 10 {
		a := account{fmt.Sprint("u", i), fmt.Sprint("p", i)}
		accounts = append(accounts, a)
		mb[a.User] = &pop3test.Mailbox{Password: a.Pass, Messages: [][]byte{msg}}
	}
	srv := &pop3test.Server{Mailboxes: mb, Implicit: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tg := target{Side: "direct", Addr: addr.String(), TLS: &tls.Config{RootCAs: ca.Pool, ServerName: "pop.test", MinVersion: tls.VersionTLS13}}
	ctx := context.Background()

	res := runLoad(ctx, tg, accounts, 4, 40, time.Minute, nil)
	if res.Errors != 0 || res.Sessions != 40 {
		t.Fatalf("login: %d sessions, %d errors %q; want 40, 0", res.Sessions, res.Errors, res.ErrorMsgs)
	}
	if res.TLS == nil || res.TLS.Version != tls.VersionTLS13 || res.TLS.DidResume {
		t.Errorf("TLS state %+v: want TLS 1.3, no resumption", res.TLS)
	}
	if res.Login[0] <= 0 || res.Session[len(res.Session)-1] < res.Login[0] {
		t.Errorf("latencies login %v session %v", res.Login[0], res.Session[len(res.Session)-1])
	}

	want := newWantMessage(msg)
	res = runLoad(ctx, tg, accounts, 3, 6, time.Minute, &want)
	if res.Errors != 0 || res.Sessions != 6 || res.Payload != 6*int64(len(msg)) || res.Bytes <= res.Payload {
		t.Fatalf("retr: %d sessions, %d errors %q, payload %d, wire %d", res.Sessions, res.Errors, res.ErrorMsgs, res.Payload, res.Bytes)
	}

	// A wrong expectation is an error, not a silent pass.
	bad := wantMessage{Size: want.Size, CRC: want.CRC + 1}
	res = runLoad(ctx, tg, accounts, 1, 1, time.Minute, &bad)
	if res.Errors != 1 {
		t.Errorf("retr with a wrong CRC: %d errors, want 1", res.Errors)
	}

	// Not u0: the server may not yet have noticed that the client above
	// hung up on u0's session, and would answer [IN-USE].
	is := openIdle(ctx, tg, accounts[5:], 2)
	if is.Errors != 0 || len(is.conns) != 5 {
		t.Fatalf("idle: %d open, %d errors %q", len(is.conns), is.Errors, is.ErrorMsgs)
	}
	if errs, msgs := is.closeAll(2); errs != 0 {
		t.Errorf("idle close: %d errors %q", errs, msgs)
	}
}
