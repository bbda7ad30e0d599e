package status

import (
	"testing"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
)

const (
	running = pb.SessionPhase_SESSION_PHASE_RUNNING
	stopped = pb.SessionPhase_SESSION_PHASE_STOPPED
	failed  = pb.SessionPhase_SESSION_PHASE_FAILED
)

func TestReportsCoalesceToTheLatest(t *testing.T) {
	s := NewSink()
	s.Report("a", running, "u", 0, "", "")
	s.Report("b", running, "u", 0, "", "")
	s.Report("a", failed, "", pb.FailureReason_FAILURE_REASON_CRASH_LOOP, "died", "")
	got := s.TakeDirty()
	if len(got) != 2 || got[0].SessionId != "a" || got[0].Phase != failed || got[1].SessionId != "b" {
		t.Fatalf("dirty: %v", got)
	}
	if len(s.TakeDirty()) != 0 {
		t.Fatal("taken twice")
	}
	if l := s.TakeLatest("a"); l == nil || l.Phase != failed {
		t.Fatalf("latest of a after it was sent: %v", l)
	}
}

func TestStoppedIsForgottenOnceTaken(t *testing.T) {
	s := NewSink()
	s.Report("a", stopped, "", 0, "", "")
	if l := s.TakeLatest("a"); l == nil || l.Phase != stopped {
		t.Fatalf("latest: %v", l)
	}
	if l := s.TakeLatest("a"); l != nil {
		t.Fatalf("a stopped session is forgotten once taken, got %v", l)
	}
	if len(s.TakeDirty()) != 0 {
		t.Fatal("TakeLatest cleans the session")
	}
}

func TestClearDirtyKeepsLatestForResults(t *testing.T) {
	s := NewSink()
	s.Report("a", running, "u", 0, "", "")
	s.ClearDirty()
	if len(s.TakeDirty()) != 0 {
		t.Fatal("cleared")
	}
	if s.TakeLatest("a") == nil {
		t.Fatal("the latest status still follows a result")
	}
}
