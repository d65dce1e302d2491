//go:build openssl

package osslsign

// #cgo LDFLAGS: -lcrypto
// #include <openssl/opensslv.h>
// #if OPENSSL_VERSION_MAJOR < 3
// #error "the openssl build tag needs OpenSSL 3.0 or later (libssl-dev)"
// #endif
// #include <openssl/crypto.h>
// #include <openssl/err.h>
// #include <openssl/evp.h>
// #include <openssl/rsa.h>
//
// static EVP_PKEY *osslsign_load(const unsigned char *der, long len) {
// 	const unsigned char *p = der;
// 	return d2i_PrivateKey(EVP_PKEY_RSA, NULL, &p, len);
// }
//
// // osslsign_sign signs digest with a fresh context (an EVP_PKEY_CTX is not
// // safe for concurrent use; the EVP_PKEY is). md NULL signs digest as it is
// // (TLS 1.0/1.1's MD5+SHA-1), PKCS #1 v1.5 padded without a DigestInfo.
// // It returns 1 on success; on failure it empties this thread's error
// // queue, which would otherwise grow.
// static int osslsign_sign(EVP_PKEY *pkey, int pss, const EVP_MD *md, int saltlen,
// 		const unsigned char *digest, size_t dlen, unsigned char *sig, size_t *siglen) {
// 	int ok = 0;
// 	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
// 	if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0)
// 		goto done;
// 	if (EVP_PKEY_CTX_set_rsa_padding(ctx, pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) <= 0)
// 		goto done;
// 	if (md != NULL && EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0)
// 		goto done;
// 	if (pss && (EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, saltlen) <= 0))
// 		goto done;
// 	ok = EVP_PKEY_sign(ctx, sig, siglen, digest, dlen) > 0;
// done:
// 	EVP_PKEY_CTX_free(ctx);
// 	if (!ok)
// 		ERR_clear_error();
// 	return ok;
// }
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"unsafe"
)

// fallbacks counts the signatures crypto/rsa made for a wrapped key (see
// Sign); the tests check that a handshake made none.
var fallbacks atomic.Uint64

// Wrap returns, for an *rsa.PrivateKey, a signer that makes its signatures
// with libcrypto and whose Public is key's public key; any other key, or
// one libcrypto does not take, is returned unchanged. The returned signer
// also decrypts (TLS's RSA key exchange), with key.
func Wrap(key crypto.Signer) crypto.Signer {
	k, ok := key.(*rsa.PrivateKey)
	if !ok {
		return key
	}
	der := x509.MarshalPKCS1PrivateKey(k)
	defer clear(der) // the key now lives in libcrypto's memory too
	if len(der) == 0 {
		return key
	}
	pkey := C.osslsign_load((*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)))
	if pkey == nil {
		C.ERR_clear_error()
		return key
	}
	s := &signer{key: k, pkey: pkey}
	// EVP_PKEY_free clears the private key's numbers as it frees them.
	runtime.AddCleanup(s, func(p *C.EVP_PKEY) { C.EVP_PKEY_free(p) }, pkey)
	return s
}

// Implementation names what makes RSA signatures in this build, as
// "openssl 3.0.13": libcrypto's version, the one loaded at run time.
func Implementation() string {
	return "openssl " + strings.TrimSpace(C.GoString(C.OpenSSL_version(C.OPENSSL_VERSION_STRING)))
}

// signer is an RSA key held both by Go and by libcrypto.
type signer struct {
	key  *rsa.PrivateKey
	pkey *C.EVP_PKEY // freed by the cleanup Wrap registers
}

func (s *signer) Public() crypto.PublicKey { return s.key.Public() }

// Sign makes the signature with libcrypto for what crypto/tls asks: PSS
// with a salt as long as the hash, or PKCS #1 v1.5, over SHA-256, -384, -512
// (and SHA-1 and TLS 1.0/1.1's MD5+SHA-1 for old clients). Anything else,
// or a failure in libcrypto, is signed by crypto/rsa: a handshake Go could
// serve is never refused here. libcrypto draws the PSS salt and its blinding
// from its own random generator, not from rand.
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if sig := s.signOpenSSL(digest, opts); sig != nil {
		return sig, nil
	}
	fallbacks.Add(1)
	return s.key.Sign(rand, digest, opts)
}

// Decrypt is the Go key's (RSA key exchange, TLS 1.0-1.2 without ECDHE,
// which only legacy clients use).
func (s *signer) Decrypt(rand io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	return s.key.Decrypt(rand, msg, opts)
}

// signOpenSSL returns the signature, or nil when libcrypto does not make
// this one (see Sign).
func (s *signer) signOpenSSL(digest []byte, opts crypto.SignerOpts) []byte {
	h := opts.HashFunc()
	var md *C.EVP_MD
	switch h {
	case crypto.SHA256:
		md = C.EVP_sha256()
	case crypto.SHA384:
		md = C.EVP_sha384()
	case crypto.SHA512:
		md = C.EVP_sha512()
	case crypto.SHA1:
		md = C.EVP_sha1()
	case crypto.MD5SHA1:
		// PKCS #1 v1.5 of the 36 bytes as they are; md stays NULL.
	default:
		return nil
	}
	if len(digest) != h.Size() {
		return nil // crypto/rsa reports the error
	}
	pss, saltLen := 0, 0
	if o, ok := opts.(*rsa.PSSOptions); ok {
		if md == nil {
			return nil
		}
		switch {
		case o.SaltLength == rsa.PSSSaltLengthEqualsHash || o.SaltLength == h.Size():
			saltLen = h.Size()
		case o.SaltLength > 0:
			saltLen = o.SaltLength
		default:
			return nil // PSSSaltLengthAuto: left to crypto/rsa
		}
		pss = 1
	}
	sig := make([]byte, s.key.Size())
	sigLen := C.size_t(len(sig))
	ok := C.osslsign_sign(s.pkey, C.int(pss), md, C.int(saltLen),
		(*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &sigLen)
	runtime.KeepAlive(s) // s.pkey must outlive the call
	if ok != 1 || int(sigLen) != len(sig) {
		return nil
	}
	return sig
}
