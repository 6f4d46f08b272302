package server

import (
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// GetDaemonStatus shows the open-file limit, the reserve, the connection
// cap they leave, and the history against its budget.
func TestDaemonStatus(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true, FDReserve: 100})
	if _, err := d.unix.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := d.unix.GetDaemonStatus(testContext(t), &listenerdv1.GetDaemonStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st, limit := resp.GetStatus(), uint64(fdLimit())
	if limit == 0 {
		t.Skip("no open-file limit here")
	}
	if st.GetOpenFileLimit() != limit || st.GetDescriptorsReserved() != 100 || st.GetMaxConnections() != limit-100 ||
		st.GetDescriptorsHeld() != 2 || st.GetConnections() != 0 {
		t.Fatalf("status %v; want limit %d, 100 reserved, %d connections at most, a listener's descriptors held", st, limit, limit-100)
	}
	if st.GetBootId() == "" || st.GetHistoryEvents() == 0 || st.GetHistoryBytes() == 0 || st.GetHistoryBytesLimit() != DefaultHistoryBytes {
		t.Fatalf("status %v; want the boot id and the history against its budget", st)
	}
}
