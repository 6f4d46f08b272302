package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// watcher is one WatchEvents stream on its own client connection, read as
// fast as it comes. It decodes only what the bench needs (each event's
// listener id and whether it is a connection-closed event, by a protowire
// scan), so that the watchers' own CPU, which shares the machine with the
// daemon and the load, distorts cases a and g as little as it can. A client
// that decodes every event into Go structs (ctl watch) costs more.
type watcher struct {
	conn     *grpc.ClientConn
	cancel   context.CancelFunc
	listener string
	closed   atomic.Int64 // connection-closed events of the listener
	events   atomic.Int64 // every event received
	resps    atomic.Int64 // responses received
	done     chan struct{}
	err      error
}

// attachWatchers opens n watchers of every event and returns once each has
// its first response, so they are attached before the load starts. They
// count the connection-closed events of listener.
func attachWatchers(ctx context.Context, socket string, n int, listener string) ([]*watcher, error) {
	var ws []*watcher
	for range n {
		w, err := attachWatcher(ctx, socket, listener)
		if err != nil {
			detachWatchers(ws)
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func attachWatcher(ctx context.Context, socket, listener string) (*watcher, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &watcher{conn: conn, cancel: cancel, listener: listener, done: make(chan struct{})}
	fail := func(err error) (*watcher, error) {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("WatchEvents: %w", err)
	}
	stream, err := conn.NewStream(wctx, &listenerdv1.ListenerService_ServiceDesc.Streams[0],
		listenerdv1.ListenerService_WatchEvents_FullMethodName, grpc.ForceCodec(scanCodec{}))
	if err != nil {
		return fail(err)
	}
	if err := stream.SendMsg(&listenerdv1.WatchEventsRequest{}); err != nil {
		return fail(err)
	}
	if err := stream.CloseSend(); err != nil {
		return fail(err)
	}
	guard := time.AfterFunc(30*time.Second, cancel) // bounds the first Recv
	var first batch
	err = stream.RecvMsg(&first)
	guard.Stop()
	if err != nil {
		return fail(fmt.Errorf("first response: %w", err))
	}
	go func() {
		defer close(w.done)
		m := batch{listener: listener}
		for {
			m.events, m.closed = 0, 0
			if err := stream.RecvMsg(&m); err != nil {
				w.err = err
				return
			}
			w.resps.Add(1)
			w.events.Add(m.events)
			w.closed.Add(m.closed)
		}
	}()
	return w, nil
}

// batch is what scanCodec reads from one WatchEventsResponse.
type batch struct {
	listener       string // count the closed events of this listener
	events, closed int64
}

// scanCodec marshals requests as usual and scans responses into a *batch
// without building the messages.
type scanCodec struct{}

func (scanCodec) Name() string { return "proto" }

func (scanCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("scanCodec: cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

func (scanCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*batch)
	if !ok {
		return fmt.Errorf("scanCodec: cannot unmarshal into %T", v)
	}
	return b.scan(data)
}

// Field numbers of listenerd.v1 messages the scan reads.
const (
	fieldResponseEvents  = 1  // WatchEventsResponse.events
	fieldEventListenerID = 3  // Event.listener_id
	fieldEventConnClosed = 12 // Event.connection_closed
	errScan              = "scanCodec: malformed WatchEventsResponse"
)

func (b *batch) scan(data []byte) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errors.New(errScan)
		}
		data = data[n:]
		if num != fieldResponseEvents || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, data); n < 0 {
				return errors.New(errScan)
			}
			data = data[n:]
			continue
		}
		ev, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return errors.New(errScan)
		}
		data = data[n:]
		b.events++
		var id []byte
		closed := false
		for len(ev) > 0 {
			num, typ, n := protowire.ConsumeTag(ev)
			if n < 0 {
				return errors.New(errScan)
			}
			ev = ev[n:]
			switch {
			case num == fieldEventListenerID && typ == protowire.BytesType:
				id, n = protowire.ConsumeBytes(ev)
			case num == fieldEventConnClosed && typ == protowire.BytesType:
				closed = true
				n = protowire.ConsumeFieldValue(num, typ, ev)
			default:
				n = protowire.ConsumeFieldValue(num, typ, ev)
			}
			if n < 0 {
				return errors.New(errScan)
			}
			ev = ev[n:]
		}
		if closed && string(id) == b.listener {
			b.closed++
		}
	}
	return nil
}

// waitWatchers waits until every watcher has read want connection-closed
// events, failing if one ends first or timeout passes.
func waitWatchers(ctx context.Context, ws []*watcher, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, w := range ws {
		for w.closed.Load() < want {
			select {
			case <-w.done:
				return fmt.Errorf("watcher ended after %d of %d close events: %v", w.closed.Load(), want, w.err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("watcher read %d of %d close events in %v", w.closed.Load(), want, timeout)
			}
		}
	}
	return nil
}

// batching returns the events and responses the watchers received.
func batching(ws []*watcher) (events, resps int64) {
	for _, w := range ws {
		events += w.events.Load()
		resps += w.resps.Load()
	}
	return events, resps
}

// detachWatchers ends the watchers and waits for their goroutines.
func detachWatchers(ws []*watcher) {
	for _, w := range ws {
		w.cancel()
	}
	for _, w := range ws {
		<-w.done
		w.conn.Close()
	}
}
