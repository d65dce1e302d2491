package tlsconf

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// certValid makes a self-signed certificate for names valid from notBefore
// to notAfter.
func certValid(t *testing.T, notBefore, notAfter time.Time, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// served returns the serial of the certificate srv serves to a client
// without SNI.
func servedSerial(t *testing.T, srv *Server) string {
	t.Helper()
	c, err := srv.TLSConfig().GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

// TestReloadValidity: an expired or not yet valid certificate does not
// replace a valid one: the reload fails with a CertificateError naming the
// file and the dates, and the valid one stays. One that replaces a
// certificate no better (or starts the server) loads, with an ERROR.
func TestReloadValidity(t *testing.T) {
	now := time.Now()
	day := 24 * time.Hour
	valid := certValid(t, now.Add(-time.Hour), now.Add(30*day), "mail.example.com")
	expired := certValid(t, now.Add(-60*day), now.Add(-day), "mail.example.com")
	early := certValid(t, now.Add(day), now.Add(90*day), "mail.example.com")
	renewed := certValid(t, now.Add(-time.Hour), now.Add(90*day), "mail.example.com")
	serial := func(c tls.Certificate) string { return c.Leaf.SerialNumber.String() }

	dir := t.TempDir()
	var logs syncBuffer
	f := writePair(t, dir, "mail", valid)
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		reason string
		when   string // in the error
	}{
		{"expired", expired, ReasonExpired, "expired at " + stamp(expired.Leaf.NotAfter)},
		{"not yet valid", early, ReasonNotYetValid, "not valid before " + stamp(early.Leaf.NotBefore)},
	} {
		writePair(t, dir, "mail", tc.cert)
		err := srv.Reload()
		var ce *CertificateError
		if !errors.As(err, &ce) || ce.Reason != tc.reason || ce.Cert != f.Cert {
			t.Fatalf("%s: Reload() = %v, want a CertificateError %q for %s", tc.name, err, tc.reason, f.Cert)
		}
		for _, want := range []string{f.Cert, tc.when, "valid until " + stamp(valid.Leaf.NotAfter)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: Reload() error %q, want mention of %q", tc.name, err, want)
			}
		}
		if !ce.NotBefore.Equal(tc.cert.Leaf.NotBefore) || !ce.NotAfter.Equal(tc.cert.Leaf.NotAfter) || !ce.Kept.Equal(valid.Leaf.NotAfter) {
			t.Errorf("%s: CertificateError dates %v..%v kept %v", tc.name, ce.NotBefore, ce.NotAfter, ce.Kept)
		}
		if got := servedSerial(t, srv); got != serial(valid) {
			t.Errorf("%s: serving serial %s after the refused reload, want the valid %s", tc.name, got, serial(valid))
		}
	}
	writePair(t, dir, "mail", renewed)
	if err := srv.Reload(); err != nil {
		t.Fatalf("Reload() with a renewed certificate = %v", err)
	}
	if got := servedSerial(t, srv); got != serial(renewed) {
		t.Errorf("after the renewal serving %s, want %s", got, serial(renewed))
	}

	// A configuration reload that builds a new store from the same files
	// refuses the same way.
	writePair(t, dir, "mail", expired)
	_, err = NewServer(ServerConfig{Certificates: []CertFile{f}, Previous: srv, MinVersion: "1.3"})
	if ce, ok := asCertificateError(err); !ok || ce.Reason != ReasonExpired {
		t.Errorf("NewServer(Previous with a valid certificate from the same files) = %v, want ReasonExpired", err)
	}

	// At start there is nothing better: the expired certificate is
	// served, with an ERROR naming it and its dates. A reload to another
	// expired one is no worse and goes through.
	logs.Reset()
	old, err := NewServer(ServerConfig{Certificates: []CertFile{f}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("NewServer(expired certificate) = %v, want it to start", err)
	}
	if out := logs.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "cert="+f.Cert) || !strings.Contains(out, "not_after=") {
		t.Errorf("NewServer(expired certificate) logged %q, want an ERROR naming the file and its dates", out)
	}
	other := certValid(t, now.Add(-60*day), now.Add(-2*day), "mail.example.com")
	writePair(t, dir, "mail", other)
	if err := old.Reload(); err != nil {
		t.Errorf("Reload() of an expired certificate over an expired one = %v", err)
	}
	if got := servedSerial(t, old); got != serial(other) {
		t.Errorf("serving %s, want %s", got, serial(other))
	}
}

// TestWatchNotYetValid: the watch refuses a certificate that is not valid
// yet (reporting it), keeps the old one, and loads the new one once it is
// valid, without another change to the files.
func TestWatchNotYetValid(t *testing.T) {
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	dir := t.TempDir()
	var logs syncBuffer
	old := certValid(t, now.Add(-time.Hour), now.Add(30*24*time.Hour), "mail.example.com")
	f := writePair(t, dir, "mail", old)
	srv, err := NewServer(ServerConfig{Certificates: []CertFile{f}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv.now = func() time.Time { return time.Unix(0, clock.Load()) }
	refused := make(chan error, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); srv.Watch(ctx, 5*time.Millisecond, func(err error) { refused <- err }) }()
	defer func() { cancel(); <-done }()

	early := certValid(t, now.Add(time.Hour), now.Add(60*24*time.Hour), "mail.example.com")
	next := writePair(t, t.TempDir(), "mail", early)
	// Replaced once, maybe before the watch's first round: the watch
	// compares with what NewServer read, so it sees the change whenever
	// its goroutine starts. A refusal for a half-replaced pair (the new
	// key with the old certificate) is not the one waited for.
	replace(t, next.Key, f.Key)
	replace(t, next.Cert, f.Cert)
	guard := time.After(time.Minute) // against a hang, not a timing check
	for {
		var err error
		select {
		case err = <-refused:
		case <-guard:
			t.Fatalf("the watch reported no refusal; log:\n%s", logs.String())
		}
		if ce, ok := asCertificateError(err); ok && ce.Reason == ReasonNotYetValid {
			break
		}
	}
	if got := servedSerial(t, srv); got != old.Leaf.SerialNumber.String() {
		t.Errorf("after the refusal serving %s, want the old %s", got, old.Leaf.SerialNumber)
	}
	if out := logs.String(); !strings.Contains(out, "reason=not_yet_valid") || !strings.Contains(out, "not_before=") {
		t.Errorf("log %q, want the refusal with the certificate's dates", out)
	}

	clock.Store(now.Add(2 * time.Hour).UnixNano())
	want := early.Leaf.SerialNumber.String()
	for servedSerial(t, srv) != want {
		select {
		case <-guard:
			t.Fatalf("the certificate was not loaded once valid; log:\n%s", logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
