package auth

import (
	"context"
	"strconv"
	"strings"
)

// Static routes from fixed tables: the exact user name first, then the
// domain (the part after the last "@"), then Default. Keys are compared
// case-insensitively (ASCII): mail systems treat "Alice@Example.COM" and
// "alice@example.com" as one mailbox, and a table that told them apart would
// route the same person two ways. A Static must not be changed after first
// use; build a new one instead.
type Static struct {
	Users   map[string]string // user name → backend name
	Domains map[string]string // domain → backend name
	Default string            // backend for everyone else; "" refuses them with ErrNoRoute
}

// UserKey returns the key a route table holds user for: route tables
// compare user names case-insensitively.
func UserKey(user string) string { return strings.ToLower(user) }

// DomainKey returns the key a route table holds domain for: domains are
// compared case-insensitively, and a route.domains key or a map file line
// may write the domain with a leading "@".
func DomainKey(domain string) string { return strings.ToLower(strings.TrimPrefix(domain, "@")) }

// userDomain returns the domain part of a user name as a route table
// looks it up: the part after the last "@".
func userDomain(user string) (string, bool) {
	i := strings.LastIndexByte(user, '@')
	if i < 0 {
		return "", false
	}
	return DomainKey(user[i+1:]), true
}

// NewStatic returns a Static with its keys folded by [UserKey] and
// [DomainKey].
func NewStatic(users, domains map[string]string, def string) *Static {
	s := &Static{Users: make(map[string]string, len(users)), Domains: make(map[string]string, len(domains)), Default: def}
	for k, v := range users {
		s.Users[UserKey(k)] = v
	}
	for k, v := range domains {
		s.Domains[DomainKey(k)] = v
	}
	return s
}

// Lookup returns the backend name for user and whether any rule matched,
// Default included.
func (s *Static) Lookup(user string) (string, bool) {
	if b, ok := s.lookupTables(user); ok {
		return b, true
	}
	if s.Default != "" {
		return s.Default, true
	}
	return "", false
}

func (s *Static) lookupTables(user string) (string, bool) {
	b, _, ok := s.match(user)
	return b, ok
}

// Match looks user up in Users, then in Domains, leaving Default out (a
// [Chain] asks other sources before the default). It returns the backend and
// the rule that matched, named by its configuration key, such as
// `route.users "alice@example.com"` or `route.domains "example.com"`, for
// `popgate route`.
func (s *Static) Match(user string) (backend, rule string, ok bool) {
	b, kind, ok := s.match(user)
	if !ok {
		return "", "", false
	}
	key := UserKey(user)
	if kind == matchDomain {
		key, _ = userDomain(user)
	}
	return b, kind + " " + strconv.Quote(key), true
}

const (
	matchUser   = "route.users"
	matchDomain = "route.domains"
)

func (s *Static) match(user string) (backend, kind string, ok bool) {
	if s == nil {
		return "", "", false
	}
	if b, ok := s.Users[UserKey(user)]; ok {
		return b, matchUser, true
	}
	if d, ok := userDomain(user); ok {
		if b, ok := s.Domains[d]; ok {
			return b, matchDomain, true
		}
	}
	return "", "", false
}

// Route implements [Router]. The backend login uses the client's own
// credentials.
func (s *Static) Route(_ context.Context, req *Request) (Decision, error) {
	b, ok := s.Lookup(req.User)
	if !ok {
		return Decision{}, ErrNoRoute
	}
	return Decision{Backend: b, User: req.User, Password: req.Password}, nil
}
