package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestAdminTLS: with metrics.tls the admin address serves HTTPS with the
// POP3 listeners' certificate, chosen by SNI and replaced by a reload; the
// token and the Host check still apply; the console's cookie is Secure
// and its pages send HSTS; plain HTTP to the port gets a clean 400; a
// reload switches TLS off and on again without binding anew.
func TestAdminTLS(t *testing.T) {
	dir := t.TempDir()
	one := writeTestCert(t, dir, "one", "mail.example.com")
	two := writeTestCert(t, dir, "two", "mail.example.com")
	backend := mailbox(t, messages(1)...)
	tokenFile, token := writeToken(t)
	config := func(cert testCert, metricsTLS bool) string {
		return pop3sConfig(cert, backend) + fmt.Sprintf(`[metrics]
address = "127.0.0.1:0"
token_file = %q
protect_metrics = true
allowed_hosts = ["mail.example.com"]
tls = %v
`, tokenFile, metricsTLS)
	}
	path := writeConfig(t, config(one, true))
	r, logs := startRunner(t, path)
	addr := r.adminAddress()
	_, port, _ := strings.Cut(addr, ":")

	// The client trusts nothing but checks below which certificate it got.
	client := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "mail.example.com"}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	do := func(method, u, host, bearer string, form url.Values) *http.Response {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, u, body)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, u, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	base := "https://" + addr
	resp := do("GET", base+"/metrics", "", token, nil)
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("GET /metrics over TLS with the token = %d (TLS %v)", resp.StatusCode, resp.TLS)
	}
	if got := resp.TLS.PeerCertificates[0].SerialNumber; got.Cmp(one.leaf.SerialNumber) != 0 {
		t.Errorf("admin certificate serial %s, want the POP3 listener's %s", got, one.leaf.SerialNumber)
	}
	if code := do("GET", base+"/metrics", "", "", nil).StatusCode; code != 401 {
		t.Errorf("GET /metrics over TLS without the token = %d, want 401", code)
	}
	if code := do("GET", base+"/sessions", "rebind.example.net:"+port, token, nil).StatusCode; code != 421 {
		t.Errorf("GET /sessions over TLS for another host = %d, want 421", code)
	}
	if code := do("GET", base+"/sessions", "mail.example.com:"+port, token, nil).StatusCode; code != 200 {
		t.Errorf("GET /sessions over TLS for an allowed host = %d, want 200", code)
	}

	resp = do("GET", base+"/console/login", "", "", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Strict-Transport-Security"), "max-age=") {
		t.Errorf("GET /console/login over TLS = %d, Strict-Transport-Security %q", resp.StatusCode, resp.Header.Get("Strict-Transport-Security"))
	}
	resp = do("POST", base+"/console/login", "", "", url.Values{"token": {token}})
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly {
		t.Errorf("console login over TLS = %d, cookies %v, want 303 and one Secure HttpOnly cookie", resp.StatusCode, cookies)
	}

	// Plain HTTP to the TLS port: a 400 that says why, not a hang.
	plain, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("plain HTTP to the TLS port: %v", err)
	}
	text, _ := io.ReadAll(plain.Body)
	plain.Body.Close()
	if plain.StatusCode != 400 || !strings.Contains(string(text), "HTTPS") {
		t.Errorf("plain HTTP to the TLS port = %d %q, want 400 naming HTTPS", plain.StatusCode, text)
	}

	// A reload with another certificate: the admin address serves it.
	writeFile(t, path, []byte(config(two, true)))
	if err := r.reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	client.CloseIdleConnections()
	resp = do("GET", base+"/metrics", "", token, nil)
	if got := resp.TLS.PeerCertificates[0].SerialNumber; resp.StatusCode != 200 || got.Cmp(two.leaf.SerialNumber) != 0 {
		t.Errorf("after the reload: GET /metrics = %d, serial %s, want 200 and %s", resp.StatusCode, got, two.leaf.SerialNumber)
	}

	// metrics.tls off and on again by reloads, on the same address.
	writeFile(t, path, []byte(config(two, false)))
	if err := r.reload(); err != nil {
		t.Fatalf("reload without metrics.tls: %v", err)
	}
	client.CloseIdleConnections()
	if r.adminAddress() != addr {
		t.Fatalf("admin address moved from %s to %s", addr, r.adminAddress())
	}
	if code := do("GET", "http://"+addr+"/metrics", "", token, nil).StatusCode; code != 200 {
		t.Errorf("plain GET /metrics after metrics.tls was cleared = %d, want 200", code)
	}
	resp = do("GET", "http://"+addr+"/console/login", "", "", nil)
	if h := resp.Header.Get("Strict-Transport-Security"); h != "" {
		t.Errorf("plain HTTP console page sends Strict-Transport-Security %q", h)
	}
	writeFile(t, path, []byte(config(two, true)))
	if err := r.reload(); err != nil {
		t.Fatalf("reload with metrics.tls again: %v", err)
	}
	client.CloseIdleConnections()
	if resp := do("GET", base+"/metrics", "", token, nil); resp.StatusCode != 200 || resp.TLS == nil {
		t.Errorf("GET /metrics over TLS after it was set again = %d", resp.StatusCode)
	}
	if rec := logs.records(t, "admin endpoints: metrics.tls changed for new connections"); len(rec) != 2 || rec[0]["tls"] != false || rec[1]["tls"] != true {
		t.Errorf("metrics.tls changed lines %v, want one with tls=false, then one with tls=true", rec)
	}
	if rec := logs.records(t, "admin endpoints listening"); len(rec) != 1 || rec[0]["tls"] != true {
		t.Errorf("admin endpoints listening lines %v, want one with tls=true", rec)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the log shows the token")
	}
}

// TestMetricsTLSNeedsAddress: metrics.tls without an admin address is a
// mistake, named.
func TestMetricsTLSNeedsAddress(t *testing.T) {
	_, err := ParseConfig("t", []byte(listenNone+backendB+routeB+"[metrics]\naddress = \"\"\ntls = true\n"))
	if err == nil || !strings.Contains(err.Error(), "metrics.tls") {
		t.Errorf("ParseConfig = %v, want an error naming metrics.tls", err)
	}
	// With only plain listeners it serves popgate's self-signed certificate.
	in := buildText(t, listenNone+backendB+routeB+"[metrics]\ntls = true\n")
	if in.adminTLS == nil || in.adminTLS.MinVersion < tls.VersionTLS12 || in.adminTLS.GetCertificate == nil {
		t.Errorf("adminTLS = %+v, want a TLS 1.2+ config with the served certificates", in.adminTLS)
	}
}
