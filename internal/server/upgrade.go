package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/state"
)

// DefaultUpgradeTimeout bounds each wait on the new process of an
// upgrade: to take the sockets, then to serve.
const DefaultUpgradeTimeout = 60 * time.Second

// upgrader replaces this daemon process with a new one (UpgradeDaemon,
// SIGUSR2) and, once the new one serves, hands Run what it needs to drain
// and exit (done).
type upgrader struct {
	log      *slog.Logger
	self     string // this binary, as it was when the daemon started
	args     []string
	timeout  time.Duration
	bus      *events.Bus
	mgr      *listener.Manager
	socket   string
	unixLn   net.Listener
	sockLock *os.File
	store    *state.Store // nil when ephemeral
	tcpLn    net.Listener // nil: no TCP API
	metrics  net.Listener // nil: no metrics endpoint
	http     net.Listener // nil: no HTTP API

	mu     sync.Mutex // one upgrade at a time; held by Run once it shuts down
	closed bool       // under mu: Run is shutting down, or handed over
	done   chan *handedOver
}

// handedOver is an upgrade that went through: the new process serves.
type handedOver struct {
	h         *listener.Handoff
	div       *events.Diversion
	link      *link
	forwarded chan struct{} // closed once the diverted events are sent
	pid       int
	// failed: the new process died after this one stopped accepting;
	// Run drains and fails with it, and removes the socket as usual.
	failed error
}

// upgrade starts binary ("": this one) and hands everything over. It
// returns once the new process serves, or fails and leaves this one
// serving as before.
func (u *upgrader) upgrade(_ context.Context, binary string) (service.Upgraded, error) {
	if !u.mu.TryLock() {
		return service.Upgraded{}, service.ErrUpgradeBusy
	}
	defer u.mu.Unlock()
	if u.closed {
		return service.Upgraded{}, listener.ErrShuttingDown
	}
	if binary == "" {
		binary = u.self
	}
	log := u.log.With("binary", binary)
	log.Info("upgrade: starting the new listenerd")
	h, err := u.mgr.PrepareHandoff()
	if err != nil {
		return service.Upgraded{}, err
	}
	hist, snapHead := u.bus.Snapshot()
	k, cmd, exited, err := u.start(binary, h, hist, snapHead)
	if err != nil {
		h.Cancel()
		log.Warn("upgrade failed; serving on", "err", err)
		return service.Upgraded{}, fmt.Errorf("%s: %v: %w", binary, err, service.ErrUpgradeFailed)
	}
	fail := func(stage string, err error) (service.Upgraded, error) {
		k.close()
		err = u.reap(cmd, exited, err)
		log.Warn("upgrade failed; serving on", "stage", stage, "err", err)
		return service.Upgraded{}, fmt.Errorf("%s: %s: %v: %w", binary, stage, err, service.ErrUpgradeFailed)
	}
	deadline := func() { _ = k.c.SetReadDeadline(time.Now().Add(u.timeout)) }
	deadline()
	if err := k.expect(msgPrepared, nil); err != nil {
		h.Cancel()
		return fail("taking over the sockets", err)
	}
	// From here on this process accepts no more: the events recorded
	// from now on go to the new process, which numbers them.
	delta, head, div, err := u.bus.Divert(snapHead)
	if err != nil {
		h.Cancel()
		return fail("handing over the history", err)
	}
	var dbuf bytes.Buffer
	if err := events.WriteEvents(&dbuf, delta); err != nil {
		panic(err) // events always encode
	}
	// The path is the new process's now.
	if k, ok := u.unixLn.(interface{ Keep() }); ok {
		k.Keep()
	} else if ul, ok := u.unixLn.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	counters := h.Stop()
	draining := int64(0)
	all, _ := u.mgr.List()
	for _, l := range all {
		draining += int64(l.Active)
	}
	deadline()
	err = k.send(msgCommit, commitMsg{Counters: counters, Delta: dbuf.Bytes(), Head: head})
	var ready readyMsg
	if err == nil {
		err = k.expect(msgReady, &ready)
	}
	if err != nil {
		// Not recoverable here: the sockets are the new process's, which
		// holds them. Say so loudly; Run drains and exits as after an
		// upgrade, and the init system restarts the daemon.
		log.Error("upgrade failed after this process stopped accepting; draining, then exiting for the init system to restart the daemon", "err", err)
		_, uerr := fail("starting to serve", err)
		div.End()
		ho := &handedOver{h: h, div: div, link: k, forwarded: make(chan struct{}), failed: uerr}
		close(ho.forwarded)
		u.closed = true
		u.done <- ho
		return service.Upgraded{}, uerr
	}
	_ = k.c.SetReadDeadline(time.Time{})
	ho := &handedOver{h: h, div: div, link: k, forwarded: make(chan struct{}), pid: ready.PID}
	go ho.forward(log)
	u.closed = true
	u.done <- ho
	log.Info("upgrade: the new listenerd serves; draining", "pid", ready.PID, "head_seq", head, "draining", draining)
	return service.Upgraded{PID: ready.PID, Binary: binary, BootID: u.bus.BootID(), Head: head,
		Listeners: len(h.Files), Draining: draining}, nil
}

// start starts binary with this process's arguments and the link, and
// sends it the hello.
func (u *upgrader) start(binary string, h *listener.Handoff, hist []events.Event, head uint64) (*link, *exec.Cmd, chan error, error) {
	k, child, err := linkPair()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.Command(binary, u.args...)
	cmd.Env = append(os.Environ(), upgradeEnv+"=3")
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	child.Close()
	if err != nil {
		k.close()
		return nil, nil, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // the child may outlive this process: then it never returns
	hello, files, err := u.hello(h, hist, head)
	if err == nil {
		err = k.sendFiles(files)
		for _, f := range files[:max(0, len(files)-len(h.Files))] {
			f.Close() // the copies made here; Handoff.Cancel closes the listeners'
		}
	}
	if err == nil {
		err = k.send(msgHello, hello)
	}
	if err != nil {
		k.close()
		return nil, nil, nil, u.reap(cmd, exited, err)
	}
	return k, cmd, exited, nil
}

// hello builds the first message and the descriptors it names, listeners
// last.
func (u *upgrader) hello(h *listener.Handoff, hist []events.Event, head uint64) (helloMsg, []*os.File, error) {
	m := helloMsg{Socket: u.socket, RecordVersion: listener.RecordVersion, Records: h.Records, BootID: u.bus.BootID()}
	var files []*os.File
	add := func(ln net.Listener) error {
		f, err := fileOf(ln)
		if err == nil {
			files = append(files, f)
		}
		return err
	}
	fail := func(err error) (helloMsg, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return m, nil, err
	}
	dup := func(f *os.File) error {
		c, err := dupFile(f)
		if err == nil {
			files = append(files, c)
		}
		return err
	}
	if err := dup(u.sockLock); err != nil {
		return fail(err)
	}
	if err := add(u.unixLn); err != nil {
		return fail(err)
	}
	if u.store != nil {
		m.StateLock = true
		if err := dup(u.store.LockFile()); err != nil {
			return fail(err)
		}
	}
	if u.tcpLn != nil {
		m.TCP = true
		if err := add(u.tcpLn); err != nil {
			return fail(err)
		}
	}
	if u.metrics != nil {
		m.Metrics = true
		if err := add(u.metrics); err != nil {
			return fail(err)
		}
	}
	if u.http != nil {
		m.HTTP = true
		if err := add(u.http); err != nil {
			return fail(err)
		}
	}
	var buf bytes.Buffer
	if err := events.WriteEvents(&buf, hist); err != nil {
		return fail(err)
	}
	m.History, m.Head = buf.Bytes(), head
	for _, id := range h.Order {
		m.Listeners = append(m.Listeners, id)
		files = append(files, h.Files[id])
	}
	return m, files, nil
}

// reap kills the new process unless it has exited, and explains err with
// how it ended.
func (u *upgrader) reap(cmd *exec.Cmd, exited chan error, err error) error {
	select {
	case werr := <-exited:
		return fmt.Errorf("%v (the new process exited: %v)", err, werr)
	case <-time.After(time.Second):
	}
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("%v (the new process was killed)", err)
}

// forward sends the events this process records while it drains to the
// new process, which publishes them in the one sequence, then msgEnd.
func (ho *handedOver) forward(log *slog.Logger) {
	defer close(ho.forwarded)
	broken := false
	for {
		evs, ended := ho.div.Take()
		if len(evs) > 0 && !broken {
			var buf bytes.Buffer
			err := events.WriteEvents(&buf, evs)
			if err == nil {
				err = ho.link.send(msgEvents, buf.Bytes())
			}
			if err != nil {
				log.Error("upgrade: events of draining connections not forwarded", "err", err, "lost", len(evs))
				broken = true
			}
		}
		if ended {
			if !broken {
				_ = ho.link.send(msgEnd, nil)
			}
			ho.link.close()
			return
		}
		<-ho.div.Wake()
	}
}

// quiesce ends upgrades for Run's shutdown, waiting for one under way,
// and returns the upgrade that went through, if one did.
func (u *upgrader) quiesce() *handedOver {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	select {
	case ho := <-u.done:
		return ho
	default:
		return nil
	}
}

var errNoFile = errors.New("no file")

// dupCloexec duplicates fd, close-on-exec: no other child inherits it.
func dupCloexec(fd int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	n, err := syscall.Dup(fd)
	if err == nil {
		syscall.CloseOnExec(n)
	}
	return n, err
}

func dupFile(f *os.File) (*os.File, error) {
	if f == nil {
		return nil, errNoFile
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = dupCloexec(int(fd)) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}
