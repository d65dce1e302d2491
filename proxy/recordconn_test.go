package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// writeRecorder passes writes on to w and records their sizes.
type writeRecorder struct {
	mu     sync.Mutex
	w      io.Writer
	writes []int
}

func (r *writeRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, len(p))
	r.mu.Unlock()
	return r.w.Write(p)
}

// take returns the sizes recorded since the last call.
func (r *writeRecorder) take() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.writes
	r.writes = nil
	return w
}

// TestRecordConnBatch: within a batch, the records of one tls.Conn.Write
// reach the socket in one write (or as few as the batch buffer allows), all
// of them and in order, and nothing stays behind once the batch ends.
func TestRecordConnBatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := newTLSPair(t, "localhost")
	const size = 64 << 10 // four full records
	const record = 16<<10 + 22

	type result struct {
		b   []byte
		err error
	}
	results := make(chan result)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), pair.client)
		if err != nil {
			results <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		for {
			b := make([]byte, size)
			_, err := io.ReadFull(c, b)
			results <- result{b, err}
			if err != nil {
				return
			}
		}
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecordConn(raw).(*recordConn)
	rec := &writeRecorder{w: rc.TCPConn}
	rc.w = rec
	cfg := pair.server.Clone()
	cfg.DynamicRecordSizingDisabled = true // full records from the start
	tc := tls.Server(rc, cfg)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	rec.take()

	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	for _, tt := range []struct {
		name  string
		batch int // batch buffer size; 0: no batch
		want  []int
	}{
		{"no batch", 0, []int{record, record, record, record}},
		{"all fit", batchBufSize * 2, []int{4 * record}},
		{"two fit", 2*record + 100, []int{2 * record, 2 * record}},
		{"none fits", 1000, []int{record, record, record, record}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.batch > 0 {
				rc.beginBatch(make([]byte, tt.batch))
			}
			if _, err := tc.Write(msg); err != nil {
				t.Fatal(err)
			}
			if tt.batch > 0 {
				if err := rc.endBatch(); err != nil {
					t.Fatal(err)
				}
			}
			if got := rec.take(); !slices.Equal(got, tt.want) {
				t.Errorf("socket writes %v, want %v", got, tt.want)
			}
			if rc.wbuf != nil || rc.batching {
				t.Errorf("after endBatch: %d octets held, batching %v", len(rc.wbuf), rc.batching)
			}
			r := <-results
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !bytes.Equal(r.b, msg) {
				t.Error("client read other bytes than written")
			}
		})
	}
}
