package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// maxLabel bounds a handler's label.
const maxLabel = 128

// testHookReadyClaimed, when set by a test, runs as a ready stream has
// claimed its connection, before the opened message is sent: a test
// breaks the stream there, in a window no client can aim at.
var testHookReadyClaimed atomic.Pointer[func(context.Context)]

// testHookParked, when set by a test, runs once a stream is parked (a
// reused stream sends nothing then: a test waits for it here).
var testHookParked atomic.Pointer[func()]

// AttachHandler implements ListenerService: it offers the listener's
// connections to the caller until the caller goes or the listener closes.
func (s *Service) AttachHandler(req *listenerdv1.AttachHandlerRequest, stream grpc.ServerStreamingServer[listenerdv1.AttachHandlerResponse]) error {
	if err := requireID("listener_id", req.GetListenerId()); err != nil {
		return s.err(err)
	}
	if l := req.GetLabel(); len(l) > maxLabel || !utf8.ValidString(l) {
		return s.err(listener.Invalid("label", "%d bytes of valid UTF-8 at most", maxLabel))
	}
	if req.GetHandover() {
		if s.handoverPath == "" {
			return s.err(fmt.Errorf("%w: this daemon has no side socket for descriptors (see its log)", listener.ErrNoHandover))
		}
		if p, ok := peer.FromContext(stream.Context()); !ok || p.Addr == nil || p.Addr.Network() != "unix" {
			return s.err(listener.Invalid("handover", "only over the daemon's unix socket: descriptors cannot cross hosts"))
		}
	}
	a, err := s.m.Attach(req.GetListenerId(), int(req.GetMaxConnections()), req.GetLabel(), req.GetHandover())
	if err != nil {
		return s.err(err)
	}
	att := &listenerdv1.Attached{HandlerId: a.ID(), ListenerId: a.Listener()}
	if req.GetHandover() {
		att.HandoverPath, att.HandoverSecret = s.handoverPath, a.Secret()
	}
	if err := stream.Send(&listenerdv1.AttachHandlerResponse{Kind: &listenerdv1.AttachHandlerResponse_Attached{
		Attached: att}}); err != nil {
		a.Detach("the attach stream broke: " + err.Error())
		return err
	}
	ctx := stream.Context()
	for {
		select {
		case o := <-a.Offers():
			if err := stream.Send(&listenerdv1.AttachHandlerResponse{Kind: &listenerdv1.AttachHandlerResponse_Offer{
				Offer: &listenerdv1.Offer{ConnectionId: o.ConnID, Tuple: tupleToProto(o.Tuple)}}}); err != nil {
				a.Detach("the attach stream broke: " + err.Error())
				return err
			}
		case <-a.Done():
			return s.err(listener.ErrNotListening)
		case <-ctx.Done():
			a.Detach("the handler went away: " + ctx.Err().Error())
			return s.err(ctx.Err())
		}
	}
}

// ServeConnection implements ListenerService: one taken connection's bytes,
// both ways, on one stream; with reuse, one connection after another.
func (s *Service) ServeConnection(stream serveStream) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	for first := true; ; first = false {
		take := m.GetTake()
		if take == nil {
			return s.err(listener.Invalid("take", "the first message must be take"))
		}
		next, err := s.serveOne(stream, take, first)
		if next == nil {
			return err
		}
		// Reuse: the handler's next take, or the end of its stream.
		select {
		case h := <-next:
			if h.err != nil {
				if errors.Is(h.err, io.EOF) || stream.Context().Err() != nil {
					return nil // the handler let the stream go after closed
				}
				return h.err
			}
			m = h.msg
		case <-stream.Context().Done():
			return nil // the handler let the stream go after closed
		}
	}
}

type serveStream = grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse]

// handlerNext is what the handler sent on a reused stream after its
// connection closed: the next take, or the stream's end or failure.
type handlerNext struct {
	msg *listenerdv1.ServeConnectionRequest
	err error
}

// serveOne serves the connection take names (or, naming none, the next
// one chosen for its handler) until it closes; first: the stream's first
// take. With reuse, it returns where the handler's next take (or the
// stream's end) will come; nil and the stream's end otherwise.
func (s *Service) serveOne(stream serveStream, take *listenerdv1.Take, first bool) (<-chan handlerNext, error) {
	if err := requireID("take.handler_id", take.GetHandlerId()); err != nil {
		return nil, s.err(err)
	}
	var sess *listener.Session
	var err error
	if take.GetConnectionId() == "" {
		// Ready: the stream waits for the next connection chosen for
		// this handler.
		if sess, err = s.ready(stream, take.GetHandlerId(), first); sess == nil {
			return nil, err
		}
		if hook := testHookReadyClaimed.Load(); hook != nil {
			(*hook)(stream.Context())
		}
	} else {
		if err := requireID("take.connection_id", take.GetConnectionId()); err != nil {
			return nil, s.err(err)
		}
		if sess, err = s.m.Take(take.GetConnectionId(), take.GetHandlerId()); err != nil {
			return nil, s.err(err)
		}
	}
	// A stream that broke before opened leaves its handler without the
	// connection: one claimed by a ready stream goes to a handler again.
	err = stream.Context().Err()
	if err == nil {
		err = stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_Opened{
			Opened: &listenerdv1.ConnectionOpened{ConnectionId: sess.ID(), Tuple: tupleToProto(sess.Tuple())}}})
	}
	if err != nil {
		if sess.GiveBack() {
			return nil, err
		}
		sess.Abort(err)
		<-sess.Done()
		return nil, err
	}
	sess.Start(streamSink{stream})
	var next chan handlerNext
	if take.GetReuse() {
		next = make(chan handlerNext, 1)
	}
	go s.fromHandler(stream, sess, next)
	// A handler that goes away (or cancels the call to reset) resets the
	// socket even while a write to a peer that does not read blocks the
	// reading of its messages.
	select {
	case <-sess.Done():
	case <-stream.Context().Done():
		sess.Abort(stream.Context().Err())
		<-sess.Done()
	}
	r := sess.Result()
	err = stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_Closed{
		Closed: &listenerdv1.ConnectionClosed{ConnectionId: sess.ID(), Tuple: tupleToProto(sess.Tuple()),
			BytesIn: r.BytesIn, BytesOut: r.BytesOut, Duration: durationpb.New(r.Duration),
			Reason: listenerdv1.CloseReason(r.Reason), Error: r.Error}}})
	if err != nil || next == nil {
		return nil, err
	}
	return next, nil
}

// ready parks a stream opened ahead (or reused) until a connection is
// bound to it; first: the stream's first take. It returns nil and the
// stream's end (nil: ended cleanly, the handler detached or its listener
// closed) when none comes.
func (s *Service) ready(stream serveStream, handler string, first bool) (*listener.Session, error) {
	r, err := s.m.Ready(handler)
	if err != nil {
		return nil, s.err(err)
	}
	// The headers say the stream is parked: a client may wait for them
	// (a reused stream's went with its first opened).
	if first {
		if err := stream.SendHeader(nil); err != nil {
			r.Cancel()
			return nil, err
		}
	}
	if hook := testHookParked.Load(); hook != nil {
		(*hook)()
	}
	ctx := stream.Context()
	for {
		select {
		case <-r.Wake():
			sess, err := r.Claim()
			if errors.Is(err, listener.ErrReadyEnded) {
				return nil, nil
			}
			if sess != nil {
				return sess, nil
			}
		case <-r.Done():
			if sess, _ := r.Claim(); sess != nil {
				return sess, nil // bound as its listener closed: it drains
			}
			r.Cancel()
			return nil, nil
		case <-ctx.Done():
			r.Cancel()
			return nil, s.err(ctx.Err())
		}
	}
}

// fromHandler carries the handler's messages to the connection until the
// handler ends its side, resets, or its stream ends. A stream that breaks
// before the connection is done resets it. With next (reuse), it goes on
// reading once the connection is done, dropping what the handler sent for
// it, until the handler's next take or the stream's end, and hands that
// over.
func (s *Service) fromHandler(stream serveStream, sess *listener.Session, next chan<- handlerNext) {
	ended, over := false, false // over: the connection takes no more
	stop := func(err error) {   // the stream's end (io.EOF), failure, or a broken protocol
		if next != nil {
			next <- handlerNext{err: err}
		}
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				sess.Abort(err)
			} else if !ended && !over {
				sess.Abort(errors.New("the handler closed its stream without end or reset"))
			} // after end, the connection goes on
			stop(err)
			return
		}
		if next != nil && m.GetTake() != nil {
			select {
			case <-sess.Done():
				next <- handlerNext{msg: m}
			default:
				sess.Abort(errors.New("take before closed"))
				stop(s.err(listener.Invalid("take", "a reused stream's next take must follow closed")))
			}
			return
		}
		if over {
			continue // the connection's leftovers, on a stream kept for reuse
		}
		switch k := m.GetKind().(type) {
		case *listenerdv1.ServeConnectionRequest_Data:
			if ended {
				sess.Abort(errors.New("data after end"))
				stop(s.err(listener.Invalid("data", "after end")))
				return
			}
			if err := sess.Write(k.Data); err != nil {
				over = true // the socket failed: the connection is closing
			}
		case *listenerdv1.ServeConnectionRequest_End:
			if !ended {
				ended = true
				_ = sess.CloseWrite()
			}
		case *listenerdv1.ServeConnectionRequest_Reset_:
			sess.Reset()
			over = true
		default:
			sess.Abort(errors.New("unexpected message from the handler"))
			stop(s.err(listener.Invalid("kind", "data, end or reset while a connection is served")))
			return
		}
		if over && next == nil {
			return
		}
	}
}

// streamSink sends the peer's bytes to the handler. Send blocks while the
// stream's flow-control window is full: the socket is not read meanwhile,
// and its peer feels the backpressure.
type streamSink struct {
	stream serveStream
}

func (k streamSink) Data(p []byte) error {
	return k.stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_Data{Data: p}})
}

func (k streamSink) End() error {
	return k.stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_End{End: &listenerdv1.End{}}})
}
