package auth

import (
	"context"
	"errors"
	"strconv"
)

// Source is one place routes come from: the static tables ([Static]), a
// map file ([MapFile]), a lookup service ([HTTP]). A [Chain] asks its
// sources in order.
type Source interface {
	// Lookup finds the route for user by the name alone: the backend,
	// the rule that matched, as `popgate route` shows it (such as
	// `route.users "alice@example.com"`), and whether one did. found
	// false lets the Chain ask the next source; an error fails the login
	// for now ("-ERR [SYS/TEMP]"). Lookup must not need the password:
	// `popgate route` calls it with none.
	Lookup(ctx context.Context, user string) (backend, rule string, found bool, err error)
	// Close releases what the source holds open (connections to a
	// service). Logins that are under way may still finish through it.
	Close() error
}

// Decider is a [Source] that decides with the whole login, not by the name
// alone: a lookup service that checks the password, may have other
// credentials sent to the backend and may refuse ([HTTP]). A [Chain]
// routes a login through Decide, where [ErrNoRoute] moves on to the next
// source and any other error is final. Its Lookup asks nobody: it returns
// found with no backend and a rule that says who would decide.
type Decider interface {
	Source
	Decide(ctx context.Context, req *Request) (Decision, error)
}

// DomainSource is a [Source] that routes whole domains ([Static]'s Domains,
// a map file's "@domain" lines). HasDomain reports whether it has a route
// for domain, given lower-cased without a trailing dot; it is called on TLS
// handshakes (ACME's domains_from_routes), so it must be fast.
type DomainSource interface {
	Source
	HasDomain(domain string) bool
}

// Chain routes in the order of popgate's configuration (README, "Routing
// and authentication"): each of Sources in turn, then Default. The first
// source that has a route decides; a login then logs in to the backend
// with the client's own credentials, unless the source is a [Decider].
//
// A Decider's answer is final: a refusal is not routed further, and a
// failing service is an error (the client gets "-ERR [SYS/TEMP]"), not a
// fall-through. Only [ErrNoRoute] from it moves on; an auth_http service
// never says that, so after one the later sources and Default are in
// practice unused. A Chain must not be changed after first use.
type Chain struct {
	Sources []Source // in lookup order; see [Source]
	Default string   // route.default; "" refuses the rest with ErrNoRoute
}

// Route implements [Router].
func (c *Chain) Route(ctx context.Context, req *Request) (Decision, error) {
	for _, s := range c.Sources {
		if d, ok := s.(Decider); ok {
			dec, err := d.Decide(ctx, req)
			if errors.Is(err, ErrNoRoute) {
				continue
			}
			return dec, err
		}
		b, _, ok, err := s.Lookup(ctx, req.User)
		if err != nil {
			return Decision{}, err
		}
		if ok {
			return Decision{Backend: b, User: req.User, Password: req.Password}, nil
		}
	}
	if c.Default != "" {
		return Decision{Backend: c.Default, User: req.User, Password: req.Password}, nil
	}
	return Decision{}, ErrNoRoute
}

// IgnoresDomain implements [DomainBlind]: whether one of the sources
// compares local parts only.
func (c *Chain) IgnoresDomain() bool {
	for _, s := range c.Sources {
		if db, ok := s.(DomainBlind); ok && db.IgnoresDomain() {
			return true
		}
	}
	return false
}

// Explain says where user's logins would go and why, for `popgate route`:
// the backend ("" when no rule routes user by the name alone, or a
// [Decider] would decide at login; an [AddressRoute] for a directory's
// host answer) and the words that say so. It asks
// each source's Lookup, never a service with a password.
func (c *Chain) Explain(ctx context.Context, user string) (backend, why string, err error) {
	for i, s := range c.Sources {
		b, rule, ok, err := s.Lookup(ctx, user)
		if err != nil {
			return "", "", err
		}
		if !ok {
			continue
		}
		if _, _, ok := SplitAddressRoute(b); ok {
			return b, rule, nil // the directory's words name the address
		}
		if b != "" {
			return b, "backend " + strconv.Quote(b) + " (" + rule + ")", nil
		}
		if i > 0 {
			rule = "no rule before it matched; " + rule
		}
		if c.Default != "" {
			rule += "; should it have no route, backend " + strconv.Quote(c.Default) + " (route.default)"
		}
		return "", rule, nil
	}
	if c.Default != "" {
		return c.Default, "backend " + strconv.Quote(c.Default) + " (route.default)", nil
	}
	return "", "no route: the login is refused", nil
}

// HasDomain reports whether a source that routes whole domains (a
// [DomainSource]) has a route for domain, lower-cased without a trailing
// dot: the domains ACME's domains_from_routes may order names for.
// Default routes everyone and counts for no domain.
func (c *Chain) HasDomain(domain string) bool {
	for _, s := range c.Sources {
		if ds, ok := s.(DomainSource); ok && ds.HasDomain(domain) {
			return true
		}
	}
	return false
}

// Close closes every source.
func (c *Chain) Close() error {
	var errs []error
	for _, s := range c.Sources {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
