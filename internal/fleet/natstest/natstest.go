// Package natstest runs real NATS servers with JetStream in the test's
// process, for the fleet tests and the bench: one server, a three-node
// cluster on loopback, and a front, an address held for a whole test
// that forwards to whichever server serves at the moment, so that a
// server can stop and another start on the same store while the clients
// keep their URL.
package natstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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
	ss := make([]*server.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { // together: each waits for the others to elect a meta leader
			ss[i], errs[i] = start(&server.Options{ServerName: "n" + strconv.Itoa(i+1), Host: "127.0.0.1", Port: -1,
				JetStream: true, StoreDir: filepath.Join(dir, strconv.Itoa(i)), NoLog: true, NoSigs: true,
				Cluster: server.ClusterOpts{Name: "fleet", Host: "127.0.0.1", Port: ports[i]}, Routes: routes})
		})
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
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	f.wg.Wait()
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
		f.wg.Go(func() { f.pipe(c, up) })
		f.wg.Go(func() { f.pipe(up, c) })
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
// client's connection.
func (f *Front) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	f.mu.Lock()
	delete(f.conns, dst)
	delete(f.conns, src)
	f.mu.Unlock()
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
