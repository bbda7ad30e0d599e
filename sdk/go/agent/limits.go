package agent

import "sync"

// limiter bounds how many commands apply at once; the bound changes with
// each Welcome (commands from an earlier stream still count).
type limiter struct {
	mu   sync.Mutex
	cond *sync.Cond
	max  int
	n    int
}

func newLimiter(max int) *limiter {
	l := &limiter{max: max}
	l.cond = sync.NewCond(&l.mu)
	return l
}

func (l *limiter) setMax(max int) {
	l.mu.Lock()
	l.max = max
	l.mu.Unlock()
	l.cond.Broadcast()
}

func (l *limiter) acquire() {
	l.mu.Lock()
	for l.n >= l.max {
		l.cond.Wait()
	}
	l.n++
	l.mu.Unlock()
}

func (l *limiter) release() {
	l.mu.Lock()
	l.n--
	l.mu.Unlock()
	l.cond.Signal()
}

// sessionQueues runs each session's commands one at a time in delivery
// order (enqueue is called on the stream's goroutine, in order): a command
// waits for the one delivered before it for the same session.
type sessionQueues struct {
	mu   sync.Mutex
	tail map[string]chan struct{}
}

// enqueue returns what to wait for (nil: nothing) and what to close when done.
func (q *sessionQueues) enqueue(session string) (prev <-chan struct{}, done chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	done = make(chan struct{})
	if t, ok := q.tail[session]; ok {
		prev = t
	}
	q.tail[session] = done
	return prev, done
}

// finish closes done and forgets the session if nothing is queued after it.
func (q *sessionQueues) finish(session string, done chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	close(done)
	if q.tail[session] == done {
		delete(q.tail, session)
	}
}
