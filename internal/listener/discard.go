package listener

import "encoding/json"

// DiscardName is the discard handler's name, and the handler of a spec
// that names none.
const DiscardName = "discard"

// Discard reads and counts the bytes and sends nothing back.
var Discard = HandlerKind{Name: DiscardName, New: func(opts json.RawMessage) (Handler, error) {
	return discard{}, decodeOptions(opts, &struct{}{})
}}

type discard struct{}

func (discard) Serve(c *Conn) error {
	var err error
	if c.Filtered() {
		err = c.In(discardStage{})
	} else {
		err = c.pump(false, c.idle)
	}
	if err == nil && c.AllowHalfOpen() {
		err = c.halfOpen()
	}
	return err
}
