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
// both ways, on one stream.
func (s *Service) ServeConnection(stream grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	take := first.GetTake()
	if take == nil {
		return s.err(listener.Invalid("take", "the first message must be take"))
	}
	if err := requireID("take.handler_id", take.GetHandlerId()); err != nil {
		return s.err(err)
	}
	var sess *listener.Session
	if take.GetConnectionId() == "" {
		// Ready: the stream waits for the next connection chosen for
		// this handler.
		if sess, err = s.ready(stream, take.GetHandlerId()); sess == nil {
			return err
		}
		if hook := testHookReadyClaimed.Load(); hook != nil {
			(*hook)(stream.Context())
		}
	} else {
		if err := requireID("take.connection_id", take.GetConnectionId()); err != nil {
			return s.err(err)
		}
		if sess, err = s.m.Take(take.GetConnectionId(), take.GetHandlerId()); err != nil {
			return s.err(err)
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
			return err
		}
		sess.Abort(err)
		<-sess.Done()
		return err
	}
	sess.Start(streamSink{stream})
	go s.fromHandler(stream, sess)
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
	return stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_Closed{
		Closed: &listenerdv1.ConnectionClosed{ConnectionId: sess.ID(), Tuple: tupleToProto(sess.Tuple()),
			BytesIn: r.BytesIn, BytesOut: r.BytesOut, Duration: durationpb.New(r.Duration),
			Reason: listenerdv1.CloseReason(r.Reason), Error: r.Error}}})
}

// ready parks a stream opened ahead until a connection is bound to it. It
// returns nil and the stream's end (nil: ended cleanly, the handler
// detached or its listener closed) when none comes.
func (s *Service) ready(stream grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse], handler string) (*listener.Session, error) {
	r, err := s.m.Ready(handler)
	if err != nil {
		return nil, s.err(err)
	}
	// The headers say the stream is parked: a client may wait for them.
	if err := stream.SendHeader(nil); err != nil {
		r.Cancel()
		return nil, err
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
// before the connection is done resets it.
func (s *Service) fromHandler(stream grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse], sess *listener.Session) {
	ended := false
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) && ended {
			return // the handler is done sending; the connection goes on
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the handler closed its stream without end or reset")
			}
			sess.Abort(err)
			return
		}
		switch k := m.GetKind().(type) {
		case *listenerdv1.ServeConnectionRequest_Data:
			if ended {
				sess.Abort(errors.New("data after end"))
				return
			}
			if err := sess.Write(k.Data); err != nil {
				return // the socket failed: the connection is closing
			}
		case *listenerdv1.ServeConnectionRequest_End:
			if !ended {
				ended = true
				_ = sess.CloseWrite()
			}
		case *listenerdv1.ServeConnectionRequest_Reset_:
			sess.Reset()
			return
		default:
			sess.Abort(errors.New("unexpected message from the handler"))
			return
		}
	}
}

// streamSink sends the peer's bytes to the handler. Send blocks while the
// stream's flow-control window is full: the socket is not read meanwhile,
// and its peer feels the backpressure.
type streamSink struct {
	stream grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse]
}

func (k streamSink) Data(p []byte) error {
	return k.stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_Data{Data: p}})
}

func (k streamSink) End() error {
	return k.stream.Send(&listenerdv1.ServeConnectionResponse{Kind: &listenerdv1.ServeConnectionResponse_End{End: &listenerdv1.End{}}})
}
