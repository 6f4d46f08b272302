package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/state"
)

// inheritance is what a daemon started by an upgrade was handed: it binds
// none of it again.
type inheritance struct {
	link      *link
	hello     helloMsg
	sockLock  *os.File
	unixLn    net.Listener
	stateLock *os.File // nil: none handed
	tcp       net.Listener
	metrics   net.Listener
	http      net.Listener
	listeners map[string]*os.File
	readied   bool           // ready was sent
	wg        sync.WaitGroup // the import of forwarded events
}

// inherit reads what the old daemon hands over, when this process was
// started by an upgrade ($LISTENERD_UPGRADE_FD); nil otherwise.
func inherit(socket string) (*inheritance, error) {
	v, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(upgradeEnv) // not for this process's own children
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("$%s=%q: not a descriptor", upgradeEnv, v)
	}
	k, err := newLink(os.NewFile(uintptr(fd), "upgrade-link"))
	if err != nil {
		return nil, err
	}
	in := &inheritance{link: k}
	if err := in.read(socket); err != nil {
		in.fail(err)
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	return in, nil
}

func (in *inheritance) read(socket string) error {
	_ = in.link.c.SetReadDeadline(time.Now().Add(DefaultUpgradeTimeout))
	if err := in.link.expect(msgHello, &in.hello); err != nil {
		return err
	}
	h := &in.hello
	n := 2 + len(h.Listeners)
	for _, b := range []bool{h.StateLock, h.TCP, h.Metrics, h.HTTP} {
		if b {
			n++
		}
	}
	files, err := in.link.takeFiles(n, "inherited")
	if err != nil {
		return err
	}
	next := func() *os.File { f := files[0]; files = files[1:]; return f }
	in.sockLock = next()
	if h.Socket != socket {
		return fmt.Errorf("the old daemon serves on %s, this one is told %s: start it with the same --socket", h.Socket, socket)
	}
	if err := state.SameFile(in.sockLock, socket+".lock"); err != nil {
		return err
	}
	if in.unixLn, err = net.FileListener(next()); err != nil {
		return fmt.Errorf("API socket: %w", err)
	}
	if h.StateLock {
		in.stateLock = next()
	}
	if h.TCP {
		if in.tcp, err = net.FileListener(next()); err != nil {
			return fmt.Errorf("TCP API socket: %w", err)
		}
	}
	if h.Metrics {
		if in.metrics, err = net.FileListener(next()); err != nil {
			return fmt.Errorf("metrics socket: %w", err)
		}
	}
	if h.HTTP {
		if in.http, err = net.FileListener(next()); err != nil {
			return fmt.Errorf("HTTP API socket: %w", err)
		}
	}
	in.listeners = make(map[string]*os.File, len(h.Listeners))
	for _, id := range h.Listeners {
		in.listeners[id] = next()
	}
	return nil
}

// closeUnused closes what was handed over and not taken.
func (in *inheritance) closeUnused() {
	for _, f := range in.listeners {
		f.Close()
	}
	if in.tcp != nil {
		in.tcp.Close()
	}
	if in.metrics != nil {
		in.metrics.Close()
	}
	if in.http != nil {
		in.http.Close()
	}
	if in.stateLock != nil {
		in.stateLock.Close()
	}
}

// fail tells the old daemon why this one gives up; it serves on.
func (in *inheritance) fail(err error) {
	_ = in.link.send(msgFailed, err.Error())
	in.link.close()
}

// tcpListener is the inherited TCP API socket, capped and checked as
// listenTCP does; nil when none was handed over.
func (in *inheritance) tcpListener(api *tcpAPI, refusals *refusalLog) (*gate, error) {
	ln := in.tcp
	in.tcp = nil
	if ln == nil {
		return nil, nil
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); api.creds == nil && (!ok || !ta.IP.IsLoopback()) {
		ln.Close()
		return nil, fmt.Errorf("refusing to serve the API on %s without TLS: it is not a loopback address", ln.Addr())
	}
	return newGate(ln, api.maxConns, api.unauthPerSource, api.unauthTimeout, refusals), nil
}

// adopt takes the history, the listeners and, at the old daemon's
// commit, their counters; then the listeners accept. The caller serves the
// API and calls ready.
func (in *inheritance) adopt(ctx context.Context, bus *events.Bus, mgr *listener.Manager, log *slog.Logger) error {
	h := &in.hello
	hist, err := events.ReadEvents(bytes.NewReader(h.History))
	if err == nil {
		err = bus.Resume(h.BootID, hist, h.Head)
	}
	if err != nil {
		return fmt.Errorf("event history: %w", err)
	}
	recs, err := listener.UpgradeRecords(h.RecordVersion, h.Records)
	if err != nil {
		return err
	}
	files := in.listeners
	in.listeners = nil
	a, err := mgr.Adopt(ctx, recs, files)
	if err != nil {
		return err
	}
	if err := in.link.send(msgPrepared, nil); err != nil {
		a.Abandon()
		return err
	}
	var c commitMsg
	err = in.link.expect(msgCommit, &c)
	if err == nil {
		var delta []events.Event
		if delta, err = events.ReadEvents(bytes.NewReader(c.Delta)); err == nil {
			err = bus.Resume(h.BootID, delta, c.Head)
		}
	}
	if err != nil {
		a.Abandon()
		return fmt.Errorf("commit: %w", err)
	}
	n := a.Listening()
	a.Start(c.Counters)
	log.Info("upgrade: took over", "listeners", n, "boot", h.BootID, "head_seq", c.Head)
	return nil
}

// ready tells the old daemon this one serves, then publishes the events
// it forwards until it ends them (or goes away).
func (in *inheritance) ready(bus *events.Bus, log *slog.Logger) error {
	in.readied = true
	if err := in.link.send(msgReady, readyMsg{PID: os.Getpid()}); err != nil {
		return err
	}
	_ = in.link.c.SetReadDeadline(time.Time{})
	in.wg.Go(func() {
		defer in.link.close()
		n := 0
		for {
			var b []byte
			kind, err := in.link.recv(&b)
			if err != nil || kind == msgEnd {
				if err != nil && !errors.Is(err, net.ErrClosed) {
					log.Warn("upgrade: the old daemon's events stopped", "err", err, "imported", n)
				} else {
					log.Info("upgrade: the old daemon has drained", "imported", n)
				}
				return
			}
			evs, err := events.ReadEvents(bytes.NewReader(b))
			if err != nil {
				log.Warn("upgrade: unreadable events from the old daemon", "err", err)
				continue
			}
			for _, e := range evs {
				bus.Import(e)
			}
			n += len(evs)
		}
	})
	return nil
}

// stop ends the import of forwarded events, for shutdown.
func (in *inheritance) stop() {
	in.link.close()
	in.wg.Wait()
}
