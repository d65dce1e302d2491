package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// A fleet of replicas (ACMEConfig.OrderLock and Cache) orders each name
// once: an order of popgate's (order) and a renewal (caTransport.mayOrder)
// are placed only under the name's fleet lock, taken after the replica's
// own lock (lockName), and only when the shared cache, read again under
// the lock, does not hold the certificate already. A replica that finds
// the lock taken waits for the certificate to appear in the cache and
// serves it: the fleet serves one certificate per name and key type. A
// renewal that finds the lock taken, or the certificate renewed by
// another replica, is held back; autocert tries again within an hour and
// then reads the renewed certificate from the cache. An order or renewal
// that fails leaves the lock taken for its back-off (release with the
// retry delay), so that the fleet, not only the replica, backs off: the
// CA counts failed validations per account, which the fleet shares.

// fleetPoll is how often a replica waiting for another one's order reads
// the cache (and tries the lock, should the other replica have died):
// acmeState.fleetPoll, which tests shorten.
const fleetPoll = 250 * time.Millisecond

// WithheldCluster is the reason of an order withheld because the fleet's
// lock could not be taken (Redis unreachable).
const WithheldCluster = "cluster"

// fleetError is an order withheld because the fleet's lock could not be
// taken.
type fleetError struct{ err error }

func (e *fleetError) Error() string {
	return fmt.Sprintf("no order while the fleet's order lock cannot be taken: %v", e.err)
}

func (e *fleetError) Unwrap() error { return e.err }

// errFleetOrdering is the reason of a renewal held back while another
// replica orders the name.
var errFleetOrdering = errors.New("another replica of the fleet is ordering or renewing the name")

// errRenewedElsewhere is the reason of a renewal held back because another
// replica renewed the certificate: autocert picks it up from the cache at
// its next attempt.
var errRenewedElsewhere = errors.New("another replica of the fleet renewed the certificate; it is read from the cache")

// fleetLock takes k.name's fleet lock for an order of popgate's. It
// returns the certificate instead when one appears in the cache, another
// replica having obtained it (waiting for that, until ctx is done, while
// another replica holds the lock), or an error when the lock cannot be
// taken or the back-off after another replica's failed order holds it.
func (a *acmeState) fleetLock(ctx context.Context, k seenKey, onDemand bool) (*tls.Certificate, func(time.Duration), error) {
	waited := false
	for {
		release, held, until, err := a.fleet.TryLock(k.name)
		switch {
		case err != nil:
			a.withheld(WithheldCluster)
			a.log.Debug("acme order held back: the fleet's order lock cannot be taken", "name", k.name, "key_type", k.keyType(), "err", err)
			return nil, nil, &fleetError{err}
		case !held && !until.IsZero():
			a.withheld(WithheldBackoff)
			a.log.Debug("acme order held back after a failure on another replica of the fleet", "name", k.name, "key_type", k.keyType(),
				"on_demand", onDemand, "retry_after", until)
			return nil, nil, &heldBackError{until}
		case held:
			// Another replica may have stored it just before.
			if a.stored(ctx, k) {
				release(0)
				return a.fromCache(k)
			}
			return nil, release, nil
		}
		if !waited {
			waited = true
			a.log.Debug("acme order: another replica of the fleet is ordering the name; waiting for its certificate",
				"name", k.name, "key_type", k.keyType())
		}
		select {
		case <-time.After(a.fleetPoll):
		case <-ctx.Done():
			a.withheld(WithheldBusy)
			return nil, nil, fmt.Errorf("waiting for another replica's order: %w", ctx.Err())
		}
		if a.stored(ctx, k) {
			return a.fromCache(k)
		}
	}
}

// fromCache loads k's certificate, which the cache holds, through autocert.
func (a *acmeState) fromCache(k seenKey) (*tls.Certificate, func(time.Duration), error) {
	c, err := a.get(helloFor(k))
	if err != nil {
		return nil, nil, err
	}
	return a.note(k.name, c), nil, nil
}

// renewedElsewhere reports whether the cache holds a certificate for k
// that expires later than the one this replica serves: another replica
// renewed it.
func (a *acmeState) renewedElsewhere(ctx context.Context, k seenKey) bool {
	v, ok := a.seen.Load(k)
	if !ok {
		return false
	}
	data, err := a.dir.Get(ctx, k.cacheKey())
	if err != nil || validCached(data, k, a.limiter.now()) != nil {
		return false
	}
	leaf := firstCert(data)
	return leaf != nil && leaf.NotAfter.After(v.(seenCert).notAfter)
}

// fleetRenewal takes k.name's fleet lock for a renewal's order (att) and
// returns its release, for att.fleetRelease (nil if att holds the lock
// already), or says why the order is held back. a.attMu is not held.
func (a *acmeState) fleetRenewal(ctx context.Context, att *attempt, k seenKey) (func(backoff time.Duration), *renewalHeldError) {
	a.attMu.Lock()
	have := att.fleetRelease != nil
	a.attMu.Unlock()
	if have {
		return nil, nil
	}
	release, held, until, err := a.fleet.TryLock(k.name)
	switch {
	case err != nil:
		return nil, &renewalHeldError{Name: k.name, Reason: "cluster", Err: &fleetError{err}}
	case !held && !until.IsZero():
		return nil, &renewalHeldError{Name: k.name, Reason: "backoff", Err: &heldBackError{until}}
	case !held:
		return nil, &renewalHeldError{Name: k.name, Reason: "busy", Err: errFleetOrdering}
	}
	if a.renewedElsewhere(ctx, k) {
		release(0)
		return nil, &renewalHeldError{Name: k.name, Reason: "renewed", Err: errRenewedElsewhere}
	}
	return release, nil
}
