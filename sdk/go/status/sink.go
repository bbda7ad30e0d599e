// Package status keeps the latest observed status of every session, for the
// stream to send. A report replaces the session's unsent older status
// (statuses are coalesced, never queued), so the sink is bounded by the number
// of sessions, never blocks the runtime, and never loses the latest state,
// also while the agent is disconnected. A session's entry is forgotten once
// a STOPPED status was taken for sending.
package status

import (
	"sync"
	"time"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Sink is safe for concurrent use.
type Sink struct {
	mu      sync.Mutex
	latest  map[string]*pb.SessionStatus
	dirty   []string // sessions whose latest status is unsent, oldest first
	changed chan struct{}
}

func NewSink() *Sink {
	return &Sink{latest: map[string]*pb.SessionStatus{}, changed: make(chan struct{}, 1)}
}

// New builds a status stamped now.
func New(session string, phase pb.SessionPhase, url string, reason pb.FailureReason, message, workload string) *pb.SessionStatus {
	return &pb.SessionStatus{
		SessionId: session, Phase: phase, Url: url, Reason: reason,
		Message: message, Workload: workload, ObservedAt: timestamppb.New(time.Now()),
	}
}

// Report records a session's current state.
func (s *Sink) Report(session string, phase pb.SessionPhase, url string, reason pb.FailureReason, message, workload string) {
	s.Put(New(session, phase, url, reason, message, workload))
}

// Put records a built status.
func (s *Sink) Put(st *pb.SessionStatus) {
	s.mu.Lock()
	if !s.isDirty(st.SessionId) {
		s.dirty = append(s.dirty, st.SessionId)
	}
	s.latest[st.SessionId] = st
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Changed receives after a report (possibly already taken since).
func (s *Sink) Changed() <-chan struct{} { return s.changed }

// TakeDirty takes every unsent latest status, oldest change first.
func (s *Sink) TakeDirty() []*pb.SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := s.dirty
	s.dirty = nil
	out := make([]*pb.SessionStatus, 0, len(ids))
	for _, id := range ids {
		if st := s.takeLocked(id); st != nil {
			out = append(out, st)
		}
	}
	return out
}

// TakeLatest takes the session's latest status, sent or not; nil if the
// agent has not observed the session since its last STOPPED.
func (s *Sink) TakeLatest(session string) *pb.SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, id := range s.dirty {
		if id == session {
			s.dirty = append(s.dirty[:i:i], s.dirty[i+1:]...)
			break
		}
	}
	return s.takeLocked(session)
}

// ClearDirty marks everything sent: Hello's inventory replaces unsent changes.
func (s *Sink) ClearDirty() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.dirty {
		if st := s.latest[id]; st != nil && st.Phase == pb.SessionPhase_SESSION_PHASE_STOPPED {
			delete(s.latest, id)
		}
	}
	s.dirty = nil
}

func (s *Sink) takeLocked(session string) *pb.SessionStatus {
	st := s.latest[session]
	if st == nil {
		return nil
	}
	if st.Phase == pb.SessionPhase_SESSION_PHASE_STOPPED {
		delete(s.latest, session)
	}
	return proto.CloneOf(st)
}

func (s *Sink) isDirty(session string) bool {
	for _, id := range s.dirty {
		if id == session {
			return true
		}
	}
	return false
}
