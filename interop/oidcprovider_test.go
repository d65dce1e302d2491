package interop

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oidcProvider is panva's oidc-provider (the npm package, pinned in
// interop/oidcprovider/package-lock.json) run by Debian's node on loopback
// with interop/oidcprovider/server.js: a real OpenID provider issuing real
// tokens, RS256 JWTs or opaque ones, with introspection and revocation.
// Each client of the client credentials grant stands for one user (its
// tokens carry the user's email claim).
type oidcProvider struct {
	Issuer string // https://127.0.0.1:PORT
	CAFile string
	dir    string
	conf   string
	cfg    map[string]any
	client *http.Client
	cmd    *exec.Cmd
	exited chan struct{}
	lines  chan string // the provider's stdout, a JSON object a line
}

// oidcClientSecret is the secret of every client; popgate's own client
// ("popgate") introspects.
func oidcClientSecret(client string) string { return client + "-secret-Zq81" }

// startOIDCProvider starts the provider with a client per user in emails
// (client ID → email) and popgate's.
func startOIDCProvider(t *testing.T, emails map[string]string) *oidcProvider {
	t.Helper()
	requireInterop(t, "node")
	server, err := filepath.Abs("oidcprovider/server.js")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("oidcprovider/node_modules/oidc-provider/package.json"); err != nil {
		t.Fatalf("oidc-provider is not installed: run npm ci --prefix interop/oidcprovider (scripts/test does)")
	}
	dir := t.TempDir()
	ca := newTestCA(t, dir, "idp")
	cert, key := ca.issue(t, dir, "idp", "localhost")
	clients := []map[string]string{{"client_id": "popgate", "client_secret": oidcClientSecret("popgate"), "email": ""}}
	for id, email := range emails {
		clients = append(clients, map[string]string{"client_id": id, "client_secret": oidcClientSecret(id), "email": email})
	}
	p := &oidcProvider{
		CAFile: ca.CAFile, dir: dir, conf: filepath.Join(dir, "provider.json"),
		cfg:    map[string]any{"dir": dir, "port": 0, "cert": cert, "key": key, "audience": oauthAudience, "clients": clients},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}},
	}
	p.start(t, server, false)
	t.Cleanup(p.stop)
	return p
}

func (p *oidcProvider) start(t *testing.T, server string, rotate bool) {
	t.Helper()
	p.cfg["rotate"] = rotate
	b, _ := json.Marshal(p.cfg)
	writeFile(t, p.conf, b, 0o600)
	node, _ := lookBinary("node")
	cmd := exec.Command(node, server, p.conf)
	cmd.Stderr = nil
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	lines := make(chan string, 16)
	p.lines = lines
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody waits for this one
			}
		}
		cmd.Wait()
		close(p.exited)
	}()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l := <-lines:
			var ev struct{ Listening string }
			if json.Unmarshal([]byte(l), &ev) == nil && ev.Listening != "" {
				if p.Issuer != "" && ev.Listening != p.Issuer {
					t.Fatalf("provider restarted at %s, not %s", ev.Listening, p.Issuer)
				}
				p.Issuer = ev.Listening
				u, _ := url.Parse(p.Issuer)
				p.cfg["port"], _ = strconv.Atoi(u.Port())
				return
			}
		case <-p.exited:
			t.Fatalf("oidc-provider exited before listening")
		case <-deadline:
			t.Fatalf("oidc-provider did not listen within 30s")
		}
	}
}

// stop ends the provider (SIGTERM, by PID); its in-memory grants are lost.
func (p *oidcProvider) stop() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// rotate rotates the running provider's keys (SIGUSR2): a new signing key
// first, the old ones still published, the same process and grants. It
// returns once the new key signs.
func (p *oidcProvider) rotate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l := <-p.lines:
			var ev struct{ Rotated string }
			if json.Unmarshal([]byte(l), &ev) == nil && ev.Rotated != "" {
				return
			}
		case <-p.exited:
			t.Fatalf("oidc-provider exited while rotating its keys")
		case <-deadline:
			t.Fatalf("oidc-provider did not rotate its keys within 30s")
		}
	}
}

// restart starts the provider again on its port; rotate puts a new
// signing key first (the old ones stay published).
func (p *oidcProvider) restart(t *testing.T, rotate bool) {
	t.Helper()
	p.stop()
	server, _ := filepath.Abs("oidcprovider/server.js")
	p.start(t, server, rotate)
}

// token asks for an access token of client (a user) with the client
// credentials grant: a JWT, or an opaque token for introspection.
func (p *oidcProvider) token(t *testing.T, client string, opaque bool) string {
	t.Helper()
	resource := "urn:popgate:jwt"
	if opaque {
		resource = "urn:popgate:opaque"
	}
	return p.tokenFor(t, client, resource)
}

// tokenFor asks for an access token of client for resource.
func (p *oidcProvider) tokenFor(t *testing.T, client, resource string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"mail"}, "resource": {resource}}
	req, _ := http.NewRequest(http.MethodPost, p.Issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, oidcClientSecret(client))
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		t.Fatalf("token for %s: %s %v %s", client, resp.Status, err, body.Error)
	}
	return body.AccessToken
}

// revoke revokes tok (RFC 7009) as client.
func (p *oidcProvider) revoke(t *testing.T, client, tok string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, p.Issuer+"/token/revocation", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(client, oidcClientSecret(client))
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %s", resp.Status)
	}
}
