package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/proxy/pop3test"
)

func TestNginxConf(t *testing.T) {
	c := nginxConfig{Prefix: "/tmp/p", Module: nginxModule, User: "nobody nogroup", Addr: "127.0.0.1:9995",
		AuthAddr: "127.0.0.1:9996", CertFile: "/tmp/p/c.crt", KeyFile: "/tmp/p/c.key", ServerName: "popgate.test"}
	out := c.conf()
	for _, want := range []string{
		"load_module /usr/lib/nginx/modules/ngx_mail_module.so;\n",
		"user nobody nogroup;\n", "daemon off;\n", "master_process on;\n", "worker_processes auto;\n",
		"pid /tmp/p/nginx.pid;\n", "error_log /tmp/p/error.log warn;\n",
		"auth_http 127.0.0.1:9996/auth;\n", "proxy_pass_error_message on;\n",
		"ssl_certificate /tmp/p/c.crt;\n", "ssl_certificate_key /tmp/p/c.key;\n",
		"ssl_session_tickets on;\n", "ssl_session_cache shared:pop3bench:10m;\n",
		"listen 127.0.0.1:9995 ssl;\n", "protocol pop3;\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nginx.conf lacks %q:\n%s", want, out)
		}
	}
	c.Module, c.User = "", ""
	if out := c.conf(); strings.Contains(out, "load_module") || strings.Contains(out, "user ") {
		t.Errorf("nginx.conf without module and user:\n%s", out)
	}
}

func TestAuthHandler(t *testing.T) {
	h, err := authHandler("127.0.0.1:1110")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user              string
		status, server, portHdr string
	}{
		{"login", "user1", "OK", "127.0.0.1", "1110"},
		{"no user", "", "Invalid login or password", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/auth", nil)
			if tc.user != "" {
				r.Header.Set("Auth-User", tc.user)
				r.Header.Set("Auth-Pass", "pw")
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			got := w.Result().Header
			if got.Get("Auth-Status") != tc.status || got.Get("Auth-Server") != tc.server || got.Get("Auth-Port") != tc.portHdr {
				t.Errorf("auth_http(%q) = %v, want status %q server %q port %q", tc.user, got, tc.status, tc.server, tc.portHdr)
			}
			if w.Code != http.StatusOK {
				t.Errorf("HTTP status %d", w.Code)
			}
		})
	}
	if _, err := authHandler("no port"); err == nil {
		t.Error("authHandler(\"no port\"): no error")
	}
}

// TestNginxPeer runs the real nginx (when installed with its mail module)
// in front of the in-memory backend: full and resumed logins through it.
func TestNginxPeer(t *testing.T) {
	// scripts/test (POPGATE_INTEROP=1) installs nginx and its mail
	// module: there a missing one fails rather than skips.
	missing := t.Skip
	if os.Getenv("POPGATE_INTEROP") == "1" {
		missing = t.Fatal
	}
	bin, err := exec.LookPath("nginx")
	if err != nil {
		missing("nginx not installed")
	}
	module := ""
	if fileExists(nginxModule) {
		module = nginxModule
	} else if !nginxBuiltinMail(bin) {
		missing("nginx has no mail module")
	}
	ca, err := certgen.NewCA("test", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.IssueFiles(dir, "nginx", "pop.test", certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	var accounts []account
	mb := map[string]*pop3test.Mailbox{}
	for i := range 4 {
		a := account{fmt.Sprint("u", i), fmt.Sprint("p", i)}
		accounts = append(accounts, a)
		mb[a.User] = &pop3test.Mailbox{Password: a.Pass}
	}
	srv := &pop3test.Server{Mailboxes: mb}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conf := &tls.Config{RootCAs: ca.Pool, ServerName: "pop.test", MinVersion: tls.VersionTLS13}
	ctx := context.Background()
	probe := func(a string) error {
		c, err := dialPOP3(ctx, target{Addr: a, TLS: conf})
		if err != nil {
			return err
		}
		defer c.Close()
		return c.quit()
	}
	p, err := startNginx(ctx, bin, module, filepath.Join(dir, "nginx"), certFile, keyFile, "pop.test", addr.String(), probe)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}()
	tg := target{Side: "nginx", Addr: p.Addr, TLS: conf}
	res := runLoad(ctx, tg, accounts, 2, 8, time.Minute, nil)
	if res.Errors != 0 || res.Sessions != 8 || res.Resumed != 0 {
		t.Fatalf("login through nginx: %d sessions (%d resumed), %d errors %q; want 8, 0, 0", res.Sessions, res.Resumed, res.Errors, res.ErrorMsgs)
	}
	tg.Resume = true
	res = runLoad(ctx, tg, accounts, 2, 8, time.Minute, nil)
	if res.Errors != 0 || res.Sessions != 8 || res.Resumed != 8 {
		t.Fatalf("resumed login through nginx: %d sessions (%d resumed), %d errors %q; want 8, 8, 0", res.Sessions, res.Resumed, res.Errors, res.ErrorMsgs)
	}
	if _, ok := p.cpu(); !ok {
		t.Error("nginx's CPU cannot be read")
	}
}
