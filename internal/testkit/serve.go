package testkit

import (
	"net"
	"sync"
	"testing"
)

// Serve runs handle for every connection ln accepts, each on a goroutine
// of its own, closing the connection after it, until ln's Accept fails.
// Cleanup closes ln and waits for every goroutine.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}
