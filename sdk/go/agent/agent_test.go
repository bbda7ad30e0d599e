package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/streamspace-dev/streamspace/sdk/go/config"
	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"github.com/streamspace-dev/streamspace/sdk/go/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeCP is a control plane that hands each attached stream to the test.
type fakeCP struct {
	pb.UnimplementedAgentServiceServer
	streams chan pb.AgentService_AttachServer
}

func (f *fakeCP) Attach(s pb.AgentService_AttachServer) error {
	done := make(chan struct{})
	f.streams <- &doneStream{s, done}
	select {
	case <-done:
		return nil
	case <-s.Context().Done():
		return s.Context().Err()
	}
}

// doneStream ends the server handler when the test closes done.
type doneStream struct {
	pb.AgentService_AttachServer
	done chan struct{}
}

// fakeRuntime records calls; starts of sessions named "slow-*" wait for release.
type fakeRuntime struct {
	sink    *status.Sink
	release chan struct{}
	now     atomic.Int64
	peak    atomic.Int64
	starts  atomic.Int64
}

func (r *fakeRuntime) Inventory() []*pb.SessionStatus {
	return []*pb.SessionStatus{status.New("old", pb.SessionPhase_SESSION_PHASE_RUNNING, "http://x/", 0, "", "pid 1")}
}
func (r *fakeRuntime) InUse() *pb.Capacity { return &pb.Capacity{MaxSessions: 1} }
func (r *fakeRuntime) Start(s string, _ *pb.StartSession) error {
	r.starts.Add(1)
	n := r.now.Add(1)
	defer r.now.Add(-1)
	for p := r.peak.Load(); n > p && !r.peak.CompareAndSwap(p, n); p = r.peak.Load() {
	}
	if strings.HasPrefix(s, "slow-") {
		<-r.release
	}
	if strings.HasPrefix(s, "bad-") {
		return errors.New(strings.Repeat("very long failure ", 100))
	}
	r.sink.Report(s, pb.SessionPhase_SESSION_PHASE_RUNNING, "http://127.0.0.1:1/", 0, "", "pid 2")
	return nil
}
func (r *fakeRuntime) Stop(string, bool) error { return nil }
func (r *fakeRuntime) Hibernate(string) error  { return nil }
func (r *fakeRuntime) Wake(string) error       { return nil }

func start(id, session string) *pb.ControlFrame {
	return &pb.ControlFrame{Frame: &pb.ControlFrame_Command{Command: &pb.Command{
		CommandId: id, SessionId: session, Action: &pb.Command_Start{Start: &pb.StartSession{User: "u"}}}}}
}

func setup(t *testing.T) (*fakeCP, *fakeRuntime, context.CancelFunc, chan struct{}) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	cp := &fakeCP{streams: make(chan pb.AgentService_AttachServer, 4)}
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, cp)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	sink := status.NewSink()
	rt := &fakeRuntime{sink: sink, release: make(chan struct{})}
	cfg := &config.Config{AgentID: "go-1", Platform: "process", MaxSessions: 7, MaxCPU: 2, MaxMemoryGB: 1,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
	a := New(cfg, rt, sink, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.dial = func() (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { a.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); close(rt.release); <-stopped })
	return cp, rt, cancel, stopped
}

// frames reads a stream's frames in the background, so a missing frame
// fails the test after a timeout instead of hanging it.
var frames sync.Map // AgentService_AttachServer -> chan *pb.AgentFrame

func recv(t *testing.T, s pb.AgentService_AttachServer) *pb.AgentFrame {
	return recvBy(t, s, time.Now().Add(5*time.Second))
}

func recvBy(t *testing.T, s pb.AgentService_AttachServer, deadline time.Time) *pb.AgentFrame {
	t.Helper()
	ch, loaded := frames.LoadOrStore(s, make(chan *pb.AgentFrame, 64))
	if !loaded {
		go func() {
			for {
				f, err := s.Recv()
				if err != nil {
					close(ch.(chan *pb.AgentFrame))
					return
				}
				ch.(chan *pb.AgentFrame) <- f
			}
		}()
	}
	select {
	case f, ok := <-ch.(chan *pb.AgentFrame):
		if !ok {
			t.Fatal("the stream ended")
		}
		return f
	case <-time.After(time.Until(deadline)):
		t.Fatal("no (expected) frame from the agent within 5s")
	}
	return nil
}

// next reads the agent's next frame that is not a heartbeat (heartbeats are checked apart).
func next(t *testing.T, s pb.AgentService_AttachServer, beats *[]uint64) *pb.AgentFrame {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f := recvBy(t, s, deadline)
		if hb := f.GetHeartbeat(); hb != nil {
			*beats = append(*beats, hb.GetSequence())
			continue
		}
		return f
	}
}

func describe(f *pb.AgentFrame) string {
	switch x := f.Frame.(type) {
	case *pb.AgentFrame_Ack:
		return "ack " + x.Ack.GetCommandId()
	case *pb.AgentFrame_Result:
		if x.Result.GetFailed() != nil {
			return "failed " + x.Result.GetCommandId()
		}
		return "result " + x.Result.GetCommandId()
	case *pb.AgentFrame_Status:
		return "status " + x.Status.GetSessionId() + " " + x.Status.GetPhase().String()
	}
	return "other"
}

func expect(t *testing.T, s pb.AgentService_AttachServer, beats *[]uint64, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := describe(next(t, s, beats)); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

func TestTheStreamProtocol(t *testing.T) {
	cp, rt, _, _ := setup(t)
	s := <-cp.streams
	h := recv(t, s).GetHello()
	if h == nil || h.GetAgentId() != "go-1" || h.GetPlatform() != "process" ||
		h.GetProtocolVersion() != pb.ProtocolVersion_PROTOCOL_VERSION_1 ||
		len(h.GetSupportedProtocolVersions()) != 1 || h.GetSupportedProtocolVersions()[0] != pb.ProtocolVersion_PROTOCOL_VERSION_1 ||
		h.GetCapacity().GetMaxSessions() != 7 || h.GetCapacity().GetCpuMillis() != 2000 || h.GetCapacity().GetMemoryBytes() != 1<<30 ||
		len(h.GetInventory()) != 1 || h.GetInventory()[0].GetSessionId() != "old" {
		t.Fatalf("hello: %v", h)
	}
	const maxBytes = 300
	if err := s.Send(&pb.ControlFrame{Frame: &pb.ControlFrame_Welcome{Welcome: &pb.Welcome{
		HeartbeatInterval: durationpb.New(30 * time.Millisecond), MaxInFlight: 2, MaxMessageBytes: maxBytes,
		ProtocolVersion: pb.ProtocolVersion_PROTOCOL_VERSION_1}}}); err != nil {
		t.Fatal(err)
	}
	var beats []uint64

	// A command: ack, the status it reported, its result, the latest status again.
	_ = s.Send(start("c1", "s1"))
	expect(t, s, &beats, "ack c1", "status s1 SESSION_PHASE_RUNNING", "result c1", "status s1 SESSION_PHASE_RUNNING")
	// A duplicate of a finished command: ack, the same result, the latest status.
	_ = s.Send(start("c1", "s1"))
	expect(t, s, &beats, "ack c1", "result c1", "status s1 SESSION_PHASE_RUNNING")

	// A failure's message is cut to fit max_message_bytes.
	_ = s.Send(start("c2", "bad-1"))
	expect(t, s, &beats, "ack c2")
	r := next(t, s, &beats)
	if describe(r) != "failed c2" || proto.Size(r) > maxBytes || r.GetResult().GetFailed().GetReason() != pb.FailureReason_FAILURE_REASON_INTERNAL {
		t.Fatalf("%v (%d bytes)", r, proto.Size(r))
	}

	// max_in_flight 2: five slow commands, at most two apply at once; a
	// duplicate of one in progress is acked only.
	for _, id := range []string{"1", "2", "3", "4", "5"} {
		_ = s.Send(start("slow"+id, "slow-"+id))
	}
	expect(t, s, &beats, "ack slow1", "ack slow2", "ack slow3", "ack slow4", "ack slow5")
	time.Sleep(100 * time.Millisecond)
	_ = s.Send(start("slow1", "slow-1"))
	expect(t, s, &beats, "ack slow1")
	if n := rt.now.Load(); n != 2 {
		t.Fatalf("%d commands applying, want max_in_flight = 2", n)
	}
	for range 5 {
		rt.release <- struct{}{}
	}
	results := 0
	for results < 5 {
		if strings.HasPrefix(describe(next(t, s, &beats)), "result slow") {
			results++
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := rt.starts.Load(); n != 7 {
		t.Fatalf("%d starts applied, want 7 (s1, bad-1, slow-1..5: duplicates are not applied again)", n)
	}
	if p := rt.peak.Load(); p > 2 {
		t.Fatalf("peak %d commands at once, want <= 2", p)
	}
	for len(beats) < 3 {
		next(t, s, &beats)
	}
	for i, b := range beats {
		if b != uint64(i+1) {
			t.Fatalf("heartbeat sequences %v, want 1, 2, 3...", beats)
		}
	}
}

func TestDrainClosesAndReconnects(t *testing.T) {
	cp, _, _, _ := setup(t)
	s := <-cp.streams
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&pb.ControlFrame{Frame: &pb.ControlFrame_Welcome{Welcome: &pb.Welcome{ProtocolVersion: pb.ProtocolVersion_PROTOCOL_VERSION_1}}})
	_ = s.Send(&pb.ControlFrame{Frame: &pb.ControlFrame_Drain{Drain: &pb.Drain{Reason: "test", ReconnectAfter: durationpb.New(20 * time.Millisecond)}}})
	// The agent closes its side...
	for {
		if _, err := s.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	close(s.(*doneStream).done)
	// ...and attaches again with a Hello.
	select {
	case s2 := <-cp.streams:
		if f, err := s2.Recv(); err != nil || f.GetHello() == nil {
			t.Fatalf("after drain: %v %v", f, err)
		}
		close(s2.(*doneStream).done)
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect after drain")
	}
}

func TestPermanentErrorsAreNotRetriedAtOnce(t *testing.T) {
	for _, c := range []codes.Code{codes.PermissionDenied, codes.FailedPrecondition, codes.InvalidArgument} {
		if !permanent(grpcstatus.Error(c, "x")) {
			t.Errorf("%v is not permanent", c)
		}
	}
	for _, c := range []codes.Code{codes.Unavailable, codes.AlreadyExists, codes.Internal} {
		if permanent(grpcstatus.Error(c, "x")) {
			t.Errorf("%v is permanent", c)
		}
	}
}
