package service

import (
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// onReparked sets the hook for the test: each reused stream parked again
// on the handler's answer after closed sends on the channel returned.
func onReparked(t *testing.T) <-chan struct{} {
	t.Helper()
	ch := make(chan struct{}, 1024)
	hook := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	testHookReparked.Store(&hook)
	t.Cleanup(func() { testHookReparked.Store(nil) })
	return ch
}

// waitReparked waits until a stream was parked again on an answer after
// closed (a generous guard: it is a matter of the daemon reading it).
func waitReparked(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream was not parked again after the take")
	}
}

// doneEnd is an end with done: the handler is done with the connection.
var doneEnd = &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{Done: true}}}
