package tlsconf

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock is a clock tests move by hand.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *testClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// firstTicket is a client session cache that keeps the first ticket it is
// given, for every server name: later tickets (a resumed TLS 1.3 session
// brings a new one) do not replace it, so that a test can present the same
// ticket again, or to another name.
type firstTicket struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

func (f *firstTicket) Get(string) (*tls.ClientSessionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cs, f.cs != nil
}

func (f *firstTicket) Put(_ string, cs *tls.ClientSessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cs == nil && cs != nil {
		f.cs = cs
	}
}

func (f *firstTicket) has() bool {
	_, ok := f.Get("")
	return ok
}

// connect makes one TLS connection over loopback and reads one byte the
// server writes after its handshake (a TLS 1.3 client takes its tickets in
// only when it reads). It returns the server's view of the connection.
func connect(t *testing.T, srv, cli *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	type result struct {
		st  tls.ConnectionState
		err error
	}
	srvDone := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			srvDone <- result{err: err}
			return
		}
		_, err = tc.Write([]byte("+"))
		srvDone <- result{tc.ConnectionState(), err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(deadline)
	c := tls.Client(raw, cli)
	_, cliErr := io.ReadFull(c, make([]byte, 1))
	if cliErr != nil {
		raw.Close()
	}
	r := <-srvDone
	if err := errors.Join(cliErr, r.err); err != nil {
		return r.st, err
	}
	if c.ConnectionState().DidResume != r.st.DidResume {
		t.Fatalf("client DidResume = %v, server's %v", c.ConnectionState().DidResume, r.st.DidResume)
	}
	return r.st, nil
}

// resumes connects and reports whether the session resumed; the handshake
// must succeed either way.
func resumes(t *testing.T, srv, cli *tls.Config) bool {
	t.Helper()
	st, err := connect(t, srv, cli)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return st.DidResume
}

// ticketServer is a Server for names, its config sealing tickets with tk.
func ticketServer(t *testing.T, tk *Tickets, names ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	var files []CertFile
	for _, n := range names {
		files = append(files, writePair(t, dir, n, newCert(t, n)))
	}
	s, err := NewServer(ServerConfig{Certificates: files, SessionTickets: tk})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newTickets(t *testing.T, rotation, lifetime time.Duration, clock *testClock) *Tickets {
	t.Helper()
	tk, err := NewTickets(TicketsConfig{Rotation: rotation, Lifetime: lifetime, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

var ticketVersions = []struct {
	name string
	v    uint16
}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}}

// clientFor is a client config for name with cache and version v.
func clientFor(name string, v uint16, cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: true, // what is tested is resumption, not trust
		MinVersion:         v,
		MaxVersion:         v,
		ClientSessionCache: cache,
	}
}

// TestTicketRotation: a ticket resumes while the key that sealed it is
// accepted, across rotations, and no longer once the key is dropped; the
// handshake then is a full one and succeeds, and the new ticket resumes.
func TestTicketRotation(t *testing.T) {
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			clock := newTestClock()
			tk := newTickets(t, time.Hour, 3*time.Hour, clock)
			srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
			cache := &firstTicket{}
			cli := clientFor("mail.example.com", tv.v, cache)
			if resumes(t, srv, cli) {
				t.Fatal("the first connection resumed")
			}
			if !cache.has() {
				t.Fatal("no ticket issued")
			}
			for _, step := range []time.Duration{time.Hour, time.Hour, 59 * time.Minute} {
				clock.advance(step)
				if !resumes(t, srv, cli) {
					t.Fatalf("%v after it was issued, within the key lifetime, the ticket did not resume", clock.now().Sub(newTestClock().now()))
				}
			}
			clock.advance(time.Minute) // the key is 3h old: dropped
			if resumes(t, srv, cli) {
				t.Fatal("a ticket whose key was dropped resumed")
			}
			fresh := clientFor("mail.example.com", tv.v, tls.NewLRUClientSessionCache(4))
			resumes(t, srv, fresh)
			if !resumes(t, srv, fresh) {
				t.Error("a ticket issued after the rotation did not resume")
			}
		})
	}
}

// TestTicketsSetPeriods: new periods (a reload) keep the keys, and apply
// to them at once.
func TestTicketsSetPeriods(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
	cli := clientFor("mail.example.com", tls.VersionTLS13, &firstTicket{})
	resumes(t, srv, cli)
	clock.advance(90 * time.Minute)
	tk.SetPeriods(time.Hour, 4*time.Hour)
	if !resumes(t, srv, cli) {
		t.Fatal("the keys did not survive new periods")
	}
	tk.SetPeriods(30*time.Minute, 80*time.Minute)
	if resumes(t, srv, cli) {
		t.Error("a ticket whose key is older than the new lifetime resumed")
	}
}

// TestTicketsOutliveServer: a new Server (a reload that changed [tls])
// with the same Tickets resumes the tickets the old one issued. Without
// them it does not: that is what Tickets is for.
func TestTicketsOutliveServer(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			cli := clientFor("mail.example.com", tv.v, tls.NewLRUClientSessionCache(4))
			resumes(t, ticketServer(t, tk, "mail.example.com").TLSConfig(), cli)
			if !resumes(t, ticketServer(t, tk, "mail.example.com").TLSConfig(), cli) {
				t.Error("a new Server with the same Tickets did not resume")
			}

			cli = clientFor("mail.example.com", tv.v, tls.NewLRUClientSessionCache(4))
			resumes(t, ticketServer(t, nil, "mail.example.com").TLSConfig(), cli)
			if resumes(t, ticketServer(t, nil, "mail.example.com").TLSConfig(), cli) {
				t.Error("without Tickets, a new Server resumed the old one's ticket: the test shows nothing")
			}
		})
	}
}

// TestTicketsClone: a listener's Clone of the config (listen.min_version)
// shares the tickets, and rotation reaches it.
func TestTicketsClone(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 2*time.Hour, clock)
	srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
	clone := srv.Clone()
	clone.MinVersion = tls.VersionTLS13
	cache := &firstTicket{}
	cli := clientFor("mail.example.com", tls.VersionTLS13, cache)
	resumes(t, srv, cli)
	if !resumes(t, clone, cli) {
		t.Error("the clone did not resume the original's ticket")
	}
	clock.advance(2 * time.Hour)
	if resumes(t, clone, cli) {
		t.Error("the clone resumed a ticket whose key was dropped")
	}
}

// TestTicketServerName: a ticket resumes only for the server name it was
// issued for; for another name the handshake is a full one, with that
// name's certificate.
func TestTicketServerName(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	s := ticketServer(t, tk, "a.example.com", "b.example.com")
	srv := s.TLSConfig()
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			cache := &firstTicket{} // offers its ticket whatever the name
			resumes(t, srv, clientFor("a.example.com", tv.v, cache))
			if !resumes(t, srv, clientFor("A.Example.COM.", tv.v, cache)) {
				t.Error("the same name in another case did not resume")
			}
			for _, other := range []string{"b.example.com", ""} {
				st, err := connect(t, srv, clientFor(other, tv.v, cache))
				if err != nil {
					t.Fatalf("SNI %q: %v", other, err)
				}
				if st.DidResume {
					t.Errorf("a ticket for a.example.com resumed with SNI %q", other)
				}
			}
			cli := clientFor("b.example.com", tv.v, nil)
			cli.InsecureSkipVerify = false
			cli.RootCAs = pool(*s.set.Load().certs[0], *s.set.Load().certs[1])
			if _, err := connect(t, srv, cli); err != nil {
				t.Errorf("b.example.com's certificate: %v", err)
			}
		})
	}
}

// TestTicketLegacyListener: listeners share the keys, but a ticket from a
// TLS 1.0 session on a listener that allows it (listen.min_version) does
// not resume on one that asks for TLS 1.2: crypto/tls resumes a session
// only with its own version.
func TestTicketLegacyListener(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	strict := ticketServer(t, tk, "mail.example.com").TLSConfig()
	legacy := strict.Clone()
	legacy.MinVersion = tls.VersionTLS10
	legacy.CipherSuites = LegacyCipherSuites()
	cache := &firstTicket{}
	old := clientFor("mail.example.com", tls.VersionTLS10, cache)
	st, err := connect(t, legacy, old)
	if err != nil || st.Version != tls.VersionTLS10 {
		t.Fatalf("legacy handshake: version %x, %v", st.Version, err)
	}
	if !resumes(t, legacy, old) {
		t.Fatal("the TLS 1.0 ticket did not resume on its listener")
	}
	cli := clientFor("mail.example.com", 0, cache)
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS10, tls.VersionTLS12
	if resumes(t, strict, cli) {
		t.Error("a TLS 1.0 ticket resumed on a TLS 1.2 listener")
	}
}

// TestNoSessionTickets: with session tickets off, no ticket is issued and
// none resumes, not even one sealed by the same keys.
func TestNoSessionTickets(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Hour, 3*time.Hour, clock)
	on := ticketServer(t, tk, "mail.example.com")
	off, err := NewServer(ServerConfig{Certificates: on.cfg.Certificates, SessionTickets: tk, NoSessionTickets: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tv := range ticketVersions {
		t.Run(tv.name, func(t *testing.T) {
			cache := &firstTicket{}
			cli := clientFor("mail.example.com", tv.v, cache)
			resumes(t, off.TLSConfig(), cli)
			if cache.has() {
				t.Error("a ticket was issued with session tickets off")
			}
			resumes(t, on.TLSConfig(), cli)
			if !cache.has() {
				t.Fatal("no ticket issued with session tickets on")
			}
			if resumes(t, off.TLSConfig(), cli) {
				t.Error("a session resumed with session tickets off")
			}
		})
	}
}

// TestTicketsConcurrent: handshakes that seal and open tickets while the
// clock moves across rotations and the periods change (run with -race).
func TestTicketsConcurrent(t *testing.T) {
	clock := newTestClock()
	tk := newTickets(t, time.Minute, 3*time.Minute, clock)
	srv := ticketServer(t, tk, "mail.example.com").TLSConfig()
	var wg sync.WaitGroup
	var resumed atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			cli := clientFor("mail.example.com", ticketVersions[i%2].v, tls.NewLRUClientSessionCache(4))
			for j := range 15 {
				st, err := connect(t, srv, cli)
				if err != nil {
					t.Errorf("handshake: %v", err)
					return
				}
				if st.DidResume {
					resumed.Add(1)
				}
				clock.advance(10 * time.Second)
				if i == 0 && j == 7 {
					tk.SetPeriods(2*time.Minute, 5*time.Minute)
				}
			}
		})
	}
	wg.Wait()
	if resumed.Load() == 0 {
		t.Error("no session resumed")
	}
}

// TestLocalTicketKeys: a new key every rotation period, first; each
// dropped once it is lifetime old; refresh at the next of these.
func TestLocalTicketKeys(t *testing.T) {
	l := NewLocalTicketKeys(time.Hour, 150*time.Minute)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	keys, refresh, err := l.TicketKeys(t0)
	if err != nil || len(keys) != 1 || !refresh.Equal(t0.Add(time.Hour)) {
		t.Fatalf("at start: %d keys, refresh %v, %v", len(keys), refresh, err)
	}
	k0 := keys[0]
	if k0 == [32]byte{} {
		t.Fatal("an all-zero key")
	}
	if keys, _, _ := l.TicketKeys(t0.Add(59 * time.Minute)); len(keys) != 1 || keys[0] != k0 {
		t.Fatal("a new key before the rotation period")
	}
	keys, refresh, _ = l.TicketKeys(t0.Add(2 * time.Hour))
	if len(keys) != 2 || keys[1] != k0 || keys[0] == k0 || !refresh.Equal(t0.Add(150*time.Minute)) {
		t.Fatalf("after 2h: %d keys, old key second %v, refresh %v (want 2h30m, when the first key goes)", len(keys), keys[1] == k0, refresh)
	}
	keys, refresh, _ = l.TicketKeys(t0.Add(150 * time.Minute))
	if len(keys) != 1 || keys[0] == k0 || !refresh.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("after 2h30m: %d keys, refresh %v", len(keys), refresh)
	}
}

// TestTicketsInherited: the keys LocalKeys returns, given to the Tickets of
// a new process as Inherited, are the ones it uses, as they were: the
// newest seals until its rotation is due, then a new one, and each is
// dropped when its lifetime has passed.
func TestTicketsInherited(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { return now }
	old, err := NewTickets(TicketsConfig{Rotation: time.Hour, Lifetime: 150 * time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	now = t0.Add(90 * time.Minute)
	old.codec() // a second key
	keys := old.LocalKeys()
	if len(keys) != 2 || !keys[0].Made.Equal(now) || !keys[1].Made.Equal(t0) {
		t.Fatalf("LocalKeys: %d keys, made %v", len(keys), keys)
	}
	now = t0.Add(100 * time.Minute)
	// Given oldest first: the order they are used in is by age.
	heir, err := NewTickets(TicketsConfig{Rotation: time.Hour, Lifetime: 150 * time.Minute, Now: clock,
		Inherited: []TicketKey{keys[1], keys[0]}})
	if err != nil {
		t.Fatal(err)
	}
	got, refresh, _ := heir.src.TicketKeys(now)
	if len(got) != 2 || got[0] != keys[0].Key || got[1] != keys[1].Key || !refresh.Equal(t0.Add(150*time.Minute)) {
		t.Fatalf("inherited keys in use: %d, refresh %v", len(got), refresh)
	}
	if (*Tickets)(nil).LocalKeys() != nil {
		t.Error("LocalKeys of no Tickets")
	}
}

func TestCheckTicketPeriods(t *testing.T) {
	for _, c := range []struct {
		rotation, lifetime time.Duration
		want               string
	}{
		{6 * time.Hour, 24 * time.Hour, ""},
		{time.Minute, 2 * time.Minute, ""},
		{6 * time.Hour, 7 * 24 * time.Hour, ""},
		{0, time.Hour, "shorter than 1m"},
		{time.Second, time.Hour, "shorter than 1m"},
		{time.Hour, time.Hour, "must be longer than the rotation period"},
		{2 * time.Hour, time.Hour, "must be longer than the rotation period"},
		{time.Hour, 8 * 24 * time.Hour, "7 days"},
		{time.Minute, time.Hour, "more than 32 rotation periods"},
	} {
		err := CheckTicketPeriods(c.rotation, c.lifetime)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckTicketPeriods(%v, %v) = %v, want %q", c.rotation, c.lifetime, err, c.want)
		}
	}
}

// BenchmarkResume: a resumed TLS 1.3 handshake (and the new ticket it
// brings) with the keys of Tickets against crypto/tls's own, over
// net.Pipe.
func BenchmarkResume(b *testing.B) {
	cert, err := SelfSigned("mail.example.com")
	if err != nil {
		b.Fatal(err)
	}
	tk, err := NewTickets(TicketsConfig{Rotation: 6 * time.Hour, Lifetime: 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		tickets *Tickets
	}{{"tickets", tk}, {"crypto-tls-keys", nil}} {
		b.Run(c.name, func(b *testing.B) {
			srv := &tls.Config{Certificates: []tls.Certificate{cert}}
			if c.tickets != nil {
				c.tickets.Apply(srv)
			}
			cli := &tls.Config{ServerName: "mail.example.com", InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			once := func() bool {
				cc, sc := net.Pipe()
				done := make(chan error, 1)
				go func() {
					s := tls.Server(sc, srv)
					err := s.Handshake()
					if err == nil {
						_, err = s.Write([]byte("+"))
					}
					done <- err
					sc.Close()
				}()
				cl := tls.Client(cc, cli)
				if _, err := io.ReadFull(cl, make([]byte, 1)); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				cc.Close()
				return cl.ConnectionState().DidResume
			}
			once()
			b.ResetTimer()
			for b.Loop() {
				if !once() {
					b.Fatal("not resumed")
				}
			}
		})
	}
}
