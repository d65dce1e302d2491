//go:build !linux

package proxy

import (
	"errors"
	"sync/atomic"
)

// parker is Linux-only (epoll); elsewhere idle directions keep their
// goroutine.
type parker struct{ parked atomic.Int64 }

func newParker() (*parker, error)        { return nil, errors.New("parking needs epoll") }
func (p *parker) close()                 {}
func (p *parker) arm(d *direction) error { return errors.New("parking needs epoll") }
func (p *parker) unparked()              {}
func (p *parker) forget(d *direction)    {}
