//go:build unix

package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/internal/safefile"
)

// otherUID owns nothing on a test machine: a stand-in for another user.
const otherUID = 54321

// asRoot skips t unless it runs as root, which can give files away.
func asRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
}

// cacheEntry is a certificate for name as autocert caches it: the key,
// then the chain.
func cacheEntry(t *testing.T, name string) []byte {
	t.Helper()
	certPEM, keyPEM, err := EncodePEM(newCert(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return append(keyPEM, certPEM...)
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func acmeConfig(dir string) *ACMEConfig {
	return &ACMEConfig{Domains: []string{"mail.example.com"}, CacheDir: dir, DirectoryURL: "http://127.0.0.1:1/directory"}
}

// TestCacheDirAtStart: NewServer refuses a cache directory, or a file in
// it, that another user could have written, naming it and the fix; with
// InsecureCachePermissions it starts with a WARN.
func TestCacheDirAtStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		root   bool                                   // needs root
		setup  func(t *testing.T, base, cache string) // cache exists, mode 0700
		detail string                                 // in the error; "" for none
		warn   string                                 // in the log
	}{
		{"0700", false, func(*testing.T, string, string) {}, "", ""},
		{"readable by others", false, func(t *testing.T, _, cache string) { chmod(t, cache, 0o755) },
			"", "acme cache directory is readable by other users"},
		{"world-writable", false, func(t *testing.T, _, cache string) { chmod(t, cache, 0o777) },
			"writable by its group or others (mode 0777); fix: chmod go-w", ""},
		{"group-writable", false, func(t *testing.T, _, cache string) { chmod(t, cache, 0o770) },
			"mode 0770", ""},
		{"parent world-writable", false, func(t *testing.T, base, _ string) { chmod(t, base, 0o777) },
			"without the sticky bit", ""},
		{"parent world-writable with sticky bit", false, func(t *testing.T, base, _ string) { chmod(t, base, 0o777|os.ModeSticky) },
			"", ""},
		{"owned by another user", true, func(t *testing.T, _, cache string) {
			if err := os.Chown(cache, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 54321", ""},
		{"file owned by another user", true, func(t *testing.T, _, cache string) {
			f := filepath.Join(cache, "mail.example.com")
			writeFile(t, f, cacheEntry(t, "mail.example.com"))
			if err := os.Chown(f, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
		}, "mail.example.com: not private: owned by uid 54321", ""},
		{"file writable by others", false, func(t *testing.T, _, cache string) {
			f := filepath.Join(cache, "acme_account+key")
			writeFile(t, f, []byte("key"))
			chmod(t, f, 0o666)
		}, "acme_account+key: not private: writable by its group or others (mode 0666)", ""},
		{"symbolic link", false, func(t *testing.T, _, cache string) {
			if err := os.Symlink("/dev/zero", filepath.Join(cache, "mail.example.com")); err != nil {
				t.Fatal(err)
			}
		}, "a symbolic link", ""},
		{"subdirectory", false, func(t *testing.T, _, cache string) {
			if err := os.Mkdir(filepath.Join(cache, "lost+found"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				asRoot(t)
			}
			base := filepath.Join(t.TempDir(), "state")
			cache := filepath.Join(base, "acme")
			if err := os.MkdirAll(cache, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, base, cache)
			var logs syncBuffer
			_, err := NewServer(ServerConfig{ACME: acmeConfig(cache), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if tc.detail == "" {
				if err != nil {
					t.Fatalf("NewServer = %v, want it to start", err)
				}
			} else if !errors.Is(err, safefile.ErrNotPrivate) && !errors.Is(err, safefile.ErrNotRegular) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("NewServer = %v, want a refusal saying %q", err, tc.detail)
			}
			if tc.warn != "" && !strings.Contains(logs.String(), tc.warn) {
				t.Errorf("log %q, want %q", logs.String(), tc.warn)
			}
			if tc.detail == "" {
				return
			}
			// The explicit opt-out starts, with a WARN.
			logs.Reset()
			cfg := acmeConfig(cache)
			cfg.InsecureCachePermissions = true
			if _, err := NewServer(ServerConfig{ACME: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
				t.Errorf("NewServer with InsecureCachePermissions = %v", err)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "acme cache permissions are not checked") {
				t.Errorf("NewServer with InsecureCachePermissions logged %q, want a WARN", logs.String())
			}
		})
	}
}

// TestCacheGet: what the cache reads, file by file, after start.
func TestCacheGet(t *testing.T) {
	ctx := context.Background()
	cache := filepath.Join(t.TempDir(), "acme")
	if err := os.Mkdir(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	entry := cacheEntry(t, "mail.example.com")
	good := filepath.Join(cache, "good")
	writeFile(t, good, entry)
	writeFile(t, filepath.Join(cache, "writable"), entry)
	chmod(t, filepath.Join(cache, "writable"), 0o666)
	if err := os.Symlink(good, filepath.Join(cache, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(cache, "zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(cache, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cache, "large"), bytes.Repeat([]byte("a"), 1<<20+1))

	strict := &strictCache{dir: cache}
	loose := &strictCache{dir: cache, insecure: true}
	for _, tc := range []struct {
		key    string
		c      *strictCache
		detail string // in the error; "" for the entry
	}{
		{"good", strict, ""},
		{"writable", strict, "writable by its group or others"},
		{"writable", loose, ""},
		{"link", strict, "a symbolic link"},
		{"link", loose, "a symbolic link"},
		{"zero", strict, "a symbolic link"},
		{"fifo", strict, "a named pipe"},
		{"large", strict, "more than 1 MiB"},
		{"../../good", strict, ""}, // cleaned to the cache's "good", as DirCache does
	} {
		var data []byte
		var err error
		guard(t, "Get("+tc.key+")", func() { data, err = tc.c.Get(ctx, tc.key) })
		switch {
		case tc.detail == "" && (err != nil || !bytes.Equal(data, entry)):
			t.Errorf("Get(%q, insecure %v) = %d bytes, %v; want the entry", tc.key, tc.c.insecure, len(data), err)
		case tc.detail != "" && (err == nil || errors.Is(err, autocert.ErrCacheMiss) || !strings.Contains(err.Error(), tc.detail)):
			t.Errorf("Get(%q, insecure %v) = %v, want an error (not a miss) saying %q", tc.key, tc.c.insecure, err, tc.detail)
		}
	}
	if _, err := strict.Get(ctx, "missing"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Errorf("Get(missing) = %v, want ErrCacheMiss", err)
	}

	// The directory loosened after start: nothing is read from it or
	// written to it.
	chmod(t, cache, 0o777)
	if _, err := strict.Get(ctx, "good"); err == nil || !strings.Contains(err.Error(), "chmod go-w "+cache) {
		t.Errorf("Get from a world-writable directory = %v, want a refusal", err)
	}
	if err := strict.Put(ctx, "new", entry); err == nil {
		t.Error("Put into a world-writable directory succeeded")
	}
	if _, err := loose.Get(ctx, "good"); err != nil {
		t.Errorf("Get from a world-writable directory, insecure = %v", err)
	}
	chmod(t, cache, 0o700)
	if err := strict.Put(ctx, "new", entry); err != nil {
		t.Fatal(err)
	}
	if data, err := strict.Get(ctx, "new"); err != nil || !bytes.Equal(data, entry) {
		t.Errorf("Get after Put = %d bytes, %v", len(data), err)
	}
}

// TestCachePlantedAfterStart: with autocert itself, a certificate planted
// in the cache after start by another user is not served: the handshake
// fails, naming the file; the same entry written by popgate's user is
// served.
func TestCachePlantedAfterStart(t *testing.T) {
	asRoot(t)
	cache := filepath.Join(t.TempDir(), "acme")
	srv, err := NewServer(ServerConfig{ACME: acmeConfig(cache)})
	if err != nil {
		t.Fatal(err)
	}
	hello := &tls.ClientHelloInfo{
		ServerName:       "mail.example.com",
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
	planted := filepath.Join(cache, "mail.example.com")
	writeFile(t, planted, cacheEntry(t, "mail.example.com"))
	if err := os.Chown(planted, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	c, err := srv.TLSConfig().GetCertificate(hello)
	if err == nil || !strings.Contains(err.Error(), planted) || !strings.Contains(err.Error(), "owned by uid 54321") {
		t.Fatalf("GetCertificate with a planted certificate = %v, %v; want a refusal naming %s", c, err, planted)
	}
	// The control: popgate's own file is served.
	if err := os.Chown(planted, 0, 0); err != nil {
		t.Fatal(err)
	}
	if c, err := srv.TLSConfig().GetCertificate(hello); err != nil || c.Leaf == nil || c.Leaf.DNSNames[0] != "mail.example.com" {
		t.Errorf("GetCertificate with popgate's own cache entry = %v, %v", c, err)
	}
}

// TestValidCachedAgreesWithAutocert: validCached takes a cache entry for a
// certificate exactly when autocert does, loading it without contacting
// the CA; where they differed (white space after the last PEM block),
// handshakes made autocert order outside popgate's order path.
func TestValidCachedAgreesWithAutocert(t *testing.T) {
	const name = "mail.example.com"
	ecdsaEntry := cacheEntry(t, name)
	rsaCert := newRSACert(t, name)
	certPEM, keyPEM, err := EncodePEM(rsaCert)
	if err != nil {
		t.Fatal(err)
	}
	rsaEntry := append(keyPEM, certPEM...)
	expired := certValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), name)
	certPEM, keyPEM, err = EncodePEM(expired)
	if err != nil {
		t.Fatal(err)
	}
	expiredEntry := append(keyPEM, certPEM...)
	with := func(b []byte, tail string) []byte { return append(append([]byte(nil), b...), tail...) }
	for _, tc := range []struct {
		label string
		entry []byte
		rsa   bool
	}{
		{"ECDSA", ecdsaEntry, false},
		{"ECDSA, trailing newline", with(ecdsaEntry, "\n"), false},
		{"ECDSA, trailing CRLF", with(ecdsaEntry, "\r\n"), false},
		{"ECDSA, trailing space", with(ecdsaEntry, " "), false},
		{"ECDSA, trailing text", with(ecdsaEntry, "junk"), false},
		{"ECDSA under the RSA key", ecdsaEntry, true},
		{"RSA", rsaEntry, true},
		{"RSA under the ECDSA key", rsaEntry, false},
		{"RSA, trailing newline", with(rsaEntry, "\n"), true},
		{"expired", expiredEntry, false},
		{"certificate only", certPEM, false},
		{"another name", cacheEntry(t, "other.example.com"), false},
	} {
		t.Run(tc.label, func(t *testing.T) {
			k := seenKey{name, tc.rsa}
			ours := validCached(tc.entry, k, time.Now()) == nil
			if got := autocertLoads(t, k, tc.entry); got != ours {
				t.Errorf("validCached takes the entry for a certificate: %v; autocert loads it without the CA: %v", ours, got)
			}
		})
	}
}

// autocertLoads reports whether autocert, finding entry in its cache for
// k, serves it without contacting the CA.
func autocertLoads(t *testing.T, k seenKey, entry []byte) bool {
	t.Helper()
	var hits atomic.Int64
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.NotFound(w, r)
	}))
	defer ca.Close()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, k.cacheKey()), entry)
	m := &autocert.Manager{Prompt: autocert.AcceptTOS, Cache: autocert.DirCache(dir),
		Client: &acme.Client{DirectoryURL: ca.URL + "/directory"}}
	c, err := m.GetCertificate(helloFor(k))
	return err == nil && c != nil && hits.Load() == 0
}
