package process

import (
	"os"
	"strings"
	"testing"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
)

func TestSubstituteReplacesTheFourNamesOnly(t *testing.T) {
	vars := map[string]string{"PORT": "20001", "SESSION_ID": "s1", "USER": "alice", "HOME": "/h/alice"}
	cases := map[string]string{
		"--port=${PORT}":              "--port=20001",
		"${SESSION_ID}-${USER}":       "s1-alice",
		"${HOME}/x ${HOME}":           "/h/alice/x /h/alice",
		"$PORT ${OTHER} ${PORT":       "$PORT ${OTHER} ${PORT",
		"${PORT}${PORT}":              "2000120001",
		"no variables":                "no variables",
		"${USER}: ${SESSION_ID} done": "alice: s1 done",
	}
	for in, want := range cases {
		if got := Substitute(in, vars); got != want {
			t.Errorf("Substitute(%q) = %q, want %q", in, got, want)
		}
	}
	// A value that looks like a variable is not substituted again.
	if got := Substitute("${USER}", map[string]string{"USER": "${PORT}", "PORT": "1"}); got != "${PORT}" {
		t.Errorf("substituted twice: %q", got)
	}
}

func TestNamesAreCheckedAndTheFieldIsNamed(t *testing.T) {
	for _, ok := range []string{"s1", "a", "my-session-9", strings.Repeat("a", 63)} {
		if err := CheckSession(ok); err != nil {
			t.Errorf("CheckSession(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "../x", "a/b", strings.Repeat("a", 64)} {
		err := CheckSession(bad)
		if err == nil || !strings.Contains(err.Error(), "session_id") {
			t.Errorf("CheckSession(%q) = %v, want an error naming session_id", bad, err)
		}
		if e, ok := err.(*Error); !ok || e.Reason != reasonInvalid || e.Retryable {
			t.Errorf("CheckSession(%q): want a non-retryable INVALID error, got %#v", bad, err)
		}
	}
	for _, ok := range []string{"alice", "a.b_c@d-e", "Bob1"} {
		if err := CheckUser(ok); err != nil {
			t.Errorf("CheckUser(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", ".x", "a/b", "a b", strings.Repeat("u", 64)} {
		if err := CheckUser(bad); err == nil || !strings.Contains(err.Error(), "user") {
			t.Errorf("CheckUser(%q) = %v, want an error naming user", bad, err)
		}
	}
}

func TestPortsSkipHeldAndUnbindableAndRunOut(t *testing.T) {
	p := newPorts(config.PortRange{Low: 30000, High: 30003}, t.TempDir(), nil)
	busy := map[uint16]bool{30001: true}
	p.probe = func(port uint16) bool { return !busy[port] }
	got := map[uint16]*os.File{}
	for range 3 {
		port, lock, err := p.allocate()
		if err != nil {
			t.Fatal(err)
		}
		if busy[port] || got[port] != nil || port < 30000 || port > 30003 || lock == nil {
			t.Fatalf("allocated %d (had %v, lock %v)", port, got, lock)
		}
		got[port] = lock
	}
	if _, _, err := p.allocate(); err == nil || !strings.Contains(err.Error(), "30000-30003") {
		t.Fatalf("exhausted range: %v", err)
	}
	for port, lock := range got {
		// The session's process is gone: its lock with it.
		_ = lock.Close()
		p.release(port)
		again, lock2, err := p.allocate()
		if err != nil || again != port {
			t.Fatalf("after releasing %d: %d %v", port, again, err)
		}
		_ = lock2.Close()
	}
}

// Two agents on one host (two allocators, one lock directory) never hand out
// the same port, although nothing ever binds one: the probe alone would give
// both every port.
func TestTwoAgentsOnOneHostNeverShareAPort(t *testing.T) {
	dir := t.TempDir()
	r := config.PortRange{Low: 30100, High: 30109}
	a, b := newPorts(r, dir, nil), newPorts(r, dir, nil)
	seen := map[uint16]bool{}
	var locks []*os.File
	for _, p := range []*ports{a, b, a, b, a, b, a, b, a, b} {
		p.probe = func(uint16) bool { return true }
		port, lock, err := p.allocate()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		locks = append(locks, lock)
	}
	if _, _, err := b.allocate(); err == nil {
		t.Fatal("the range is used up by the two agents together")
	}
	for _, l := range locks {
		_ = l.Close()
	}
}

func TestRemoveHomeRefusesPathsOutsideTheLayout(t *testing.T) {
	l := layout{root: t.TempDir()}
	if err := l.create(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"/", l.root, l.root + "/homes", l.root + "/sessions/x", l.root + "/homes/../sessions", l.root + "/homes/a/b"} {
		if err := l.removeHome(bad); err == nil {
			t.Errorf("removeHome(%q) accepted", bad)
		}
	}
	if err := l.removeHome(l.home("s1", "alice", false)); err != nil {
		t.Errorf("a scratch home: %v", err)
	}
}
