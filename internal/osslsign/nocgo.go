//go:build openssl && !cgo

package osslsign

// The "openssl" build tag links libcrypto through cgo. Without cgo the build
// stops here rather than quietly producing a binary that signs with Go:
// build with CGO_ENABLED=1 (and a C compiler and libssl-dev), or without the
// tag.
var _ = build_tag_openssl_needs_CGO_ENABLED_1
