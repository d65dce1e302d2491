package interop

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/internal/certgen"
)

// testCA is a throwaway ECDSA P-256 certificate authority for one test, a
// testing face on internal/certgen.
type testCA struct {
	ca     *certgen.CA
	CAFile string // PEM of the CA certificate
	Pool   *x509.CertPool
}

// newTestCA creates a CA named name and writes its certificate to dir/name-ca.pem.
func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	ca, err := certgen.NewCA(name, certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCA{ca: ca, CAFile: filepath.Join(dir, name+"-ca.pem"), Pool: ca.Pool}
	if err := ca.WriteCert(tc.CAFile); err != nil {
		t.Fatal(err)
	}
	return tc
}

// issue signs a server certificate for dnsName plus the IP SAN 127.0.0.1 and
// writes dir/name.crt and dir/name.key (PKCS #8), returning both paths.
func (ca *testCA) issue(t testing.TB, dir, name, dnsName string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := ca.ca.IssueFiles(dir, name, dnsName, certgen.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// clientConfig returns a TLS client configuration that trusts only ca and
// checks serverName.
func (ca *testCA) clientConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

func writeFile(t testing.TB, name string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, data, perm); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	// WriteFile applies perm only when it creates the file, and through the umask.
	if err := os.Chmod(name, perm); err != nil {
		t.Fatalf("chmod %s: %v", name, err)
	}
}
