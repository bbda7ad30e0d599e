package agent

import (
	"strings"
	"testing"
	"unicode/utf8"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"google.golang.org/protobuf/proto"
)

func TestFitTruncatesAFailureMessageToTheLimit(t *testing.T) {
	for _, limit := range []int{64, 100, 1000, 5000} {
		f := &pb.AgentFrame{Frame: &pb.AgentFrame_Result{Result: &pb.CommandResult{
			CommandId: "0f2c9d2e-8a1b-4c3d-9e8f-123456789abc",
			Outcome: &pb.CommandResult_Failed{Failed: &pb.CommandFailed{
				Reason: pb.FailureReason_FAILURE_REASON_IMAGE, Message: strings.Repeat("é", 10_000), Retryable: true}},
		}}}
		if !fit(f, limit) {
			t.Fatalf("limit %d: does not fit (%d bytes)", limit, proto.Size(f))
		}
		if n := proto.Size(f); n > limit {
			t.Fatalf("limit %d: %d bytes", limit, n)
		}
		m := f.GetResult().GetFailed().GetMessage()
		if !utf8.ValidString(m) || f.GetResult().GetCommandId() == "" {
			t.Fatalf("limit %d: message %q, id %q", limit, m, f.GetResult().GetCommandId())
		}
		if limit >= 1000 && (len(m) < limit/2 || !strings.HasSuffix(m, ellipsis)) {
			t.Fatalf("limit %d: cut too much (%d bytes) or unmarked", limit, len(m))
		}
	}
}

func TestFitLeavesSmallFramesAlone(t *testing.T) {
	f := &pb.AgentFrame{Frame: &pb.AgentFrame_Status{Status: &pb.SessionStatus{SessionId: "s", Message: "fine"}}}
	if !fit(f, 1000) || f.GetStatus().GetMessage() != "fine" {
		t.Fatal(f)
	}
}

func TestFitTrimsInventoryMessages(t *testing.T) {
	h := &pb.Hello{AgentId: "a"}
	for range 10 {
		h.Inventory = append(h.Inventory, &pb.SessionStatus{SessionId: "s", Message: strings.Repeat("x", 500)})
	}
	f := &pb.AgentFrame{Frame: &pb.AgentFrame_Hello{Hello: h}}
	if !fit(f, 2000) || proto.Size(f) > 2000 || len(h.Inventory) != 10 {
		t.Fatalf("%d bytes, %d sessions", proto.Size(f), len(h.Inventory))
	}
}
