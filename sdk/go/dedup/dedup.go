// Package dedup remembers which commands an agent has seen. Commands are
// delivered at least once; the agent applies each command id once, answers a
// duplicate of a finished command with the same result again, and a
// duplicate of a command still being applied with an ack only.
//
// Memory is bounded: at most Capacity finished results are kept (the oldest
// are forgotten first). Commands in progress are always kept.
package dedup

import (
	"sync"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
)

// Seen says what a delivery is.
type Seen int

const (
	New        Seen = iota // first delivery: apply it
	InProgress             // being applied: ack only
	Done                   // finished: send the remembered result again
)

// Dedup is safe for concurrent use.
type Dedup struct {
	mu       sync.Mutex
	capacity int
	entries  map[string]*pb.CommandResult // nil value: in progress
	order    []string                     // finished ids, oldest first
}

// NewDedup remembers up to capacity finished results.
func NewDedup(capacity int) *Dedup {
	return &Dedup{capacity: max(capacity, 1), entries: map[string]*pb.CommandResult{}}
}

// Deliver records a delivery of id. For Done it also returns the result.
func (d *Dedup) Deliver(id string) (Seen, *pb.CommandResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.entries[id]
	switch {
	case !ok:
		d.entries[id] = nil
		return New, nil
	case r == nil:
		return InProgress, nil
	default:
		return Done, r
	}
}

// Finish stores the result of id, forgetting the oldest results beyond capacity.
func (d *Dedup) Finish(id string, r *pb.CommandResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.entries[id]; !ok || old == nil {
		d.order = append(d.order, id)
	}
	d.entries[id] = r
	for len(d.order) > d.capacity {
		delete(d.entries, d.order[0])
		d.order = d.order[1:]
	}
}

// Len is the number of ids remembered (finished and in progress).
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}
