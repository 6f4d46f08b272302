package listener

import "encoding/json"

// Echo writes back every byte it reads.
var Echo = HandlerKind{Name: "echo", New: func(opts json.RawMessage) (Handler, error) {
	return &echo{}, decodeOptions(opts, &struct{}{})
}}

type echo struct{}

// Serve's frame is kept small, for the same reason as Conn.serve's: an
// idle connection's goroutine waits in pump, below it.
func (*echo) Serve(c *Conn) error {
	var err error
	if c.filters != nil {
		err = echoFiltered(c)
	} else {
		err = c.pump(true, c.idle)
	}
	if err == nil && c.AllowHalfOpen() {
		err = c.halfOpen()
	}
	return err
}

// echoFiltered is the echo through the listener's filters: the peer's FIN
// goes through the in filters, and the daemon's side ends once it is out
// of them, unless half-open.
//
// Not inlined: keeps Serve's frame small.
//
//go:noinline
func echoFiltered(c *Conn) error {
	return c.In(echoStage{c.Out(), c.AllowHalfOpen()})
}

// echoStage turns the client's bytes around.
type echoStage struct {
	out      Stage
	halfOpen bool // keep the daemon's side open at the client's FIN
}

func (s echoStage) Write(p []byte) (int, error) { return s.out.Write(p) }

func (s echoStage) CloseWrite() error {
	if s.halfOpen {
		return nil
	}
	return s.out.CloseWrite()
}
