package main

import (
	"context"
	"io"
	"log/slog"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"
)

type fakeActivity struct{ accepted atomic.Uint64 }

func (f *fakeActivity) Accepted() uint64 { return f.accepted.Load() }
func (f *fakeActivity) Sessions() int    { return 0 }

func forcedGCs() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

var sink [][]byte

// TestTrimAfterBurst: once connections stop coming, a burst that left
// garbage is given back within a second or so, and a quiet server with
// nothing to give back is left alone until quietPeriod.
func TestTrimAfterBurst(t *testing.T) {
	act := &fakeActivity{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go trimWhenQuiet(ctx, act, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))

	// The first check after start is dirty with little garbage: no
	// collection while quiet for less than an hour.
	time.Sleep(3 * burstQuiet)
	before := forcedGCs()
	// A burst: connections and garbage.
	for i := range 64 {
		act.accepted.Add(1)
		sink = append(sink, make([]byte, 256<<10))
		if i%16 == 0 {
			time.Sleep(burstQuiet / 4)
		}
	}
	sink = nil // all of it garbage now
	deadline := time.Now().Add(10 * time.Second)
	for forcedGCs() == before {
		if time.Now().After(deadline) {
			t.Fatalf("no collection within 10 s of a burst (runtime holds %d bytes)", retained())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Quiet, nothing new: no further collection.
	n := forcedGCs()
	time.Sleep(4 * burstQuiet)
	if got := forcedGCs(); got != n {
		t.Errorf("%d more collections while nothing happened", got-n)
	}
}
