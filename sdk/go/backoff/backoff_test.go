package backoff

import (
	"testing"
	"time"
)

func TestCeilingsDoubleToTheCapAndDelaysStayBelow(t *testing.T) {
	b := New(100*time.Millisecond, 2*time.Second)
	var got []time.Duration
	for range 8 {
		c := b.Ceiling()
		if d := b.Next(); d < 0 || d > c {
			t.Fatalf("delay %v outside [0, %v]", d, c)
		}
		got = append(got, c)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("ceilings %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if b.Ceiling() != 100*time.Millisecond {
		t.Fatalf("after Reset the ceiling is %v", b.Ceiling())
	}
}

func TestFullJitterReachesBothEnds(t *testing.T) {
	b := New(time.Second, time.Second)
	b.rand = func(n int64) int64 { return n - 1 }
	if d := b.Next(); d != time.Second {
		t.Fatalf("largest draw gives %v, want the ceiling", d)
	}
	b.rand = func(int64) int64 { return 0 }
	if d := b.Next(); d != 0 {
		t.Fatalf("smallest draw gives %v, want 0", d)
	}
}

func TestManyAttemptsDoNotOverflow(t *testing.T) {
	b := New(time.Millisecond, time.Hour)
	for range 10_000 {
		if d := b.Next(); d < 0 || d > time.Hour {
			t.Fatalf("delay %v", d)
		}
	}
}
