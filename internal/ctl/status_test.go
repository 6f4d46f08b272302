package ctl

import (
	"bytes"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestWriteStatus(t *testing.T) {
	max := uint64(32)
	var b bytes.Buffer
	if err := writeStatus(&b, &listenerdv1.DaemonStatus{BootId: "0123abcd", OpenFileLimit: 64, DescriptorsReserved: 32,
		DescriptorsHeld: 32, MaxConnections: &max, Connections: 30, HistoryEvents: 1000, HistoryBytes: 1 << 20, HistoryBytesLimit: 32 << 20,
		Build: &listenerdv1.BuildInfo{Version: "v1.2.0", Revision: "0123456789abcdef", Dirty: true, GoVersion: "go1.26.8"}}); err != nil {
		t.Fatal(err)
	}
	want := `version:          v1.2.0 (revision 0123456789ab, dirty) go1.26.8
boot id:          0123abcd
open-file limit:  64
fd reserve:       32 (for the API and the daemon)
descriptors held: 32 of 32 (listeners, connections, upstreams, pipes)
max connections:  32
connections:      30
history:          1000 events, 1.0 MiB of 32.0 MiB
`
	if b.String() != want {
		t.Errorf("status:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := writeStatus(&b, &listenerdv1.DaemonStatus{}); err != nil {
		t.Fatal(err)
	}
	if want := "open-file limit:  unknown (no descriptor budget)\n"; !bytes.Contains(b.Bytes(), []byte(want)) || !bytes.Contains(b.Bytes(), []byte("max connections:  unlimited\n")) ||
		!bytes.Contains(b.Bytes(), []byte("version:          unknown (the daemon does not say: older than ctl)\n")) {
		t.Errorf("status without a budget:\n%s", b.String())
	}
}
