package ctl

import (
	"bufio"
	"context"
	"fmt"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// closeAndWait is ctl close --wait. It opens a watch of the listener's
// listener_closed event first, and sends CloseListener once the daemon has
// registered the watch, so the event cannot be missed; the watch resumes
// from there if the stream is cut.
func (a *app) closeAndWait(ctx context.Context, client listenerdv1.ListenerServiceClient, req *listenerdv1.CloseListenerRequest) error {
	var (
		closed *listenerdv1.Listener
		seen   bool
	)
	watchReq := &listenerdv1.WatchEventsRequest{
		ListenerIds: []string{req.GetId()}, // the daemon maps a name to its id
		Kinds:       []listenerdv1.EventKind{listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED},
	}
	w := a.newWatcher(client, watchReq, func(out *bufio.Writer, ev *listenerdv1.Event) (bool, error) {
		if ev.GetListenerClosed() == nil || ev.GetListenerId() != closed.GetId() {
			return false, nil
		}
		seen = true
		if a.json() {
			return true, writeJSON(out, ev)
		}
		c := ev.GetListenerClosed()
		_, err := fmt.Fprintf(out, "%s closed: %s drained, %d destroyed\n",
			closed.GetId(), plural(c.GetDrained(), "connection"), c.GetDestroyed())
		return true, err
	})
	w.opened = func() error {
		uctx, cancel := a.unary(ctx)
		defer cancel()
		resp, err := client.CloseListener(uctx, req)
		if err != nil {
			return err
		}
		closed = resp.GetListener()
		// A name is given up at close: resume by id.
		watchReq.ListenerIds = []string{closed.GetId()}
		if a.json() {
			return writeDoc(a.stdout, closed)
		}
		_, err = fmt.Fprintln(a.stdout, closedLine(closed, req))
		return err
	}
	if err := w.run(ctx); err != nil {
		return err
	}
	if !seen {
		if closed == nil {
			return &messageError{code: ExitError, msg: "interrupted before the close was sent"}
		}
		return &messageError{code: ExitError, msg: fmt.Sprintf(
			"stopped waiting; %s is still draining (see ctl get %s)", closed.GetId(), closed.GetId())}
	}
	return nil
}
