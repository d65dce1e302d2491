package tlsconf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/crypto/acme/autocert"

	"github.com/popgate/popgate/internal/safefile"
)

// The ACME cache directory holds the account key and every certificate's
// private key, and whatever autocert finds there it serves. So popgate
// trusts it as OpenSSH's StrictModes trusts ~/.ssh: the directory and each
// file read from it must be owned by popgate's user (or root) and not
// writable by the group or others, and no directory above it may let
// another user swap it (safefile.CheckDir). Files are checked when read,
// not only at start, so a file planted later is refused too; a refused
// file is an error, not a cache miss, so that popgate neither serves it
// nor orders a certificate to replace it behind the operator's back.
// ACMEConfig.InsecureCachePermissions turns the ownership and permission
// checks off (with a WARN at every start); the type checks (a regular
// file, no symbolic link, at most 1 MiB) always apply: autocert writes
// nothing else.

// CacheError is an ACME cache directory or file refused by these rules.
// Err wraps safefile.ErrNotPrivate (the ownership and permission checks,
// which ACMEConfig.InsecureCachePermissions turns off) or
// safefile.ErrNotRegular.
type CacheError struct{ Err error }

func (e *CacheError) Error() string { return "tlsconf: acme: cache: " + e.Err.Error() }

func (e *CacheError) Unwrap() error { return e.Err }

// checkCache creates dir (mode 0700) if it is missing and checks it and
// the files in it, at start.
func checkCache(dir string, insecure bool, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsconf: acme: cache directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("tlsconf: acme: cache directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("tlsconf: acme: cache directory %s is not a directory", dir)
	}
	if insecure {
		log.Warn("acme cache permissions are not checked: certificates and keys that other users put in the cache directory would be served",
			"dir", dir, "mode", fi.Mode().Perm().String())
		return nil
	}
	if err := safefile.CheckDir(dir); err != nil {
		return &CacheError{err}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("tlsconf: acme: cache directory: %w", err)
	}
	for _, e := range entries {
		name := filepath.Join(dir, e.Name())
		switch t := e.Type(); {
		case t.IsRegular():
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile (autocert's temporary files)
			}
			if err != nil {
				return fmt.Errorf("tlsconf: acme: cache: %w", err)
			}
			if err := safefile.CheckPrivate(name, info); err != nil {
				return &CacheError{err}
			}
		case t&fs.ModeSymlink != 0:
			return &CacheError{&safefile.Error{Path: name, Err: safefile.ErrNotRegular,
				Detail: "a symbolic link; the cache holds only files popgate wrote: remove it"}}
		default:
			// A directory (lost+found at the root of a volume) or a
			// special file: autocert never reads one, and strictCache
			// would refuse it.
		}
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("acme cache directory is readable by other users; it holds private keys",
			"dir", dir, "mode", fi.Mode().Perm().String())
	}
	return nil
}

// strictCache is autocert.DirCache with the rules above applied at every
// read (and the directory's at every write).
type strictCache struct {
	dir      string
	insecure bool // ACMEConfig.InsecureCachePermissions
}

// Get implements autocert.Cache. A missing entry is autocert.ErrCacheMiss;
// an entry that breaks the rules is an error naming the file and the fix.
func (c *strictCache) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.checkDir(); err != nil {
		return nil, err
	}
	name := filepath.Join(c.dir, filepath.Clean("/"+key)) // as DirCache names it
	data, err := safefile.ReadFile(name, safefile.Options{NoFollow: true, Private: !c.insecure})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, autocert.ErrCacheMiss
	}
	var fe *safefile.Error
	if errors.As(err, &fe) {
		return nil, &CacheError{err}
	}
	if err != nil {
		return nil, fmt.Errorf("tlsconf: acme: cache: %w", err)
	}
	return data, nil
}

// Put implements autocert.Cache: DirCache's (a temporary file of mode 0600
// renamed into place), into a directory that still passes the rules.
func (c *strictCache) Put(ctx context.Context, key string, data []byte) error {
	if err := c.checkDir(); err != nil {
		return err
	}
	return autocert.DirCache(c.dir).Put(ctx, key, data)
}

// Delete implements autocert.Cache.
func (c *strictCache) Delete(ctx context.Context, key string) error {
	return autocert.DirCache(c.dir).Delete(ctx, key)
}

func (c *strictCache) checkDir() error {
	if c.insecure {
		return nil
	}
	if err := safefile.CheckDir(c.dir); err != nil {
		return &CacheError{err}
	}
	return nil
}
