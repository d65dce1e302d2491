package tlsconf

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// The order budget bounds how many orders popgate places with the CA, all
// names and key types, first orders and renewals together. Let's Encrypt
// allows 300 new orders per account per 3 hours, counted as a token bucket
// (refilled one every 36 s), and once an account is over it every order
// fails, renewals included. The default stays well below that.
const (
	// DefaultOrderBudget is ACMEConfig.OrderBudget when it is 0: at most
	// this many orders at once ...
	DefaultOrderBudget = 100
	// DefaultOrderBudgetPeriod is ACMEConfig.OrderBudgetPeriod when it is
	// 0: ... and this many more over each such period (a third of Let's
	// Encrypt's rate).
	DefaultOrderBudgetPeriod = 3 * time.Hour
)

// orderClass says whose order it is; the budget serves them by priority.
type orderClass int

const (
	// classRenewal: autocert renewing a certificate of a name of
	// ACMEConfig.Domains.
	classRenewal orderClass = iota
	// classDomain: a name of ACMEConfig.Domains.
	classDomain
	// classOnDemand: a name ACMEConfig.AllowHost allows, first orders
	// and renewals alike. It leaves the reserve to the others.
	classOnDemand
)

// orderBudget is a token bucket of orders: it holds up to size, starts
// full and refills size per period, evenly. On-demand orders are placed
// (renewals included) only while more than reserve are left, so that the
// configured domains, and their renewals, still get theirs when a flood of
// on-demand names has used the rest.
type orderBudget struct {
	size    float64
	period  time.Duration
	perSec  float64
	reserve float64
	now     func() time.Time // time.Now; replaced by tests

	mu     sync.Mutex
	tokens float64
	at     time.Time // when tokens was last brought up to date
	// dry is set by the first refusal after an order was placed, so that
	// exhaustion is reported once, not for every handshake.
	dry bool
}

// newOrderBudget makes a full budget; see ACMEConfig for the zero values.
func newOrderBudget(size int, period time.Duration, reserve int, now func() time.Time) *orderBudget {
	if size <= 0 {
		size = DefaultOrderBudget
	}
	if period <= 0 {
		period = DefaultOrderBudgetPeriod
	}
	switch {
	case reserve == 0:
		reserve = (size + 4) / 5
	case reserve < 0:
		reserve = 0
	}
	reserve = min(reserve, size) // on-demand orders then never run: cmd/popgate refuses it
	return &orderBudget{
		size: float64(size), period: period, perSec: float64(size) / period.Seconds(), reserve: float64(reserve),
		now: now, tokens: float64(size), at: now(),
	}
}

// refill brings tokens up to date. b.mu is held.
func (b *orderBudget) refill() {
	now := b.now()
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(b.size, b.tokens+d.Seconds()*b.perSec)
	}
	b.at = now
}

// take takes one order for class c. When none is left for c it returns
// false, when one will be, and whether this is the first refusal since an
// order was last placed.
func (b *orderBudget) take(c orderClass) (ok bool, next time.Time, first bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	need := 1.0
	if c == classOnDemand {
		need += b.reserve
	}
	if b.tokens >= need {
		b.tokens--
		b.dry = false
		return true, time.Time{}, false
	}
	wait := time.Duration(math.Ceil((need - b.tokens) / b.perSec * float64(time.Second)))
	first = !b.dry
	b.dry = true
	return false, b.at.Add(wait), first
}

// give returns an order taken but not placed.
func (b *orderBudget) give() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.tokens = min(b.size, b.tokens+1)
}

// left returns how many orders could be placed now (by a renewal or a
// configured domain).
func (b *orderBudget) left() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	return math.Floor(b.tokens)
}

// budgetError is an order withheld because the budget is used up.
type budgetError struct {
	next time.Time
}

func (e *budgetError) Error() string {
	return fmt.Sprintf("the ACME order budget is used up; the next order fits at %s", e.next.UTC().Format(time.RFC3339))
}
