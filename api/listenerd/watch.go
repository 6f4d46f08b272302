package listenerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// ErrRestarted is returned by Watch when the daemon restarted (a new boot)
// since the events it delivered: the sequence cannot be resumed, events in
// between are lost, and the caller takes a new snapshot.
var ErrRestarted = errors.New("listenerd: the daemon restarted; events since the last one delivered are lost")

// Watch calls fn with each event matching req, in order, and resumes by
// itself when its stream ends on the daemon's or the network's account: a
// watcher cut for falling behind (RESOURCE_EXHAUSTED), a connection lost
// or a daemon briefly away (UNAVAILABLE). It resumes after the last event
// it delivered, from the same boot only; req's after_sequence and boot_id,
// when set, say where the first stream starts. It returns ctx's error when
// ctx ends, fn's error when fn fails, ErrRestarted when the daemon
// restarted, and any other error of the API (an OUT_OF_RANGE when the
// history no longer holds the resume point) as it is.
func (c *Client) Watch(ctx context.Context, req *listenerdv1.WatchEventsRequest, fn func(*listenerdv1.Event) error) error {
	req = proto.Clone(req).(*listenerdv1.WatchEventsRequest)
	backoff := 50 * time.Millisecond
	for {
		err := c.watchOnce(ctx, req, fn, &backoff)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fnErr fnError
		switch {
		case errors.As(err, &fnErr):
			return fnErr.err
		case isBootMismatch(err):
			return fmt.Errorf("%w (%v)", ErrRestarted, err)
		case status.Code(err) == codes.ResourceExhausted && req.AfterSequence != nil:
			// Cut for falling behind: resume at once from the last one.
		case status.Code(err) == codes.Unavailable, errors.Is(err, io.EOF):
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			backoff = min(2*backoff, 5*time.Second)
		default:
			return err
		}
	}
}

type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// watchOnce runs one stream, moving req's resume point along.
func (c *Client) watchOnce(ctx context.Context, req *listenerdv1.WatchEventsRequest, fn func(*listenerdv1.Event) error, backoff *time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.WatchEvents(ctx, req)
	if err != nil {
		return err
	}
	first, err := st.Recv()
	if err != nil {
		return err
	}
	*backoff = 50 * time.Millisecond // reached the daemon
	if req.BootId == "" {
		req.BootId = first.GetBootId()
	}
	if req.AfterSequence == nil {
		head := first.GetHeadSequence()
		req.AfterSequence = &head
	}
	for {
		r, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return status.Error(codes.Unavailable, "watch stream ended")
			}
			return err
		}
		for _, e := range r.GetEvents() {
			if err := fn(e); err != nil {
				return fnError{err}
			}
			seq := e.GetSequence()
			req.AfterSequence = &seq
		}
	}
}

// isBootMismatch reports an OUT_OF_RANGE for a resume point of another
// boot.
func isBootMismatch(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.OutOfRange {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "BOOT_MISMATCH" {
			return true
		}
	}
	return false
}
