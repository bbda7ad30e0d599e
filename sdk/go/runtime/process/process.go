// Package process runs each session as a local process group on a free
// loopback port: the template's command (argv, no shell) with ${PORT},
// ${SESSION_ID}, ${USER} and ${HOME} substituted and set in the environment.
//
// A session is RUNNING once 127.0.0.1:PORT accepts a TCP connection, at
// http://127.0.0.1:PORT/. Hibernate sends SIGSTOP to the group, wake SIGCONT,
// stop SIGTERM and SIGKILL after a grace period. A process that exits on its
// own makes the session FAILED. State lives in <data-dir>/sessions/<id>.json
// so a restarted agent re-adopts the processes still alive (same pid and same
// /proc start time) instead of starting them twice.
package process

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"github.com/streamspace-dev/streamspace/sdk/go/status"
)

const (
	reasonInvalid  = pb.FailureReason_FAILURE_REASON_INVALID
	reasonNotFound = pb.FailureReason_FAILURE_REASON_NOT_FOUND
	reasonCapacity = pb.FailureReason_FAILURE_REASON_CAPACITY
	reasonImage    = pb.FailureReason_FAILURE_REASON_IMAGE
	reasonCrash    = pb.FailureReason_FAILURE_REASON_CRASH_LOOP
	reasonPlatform = pb.FailureReason_FAILURE_REASON_PLATFORM

	phaseProvisioning = pb.SessionPhase_SESSION_PHASE_PROVISIONING
	phaseRunning      = pb.SessionPhase_SESSION_PHASE_RUNNING
	phaseHibernated   = pb.SessionPhase_SESSION_PHASE_HIBERNATED
	phaseStopped      = pb.SessionPhase_SESSION_PHASE_STOPPED
	phaseFailed       = pb.SessionPhase_SESSION_PHASE_FAILED
)

// Error is a failed operation, as a CommandFailed carries it.
type Error struct {
	Reason    pb.FailureReason
	Message   string
	Retryable bool
}

func (e *Error) Error() string { return e.Message }

func platformErr(what string, err error) *Error {
	return &Error{Reason: reasonPlatform, Message: what + ": " + err.Error(), Retryable: true}
}

// Options configure a Runtime.
type Options struct {
	DataDir      string
	Ports        config.PortRange
	PortLockDir  string        // host-wide port locks ("" = <temp dir>/streamspace-ports)
	MaxSessions  uint32        // 0 = no limit
	StopGrace    time.Duration // SIGTERM -> SIGKILL
	ReadyTimeout time.Duration // FAILED if the port is not open by then (default 60s)
	Log          *slog.Logger
}

type proc struct {
	st       State
	stopping atomic.Bool // set while we stop it: its exit is no crash
	ready    atomic.Bool // its port accepted a connection
}

// Runtime is safe for concurrent use; the caller runs one command per
// session at a time.
type Runtime struct {
	opt   Options
	lay   layout
	sink  *status.Sink
	ports *ports
	log   *slog.Logger
	mu    sync.Mutex
	procs map[string]*proc
}

// Open creates the data directory's layout and re-adopts every recorded
// session whose process still runs (re-stopping the hibernated ones).
func Open(opt Options, sink *status.Sink) (*Runtime, error) {
	if opt.ReadyTimeout == 0 {
		opt.ReadyTimeout = 60 * time.Second
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	rt := &Runtime{opt: opt, lay: layout{opt.DataDir}, sink: sink, ports: newPorts(opt.Ports, opt.PortLockDir, opt.Log), log: opt.Log, procs: map[string]*proc{}}
	if err := rt.lay.create(); err != nil {
		return nil, err
	}
	states, errs := rt.lay.load()
	for _, err := range errs {
		rt.log.Warn("session state", "error", err)
	}
	for _, st := range states {
		if st.Pid == 0 {
			// The agent died while starting it: find the process by its tag.
			pid, start, ok := findTagged(st.SpawnTag)
			if !ok {
				rt.log.Info("an interrupted start spawned nothing", "session", st.Session)
				rt.lay.forget(st.Session)
				continue
			}
			st.Pid, st.StartTime = pid, start
			if err := rt.lay.save(st); err != nil {
				return nil, err
			}
		}
		if !alive(st.Pid, st.StartTime) {
			rt.log.Info("session process gone while the agent was away", "session", st.Session, "pid", st.Pid)
			rt.lay.forget(st.Session)
			continue
		}
		p := &proc{st: *st}
		if st.Hibernated {
			// Level-triggered: a SIGSTOP lost in a crash is sent again.
			signalGroup(st.Pid, syscall.SIGSTOP)
		}
		if c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(st.Port))), 200*time.Millisecond); err == nil {
			_ = c.Close()
			p.ready.Store(true)
		}
		rt.ports.adopt(st.Port)
		rt.procs[st.Session] = p
		rt.log.Info("re-adopted running session", "session", st.Session, "pid", st.Pid, "port", st.Port, "hibernated", st.Hibernated)
	}
	for _, p := range rt.procs {
		go rt.monitor(p, nil)
	}
	return rt, nil
}

// Inventory is every session the runtime runs now, for Hello.
func (rt *Runtime) Inventory() []*pb.SessionStatus {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := make([]*pb.SessionStatus, 0, len(rt.procs))
	for _, p := range rt.procs {
		phase, url := rt.phase(p)
		out = append(out, status.New(p.st.Session, phase, url, 0, "", p.st.workload()))
	}
	return out
}

// InUse is what runs now, for heartbeats.
func (rt *Runtime) InUse() *pb.Capacity {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return &pb.Capacity{MaxSessions: uint32(len(rt.procs))}
}

func (rt *Runtime) phase(p *proc) (pb.SessionPhase, string) {
	switch {
	case p.st.Hibernated:
		return phaseHibernated, ""
	case p.ready.Load():
		return phaseRunning, p.st.url()
	default:
		return phaseProvisioning, ""
	}
}

func (rt *Runtime) report(p *proc, message string) {
	phase, url := rt.phase(p)
	rt.sink.Report(p.st.Session, phase, url, 0, message, p.st.workload())
}

// Start runs the session, or makes sure it runs (a start of a running
// session succeeds; of a hibernated one wakes it).
func (rt *Runtime) Start(session string, s *pb.StartSession) error {
	if err := CheckSession(session); err != nil {
		return err
	}
	if err := CheckUser(s.GetUser()); err != nil {
		return err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if p := rt.procs[session]; p != nil {
		if alive(p.st.Pid, p.st.StartTime) {
			if p.st.Hibernated {
				signalGroup(p.st.Pid, syscall.SIGCONT)
				p.st.Hibernated = false
				if err := rt.lay.save(&p.st); err != nil {
					return platformErr("saving session state", err)
				}
			}
			rt.report(p, "already running")
			return nil
		}
		delete(rt.procs, session)
		rt.ports.release(p.st.Port)
	}
	if m := rt.opt.MaxSessions; m > 0 && len(rt.procs) >= int(m) {
		return &Error{Reason: reasonCapacity, Retryable: true,
			Message: fmt.Sprintf("this agent runs %d sessions, its maximum (MAX_SESSIONS)", len(rt.procs))}
	}
	p, err := rt.spawn(session, s)
	if err != nil {
		return err
	}
	rt.procs[session] = p.proc
	rt.report(p.proc, "process started; waiting for its port")
	go rt.monitor(p.proc, p.cmd)
	return nil
}

type spawnedProc struct {
	*proc
	cmd *exec.Cmd
}

func (rt *Runtime) spawn(session string, s *pb.StartSession) (*spawnedProc, error) {
	w := s.GetWorkload()
	argv := w.GetCommand()
	if len(argv) == 0 {
		return nil, &Error{Reason: reasonInvalid, Message: fmt.Sprintf("template %q has no command; the process runtime runs commands, not images", s.GetTemplate())}
	}
	program, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, &Error{Reason: reasonImage, Message: fmt.Sprintf("command %q cannot be executed: not found or not executable", argv[0])}
	}
	port, lock, err := rt.ports.allocate()
	if err != nil {
		return nil, &Error{Reason: reasonPlatform, Message: err.Error(), Retryable: true}
	}
	// The child inherits the port's lock as its stdin and holds it while it
	// lives; this copy closes when spawn returns.
	if lock != nil {
		defer lock.Close()
	}
	ok := false
	defer func() {
		if !ok {
			rt.ports.release(port)
			rt.lay.forget(session)
		}
	}()
	home := rt.lay.home(session, s.GetUser(), w.GetPersistentHome())
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, platformErr("creating the home directory", err)
	}
	vars := map[string]string{"PORT": strconv.Itoa(int(port)), "SESSION_ID": session, "USER": s.GetUser(), "HOME": home}
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = Substitute(a, vars)
	}
	tag := make([]byte, 16)
	_, _ = rand.Read(tag)
	st := State{Session: session, User: s.GetUser(), SpawnTag: hex.EncodeToString(tag), Port: port, Home: home, PersistentHome: w.GetPersistentHome()}
	// Record the intent first: an agent killed right after the spawn finds
	// the process by its tag.
	if err := rt.lay.save(&st); err != nil {
		return nil, platformErr("saving session state", err)
	}
	logf, err := os.OpenFile(rt.lay.logPath(session), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, platformErr("creating the session log", err)
	}
	defer logf.Close()
	env := os.Environ()
	for k, v := range w.GetEnv() {
		env = append(env, k+"="+v)
	}
	for _, k := range []string{"PORT", "SESSION_ID", "USER", "HOME"} {
		env = append(env, k+"="+vars[k])
	}
	env = append(env, spawnEnv+"="+st.SpawnTag)
	cmd := &exec.Cmd{
		Path: program, Args: args, Env: env, Dir: home, Stdout: logf, Stderr: logf, Stdin: stdinOf(lock),
		// A session of its own: its own process group (signalled as one) that
		// the agent's death does not hang up, also while stopped.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		return nil, &Error{Reason: reasonImage, Message: fmt.Sprintf("command %q cannot be executed: %v", argv[0], err)}
	}
	st.Pid = cmd.Process.Pid
	_, st.StartTime, _ = procStat(st.Pid)
	if err := rt.lay.save(&st); err != nil {
		signalGroup(st.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil, platformErr("saving session state", err)
	}
	ok = true
	rt.log.Info("session process started", "session", session, "pid", st.Pid, "port", port, "command", strings.Join(args, " "))
	return &spawnedProc{proc: &proc{st: st}, cmd: cmd}, nil
}

// monitor reports RUNNING once the session's port accepts connections and
// FAILED if the process exits while nobody stops it. cmd is the child to
// reap, nil for an adopted process (polled instead).
func (rt *Runtime) monitor(p *proc, cmd *exec.Cmd) {
	exited := make(chan string, 1)
	go func() {
		if cmd != nil {
			err := cmd.Wait()
			if err == nil {
				exited <- "the process exited (status 0)"
			} else {
				exited <- "the process exited (" + err.Error() + ")"
			}
			return
		}
		for alive(p.st.Pid, p.st.StartTime) {
			time.Sleep(250 * time.Millisecond)
		}
		exited <- "the process exited"
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p.st.Port)))
	deadline := time.Now().Add(rt.opt.ReadyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !p.ready.Load() {
		select {
		case why := <-exited:
			rt.exited(p, why)
			return
		case <-tick.C:
		}
		if c, err := net.DialTimeout("tcp4", addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			rt.mu.Lock()
			p.ready.Store(true)
			if !p.stopping.Load() && !p.st.Hibernated && rt.procs[p.st.Session] == p {
				rt.report(p, "")
			}
			rt.mu.Unlock()
		} else if time.Now().After(deadline) {
			if !p.stopping.Load() {
				rt.sink.Report(p.st.Session, phaseFailed, "", reasonCrash,
					fmt.Sprintf("the process did not open port %d within %v", p.st.Port, rt.opt.ReadyTimeout), p.st.workload())
			}
			break
		}
	}
	rt.exited(p, <-exited)
}

// exited: the process is gone; unless we stopped it, that is a crash.
func (rt *Runtime) exited(p *proc, why string) {
	if p.stopping.Load() {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.procs[p.st.Session] != p {
		return
	}
	delete(rt.procs, p.st.Session)
	rt.ports.release(p.st.Port)
	rt.lay.forget(p.st.Session)
	rt.log.Warn("session process died", "session", p.st.Session, "pid", p.st.Pid, "why", why)
	rt.sink.Report(p.st.Session, phaseFailed, "", reasonCrash, why, p.st.workload())
}

// Stop ends the session's process group (SIGTERM, SIGKILL after the grace)
// and removes its home unless persistent (or deleteHome). Stopping an unknown
// session succeeds.
func (rt *Runtime) Stop(session string, deleteHome bool) error {
	if err := CheckSession(session); err != nil {
		return err
	}
	rt.mu.Lock()
	p := rt.procs[session]
	delete(rt.procs, session)
	if p != nil {
		p.stopping.Store(true)
	}
	rt.mu.Unlock()
	if p == nil {
		rt.lay.forget(session)
		rt.sink.Report(session, phaseStopped, "", 0, "not running", "")
		return nil
	}
	st := &p.st
	signalGroup(st.Pid, syscall.SIGTERM)
	signalGroup(st.Pid, syscall.SIGCONT) // a stopped process must run to see SIGTERM
	if !goneWithin(st.Pid, st.StartTime, rt.opt.StopGrace) {
		rt.log.Warn("process ignored SIGTERM; sending SIGKILL", "session", session, "pid", st.Pid)
		signalGroup(st.Pid, syscall.SIGKILL)
		goneWithin(st.Pid, st.StartTime, 5*time.Second)
	}
	signalGroup(st.Pid, syscall.SIGKILL) // what is left of the group
	rt.ports.release(st.Port)
	rt.lay.forget(session)
	if !st.PersistentHome || deleteHome {
		if err := rt.lay.removeHome(st.Home); err != nil {
			rt.log.Warn("home directory not removed", "session", session, "error", err)
		}
	}
	rt.log.Info("session process stopped", "session", session, "pid", st.Pid)
	rt.sink.Report(session, phaseStopped, "", 0, "", st.workload())
	return nil
}

// Hibernate stops (SIGSTOP) the session's process group.
func (rt *Runtime) Hibernate(session string) error {
	return rt.signal(session, syscall.SIGSTOP, true, "process stopped (SIGSTOP)")
}

// Wake continues (SIGCONT) the session's process group.
func (rt *Runtime) Wake(session string) error {
	return rt.signal(session, syscall.SIGCONT, false, "")
}

func (rt *Runtime) signal(session string, sig syscall.Signal, hibernated bool, message string) error {
	if err := CheckSession(session); err != nil {
		return err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.procs[session]
	if p == nil {
		return &Error{Reason: reasonNotFound, Message: fmt.Sprintf("session %s does not run on this agent", session)}
	}
	signalGroup(p.st.Pid, sig)
	if p.st.Hibernated != hibernated {
		p.st.Hibernated = hibernated
		if err := rt.lay.save(&p.st); err != nil {
			return platformErr("saving session state", err)
		}
	}
	rt.report(p, message)
	return nil
}

// FailureReason and IsRetryable let the agent fail the command with them.
func (e *Error) FailureReason() pb.FailureReason { return e.Reason }
func (e *Error) IsRetryable() bool               { return e.Retryable }
