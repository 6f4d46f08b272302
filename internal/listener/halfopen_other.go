//go:build !linux

package listener

// peerGone is Linux's watch for a half-open peer that vanished; elsewhere
// the connection is held until the daemon closes it or its idle timeout
// does.
func (c *Conn) peerGone() error {
	<-c.killed()
	return nil
}
