package e2e

import (
	"strconv"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Two real daemons publish to one JetStream (embedded in the test), with
// their own --host-name; ctl fleet watch prints both, or one with --host.
func TestFleetWatchTwoDaemons(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) }) // after the daemons, which flush to it
	url := s.ClientURL()
	ids := map[string]string{}
	var d *daemon
	for _, host := range []string{"east", "west"} {
		d = startDaemon(t, "--nats", url, "--host-name", host)
		l := listenJSON(t, d, "--port", "0")
		ids[host] = l.GetId()
		testkit.Dial(t, l.GetStatus().GetBoundAddress()).Close()
	}

	east := d.ctlStream("fleet", "watch", "--nats", url, "--since-seq", "1", "--host", "east")
	for i, kind := range []string{"listener_started", "connection_opened", "connection_closed"} {
		want := "host=east seq=" + strconv.Itoa(i+1) + " " + ids["east"] + " " + kind
		if l := east.next(); !strings.HasPrefix(l, want) {
			t.Fatalf("fleet watch --host east line %d: %q, want %q…", i+1, l, want)
		}
	}

	all := d.ctlStream("fleet", "watch", "--nats", url, "--since-seq", "1", "-o", "json")
	byHost := map[string]int{}
	for range 6 {
		l := all.next()
		for _, host := range []string{"east", "west"} {
			if strings.HasPrefix(l, `{"host":"`+host+`","sequence":`) && strings.Contains(l, ids[host]) {
				byHost[host]++
			}
		}
	}
	if byHost["east"] != 3 || byHost["west"] != 3 {
		t.Fatalf("fleet watch -o json printed %v lines by host, want 3 each", byHost)
	}
}
