package main

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleListenersAsBound: the console's overview names the address a
// listener got, not the port 0 it was configured with.
func TestConsoleListenersAsBound(t *testing.T) {
	const token = "console-test-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, []byte(token+"\n"))
	path := writeConfig(t, `[log]
level = "warn"
[[listen]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
[[backend]]
name = "a"
address = "127.0.0.1:1"
tls = "none"
health_interval = "0s"
[route]
default = "a"
[metrics]
address = "127.0.0.1:0"
token_file = "`+tokenFile+`"
`)
	r, _ := startRunner(t, path)
	base := "http://" + r.adminAddress()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("POST", base+"/console/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: status %d, want 303", resp.StatusCode)
	}
	resp, err = c.Get(base + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	bound := r.addrOf("plain")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), bound) {
		t.Fatalf("overview: status %d, want the bound address %s in:\n%s", resp.StatusCode, bound, body)
	}
	if strings.Contains(string(body), "127.0.0.1:0<") {
		t.Errorf("overview still shows the configured port 0:\n%s", body)
	}
}
