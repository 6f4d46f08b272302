package service

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// errorInfoOf is the ErrorInfo of a status error, nil without one.
func errorInfoOf(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// resumeAfter reads the last_sequence an overflowed stream was sent.
func resumeAfter(t *testing.T, err error) uint64 {
	t.Helper()
	v, ok := errorInfoOf(err).GetMetadata()["last_sequence"]
	if !ok {
		t.Fatalf("no last_sequence in %v", err)
	}
	n, perr := strconv.ParseUint(v, 10, 64)
	if perr != nil {
		t.Fatalf("last_sequence %q", v)
	}
	return n
}

// watchAll follows the daemon's events from after, resuming by itself on
// RESOURCE_EXHAUSTED, until it has seen through `until`. stall, when not
// nil, makes it stop reading until the channel closes.
func watchAll(t *testing.T, c listenerdv1.ListenerServiceClient, after, until uint64, stall <-chan struct{}, stalled chan<- struct{}) (seqs []uint64, cuts int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	last := after
	for last < until {
		a := last
		stream, err := c.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{AfterSequence: &a})
		if err != nil {
			return nil, cuts, err
		}
		for {
			resp, err := stream.Recv()
			if status.Code(err) == codes.ResourceExhausted {
				cuts++
				if got := resumeAfter(t, err); got != last {
					return nil, cuts, errors.New("resume point " + strconv.FormatUint(got, 10) + " != last received " + strconv.FormatUint(last, 10))
				}
				break
			}
			if err != nil {
				return nil, cuts, err
			}
			for _, e := range resp.GetEvents() {
				seqs = append(seqs, e.GetSequence())
				last = e.GetSequence()
			}
			if stall != nil { // after the stream's first response
				close(stalled)
				<-stall // stop reading for a while
				stall = nil
			}
			if last >= until {
				break
			}
		}
	}
	return seqs, cuts, nil
}

// At least 50,000 connection events with 10 watchers, one of which stops
// reading for a while: every watcher ends with the same sequence set, with
// no gap and no duplicate, and the stalled one was cut and resumed.
func TestTenWatchersOneStalled(t *testing.T) {
	const want, watchers = 50_000, 10
	c := newClient(t, events.Options{WatcherLag: 2000})
	l := createOK(t, c, "", &listenerdv1.ListenerSpec{})
	list, err := c.ListListeners(ctx(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	start := list.GetSequence()
	until := start + want

	stall, stalled := make(chan struct{}), make(chan struct{})
	results := make([][]uint64, watchers)
	cuts := make([]int, watchers)
	var wg sync.WaitGroup
	for i := range watchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s <-chan struct{}
			var sd chan<- struct{}
			if i == 0 {
				s, sd = stall, stalled
			}
			var err error
			results[i], cuts[i], err = watchAll(t, c, start, until, s, sd)
			if err != nil {
				t.Errorf("watcher %d: %v", i, err)
			}
		}()
	}

	// Drive connections until the daemon has produced enough events: each
	// connection is an opened and a closed event. The clients reset rather
	// than close, so no TIME_WAIT piles up.
	addr := l.GetStatus().GetBoundAddress()
	<-stalled
	var load sync.WaitGroup
	for range 4 {
		load.Add(1)
		go func() {
			defer load.Done()
			for range want / 2 / 4 {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				_ = conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		}()
	}
	load.Wait()
	// Every connection's closed event must land before the watchers can
	// reach `until`; a few more events push the head past it.
	for {
		list, err := c.ListListeners(ctx(t), &listenerdv1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if list.GetSequence() >= until {
			break
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	close(stall)
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, seqs := range results {
		for j := range want {
			if j >= len(seqs) || seqs[j] != start+uint64(j)+1 {
				t.Fatalf("watcher %d: seq[%d] = %v, want %d (no gap, no duplicate)", i, j, at(seqs, j), start+uint64(j)+1)
			}
		}
	}
	if cuts[0] == 0 {
		t.Fatalf("the stalled watcher was never cut loose (cuts %v)", cuts)
	}
	t.Logf("cuts per watcher: %v", cuts)
}

func at(s []uint64, i int) any {
	if i < len(s) {
		return s[i]
	}
	return "missing"
}

func TestDataEvents(t *testing.T) {
	c := newClient(t, events.Options{})
	l := createOK(t, c, "", echoSpec())
	plain, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{IncludeData: true, DataMaxBytes: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []listenerdv1.ListenerService_WatchEventsClient{plain, data} {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	conn := testkit.Dial(t, l.GetStatus().GetBoundAddress())
	msg := "hello world"
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	collect := func(s listenerdv1.ListenerService_WatchEventsClient) []*listenerdv1.Event {
		var evs []*listenerdv1.Event
		for {
			resp, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, resp.GetEvents()...)
			if evs[len(evs)-1].GetConnectionClosed() != nil {
				return evs
			}
		}
	}
	var in, out *listenerdv1.ConnectionData
	for _, e := range collect(data) {
		if d := e.GetConnectionData(); d != nil {
			if d.GetDirection() == listenerdv1.Direction_DIRECTION_IN {
				in = d
			} else {
				out = d
			}
		}
	}
	if in == nil || string(in.GetData()) != "hell" || in.GetLength() != uint64(len(msg)) {
		t.Fatalf("in data %v", in)
	}
	if out == nil || string(out.GetData()) != "hell" || out.GetLength() != uint64(len(msg)) {
		t.Fatalf("out data %v", out)
	}
	for _, e := range collect(plain) {
		if e.GetConnectionData() != nil {
			t.Fatal("a watcher that did not ask got data events")
		}
	}
	big, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{IncludeData: true, DataMaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := big.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("data_max_bytes 1 MiB: %v", err)
	}
}

// A watcher whose client vanishes mid-stream leaves nothing behind: its
// handler returns and unregisters (goleak checks the goroutines at exit).
func TestAbruptWatcherDisconnect(t *testing.T) {
	c, conn, mgr := newClientConn(t, events.Options{})
	l := createOK(t, c, "", echoSpec())
	for range 3 {
		s, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{IncludeData: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if n := mgr.Bus().Watchers(); n != 3 {
		t.Fatalf("%d watchers registered, want 3", n)
	}
	// Traffic while the clients vanish.
	tcp := testkit.Dial(t, l.GetStatus().GetBoundAddress())
	_, _ = tcp.Write([]byte("data while watchers vanish"))
	conn.Close() // every stream of this client ends abruptly
	testkit.Eventually(t, func() bool { return mgr.Bus().Watchers() == 0 }, "every watcher to leave after its client vanished")
	if mgr.Bus().DataCap() != 0 {
		t.Fatal("data still recorded with no data watcher left")
	}
}
