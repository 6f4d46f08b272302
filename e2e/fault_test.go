package e2e

import (
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readToEnd reads c to its end, returning the bytes and the error that
// ended it (nil for a FIN).
func readToEnd(t *testing.T, c net.Conn) ([]byte, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(guard))
	b, err := io.ReadAll(c)
	return b, err
}

// resetAtOpen dials addr and reads to the end: an RST sent as the
// connection opens may beat connect(2)'s return, so either error counts.
func resetAtOpen(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	_, err = io.ReadAll(c)
	return err
}

// Faults through the real binaries: ctl listen --fault, ctl fault add, ls
// and rm for every kind; a reset on a live connection is ECONNRESET, a
// timeout holds the bytes and its removal passes them, limit_data passes
// exactly N, refuse answers RST; and every fault shows in ctl watch.
func TestFaultsE2E(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "f", "--fault", "latency,name=lat,latency=1ms,jitter=1ms")
	if fs := l.GetSpec().GetFaults(); len(fs) != 1 || fs[0].GetName() != "lat" {
		t.Fatalf("listen --fault: spec faults %v", fs)
	}
	addr := l.GetStatus().GetBoundAddress()
	w := d.ctlStream("watch", "--since", "0", "f")

	// Every kind can be added, listed and removed by name.
	kinds := [][]string{
		{"bandwidth", "--rate", "1000000", "--burst", "4096"},
		{"slicer", "--slice-size", "64", "--slice-variation", "16", "--delay", "1ms"},
		{"slow_close", "--delay", "1ms"},
		{"blackhole", "--probability", "0"},
		{"delay_accept", "--delay", "1ms", "--source", "10.0.0.0/8"},
	}
	for _, k := range kinds {
		d.mustCtl(append([]string{"fault", "add", "f"}, k...)...)
	}
	ls := d.mustCtl("fault", "ls", "f")
	for _, name := range []string{"lat", "bandwidth", "slicer", "slow-close", "blackhole", "delay-accept"} {
		if !strings.Contains(ls, name) {
			t.Fatalf("fault ls lacks %s:\n%s", name, ls)
		}
	}
	// Echo through all of them, the half-close included.
	c := dial(t, addr)
	if _, err := c.Write([]byte("through the faults")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	if got, err := readToEnd(t, c); err != nil || string(got) != "through the faults" {
		t.Fatalf("echo through the faults: %q, %v", got, err)
	}
	d.mustCtl("fault", "rm", "f", "bandwidth", "slicer", "slow-close", "blackhole", "delay-accept")

	// timeout: nothing passes, the connection stays open; removed, it
	// passes what it held.
	c = dial(t, addr)
	echoAll(t, c, "before")
	d.mustCtl("fault", "add", "f", "timeout", "--name", "stall")
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		return strings.Contains(d.mustCtl("conns", "f", "-o", "json"), `"bytesIn":"10"`)
	}, "the held bytes read by the daemon")
	if out := d.mustCtl("conns", "f", "-o", "json"); !strings.Contains(out, `"bytesOut":"6"`) {
		t.Fatalf("under timeout the daemon wrote more than before: %s", out)
	}
	d.mustCtl("fault", "rm", "f", "stall")
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after the timeout's removal: %q, %v", got, err)
	}

	// reset on that live connection: ECONNRESET.
	d.mustCtl("fault", "add", "f", "reset", "--name", "rst")
	if _, err := readToEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after reset: %v, want ECONNRESET", err)
	}
	d.mustCtl("fault", "rm", "f", "rst")

	// limit_data: exactly N bytes, then the end.
	d.mustCtl("fault", "add", "f", "limit_data", "--name", "cap", "--bytes", "100", "--direction", "out")
	c = dial(t, addr)
	go func() { _, _ = c.Write(bytes.Repeat([]byte("y"), 300)) }()
	if got, err := readToEnd(t, c); err != nil || len(got) != 100 {
		t.Fatalf("limit_data 100: %d bytes, %v", len(got), err)
	}
	c.Close()
	d.mustCtl("fault", "rm", "f", "cap")

	// refuse: the port answers RST.
	d.mustCtl("fault", "add", "f", "refuse", "--name", "no")
	if err := resetAtOpen(addr); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("refused: %v, want ECONNRESET", err)
	}
	d.mustCtl("fault", "rm", "f", "no")
	d.mustCtl("fault", "add", "f", "blackhole", "--name", "gone", "--ttl", "1ms") // expires by itself

	want := []string{
		"fault_added fault=lat", "fault_added fault=bandwidth", "fault_added fault=slicer", "fault_added fault=slow-close",
		"fault_added fault=blackhole", "fault_added fault=delay-accept", "fault_added fault=stall", "fault_added fault=rst",
		"fault_added fault=cap", "fault_added fault=no", "fault_applied", "fault_removed fault=stall",
		"reason=fault in=10 out=10", "out=100 duration=", "connection_rejected", "reason=fault fault=no", "fault_removed fault=gone kind=blackhole expired",
	}
	var seen []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("still wanted %q; watch printed:\n%s", want, strings.Join(seen, "\n"))
		}
	})
	for len(want) > 0 {
		line := w.next()
		seen = append(seen, line)
		want = slices.DeleteFunc(want, func(s string) bool {
			// A close or reject by a fault names it on the same line.
			return strings.Contains(line, s) && (!strings.Contains(s, "reason=fault") && !strings.Contains(s, "out=100") ||
				strings.Contains(line, " fault="))
		})
	}
}

// echoAll writes s and reads it back.
func echoAll(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(s))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != s {
		t.Fatalf("echo %q: %q, %v", s, got, err)
	}
}
