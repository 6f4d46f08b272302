package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// maxLabel bounds a handler's label.
const maxLabel = 128

// testHookReadyClaimed, when set by a test, runs as a connection bound
// to a ready stream is about to be opened on it (on the connection's
// goroutine), before the opened message is sent: a test breaks the stream
// there, in a window no client can aim at.
var testHookReadyClaimed atomic.Pointer[func(context.Context)]

// testHookReparked, when set by a test, runs once a reused stream is
// parked again on the handler's answer after closed: nothing on the
// stream says so, and a test's next connection must find it parked.
var testHookReparked atomic.Pointer[func()]

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

// ServeConnection implements ListenerService: a taken connection's bytes,
// both ways, on one stream; with take.reuse, one connection after another.
// A connection bound to the stream while it is parked is opened, and its
// bytes pumped, by the connection's own goroutine (opener.Open); this
// goroutine waits until it is done, then parks the stream again and
// sends closed.
func (s *Service) ServeConnection(stream serveStream) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	take := m.GetTake()
	if take == nil {
		return s.err(listener.Invalid("take", "the first message must be take"))
	}
	if err := requireID("take.handler_id", take.GetHandlerId()); err != nil {
		return s.err(err)
	}
	handler, reuse := take.GetHandlerId(), take.GetReuse()
	rd := newHandlerReader(s, stream, reuse)
	if reuse && take.GetEndMarks() {
		rd.endMarks = true
		// Sent with the headers: the handler may leave out the take
		// after a connection it ended.
		_ = stream.SetHeader(endMarksHeader)
	}
	o := &opener{rd: rd, stream: stream, msgs: newResponses(stream), mu: make(chan struct{}, 1)}
	var sess *listener.Session
	var r *listener.Ready
	if take.GetConnectionId() == "" {
		// Ready: the stream waits for the next connection chosen for
		// this handler. The headers say the stream is parked: a client
		// may wait for them. A connection bound meanwhile is opened
		// after them (o.mu).
		o.lock()
		if r, err = s.m.Ready(handler, o); err != nil {
			o.unlock()
			return s.err(err)
		}
		if err := stream.SendHeader(nil); err != nil {
			o.err = err
			o.unlock()
			drop(r)
			return err
		}
		go rd.run()
		o.unlock()
	} else {
		if err := requireID("take.connection_id", take.GetConnectionId()); err != nil {
			return s.err(err)
		}
		if sess, err = s.m.Take(take.GetConnectionId(), handler); err != nil {
			return s.err(err)
		}
		go rd.run()
		// A stream that broke before opened leaves its handler without
		// the connection: it is reset.
		err = stream.Context().Err()
		if err == nil && !rd.serve(sess) {
			err = errors.New("the handler's stream ended")
		}
		o.tuple = tupleToProto(sess.Tuple()) // for opened and closed
		if err == nil {
			err = stream.Send(o.msgs.opened(sess.ID(), o.tuple))
		}
		if err != nil {
			sess.Abort(err)
			<-sess.Done()
			return err
		}
		sess.Start(&o.msgs.sink)
	}
	ctx := stream.Context()
	for {
		if sess == nil {
			if sess, err = s.claim(ctx, r, o); sess == nil {
				return err
			}
		}
		// A handler that goes away (or cancels the call to reset) resets
		// the socket even while a write to a peer that does not read
		// blocks the reading of its messages.
		for gone := rd.gone; !isDone(sess); {
			select {
			case <-sess.Done():
			case <-ctx.Done():
				sess.Abort(ctx.Err())
				<-sess.Done()
			case <-gone:
				gone = nil // the handler sends nothing more; a connection it ended goes on
				if why := rd.orphaned(sess); why != nil {
					sess.Abort(why)
				}
				continue
			}
			break
		}
		// Reuse: the stream parks again once the connection is closed
		// and the handler has answered it (its mark: end with done or
		// reset with end marks, else a take after closed): a handler
		// that has not, may not have read what came before closed, and
		// a next connection's opened would wait behind it. Answered
		// already, the stream parks before closed goes; a connection
		// bound to it meanwhile is opened after closed (o.mu).
		res := sess.Result()
		answered := reuse && rd.answered()
		o.lock()
		r = nil
		if answered && rd.open() {
			r, _ = s.m.Ready(handler, o) // none (detached, at its limit): the stream ends after closed
		}
		err = stream.Send(o.msgs.closed(sess.ID(), o.tuple, res))
		if err != nil {
			o.err = err
		}
		o.unlock()
		if err == nil && reuse && !answered && rd.open() {
			// The answer comes after closed: until then a connection
			// goes to another parked stream, or as an offer. A handler
			// detached, or its listener closed, meanwhile: the stream
			// ends, as a parked one would.
			select {
			case <-rd.answer:
				answered = true
			case <-rd.released:
			case <-rd.gone:
			case <-ctx.Done():
			case <-s.m.AttachmentDone(handler):
			}
			if answered && rd.open() {
				r, _ = s.m.Ready(handler, o)
				if hook := testHookReparked.Load(); hook != nil && r != nil {
					(*hook)()
				}
			}
		}
		if r == nil || err != nil {
			if r != nil {
				drop(r)
			}
			if err == nil {
				err = rd.failure()
			}
			return err
		}
		sess = nil
	}
}

// endMarksHeader, in a stream's response headers, says the daemon takes
// the handler's end or reset as its mark (Take.end_marks).
// "2": a plain end is no mark (the handler answers closed with take), end
// with done is.
var endMarksHeader = metadata.Pairs("listenerd-end-marks", "2")

type serveStream = grpc.BidiStreamingServer[listenerdv1.ServeConnectionRequest, listenerdv1.ServeConnectionResponse]

// claim waits on the parked stream r until the connection opened on it
// is done (or, once the stream stops, opened: the caller watches it). It
// returns nil and the stream's end (nil: ended cleanly: the handler
// detached or released the stream, or its listener closed) when none
// comes.
func (s *Service) claim(ctx context.Context, r *listener.Ready, o *opener) (*listener.Session, error) {
	done, released, gone, cancelled := r.Done(), o.rd.released, o.rd.gone, ctx.Done()
	for {
		ended := false
		select {
		case <-r.Wake():
			sess, err := r.Claim()
			if sess != nil {
				return sess, nil
			}
			ended = err != nil
		case <-done: // bound as its listener closed, a connection drains
			done = nil
		case <-released:
			released = nil
		case <-gone:
			// The handler ended its side of the stream, or broke it: no
			// connection could be served on it.
			gone = nil
		case <-cancelled:
			cancelled = nil
		}
		if !ended && (done == nil || released == nil || gone == nil || cancelled == nil) {
			sess, wait := r.Stop()
			if sess != nil {
				return sess, nil
			}
			ended = !wait
		}
		if ended {
			if cancelled == nil {
				return nil, s.err(ctx.Err())
			}
			return nil, o.failure()
		}
	}
}

// drop ends the parked stream r once its stream broke (o.err set): a
// connection bound to it goes back to the queue.
func drop(r *listener.Ready) {
	for _, wait := r.Stop(); wait; {
		<-r.Wake()
		sess, err := r.Claim()
		wait = err == nil && sess == nil
	}
}

// opener opens the connections bound to a stream parked ahead, on their
// own goroutines (listener.Opener).
type opener struct {
	rd     *handlerReader
	stream serveStream
	msgs   *responses
	// mu (capacity 1: a lock a connection's goroutine can stop waiting
	// for) is held by whichever goroutine sends on the stream outside a
	// connection's flow: the stream's while it parks the stream and sends
	// the headers or closed, a connection's while it sends opened. It
	// keeps opened after them, and the sends apart.
	mu    chan struct{}
	err   error                  // a send failed: the stream is broken; guarded by mu
	tuple *listenerdv1.FiveTuple // the connection's, for opened and closed; guarded by mu
}

// Open sends opened for sess on the stream, from the connection's
// goroutine; an error gives the connection back (the handler never had
// it).
func (o *opener) Open(sess *listener.Session, timeout <-chan time.Time) (listener.Sink, error) {
	ctx := o.stream.Context()
	if hook := testHookReadyClaimed.Load(); hook != nil {
		(*hook)(ctx)
	}
	select {
	case o.mu <- struct{}{}:
	default:
		// The stream's goroutine sends closed (or the headers): opened
		// follows, unless the connection's wait ends first.
		select {
		case o.mu <- struct{}{}:
		case <-timeout:
			return nil, listener.ErrOpenAbandoned
		case <-sess.Killed():
			return nil, listener.ErrOpenAbandoned
		}
	}
	defer o.unlock()
	if o.err != nil {
		return nil, o.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !o.rd.serve(sess) {
		return nil, errors.New("the handler's stream ended")
	}
	o.tuple = tupleToProto(sess.Tuple())
	if err := o.stream.Send(o.msgs.opened(sess.ID(), o.tuple)); err != nil {
		o.err = err
		return nil, err
	}
	return &o.msgs.sink, nil
}

func (o *opener) lock()   { o.mu <- struct{}{} }
func (o *opener) unlock() { <-o.mu }

// failure is why the stream ended: a send that failed, or a broken
// protocol (nil: cleanly).
func (o *opener) failure() error {
	o.lock()
	err := o.err
	o.unlock()
	if err != nil {
		return err
	}
	return o.rd.failure()
}

// handlerReader reads the handler's messages on a stream and carries them
// to the connection they are for. On a stream taken with reuse, take and
// release mark the end of a closed connection's messages: what the
// handler sent for it before it saw closed is dropped, and the messages
// after the mark are for the next connection opened on the stream. With
// end marks, the handler's end with done, or its reset, is a mark too,
// and release is none. A mark is also the handler's answer to the
// connection's closed (answer): the stream may park again.
type handlerReader struct {
	s        *Service
	stream   serveStream
	reuse    bool
	endMarks bool // set before run

	mu       sync.Mutex
	opened   []*listener.Session         // opened, in order, not yet answered by a mark: the first is the one messages are for
	stopped  bool                        // reading stopped: a connection opened now has no handler
	orphans  map[*listener.Session]error // once reading stopped: the connections to reset, and why
	err      error                       // a broken protocol: the stream's status
	released chan struct{}               // closed on the handler's release
	gone     chan struct{}               // closed when reading stops
	// answer gets one value a mark: the handler answered the connection
	// it served (one at a time: the stream parks again only after it).
	answer chan struct{}
}

func newHandlerReader(s *Service, stream serveStream, reuse bool) *handlerReader {
	return &handlerReader{s: s, stream: stream, reuse: reuse, released: make(chan struct{}), gone: make(chan struct{}),
		answer: make(chan struct{}, 1)}
}

// serve adds a connection about to be opened on the stream: the
// handler's messages are for it once every connection opened before it
// has been answered by a mark. It reports false when reading has
// stopped: the handler can send the connection nothing.
func (rd *handlerReader) serve(sess *listener.Session) bool {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.stopped {
		return false
	}
	rd.opened = append(rd.opened, sess)
	return true
}

// stop ends the reading. A connection opened on the stream and not yet
// heard from (all but cur) is left orphaned: nothing the handler sends
// can reach it now, and the stream's goroutine resets it (orphaned), once
// it has given it over, so that it never resets a connection that was
// not the handler's.
func (rd *handlerReader) stop(cur *listener.Session, why error) {
	rd.mu.Lock()
	rd.stopped = true
	rd.orphans = map[*listener.Session]error{}
	for _, n := range rd.opened {
		if n != cur {
			rd.orphans[n] = errors.New("the handler's stream ended without end or reset")
		}
	}
	if cur != nil && why != nil {
		rd.orphans[cur] = why
	}
	rd.opened = nil
	rd.mu.Unlock()
	close(rd.gone)
}

// orphaned says why sess must be reset now that reading stopped (nil: it
// goes on, its handler having ended its side).
func (rd *handlerReader) orphaned(sess *listener.Session) error {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.orphans[sess]
}

// open says whether the stream can serve another connection: the handler
// neither released it nor stopped sending on it.
func (rd *handlerReader) open() bool {
	select {
	case <-rd.released:
		return false
	case <-rd.gone:
		return false
	default:
		return true
	}
}

// answered says whether the handler has answered the connection it
// served, taking the answer.
func (rd *handlerReader) answered() bool {
	select {
	case <-rd.answer:
		return true
	default:
		return false
	}
}

// answers records the handler's mark for the connection it served.
func (rd *handlerReader) answers() {
	select {
	case rd.answer <- struct{}{}:
	default:
	}
}

// isDone says whether s is closed.
func isDone(s *listener.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// failure is the broken protocol that stopped the reading, if any.
func (rd *handlerReader) failure() error {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.err
}

// broke records a broken protocol, aborting the connection it was for.
func (rd *handlerReader) broke(cur *listener.Session, field, why string) {
	rd.mu.Lock()
	rd.err = rd.s.err(listener.Invalid(field, "%s", why)) // before the abort wakes the stream's goroutine
	rd.mu.Unlock()
	if cur != nil {
		cur.Abort(errors.New(why))
	}
}

// run reads until the stream ends or the protocol breaks. A stream that
// breaks before its connection is done resets the connection; one whose
// handler ended its side (end, then the end of its stream) leaves the
// connection going. With end marks, data the socket refuses (it closed)
// stops the reading on a reused stream too: the stream ends after
// closed, and the handler's next send fails, so that a handler that
// writes and never reads (nor reads closed) learns that its peer left.
func (rd *handlerReader) run() {
	var cur *listener.Session // nil: before the first message for the connection they are for
	var why error             // cur must be reset: the stream broke, or ended before its end
	defer func() { rd.stop(cur, why) }()
	ended, over := false, false // over: cur takes no more
	for {
		m, err := rd.stream.Recv()
		if err != nil {
			if cur != nil && !over {
				if !errors.Is(err, io.EOF) {
					why = err
				} else if !ended {
					why = errors.New("the handler closed its stream without end or reset")
				}
			}
			return
		}
		if rd.reuse {
			_, release := m.GetKind().(*listenerdv1.ServeConnectionRequest_Release)
			_, take := m.GetKind().(*listenerdv1.ServeConnectionRequest_Take)
			if release && rd.endMarks {
				rd.release() // no mark: the parking ends
				continue
			}
			if take || release {
				// A mark answers the closed of the oldest connection
				// opened and not yet answered: it must be done.
				rd.mu.Lock()
				var answered *listener.Session
				if len(rd.opened) > 0 {
					answered, rd.opened = rd.opened[0], rd.opened[1:]
				}
				rd.mu.Unlock()
				if answered == nil || !isDone(answered) {
					field := "take"
					if m.GetRelease() != nil {
						field = "release"
					}
					rd.broke(answered, field, "a take or release on a reused stream answers closed: none came yet")
					return
				}
				if t := m.GetTake(); t != nil && t.GetConnectionId() != "" {
					rd.broke(nil, "take.connection_id", "must be empty in a reused stream's later takes")
					return
				}
				if release {
					rd.release()
				}
				rd.answers()
				cur, ended, over = nil, false, true
				continue
			}
		}
		if cur == nil {
			rd.mu.Lock()
			if len(rd.opened) > 0 {
				cur = rd.opened[0]
			}
			rd.mu.Unlock()
			if cur == nil {
				rd.broke(nil, "kind", "data, end or reset before opened")
				return
			}
			ended, over = false, false
		}
		if over {
			continue // the closed connection's leftovers, before the mark
		}
		mark := false // end marks: this end with done, or reset, is the mark
		if rd.endMarks {
			// The answer goes before the end or reset it comes with: the
			// stream's goroutine, woken by the connection's close, parks
			// the stream before closed goes.
			switch k := m.GetKind().(type) {
			case *listenerdv1.ServeConnectionRequest_End:
				mark = k.End.GetDone()
			case *listenerdv1.ServeConnectionRequest_Reset_:
				mark = true
			}
			if mark {
				rd.marked(cur)
				rd.answers()
			}
		}
		switch k := m.GetKind().(type) {
		case *listenerdv1.ServeConnectionRequest_Data:
			if ended {
				rd.broke(cur, "data", "data after end")
				return
			}
			if err := cur.Write(k.Data); err != nil {
				cur.Fail(err) // the socket failed: the connection closes
				if !rd.reuse || rd.endMarks {
					return
				}
				over = true // before end marks: dropped until the take
			}
		case *listenerdv1.ServeConnectionRequest_End:
			if !ended {
				ended = true
				_ = cur.CloseWrite()
			}
		case *listenerdv1.ServeConnectionRequest_Reset_:
			cur.Reset()
			over = true
		default:
			rd.broke(cur, "kind", "data, end or reset while a connection is served")
			return
		}
		if over && !rd.reuse {
			return
		}
		if mark {
			// End with done, or reset: the mark, and the answer to the
			// closed to come. What follows is for the next connection.
			cur, ended, over = nil, false, true
		}
	}
}

// release ends the stream's parking, once.
func (rd *handlerReader) release() {
	select {
	case <-rd.released:
	default:
		close(rd.released)
	}
}

// marked answers cur, the oldest connection opened and not answered, by
// the handler's end or reset (end marks).
func (rd *handlerReader) marked(cur *listener.Session) {
	rd.mu.Lock()
	if len(rd.opened) > 0 && rd.opened[0] == cur {
		rd.opened = rd.opened[1:]
	}
	rd.mu.Unlock()
}

// responses are a stream's messages to the handler, made once and filled
// anew for each connection it serves: Send marshals a message before it
// returns, and a stream's sends never overlap (opened goes before the
// connection's bytes flow, closed after they stopped).
type responses struct {
	openedResp, closedResp listenerdv1.ServeConnectionResponse
	openedKind             listenerdv1.ServeConnectionResponse_Opened
	closedKind             listenerdv1.ServeConnectionResponse_Closed
	openedMsg              listenerdv1.ConnectionOpened
	closedMsg              listenerdv1.ConnectionClosed
	duration               durationpb.Duration
	sink                   streamSink
}

func newResponses(stream serveStream) *responses {
	r := &responses{}
	r.openedKind.Opened, r.openedResp.Kind = &r.openedMsg, &r.openedKind
	r.closedKind.Closed, r.closedResp.Kind = &r.closedMsg, &r.closedKind
	r.sink.stream = stream
	r.sink.dataResp.Kind = &r.sink.data
	r.sink.end.End = &listenerdv1.End{}
	r.sink.endResp.Kind = &r.sink.end
	return r
}

func (r *responses) opened(id string, tuple *listenerdv1.FiveTuple) *listenerdv1.ServeConnectionResponse {
	r.openedMsg.ConnectionId, r.openedMsg.Tuple = id, tuple
	return &r.openedResp
}

func (r *responses) closed(id string, tuple *listenerdv1.FiveTuple, res listener.ConnResult) *listenerdv1.ServeConnectionResponse {
	r.duration.Seconds = int64(res.Duration / time.Second)
	r.duration.Nanos = int32(res.Duration % time.Second)
	m := &r.closedMsg
	m.ConnectionId, m.Tuple, m.BytesIn, m.BytesOut, m.Duration = id, tuple, res.BytesIn, res.BytesOut, &r.duration
	m.Reason, m.Error = listenerdv1.CloseReason(res.Reason), res.Error
	return &r.closedResp
}

// streamSink sends the peer's bytes to the handler. Send blocks while the
// stream's flow-control window is full: the socket is not read meanwhile,
// and its peer feels the backpressure. Its messages are reused, as
// responses' are: one connection's Data and End at a time.
type streamSink struct {
	stream            serveStream
	dataResp, endResp listenerdv1.ServeConnectionResponse
	data              listenerdv1.ServeConnectionResponse_Data
	end               listenerdv1.ServeConnectionResponse_End
}

func (k *streamSink) Data(p []byte) error {
	k.data.Data = p
	err := k.stream.Send(&k.dataResp)
	k.data.Data = nil // keeps nothing of p
	return err
}

func (k *streamSink) End() error {
	return k.stream.Send(&k.endResp)
}
