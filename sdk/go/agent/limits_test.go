package agent

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLimiterNeverExceedsItsMax(t *testing.T) {
	l := newLimiter(3)
	var now, peak atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.acquire()
			n := now.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(2 * time.Millisecond)
			now.Add(-1)
			l.release()
		}()
	}
	wg.Wait()
	if peak.Load() != 3 {
		t.Fatalf("peak concurrency %d, want 3", peak.Load())
	}
}

func TestSessionQueuesKeepDeliveryOrder(t *testing.T) {
	q := sessionQueues{tail: map[string]chan struct{}{}}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 50 {
		prev, done := q.enqueue("s")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if prev != nil {
				<-prev
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			q.finish("s", done)
		}()
	}
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("order %v", order)
		}
	}
	if len(q.tail) != 0 {
		t.Fatalf("idle sessions kept: %v", q.tail)
	}
}
