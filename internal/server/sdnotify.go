package server

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// The service manager's protocol (sd_notify, through go-systemd's daemon
// package; nothing is sent when $NOTIFY_SOCKET is not set): READY=1 with a
// STATUS= line once the API serves, WATCHDOG=1 while healthy when the unit
// has WatchdogSec=, and STOPPING=1 when a shutdown starts. Descriptors for
// the store go by sdNotifyFDs (fdstore.go): go-systemd cannot send them.

// notifyReady tells the service manager the daemon serves (READY=1, as
// Type=notify wants, and a STATUS= line for systemctl status); after an
// upgrade it also says which process is the service's main one now
// (MAINPID, which needs NotifyAccess=all).
func notifyReady(log *slog.Logger, upgraded bool, status string) {
	msg := sddaemon.SdNotifyReady + "\nSTATUS=" + status
	if upgraded {
		msg = fmt.Sprintf("MAINPID=%d\n%s", os.Getpid(), msg)
	}
	notify(log, msg)
}

// notifyStopping says a shutdown started, and why.
func notifyStopping(log *slog.Logger, status string) {
	notify(log, sddaemon.SdNotifyStopping+"\nSTATUS="+status)
}

func notify(log *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// watchdogInterval is the service manager's watchdog timeout
// ($WATCHDOG_USEC, WatchdogSec= in the unit), when it watches this process
// ($WATCHDOG_PID this one or unset); 0 when off. After an upgrade the new
// process has told systemd it is the main one (MAINPID): it pings whatever
// $WATCHDOG_PID, which names the old one. The variables stay set, for the
// process a later upgrade starts.
func watchdogInterval(log *slog.Logger, upgraded bool) time.Duration {
	if upgraded && os.Getenv("WATCHDOG_PID") != "" {
		os.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid())) // passed on to the next upgrade, which sets its own
	}
	d, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("watchdog off: the service manager's variables are unreadable", "err", err)
		return 0
	}
	return d
}

// watchdog sends WATCHDOG=1 every half interval while healthy says the
// daemon is; a daemon that is not (or whose check hangs) stops pinging,
// and the service manager restarts it. Stop ends it and waits for it.
type watchdog struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// startWatchdog starts pinging; nil when interval is 0.
func startWatchdog(log *slog.Logger, interval time.Duration, healthy func() error) *watchdog {
	if interval <= 0 {
		return nil
	}
	w := &watchdog{stop: make(chan struct{})}
	log.Info("systemd watchdog on", "timeout", interval, "ping_every", interval/2)
	w.wg.Go(func() {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		wasHealthy := true
		for {
			if err := healthy(); err != nil {
				if wasHealthy {
					log.Error("watchdog: not healthy; pings stop until it is", "err", err)
				}
				wasHealthy = false
			} else {
				if !wasHealthy {
					log.Info("watchdog: healthy again; pings resume")
				}
				wasHealthy = true
				notify(log, sddaemon.SdNotifyWatchdog)
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	})
	return w
}

// Stop ends the pings; no ping is sent once it returns. Nil is a no-op.
func (w *watchdog) Stop() {
	if w == nil {
		return
	}
	close(w.stop)
	w.wg.Wait()
}
