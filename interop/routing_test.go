package interop

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestProxyRoutingSources: logins routed by the map file and by an
// nginx-style auth_http service reach the right Dovecot backend and fetch
// their mail byte for byte; the service is asked once per user and
// password (the cache), and a wrong password never reaches Dovecot.
func TestProxyRoutingSources(t *testing.T) {
	requireInterop(t, "dovecot", "curl")
	t.Parallel()
	d := startDovecot(t)
	msgs := map[string][]byte{
		userAlice: testMessage(4<<10, "route-map"),
		userBob:   testMessage(5<<10, "route-http"),
	}
	for u, m := range msgs {
		d.addMessage(t, u, m)
	}

	// Map file: alice goes to the implicit-TLS backend.
	mapFile := filepath.Join(t.TempDir(), "routes")
	if err := os.WriteFile(mapFile, []byte("# interop\n"+userAlice+"  tls\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Lookup service: bob, with his password, goes to the STLS backend.
	var asked atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.Header.Get("Auth-Protocol") != "pop3" || r.Header.Get("Auth-SSL") != "on" {
			w.Header().Set("Auth-Status", "bad request headers")
			return
		}
		if r.Header.Get("Auth-User") == userBob && r.Header.Get("Auth-Pass") == d.Users[userBob] {
			w.Header().Set("Auth-Status", "OK")
			w.Header().Set("Auth-Backend", "stls")
			return
		}
		w.Header().Set("Auth-Status", "Invalid login")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	pg := startPopgate(t, popgateConfig{
		Backends: dovecotBackends(d),
		MapFile:  mapFile,
		HTTPURL:  "http://" + ln.Addr().String() + "/auth",
	}, d.Users[userAlice], d.Users[userBob])
	_, sPort := splitHostPort(t, pg.POP3SAddr)
	fetch := func(user string) []byte {
		return curlRetr(t, fmt.Sprintf("pop3s://%s:%s@%s:%d/1", user, d.Users[user], pg.ServerName, sPort),
			"--cacert", pg.CAFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", pg.ServerName, sPort))
	}
	for _, u := range []string{userAlice, userBob, userBob} {
		compareMessages(t, [][]byte{fetch(u)}, [][]byte{msgs[u]})
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the lookup service was asked %d times for bob's two logins, want 1 (cached)", n)
	}
	logs := pg.log()
	for _, want := range []string{`"user":"` + userAlice + `","backend":"tls"`, `"user":"` + userBob + `","backend":"stls"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("popgate's log lacks %s", want)
		}
	}

	// A wrong password: refused by the service, Dovecot never asked.
	c := dialPopgate(t, pg, "pop3s")
	c.cmd("USER " + userBob)
	if resp := c.cmd("PASS not-bobs-password"); !strings.HasPrefix(resp, "-ERR [AUTH]") {
		t.Errorf("wrong password = %q", resp)
	}
	if strings.Contains(d.mainLog(t), "not-bobs-password") {
		t.Error("the wrong password reached Dovecot's log")
	}
}
