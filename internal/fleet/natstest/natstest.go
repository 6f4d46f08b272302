// Package natstest runs real NATS servers with JetStream in the test's
// process, for the fleet tests and the bench: one server, a three-node
// cluster on loopback, and a front, an address held for a whole test
// that forwards to whichever server serves at the moment, so that a
// server can stop and another start on the same store while the clients
// keep their URL. A cluster stopped entirely starts again on its stores
// (Restart).
package natstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/events"
)

// Leaks are the goroutines goleak must not count in a test process that
// embeds nats-server: a stream or bucket created while its server shuts
// down gets a file store that nothing stops, so the store's state flusher
// waits for that stop forever, and the process-wide access-time ticker the
// store registered never sees its last unregister (nats-server's, not
// ours; seen under load, about one package run in three). Pass them as
// natstest.Leaks...
var Leaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
	goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1"),
}

// readyWait bounds a server's start: a guard, not a timing.
const readyWait = 30 * time.Second

// Start runs a JetStream server on 127.0.0.1 on a free port, storing
// under dir. Shut it down with Shutdown and WaitForShutdown.
func Start(dir string) (*server.Server, error) {
	return start(&server.Options{ServerName: "solo", Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true})
}

func start(o *server.Options) (*server.Server, error) {
	s, err := server.NewServer(o)
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(readyWait) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("nats server %s not ready after %v", o.ServerName, readyWait)
	}
	return s, nil
}

// started holds what each server of a cluster was started with, for
// Restart; Restart drops the servers it replaces.
var (
	startedMu sync.Mutex
	started   = map[*server.Server]startedAs{}
)

type startedAs struct {
	opts   *server.Options
	client string // the client address it listened on
}

// Stop shuts s down and waits until it has.
func Stop(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// Cluster runs a JetStream cluster of n servers routed to each other on
// loopback, each storing under a directory of its own in dir. Their
// cluster ports are chosen free just before the start; a start that finds
// one taken meanwhile is tried again with others, a few times.
func Cluster(dir string, n int) ([]*server.Server, error) {
	var err error
	for try := range 3 {
		var ss []*server.Server
		if ss, err = cluster(filepath.Join(dir, strconv.Itoa(try)), n); err == nil {
			return ss, nil
		}
	}
	return nil, err
}

func cluster(dir string, n int) ([]*server.Server, error) {
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
	}
	opts := make([]*server.Options, n)
	for i := range n {
		opts[i] = &server.Options{ServerName: "n" + strconv.Itoa(i+1), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: filepath.Join(dir, strconv.Itoa(i)), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "fleet", Host: "127.0.0.1", Port: ports[i]}, Routes: routes}
	}
	return startAll(opts)
}

// Restart starts the stopped servers ss of a cluster again, together, each
// with its name, store directory, cluster port and routes: the cluster's
// streams and buckets come back from their stores. Each listens for
// clients on a new port, none of them one a server of ss listened on, so
// that a client holding the old addresses (given, or learned from the
// servers) reaches the new servers only through what points it there, a
// Front. It returns the new servers in the order of ss.
func Restart(ss ...*server.Server) ([]*server.Server, error) {
	old := map[string]bool{}
	var opts []*server.Options
	startedMu.Lock()
	for _, s := range ss {
		as, ok := started[s]
		if ok {
			old[as.client] = true
			opts = append(opts, as.opts)
		}
	}
	startedMu.Unlock()
	if len(opts) != len(ss) {
		return nil, errors.New("natstest: Restart of a server natstest did not start")
	}
	for _, s := range ss {
		if s.Running() {
			return nil, fmt.Errorf("natstest: Restart of %s, which is running", s.Name())
		}
	}
	var err error
	for range 3 { // a new client port that was an old one: again
		var again []*server.Server
		if again, err = startAll(opts); err != nil {
			return nil, err
		}
		reused := false
		for _, s := range again {
			reused = reused || old[s.Addr().String()]
		}
		if !reused {
			startedMu.Lock()
			for _, s := range ss {
				delete(started, s)
			}
			startedMu.Unlock()
			return again, nil
		}
		startedMu.Lock()
		for _, s := range again {
			delete(started, s)
		}
		startedMu.Unlock()
		for _, s := range again {
			Stop(s)
		}
		err = errors.New("natstest: the restarted servers took an old client port each time")
	}
	return nil, err
}

// startAll starts a server on a clone of each of opts, together (each
// waits for the others to elect a meta leader), on a free client port, and
// notes what for Restart; on a failure it stops those that started.
func startAll(opts []*server.Options) ([]*server.Server, error) {
	ss := make([]*server.Server, len(opts))
	errs := make([]error, len(opts))
	var wg sync.WaitGroup
	for i, o := range opts {
		o = o.Clone() // the server fills in what it leaves to it
		o.Port = -1
		wg.Go(func() { ss[i], errs[i] = start(o) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range ss {
			if s != nil {
				Stop(s)
			}
		}
		return nil, err
	}
	startedMu.Lock()
	for i, s := range ss {
		started[s] = startedAs{opts: opts[i], client: s.Addr().String()}
	}
	startedMu.Unlock()
	return ss, nil
}

// freePorts returns n ports free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// URLs returns the client URLs of ss, comma-separated, as nats.Connect
// takes them.
func URLs(ss ...*server.Server) string {
	var s string
	for i, srv := range ss {
		if i > 0 {
			s += ","
		}
		s += srv.ClientURL()
	}
	return s
}

// Front is an address on 127.0.0.1 held for as long as it is open that
// forwards each connection to the server it points at, or, pointing at
// none, closes it at once (as a stopped server's clients see a refused
// reconnect).
type Front struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  map[net.Conn]struct{}
	closed bool
	muted  chan struct{} // while muted; closed by Cut and Close
	wg     sync.WaitGroup
}

// NewFront listens on a free port of 127.0.0.1.
func NewFront() (*Front, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Front{ln: ln, conns: make(map[net.Conn]struct{})}
	f.wg.Go(f.accept)
	return f, nil
}

// URL is the front's client URL.
func (f *Front) URL() string { return "nats://" + f.ln.Addr().String() }

// Point makes new connections go to addr (host:port; "" for none).
func (f *Front) Point(addr string) {
	f.mu.Lock()
	f.target = addr
	f.mu.Unlock()
}

// Close stops listening, closes every connection, and waits for its
// goroutines.
func (f *Front) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.Cut()
	f.ln.Close()
	f.wg.Wait()
}

// Mute holds what the servers send until Cut, while what the clients send
// still reaches them: a network that loses one direction. A publish is
// stored and its ack never arrives.
func (f *Front) Mute() {
	f.mu.Lock()
	if f.muted == nil {
		f.muted = make(chan struct{})
	}
	f.mu.Unlock()
}

// Cut closes every connection (their clients reconnect through the front)
// and ends a Mute: what it held is dropped with its connection.
func (f *Front) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	if f.muted != nil {
		close(f.muted)
		f.muted = nil
	}
}

func (f *Front) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		target := f.target
		f.mu.Unlock()
		if target == "" {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		if !f.track(c, up) {
			continue
		}
		f.wg.Go(func() { f.pipe(c, up, true) })
		f.wg.Go(func() { f.pipe(up, c, false) })
	}
}

func (f *Front) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst, then closes both: a server gone ends its
// client's connection. What a server sends (mutable) waits while the
// front is muted.
func (f *Front) pipe(dst, src net.Conn, mutable bool) {
	if mutable {
		f.copyMutable(dst, src)
	} else {
		_, _ = io.Copy(dst, src)
	}
	dst.Close()
	src.Close()
	f.mu.Lock()
	delete(f.conns, dst)
	delete(f.conns, src)
	f.mu.Unlock()
}

func (f *Front) copyMutable(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			hold := f.muted
			f.mu.Unlock()
			if hold != nil {
				<-hold // Cut: dst is closed, the write fails
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// JetStream connects to url for the test's duration (reconnecting for as
// long as it lasts) and returns its JetStream.
func JetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// ConnEvent is the i-th event (from 0) of a load of short connections to
// one listener, as case a of the bench makes them: connection i/2+1
// opened (i even), then closed by its peer after 16 bytes each way.
func ConnEvent(i int) events.Event {
	local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 41234)
	conn := uint64(i/2 + 1)
	e := events.Event{Listener: "ln-7f3a9c", Kind: events.KindConnectionOpened, Conn: conn,
		Tuple: events.Tuple{Remote: netip.AddrPortFrom(local.Addr(), uint16(30000+conn%30000)), Local: local}}
	if i%2 == 1 {
		e.Kind, e.Close, e.BytesIn, e.BytesOut, e.Duration = events.KindConnectionClosed, events.ClosePeerClosed, 16, 16, 300*time.Microsecond
	}
	return e
}
