package server

import (
	"fmt"
	"log/slog"
	"net"
	"os"
)

// notifyReady tells the service manager the daemon serves (sd_notify
// READY=1 on $NOTIFY_SOCKET, when set, as Type=notify wants); after an
// upgrade it also says which process is the service's main one now
// (MAINPID, which needs NotifyAccess=all). Written by hand: one datagram.
func notifyReady(log *slog.Logger, upgraded bool) {
	msg := "READY=1"
	if upgraded {
		msg = fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())
	}
	if err := sdNotify(msg); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
}

// sdNotify sends state to $NOTIFY_SOCKET; nothing when it is not set.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract namespace
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
