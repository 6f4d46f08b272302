package listener

import "encoding/json"

// DiscardName is the discard handler's name, and the handler of a spec
// that names none.
const DiscardName = "discard"

// Discard reads and counts the bytes and sends nothing back.
var Discard = HandlerKind{Name: DiscardName, New: func(opts json.RawMessage) (Handler, error) {
	return &discard{}, decodeOptions(opts, &struct{}{})
}}

type discard struct{}

// Serve's frame is kept small: see echo's.
func (*discard) Serve(c *Conn) error {
	var err error
	if c.filters != nil {
		err = discardFiltered(c)
	} else {
		err = c.pump(false, c.idle)
	}
	if err == nil && c.AllowHalfOpen() {
		err = c.halfOpen()
	}
	return err
}

// discardFiltered is discard through the listener's filters.
//
// Not inlined: keeps Serve's frame small.
//
//go:noinline
func discardFiltered(c *Conn) error { return c.In(discardStage{}) }
