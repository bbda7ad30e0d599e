package process

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"github.com/streamspace-dev/streamspace/sdk/go/status"
)

// The test binary doubles as the session process: with STREAMSPACE_TEST_SERVE
// set it serves HTTP on 127.0.0.1:$PORT and checks its substituted argument.
func TestMain(m *testing.M) {
	if os.Getenv("STREAMSPACE_TEST_SERVE") != "" {
		if len(os.Args) < 2 || os.Args[1] != "--port="+os.Getenv("PORT") {
			os.Exit(3)
		}
		l, err := net.Listen("tcp4", "127.0.0.1:"+os.Getenv("PORT"))
		if err != nil {
			os.Exit(4)
		}
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(os.Getenv("SESSION_ID"))) }))
		return
	}
	os.Exit(m.Run())
}

func open(t *testing.T, dir string) (*Runtime, *status.Sink) {
	t.Helper()
	sink := status.NewSink()
	rt, err := Open(Options{DataDir: dir, Ports: config.PortRange{Low: 32000, High: 32999}, MaxSessions: 1, StopGrace: 2 * time.Second, ReadyTimeout: 10 * time.Second}, sink)
	if err != nil {
		t.Fatal(err)
	}
	return rt, sink
}

// waitPhase waits until the session's latest status has the phase.
func waitPhase(t *testing.T, sink *status.Sink, session string, phase pb.SessionPhase) *pb.SessionStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range sink.TakeDirty() {
			if s.GetSessionId() == session && s.GetPhase() == phase {
				return s
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("session %s never reported %v", session, phase)
	return nil
}

func procState(t *testing.T, pid int) byte {
	st, _, ok := procStat(pid)
	if !ok {
		t.Fatalf("process %d is gone", pid)
	}
	return st
}

func TestLifecycleWithRestartAndCrash(t *testing.T) {
	dir := t.TempDir()
	rt, sink := open(t, dir)
	self, _ := os.Executable()
	start := &pb.StartSession{User: "alice", Workload: &pb.WorkloadSpec{
		Command: []string{self, "--port=${PORT}"}, Env: map[string]string{"STREAMSPACE_TEST_SERVE": "1"}}}
	if err := rt.Start("s1", start); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, sink, "s1", pb.SessionPhase_SESSION_PHASE_RUNNING)
	resp, err := http.Get(st.GetUrl())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pid := rt.procs["s1"].st.Pid
	if g, _ := syscall.Getpgid(pid); g != pid {
		t.Fatalf("the session process leads no group of its own (pgid %d, pid %d)", g, pid)
	}
	// Idempotent start; capacity refuses a second session.
	if err := rt.Start("s1", start); err != nil {
		t.Fatalf("start of a running session: %v", err)
	}
	if err := rt.Start("s2", start); err == nil || err.(*Error).Reason != pb.FailureReason_FAILURE_REASON_CAPACITY || !err.(*Error).Retryable {
		t.Fatalf("start beyond MAX_SESSIONS: %v", err)
	}
	if err := rt.Hibernate("s1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if s := procState(t, pid); s != 'T' {
		t.Fatalf("hibernated process state %c, want T", s)
	}

	// A restarted agent re-adopts the live process, still hibernated.
	rt2, sink2 := open(t, dir)
	inv := rt2.Inventory()
	if len(inv) != 1 || inv[0].GetPhase() != pb.SessionPhase_SESSION_PHASE_HIBERNATED || !strings.Contains(inv[0].GetWorkload(), "pid") {
		t.Fatalf("inventory after restart: %v", inv)
	}
	if err := rt2.Wake("s1"); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, sink2, "s1", pb.SessionPhase_SESSION_PHASE_RUNNING)
	if s := procState(t, pid); s == 'T' {
		t.Fatal("woken process is still stopped")
	}

	// A process that dies on its own makes the session FAILED, forgotten.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	f := waitPhase(t, sink2, "s1", pb.SessionPhase_SESSION_PHASE_FAILED)
	if f.GetReason() != pb.FailureReason_FAILURE_REASON_CRASH_LOOP {
		t.Fatalf("failure reason %v", f.GetReason())
	}
	if _, err := os.Stat(dir + "/sessions/s1.json"); !os.IsNotExist(err) {
		t.Fatalf("state of a dead session kept: %v", err)
	}
	// Stop of an unknown session succeeds with STOPPED.
	if err := rt2.Stop("s1", false); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, sink2, "s1", pb.SessionPhase_SESSION_PHASE_STOPPED)
	_ = rt // the first runtime's monitor of the killed process has nothing left to report
}

func TestStopEndsTheGroupAndRemovesTheScratchHome(t *testing.T) {
	dir := t.TempDir()
	rt, sink := open(t, dir)
	self, _ := os.Executable()
	if err := rt.Start("s3", &pb.StartSession{User: "bob", Workload: &pb.WorkloadSpec{
		Command: []string{self, "--port=${PORT}"}, Env: map[string]string{"STREAMSPACE_TEST_SERVE": "1"}}}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, sink, "s3", pb.SessionPhase_SESSION_PHASE_RUNNING)
	p := rt.procs["s3"].st
	_ = rt.Hibernate("s3") // a stopped process must still be stoppable
	if err := rt.Stop("s3", false); err != nil {
		t.Fatal(err)
	}
	if alive(p.Pid, p.StartTime) {
		t.Fatal("process still alive after stop")
	}
	if _, err := os.Stat(p.Home); !os.IsNotExist(err) {
		t.Fatalf("scratch home kept: %v", err)
	}
	waitPhase(t, sink, "s3", pb.SessionPhase_SESSION_PHASE_STOPPED)
}

// An agent killed between recording the intent and recording the pid: the
// next start finds the process by its spawn tag and adopts it; an intent
// without a process is forgotten.
func TestAnInterruptedStartIsAdoptedNotRepeated(t *testing.T) {
	dir := t.TempDir()
	l := layout{dir}
	if err := l.create(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*State{
		{Session: "spawned", User: "u", SpawnTag: "tag-spawned-" + t.Name(), Port: 32500, Home: l.home("spawned", "u", false)},
		{Session: "nothing", User: "u", SpawnTag: "tag-nothing-" + t.Name(), Port: 32501, Home: l.home("nothing", "u", false)},
	} {
		if err := l.save(s); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sleep", "60")
	cmd.Env = append(os.Environ(), spawnEnv+"=tag-spawned-"+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for range 100 { // until exec has replaced the environment
		if _, _, ok := findTagged("tag-spawned-" + t.Name()); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	rt, _ := open(t, dir)
	inv := rt.Inventory()
	if len(inv) != 1 || inv[0].GetSessionId() != "spawned" || inv[0].GetWorkload() != fmt.Sprintf("pid %d", cmd.Process.Pid) {
		t.Fatalf("inventory %v, want the spawned session with pid %d", inv, cmd.Process.Pid)
	}
	if _, err := os.Stat(l.statePath("nothing")); !os.IsNotExist(err) {
		t.Fatalf("an intent without a process is kept: %v", err)
	}
}
