package process

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
)

// ports hands out session ports from a range: never one held by a live
// session of this agent, never one another agent on the host has locked,
// and only one that can be bound right now (the bind probe skips ports used
// by anything else on the host).
//
// The host-wide lock is the Rust agent's convention: an exclusive flock on
// <lock dir>/<port>, taken without waiting, whose descriptor (read-only, of
// an empty file) becomes the session process's stdin, so the lock lives as
// long as the process does — across agent restarts. Agents sharing a network
// namespace share the directory; one that cannot be used leaves the probe.
type ports struct {
	mu      sync.Mutex
	r       config.PortRange
	held    map[uint16]bool
	next    int
	probe   func(port uint16) bool
	lockDir string
	log     *slog.Logger
	warned  bool
}

func newPorts(r config.PortRange, lockDir string, log *slog.Logger) *ports {
	if lockDir == "" {
		lockDir = filepath.Join(os.TempDir(), "streamspace-ports")
	}
	if log == nil {
		log = slog.Default()
	}
	return &ports{r: r, held: map[uint16]bool{}, next: rand.IntN(r.Len()), probe: bindable, lockDir: lockDir, log: log}
}

// errTaken: another process holds the port's lock.
var errTaken = errors.New("port locked by another process")

// tryLock locks <dir>/<port> without waiting: the open lock file, errTaken,
// or another error when the directory cannot be used.
func tryLock(dir string, port uint16) (*os.File, error) {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		if err := os.Mkdir(dir, 0o1777); err == nil {
			_ = os.Chmod(dir, 0o1777|os.ModeSticky) // the umask trimmed the mode
		} else if !os.IsExist(err) {
			return nil, err
		}
	}
	path := filepath.Join(dir, strconv.Itoa(int(port)))
	if _, err := os.Stat(path); os.IsNotExist(err) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		_ = f.Close()
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errTaken
		}
		return nil, err
	}
	return f, nil
}

// stdinOf is the session process's stdin: the port's lock, or nothing
// (/dev/null) when the lock directory is unusable.
func stdinOf(lock *os.File) io.Reader {
	if lock == nil {
		return nil
	}
	return lock
}

func bindable(port uint16) bool {
	l, err := net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port))))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// allocate returns a free port, held until release, and its host-wide lock
// (nil when the lock directory is unusable) for the session's process.
func (p *ports) allocate() (uint16, *os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.r.Len()
	for i := range n {
		port := p.r.Low + uint16((p.next+i)%n)
		if p.held[port] {
			continue
		}
		lock, err := tryLock(p.lockDir, port)
		if errors.Is(err, errTaken) {
			continue
		}
		if err != nil && !p.warned {
			p.warned = true
			p.log.Warn("port lock directory unusable; ports are only probed, so another agent on this host may hand out the same port (set PORT_LOCK_DIR)", "dir", p.lockDir, "error", err)
		}
		if !p.probe(port) {
			if lock != nil {
				_ = lock.Close()
			}
			continue
		}
		p.held[port] = true
		p.next = (p.next + i + 1) % n
		return port, lock, nil
	}
	return 0, nil, fmt.Errorf("no free port in %s: %d held by sessions of this agent, the rest in use", p.r, len(p.held))
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
