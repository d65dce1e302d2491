package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3test"
)

// syncWriter is a bytes.Buffer safe for a writer and a reader at once.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestDemo runs the quick start: the commands it prints work as printed.
func TestDemo(t *testing.T) {
	pop3s, pop3, admin := freeAddr(t), freeAddr(t), freeAddr(t)
	var stdout syncWriter
	logs := &logSink{listening: make(chan [2]string, 4)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- mainContext(ctx, []string{"demo", "-pop3s", pop3s, "-pop3", pop3, "-admin", admin}, &stdout, logs)
	}()
	for range 2 {
		select {
		case <-logs.listening:
		case code := <-done:
			t.Fatalf("demo exited with %d; stderr:\n%s", code, logs)
		case <-time.After(30 * time.Second):
			t.Fatalf("demo does not listen; stderr:\n%s", logs)
		}
	}
	out := stdout.String()
	ca := regexp.MustCompile(`--cacert (\S+) pop3s://`).FindStringSubmatch(out)
	if ca == nil {
		t.Fatalf("no curl command in the demo's output:\n%s", out)
	}
	pem, err := os.ReadFile(ca[1])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", ca[1])
	}
	// The printed certificate, user and password work over POP3S.
	conn, err := tls.Dial("tcp", pop3s, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	sample := pop3test.SampleMailbox()
	_, retr := fetch(t, conn, demoUser, sample.Password)
	if got := unstuff(t, retr[0]); !bytes.Equal(got, sample.Messages[0]) {
		t.Errorf("RETR 1 through the demo = %q, want the sample message", got)
	}
	// And with the real curl, exactly as printed, when it is installed
	// (scripts/test installs it).
	if _, err := exec.LookPath("curl"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "curl ") {
				continue
			}
			b, err := exec.Command("sh", "-c", line+" --silent --show-error --max-time 20").CombinedOutput()
			if err != nil {
				t.Errorf("%s: %v\n%s", line, err, b)
				continue
			}
			switch {
			case strings.Contains(line, "/sessions"):
				if !strings.HasPrefix(string(b), "[") {
					t.Errorf("%s = %q, want a JSON array", line, b)
				}
			case strings.Contains(line, "/metrics"):
				if !strings.Contains(string(b), `popgate_logins_total{result="ok"}`) {
					t.Errorf("%s has no popgate_logins_total", line)
				}
			case !bytes.Equal(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), bytes.ReplaceAll(sample.Messages[0], []byte("\r\n"), []byte("\n"))):
				t.Errorf("%s = %q, want the sample message", line, b)
			}
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("demo after cancel = %d, want 0; stderr:\n%s", code, logs)
	}
	if strings.Contains(logs.String(), sample.Password) {
		t.Error("the demo's log shows the password")
	}
}
