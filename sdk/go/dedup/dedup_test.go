package dedup

import (
	"testing"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
)

func result(id string) *pb.CommandResult {
	return &pb.CommandResult{CommandId: id, Outcome: &pb.CommandResult_Succeeded{Succeeded: &pb.CommandSucceeded{}}}
}

func TestDuplicatesGetAckOnlyThenTheSameResult(t *testing.T) {
	d := NewDedup(10)
	if s, _ := d.Deliver("a"); s != New {
		t.Fatalf("first delivery: %v", s)
	}
	if s, _ := d.Deliver("a"); s != InProgress {
		t.Fatalf("delivery while applying: %v", s)
	}
	r := result("a")
	d.Finish("a", r)
	s, got := d.Deliver("a")
	if s != Done || got != r {
		t.Fatalf("delivery after finish: %v %v", s, got)
	}
}

func TestMemoryIsBoundedOldestFirst(t *testing.T) {
	d := NewDedup(2)
	for _, id := range []string{"a", "b", "c"} {
		d.Deliver(id)
		d.Finish(id, result(id))
	}
	if d.Len() != 2 {
		t.Fatalf("remembers %d ids, want 2", d.Len())
	}
	if s, _ := d.Deliver("a"); s != New {
		t.Fatalf("the oldest id is forgotten, got %v", s)
	}
	if s, _ := d.Deliver("c"); s != Done {
		t.Fatalf("the newest id is remembered, got %v", s)
	}
}

func TestInProgressIsNeverEvicted(t *testing.T) {
	d := NewDedup(1)
	d.Deliver("slow")
	for _, id := range []string{"x", "y", "z"} {
		d.Deliver(id)
		d.Finish(id, result(id))
	}
	if s, _ := d.Deliver("slow"); s != InProgress {
		t.Fatalf("in-progress id forgotten: %v", s)
	}
}
