package process

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
)

// ports hands out session ports from a range: never one held by a live
// session of this agent, and only one that can be bound right now (the bind
// probe skips ports used by anything else on the host).
type ports struct {
	mu    sync.Mutex
	r     config.PortRange
	held  map[uint16]bool
	next  int
	probe func(port uint16) bool
}

func newPorts(r config.PortRange) *ports {
	return &ports{r: r, held: map[uint16]bool{}, next: rand.IntN(r.Len()), probe: bindable}
}

func bindable(port uint16) bool {
	l, err := net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port))))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// allocate returns a free port and holds it until release.
func (p *ports) allocate() (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.r.Len()
	for i := range n {
		port := p.r.Low + uint16((p.next+i)%n)
		if p.held[port] || !p.probe(port) {
			continue
		}
		p.held[port] = true
		p.next = (p.next + i + 1) % n
		return port, nil
	}
	return 0, fmt.Errorf("no free port in %s: %d held by sessions of this agent, the rest in use", p.r, len(p.held))
}

// adopt holds the port of a re-adopted session.
func (p *ports) adopt(port uint16) {
	p.mu.Lock()
	p.held[port] = true
	p.mu.Unlock()
}

func (p *ports) release(port uint16) {
	p.mu.Lock()
	delete(p.held, port)
	p.mu.Unlock()
}
