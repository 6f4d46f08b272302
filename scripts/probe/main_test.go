package main

import (
	"bytes"
	"context"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The probe's smoke run against the real binaries (built from this
// module) finds no mismatch, so the probe keeps working as the daemon
// changes.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and drives the real binaries")
	}
	var out bytes.Buffer
	cfg := quickConfig(config{stormTime: guard, timeout: 5 * guard, only: "1,2,3,4,5,6,7,8", out: &out})
	ok, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !ok {
		t.Fatalf("mismatches:\n%s", out.String())
	}
	for _, phase := range []string{"1 storm", "2 listeners", "3 events", "4 kills", "5 corrupt state", "6 bad calls", "7 descriptors", "8 leaks"} {
		if !bytes.Contains(out.Bytes(), []byte("\n"+phase)) {
			t.Errorf("no line for phase %q:\n%s", phase, out.String())
		}
	}
}
