package tlsconf

// Attacks on the session tickets from the fourth review. They held; the
// tests stay as regression tests.

import (
	"crypto/rand"
	"crypto/tls"
	"testing"
	"time"
)

// TestAttack4TicketRSAKexOnStrictListener: a TLS 1.2 session with RSA key
// exchange (no forward secrecy) on a legacy listener (listen.min_version
// below 1.2, the legacy suites) does not resume on a listener with the
// default suites, though both seal tickets with the same keys: crypto/tls
// resumes only with a suite the config allows, and the default suites
// have no RSA key exchange.
func TestAttack4TicketRSAKexOnStrictListener(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	files := []CertFile{writePair(t, t.TempDir(), "mail.example.com", newRSACert(t, "mail.example.com"))}
	s, err := NewServer(ServerConfig{Certificates: files, SessionTickets: tk})
	if err != nil {
		t.Fatal(err)
	}
	strict := s.TLSConfig()
	legacy := strict.Clone()
	legacy.MinVersion = tls.VersionTLS10
	legacy.CipherSuites = LegacyCipherSuites()
	const kex = tls.TLS_RSA_WITH_AES_128_CBC_SHA
	cache := &firstTicket{}
	old := clientFor("mail.example.com", tls.VersionTLS12, cache)
	old.CipherSuites = []uint16{kex}
	st, err := connect(t, legacy, old)
	if err != nil || st.CipherSuite != kex {
		t.Fatalf("legacy handshake: suite %x, %v", st.CipherSuite, err)
	}
	if !resumes(t, legacy, old) {
		t.Fatal("the RSA key exchange ticket did not resume on its listener")
	}
	cli := clientFor("mail.example.com", tls.VersionTLS12, cache)
	cli.CipherSuites = []uint16{kex, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	st, err = connect(t, strict, cli)
	if err != nil {
		t.Fatal(err)
	}
	if st.DidResume || st.CipherSuite == kex {
		t.Errorf("strict listener: resumed %v with suite %x", st.DidResume, st.CipherSuite)
	}
}

// TestAttack4MalformedTickets: whatever a client presents as a ticket
// (empty, random, truncated, tampered, oversized, a real one for another
// name) opens to nothing and no error, so that a full handshake follows
// rather than an aborted one.
func TestAttack4MalformedTickets(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			cache := &firstTicket{}
			resumes(t, srv, clientFor("mail.example.com", tv.v, cache))
			cs, _ := cache.Get("")
			if cs == nil {
				t.Fatal("no ticket issued")
			}
			ticket, _, err := cs.ResumptionState()
			if err != nil {
				t.Fatal(err)
			}
			mine := tls.ConnectionState{ServerName: "mail.example.com"}
			if ss, err := srv.UnwrapSession(ticket, mine); ss == nil || err != nil {
				t.Fatalf("the ticket does not open: %v", err)
			}
			random := make([]byte, 300)
			rand.Read(random)
			tampered := append([]byte(nil), ticket...)
			tampered[len(tampered)/2] ^= 1
			huge := make([]byte, 1<<16)
			copy(huge, ticket)
			for name, id := range map[string][]byte{
				"empty": nil, "one byte": {0}, "random": random, "truncated": ticket[:len(ticket)-1],
				"prefix": ticket[:48], "tampered": tampered, "oversized": huge,
				"doubled": append(append([]byte(nil), ticket...), ticket...),
			} {
				if ss, err := srv.UnwrapSession(id, mine); ss != nil || err != nil {
					t.Errorf("%s ticket: session %v, err %v", name, ss != nil, err)
				}
			}
			for _, other := range []string{"", "other.example.com", "mail.example.com.evil", "mail.example.co"} {
				if ss, err := srv.UnwrapSession(ticket, tls.ConnectionState{ServerName: other}); ss != nil || err != nil {
					t.Errorf("the ticket opened for SNI %q (err %v)", other, err)
				}
			}
		})
	}
}

// TestAttack4ResumedALPN: a resumed handshake is held to ALPN as a full
// one (the ALPACA defence): crypto/tls negotiates the protocol before it
// looks at the ticket, so a client offering ALPN without "pop3" is
// refused even with a ticket that resumes, and one offering "pop3" resumes.
func TestAttack4ResumedALPN(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			cache := &firstTicket{}
			resumes(t, srv, clientFor("mail.example.com", tv.v, cache))
			foreign := clientFor("mail.example.com", tv.v, cache)
			foreign.NextProtos = []string{"imap", "http/1.1"}
			if st, err := connect(t, srv, foreign); err == nil {
				t.Errorf("a resumption offering ALPN %q succeeded (resumed %v)", foreign.NextProtos, st.DidResume)
			}
			pop3 := clientFor("mail.example.com", tv.v, cache)
			pop3.NextProtos = []string{"imap", ALPN}
			st, err := connect(t, srv, pop3)
			if err != nil || !st.DidResume || st.NegotiatedProtocol != ALPN {
				t.Errorf("resumption offering pop3: resumed %v, protocol %q, %v", st.DidResume, st.NegotiatedProtocol, err)
			}
		})
	}
}
