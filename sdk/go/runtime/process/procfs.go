package process

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spawnEnv tags a session process's environment so that an agent that died
// between spawning it and recording its pid finds it again.
const spawnEnv = "STREAMSPACE_SPAWN"

// procStat reads a process's state letter and start time (clock ticks after
// boot) from /proc/<pid>/stat. The start time tells a live process from a
// later one that reuses its pid.
func procStat(pid int) (state byte, start uint64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return f[0][0], start, err == nil
}

// alive: pid runs (not a zombie) and is the process started at start.
func alive(pid int, start uint64) bool {
	st, t, ok := procStat(pid)
	return ok && t == start && st != 'Z' && st != 'X'
}

// goneWithin polls until the process is gone or limit passes.
func goneWithin(pid int, start uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for alive(pid, start) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
	return true
}

// signalGroup signals the process group led by pid, or pid alone if it has no group.
func signalGroup(pid int, sig syscall.Signal) {
	if pid <= 0 {
		return
	}
	if err := syscall.Kill(-pid, sig); errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, sig)
	}
}

// findTagged finds the live process spawned with spawnEnv=tag, preferring a
// group leader (the session process itself rather than a child that inherited
// the environment).
func findTagged(tag string) (pid int, start uint64, ok bool) {
	if tag == "" {
		return 0, 0, false
	}
	needle := []byte(spawnEnv + "=" + tag)
	type cand struct {
		pid    int
		start  uint64
		leader bool
	}
	var found []cand
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		p, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		env, err := os.ReadFile(d + "/environ")
		if err != nil {
			continue
		}
		hit := false
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, needle) {
				hit = true
				break
			}
		}
		if !hit {
			continue
		}
		if st, t, ok := procStat(p); ok && st != 'Z' && st != 'X' {
			g, err := syscall.Getpgid(p)
			found = append(found, cand{p, t, err == nil && g == p})
		}
	}
	if len(found) == 0 {
		return 0, 0, false
	}
	sort.Slice(found, func(i, j int) bool {
		if found[i].leader != found[j].leader {
			return found[i].leader
		}
		return found[i].pid < found[j].pid
	})
	return found[0].pid, found[0].start, true
}
