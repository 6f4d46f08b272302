package eventjson

import (
	"math/rand/v2"
	"testing"
	"time"
)

// appendDateTime writes what AppendFormat writes, over the Timestamp's
// whole range and its ends.
func TestAppendDateTime(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	secs := []int64{minTimestampSeconds, maxTimestampSeconds, 0, -1, 1, 951782400, 4107542399}
	for range 200000 {
		secs = append(secs, minTimestampSeconds+r.Int64N(maxTimestampSeconds-minTimestampSeconds+1))
	}
	for _, s := range secs {
		tm := time.Unix(s, 0).UTC()
		want := tm.AppendFormat([]byte("x"), "2006-01-02T15:04:05")
		if got := appendDateTime([]byte("x"), tm); string(got) != string(want) {
			t.Fatalf("%d: got %q, want %q", s, got, want)
		}
	}
}
