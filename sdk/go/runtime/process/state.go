package process

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// State is what the agent records per session in <data-dir>/sessions/<id>.json
// (the same fields as the Rust agent's process runtime). Written before the
// spawn with Pid 0 and SpawnTag set, then again with the pid.
type State struct {
	Session        string `json:"session"`
	User           string `json:"user"`
	Pid            int    `json:"pid"`
	SpawnTag       string `json:"spawn_tag"`
	StartTime      uint64 `json:"start_time"`
	Port           uint16 `json:"port"`
	Hibernated     bool   `json:"hibernated"`
	Home           string `json:"home"`
	PersistentHome bool   `json:"persistent_home"`
}

func (s *State) url() string      { return fmt.Sprintf("http://127.0.0.1:%d/", s.Port) }
func (s *State) workload() string { return fmt.Sprintf("pid %d", s.Pid) }

// layout is the data directory: sessions/ (state), logs/, homes/<user>
// (persistent homes) and scratch/<session> (throw-away homes).
type layout struct{ root string }

func (l layout) create() error {
	for _, d := range []string{"sessions", "logs", "homes", "scratch"} {
		if err := os.MkdirAll(filepath.Join(l.root, d), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", filepath.Join(l.root, d), err)
		}
	}
	return nil
}

func (l layout) statePath(session string) string {
	return filepath.Join(l.root, "sessions", session+".json")
}
func (l layout) logPath(session string) string {
	return filepath.Join(l.root, "logs", session+".log")
}

// home is the session's home: homes/<user> if persistent, else scratch/<session>.
func (l layout) home(session, user string, persistent bool) string {
	if persistent {
		return filepath.Join(l.root, "homes", user)
	}
	return filepath.Join(l.root, "scratch", session)
}

// removeHome deletes a home, refusing any path outside homes/ and scratch/
// (the state file it came from may have been edited).
func (l layout) removeHome(home string) error {
	for _, d := range []string{"homes", "scratch"} {
		base := filepath.Join(l.root, d) + string(filepath.Separator)
		if strings.HasPrefix(filepath.Clean(home), base) && filepath.Dir(filepath.Clean(home))+string(filepath.Separator) == base {
			return os.RemoveAll(home)
		}
	}
	return fmt.Errorf("refusing to remove %q: not a home under %s", home, l.root)
}

// save writes the state atomically (temp file + rename).
func (l layout) save(s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	p := l.statePath(s.Session)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing session state: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("writing session state: %w", err)
	}
	return nil
}

func (l layout) forget(session string) { _ = os.Remove(l.statePath(session)) }

// load reads every state file; unreadable ones are returned as errors by name.
func (l layout) load() ([]*State, []error) {
	files, _ := filepath.Glob(filepath.Join(l.root, "sessions", "*.json"))
	var out []*State
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		var s State
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err == nil {
			err = CheckSession(s.Session)
		}
		if err == nil && filepath.Base(f) != s.Session+".json" {
			err = fmt.Errorf("names session %q", s.Session)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ignoring %s: %w", f, err))
			continue
		}
		out = append(out, &s)
	}
	return out, errs
}
