package agent

import (
	"unicode/utf8"

	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"google.golang.org/protobuf/proto"
)

// fit makes f at most max bytes when encoded by truncating its free-text
// message strings (a failure's message, statuses' messages), which carry no
// protocol meaning. It reports whether f fits afterwards.
func fit(f *pb.AgentFrame, max int) bool {
	if max <= 0 || proto.Size(f) <= max {
		return true
	}
	var msgs []*string
	switch x := f.Frame.(type) {
	case *pb.AgentFrame_Result:
		if fl := x.Result.GetFailed(); fl != nil {
			msgs = append(msgs, &fl.Message)
		}
	case *pb.AgentFrame_Status:
		msgs = append(msgs, &x.Status.Message)
	case *pb.AgentFrame_Hello:
		for _, s := range x.Hello.Inventory {
			msgs = append(msgs, &s.Message)
		}
	}
	// Longest first, each cut by what is still too much (plus the few bytes
	// its shorter length prefix may not save), until the frame fits.
	for _, m := range longestFirst(msgs) {
		over := proto.Size(f) - max
		if over <= 0 {
			break
		}
		*m = truncate(*m, len(*m)-over-len(ellipsis)-4)
	}
	return proto.Size(f) <= max
}

const ellipsis = "..."

// truncate cuts s to at most n bytes (on a rune boundary) and marks the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + ellipsis
}

func longestFirst(ms []*string) []*string {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && len(*ms[j]) > len(*ms[j-1]); j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
	return ms
}
