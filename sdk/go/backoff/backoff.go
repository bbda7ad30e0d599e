// Package backoff computes reconnect delays: exponential growth from a base to
// a cap, with full jitter (each delay is uniform in [0, ceiling]) so that many
// agents cut off together do not reconnect together.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is not safe for concurrent use.
type Backoff struct {
	Base, Cap time.Duration
	attempt   uint
	rand      func(n int64) int64 // uniform in [0, n); replaceable in tests
}

// New returns a Backoff whose first ceiling is base and whose ceilings never exceed max.
func New(base, max time.Duration) *Backoff {
	return &Backoff{Base: base, Cap: max, rand: rand.Int64N}
}

// Ceiling is the largest delay the next call to Next may return: Base*2^attempt, at most Cap.
func (b *Backoff) Ceiling() time.Duration {
	c := b.Base
	for i := uint(0); i < b.attempt && c < b.Cap; i++ {
		c *= 2
	}
	return min(c, b.Cap)
}

// Next returns a delay uniform in [0, Ceiling()] and raises the ceiling.
func (b *Backoff) Next() time.Duration {
	c := b.Ceiling()
	b.attempt++
	if c <= 0 {
		return 0
	}
	return time.Duration(b.rand(int64(c) + 1))
}

// Reset starts again from Base (after a connection that lasted).
func (b *Backoff) Reset() { b.attempt = 0 }
