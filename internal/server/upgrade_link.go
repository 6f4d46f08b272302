package server

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/listenerd/listenerd/internal/listener"
)

// The upgrade link is a unix stream socketpair between the old daemon and
// the new one it started (inherited as descriptor 3, named by upgradeEnv).
// A frame is a 4-byte big-endian length, a kind byte and a gob payload;
// descriptors travel with msgFiles frames (SCM_RIGHTS, at most
// maxFDsPerFrame each), in the order the hello that follows names them.
//
//	old → new: msgFiles…, msgHello (sockets, records, history)
//	new → old: msgPrepared, or msgFailed (why)
//	old → new: msgCommit (counters, the rest of the history)
//	new → old: msgReady, or msgFailed
//	old → new: msgEvents… (what its draining connections record), msgEnd
const (
	msgFiles byte = iota + 1
	msgHello
	msgPrepared
	msgFailed
	msgCommit
	msgReady
	msgEvents
	msgEnd
)

// upgradeEnv names the descriptor of the link in the new process.
const upgradeEnv = "LISTENERD_UPGRADE_FD"

const maxFDsPerFrame = 200

// helloMsg is what the old process hands over first.
type helloMsg struct {
	Socket        string // the API socket path, for the new one to check
	RecordVersion int
	Records       []json.RawMessage
	Listeners     []string // ids of the listening sockets, in descriptor order
	StateLock     bool     // a state directory lock follows the API socket
	TCP, Metrics  bool     // their listeners follow, in this order
	HTTP          bool     // the HTTP API's listener follows, after those
	BootID        string
	History       []byte // events.WriteEvents
	Head          uint64
}

// commitMsg is sent once the old process has stopped accepting.
type commitMsg struct {
	Counters map[string]listener.Counters
	Delta    []byte // events.WriteEvents: those after the hello's head
	Head     uint64
}

// readyMsg is the new process's word that it accepts and serves.
type readyMsg struct{ PID int }

// link is one end of the upgrade socketpair.
type link struct {
	c   *net.UnixConn
	wmu sync.Mutex
	fds []int // received, not taken yet
}

func newLink(f *os.File) (*link, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("upgrade link: a %T, not a unix socket", c)
	}
	return &link{c: uc}, nil
}

// linkPair returns a connected pair: this process's end and the file to
// give the child.
func linkPair() (*link, *os.File, error) {
	syscall.ForkLock.RLock() // no child started meanwhile inherits them
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1]) // ExtraFiles dups it for the child
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	l, err := newLink(os.NewFile(uintptr(fds[0]), "upgrade-link"))
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	return l, os.NewFile(uintptr(fds[1]), "upgrade-link-child"), nil
}

func (k *link) close() { _ = k.c.Close() }

// send writes one frame of kind with v gob-encoded (none when v is nil).
func (k *link) send(kind byte, v any) error {
	var buf bytes.Buffer
	buf.Write(make([]byte, 5))
	if v != nil {
		if err := gob.NewEncoder(&buf).Encode(v); err != nil {
			return err
		}
	}
	b := buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(len(b)-5))
	b[4] = kind
	k.wmu.Lock()
	defer k.wmu.Unlock()
	_, err := k.c.Write(b)
	return err
}

// sendFiles sends files, in order, in msgFiles frames.
func (k *link) sendFiles(files []*os.File) error {
	k.wmu.Lock()
	defer k.wmu.Unlock()
	for len(files) > 0 {
		n := min(len(files), maxFDsPerFrame)
		fds := make([]int, n)
		for i, f := range files[:n] {
			fd, err := rawFD(f)
			if err != nil {
				return err
			}
			fds[i] = fd
		}
		hdr := []byte{0, 0, 0, 0, msgFiles}
		if _, _, err := k.c.WriteMsgUnix(hdr, syscall.UnixRights(fds...), nil); err != nil {
			return err
		}
		files = files[n:]
	}
	return nil
}

// read fills b, keeping the descriptors that come along.
func (k *link) read(b []byte) error {
	oob := make([]byte, syscall.CmsgSpace(4*253))
	for len(b) > 0 {
		n, oobn, _, _, err := k.c.ReadMsgUnix(b, oob)
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return perr
			}
			for _, m := range msgs {
				fds, perr := syscall.ParseUnixRights(&m)
				if perr == nil {
					k.fds = append(k.fds, fds...)
				}
			}
		}
		b = b[n:]
		if err != nil {
			if n > 0 && len(b) == 0 {
				return nil
			}
			return err
		}
		if n == 0 {
			return io.EOF
		}
	}
	return nil
}

// recv reads the next frame that is not msgFiles; with v not nil, its
// payload is decoded into v. A msgFailed frame is returned as an error.
func (k *link) recv(v any) (byte, error) {
	for {
		hdr := make([]byte, 5)
		if err := k.read(hdr); err != nil {
			return 0, err
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr))
		if err := k.read(body); err != nil {
			return 0, err
		}
		switch kind := hdr[4]; kind {
		case msgFiles:
			continue
		case msgFailed:
			var why string
			if err := gob.NewDecoder(bytes.NewReader(body)).Decode(&why); err != nil {
				return kind, errors.New("the new process failed, and its reason is unreadable")
			}
			return kind, errors.New(why)
		default:
			if v != nil && len(body) > 0 {
				if err := gob.NewDecoder(bytes.NewReader(body)).Decode(v); err != nil {
					return kind, fmt.Errorf("upgrade link: frame %d: %w", kind, err)
				}
			}
			return kind, nil
		}
	}
}

// expect receives a frame that must be of kind want.
func (k *link) expect(want byte, v any) error {
	kind, err := k.recv(v)
	if err != nil {
		return err
	}
	if kind != want {
		return fmt.Errorf("upgrade link: frame %d, expected %d", kind, want)
	}
	return nil
}

// takeFiles takes the next n descriptors received.
func (k *link) takeFiles(n int, name string) ([]*os.File, error) {
	if len(k.fds) < n {
		return nil, fmt.Errorf("upgrade link: %d descriptors received, %d expected", len(k.fds), n)
	}
	out := make([]*os.File, n)
	for i, fd := range k.fds[:n] {
		syscall.CloseOnExec(fd)
		out[i] = os.NewFile(uintptr(fd), name)
	}
	k.fds = k.fds[n:]
	return out, nil
}

// fileOf returns a copy of a listener's socket, for the new process.
func fileOf(ln net.Listener) (*os.File, error) {
	if l, ok := ln.(interface{ File() (*os.File, error) }); ok {
		return l.File()
	}
	return nil, fmt.Errorf("a %T cannot be handed over", ln)
}

// rawFD is f's descriptor, without f.Fd(), which would put it in
// blocking mode: a flag of the open file, shared with the listener it was
// copied from, whose accept loop would then block in the kernel.
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return 0, err
	}
	return fd, nil
}
