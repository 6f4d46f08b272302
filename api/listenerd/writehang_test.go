package listenerd_test

import (
	"context"
	"testing"
	"time"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A Write on a connection whose stream has ended returns an error, also
// while the peer's last bytes wait for a Read that does not come (an
// echo loop blocked in Write reads nothing more): it does not wait for
// the stream's closed report behind them.
func TestWriteReturnsOnceTheStreamEnded(t *testing.T) {
	c := dialClient(t)
	for _, ready := range []int{-1, 0} { // a stream per connection, and reused streams
		l := listen(t, c, listenerd.WithReadyStreams(ready))
		peer := testkit.Dial(t, l.Addr().String())
		a := accept(t, l)
		if _, err := peer.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		// The daemon has read them, so they are on the stream ahead of
		// what follows.
		testkit.Eventually(t, func() bool {
			r, err := c.ListConnections(context.Background(), &listenerdv1.ListConnectionsRequest{ListenerId: l.ID()})
			return err == nil && len(r.GetConnections()) == 1 && r.GetConnections()[0].GetBytesIn() == 6
		}, "the peer's bytes read by the daemon")
		// The stream ends: its connection kicked (a stream per
		// connection ends after closed), or its client connection gone
		// (a reused stream outlives its connection).
		if ready < 0 {
			if _, err := c.CloseConnection(context.Background(), &listenerdv1.CloseConnectionRequest{Id: a.ID(), Reset_: true}); err != nil {
				t.Fatal(err)
			}
		} else {
			c.Close()
		}
		wrote := make(chan error, 1)
		go func() {
			for {
				if _, err := a.Write([]byte("x")); err != nil {
					wrote <- err
					return
				}
			}
		}()
		select {
		case err := <-wrote:
			t.Logf("ready %d: the write failed with %v", ready, err)
		case <-time.After(testkit.Guard):
			a.Close() // lets it go, for the next test
			t.Fatalf("ready %d: Write still blocked %v after the stream ended", ready, testkit.Guard)
		}
	}
}
