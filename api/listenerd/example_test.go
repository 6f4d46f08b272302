package listenerd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Serve HTTP on a port the daemon holds: Listen returns a net.Listener,
// and http.Serve takes it as it is.
func ExampleClient_Listen() {
	c, err := listenerd.Dial(listenerd.Options{}) // $LISTENERD_SOCKET, or the default socket
	if err != nil {
		panic(err)
	}
	defer c.Close()
	l, err := c.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path[1:])
	})}
	go srv.Serve(l)
	defer srv.Close() // closes l: the listener is closed on the daemon too

	resp, err := http.Get("http://" + l.Addr().String() + "/gopher")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))
	// Output: hello gopher
}

// Serve each connection by hand, with half-close: read the request to the
// peer's end, answer, then end our side.
func ExampleListener_Accept() {
	c, err := listenerd.Dial(listenerd.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	l, err := c.Listen(context.Background(), "127.0.0.1:0", listenerd.WithName("shout"))
	if err != nil {
		panic(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		req, _ := io.ReadAll(conn) // to the peer's FIN
		fmt.Fprintf(conn, "%d bytes from %s", len(req), conn.RemoteAddr().(*net.TCPAddr).IP)
		conn.(interface{ CloseWrite() error }).CloseWrite() // a *listenerd.TCPConn here: the daemon is local
	}()

	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		panic(err)
	}
	defer peer.Close()
	peer.Write([]byte("hello?"))
	peer.(*net.TCPConn).CloseWrite()
	reply, _ := io.ReadAll(peer)
	fmt.Println(string(reply))
	// Output: 6 bytes from 127.0.0.1
}

// Follow a listener's events; Watch resumes by itself if the stream is
// cut, and stops when fn returns an error.
func ExampleClient_Watch() {
	c, err := listenerd.Dial(listenerd.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	r, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "watched", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		panic(err)
	}
	defer c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: "watched"})
	from := uint64(0)
	stop := fmt.Errorf("seen")
	err = c.Watch(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{"watched"}, AfterSequence: &from}, func(e *listenerdv1.Event) error {
		if s := e.GetListenerStarted(); s != nil && s.GetBoundAddress() == r.GetListener().GetStatus().GetBoundAddress() {
			fmt.Println("started", s.GetName())
			return stop
		}
		return nil
	})
	fmt.Println(err == stop)
	// Output:
	// started watched
	// true
}
