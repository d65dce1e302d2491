package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"

	"github.com/popgate/popgate/internal/certgen"
	"github.com/popgate/popgate/internal/dovecotrun"
	"github.com/popgate/popgate/proxy/pop3test"
)

// backend is the POP3 server both sides reach: directly over implicit TLS,
// and through popgate over plaintext.
type backend struct {
	Kind       string // "dovecot" or "memory"
	Version    string
	Tuning     []string
	TLSAddr    string // POP3S, for the direct side
	ServerName string // in the certificate behind TLSAddr
	PlainAddr  string // plaintext POP3, popgate's backend
	// PID is the Dovecot master, whose process tree's CPU is the
	// backend's; 0 for the in-memory server, which runs inside the
	// benchmark and cannot be told apart from the clients.
	PID int

	dovecot        *dovecotrun.Instance
	plain, implict *pop3test.Server
}

// dovecotTuning is what the benchmark adds to dovecotrun's configuration:
// Dovecot's high-performance login mode (login processes serve many
// connections each instead of one process per connection), a pool of
// pre-forked processes, limits high enough for every concurrent session,
// and the authentication cache.
func dovecotTuning() []string {
	n := runtime.NumCPU()
	return []string{
		"service pop3-login {",
		"  service_count = 0",
		fmt.Sprintf("  process_min_avail = %d", n),
		"  client_limit = 4096",
		"  vsz_limit = 1G",
		"}",
		"service pop3 {",
		"  process_limit = 4096",
		"  service_count = 100",
		fmt.Sprintf("  process_min_avail = %d", n),
		"}",
		"service auth {",
		"  client_limit = 16384",
		"}",
		"service anvil {",
		"  client_limit = 16384",
		"}",
		"auth_cache_size = 10M",
		"auth_cache_ttl = 1 hour",
		"auth_cache_negative_ttl = 1 hour",
	}
}

// tuningSummary condenses dovecotTuning for the report header, one
// element per section: "service pop3 { a = 1, b = 2 }".
func tuningSummary(lines []string) []string {
	var out, body []string
	section := ""
	for _, l := range lines {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasSuffix(l, "{"):
			section, body = strings.TrimSpace(strings.TrimSuffix(l, "{")), nil
		case l == "}":
			out = append(out, section+" { "+strings.Join(body, ", ")+" }")
			section = ""
		case section != "":
			body = append(body, l)
		default:
			out = append(out, l)
		}
	}
	return out
}

// startDovecot runs Dovecot with users and the retr message in every
// retr account's mailbox, its POP3S certificate issued by ca with kt; with
// master, benchMasterUser is a master user (for popgate-oauth).
func startDovecot(dir string, ca *certgen.CA, caFile string, kt certgen.KeyType, accounts, retrAccounts []account, msg []byte, master bool, logf func(string, ...any)) (*backend, error) {
	const name = dovecotrun.DefaultServerName
	certFile, keyFile, err := ca.IssueFiles(dir, "dovecot", name, kt)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for _, a := range append(accounts, retrAccounts...) {
		users[a.User] = a.Pass
	}
	tuning := dovecotTuning()
	var masters map[string]string
	if master {
		masters = map[string]string{benchMasterUser: benchMasterPass}
	}
	d, err := dovecotrun.Start(dovecotrun.Options{
		Dir:                  dir,
		Users:                users,
		MasterUsers:          masters,
		CertFile:             certFile,
		KeyFile:              keyFile,
		CAFile:               caFile,
		ServerName:           name,
		MaxUserIPConnections: 10000,
		ExtraConfig:          tuning,
		Logf:                 logf,
	})
	if err != nil {
		return nil, err
	}
	for _, a := range retrAccounts {
		if err := d.AddMessage(a.User, msg); err != nil {
			_ = d.Stop()
			return nil, err
		}
	}
	b := &backend{
		Kind: "dovecot", TLSAddr: d.TLSAddr, ServerName: name, PlainAddr: d.PlainAddr,
		PID: d.MasterPID(), dovecot: d,
		Tuning: append([]string{"mail_max_userip_connections = 10000"}, tuningSummary(tuning)...),
	}
	if bin, err := dovecotrun.LookBinary("dovecot"); err == nil {
		if out, err := exec.Command(bin, "--version").Output(); err == nil {
			b.Version = strings.TrimSpace(string(out))
		}
	}
	return b, nil
}

// memoryServerName is the name in the in-memory server's certificate.
const memoryServerName = "memory.test"

// startMemory runs the in-memory POP3 server (proxy/pop3test) inside the
// benchmark: plaintext for popgate and, when tlsCert is set, implicit TLS
// for the direct side, both over the same mailboxes.
//
// With master, benchMasterUser logs in to any mailbox of the plaintext server
// as "user*master" (Dovecot's form), for popgate-oauth.
func startMemory(mailboxes map[string]*pop3test.Mailbox, tlsCert *tls.Certificate, master bool) (*backend, error) {
	b := &backend{Kind: "memory", Version: "proxy/pop3test (in the benchmark process)", ServerName: memoryServerName}
	b.plain = &pop3test.Server{Mailboxes: mailboxes}
	if master {
		b.plain.MasterUsers = map[string]string{benchMasterUser: benchMasterPass}
		b.plain.MasterSeparator = "*"
	}
	addr, err := b.plain.Start("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b.PlainAddr = addr.String()
	if tlsCert != nil {
		b.implict = &pop3test.Server{
			Mailboxes: mailboxes,
			Implicit:  true,
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{*tlsCert}, MinVersion: tls.VersionTLS12},
		}
		addr, err := b.implict.Start("127.0.0.1:0")
		if err != nil {
			b.plain.Close()
			return nil, err
		}
		b.TLSAddr = addr.String()
	}
	return b, nil
}

// startDovecotProxy runs a second Dovecot as a proxy (proxy=y in its
// passdb, the password checked there and passed on) to the backend at
// backendAddr (plaintext POP3), with the benchmark's tuning and a
// certificate of kind kt: a peer of popgate, reached over POP3S.
func startDovecotProxy(dir string, ca *certgen.CA, caFile string, kt certgen.KeyType, accounts, retrAccounts []account, backendAddr string, logf func(string, ...any)) (*backend, error) {
	host, port, err := net.SplitHostPort(backendAddr)
	if err != nil {
		return nil, err
	}
	const name = dovecotrun.DefaultServerName
	certFile, keyFile, err := ca.IssueFiles(dir, "dovecot-proxy", name, kt)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for _, a := range append(accounts, retrAccounts...) {
		users[a.User] = a.Pass
	}
	d, err := dovecotrun.Start(dovecotrun.Options{
		Dir:                  dir,
		Users:                users,
		UserExtraFields:      fmt.Sprintf("proxy=y host=%s port=%s", host, port),
		CertFile:             certFile,
		KeyFile:              keyFile,
		CAFile:               caFile,
		ServerName:           name,
		MaxUserIPConnections: 10000,
		ExtraConfig:          dovecotTuning(),
		Logf:                 logf,
	})
	if err != nil {
		return nil, err
	}
	return &backend{Kind: "dovecot-proxy", TLSAddr: d.TLSAddr, ServerName: name, PID: d.MasterPID(), dovecot: d}, nil
}

// cpu returns the backend's CPU time so far, or ok = false when it cannot
// be measured apart from the benchmark's.
func (b *backend) cpu() (d float64, ok bool) {
	if b == nil || b.PID == 0 {
		return 0, false
	}
	t, err := treeCPU(b.PID)
	if err != nil {
		return 0, false
	}
	return t.Seconds(), true
}

// stop ends the backend.
func (b *backend) stop() error {
	if b == nil {
		return nil
	}
	if b.dovecot != nil {
		return b.dovecot.Stop()
	}
	b.plain.Close()
	if b.implict != nil {
		b.implict.Close()
	}
	return nil
}
