package server

import (
	"fmt"
	"net"
	"strconv"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/listener"
)

// Defaults of the configuration, for the daemon's flags.
const (
	DefaultHistory     = events.DefaultHistory
	DefaultHistoryData = events.DefaultHistoryData
	DefaultWatcherLag  = events.DefaultWatcherLag
	DefaultMaxWatchers = events.DefaultMaxWatchers
)

// DefaultHistoryBytes is the history's default byte budget, and
// minHistoryBytes the smallest one: a few thousand events.
const (
	DefaultHistoryBytes = events.DefaultHistoryBytes
	minHistoryBytes     = 1 << 20
)

// ParsePolicy reads the listener policy as the daemon's flags write it:
// ports and ranges ("0,8000-8999"), addresses and prefixes
// ("127.0.0.1,::1,10.0.0.0/8"), and whether privileged ports are allowed.
// Errors name the flag.
func ParsePolicy(ports, hosts string, allowPrivileged bool) (listener.Policy, error) {
	pr, err := listener.ParsePorts(ports)
	if err != nil {
		return listener.Policy{}, fmt.Errorf("--allow-ports: %w", err)
	}
	hp, err := listener.ParseHosts(hosts)
	if err != nil {
		return listener.Policy{}, fmt.Errorf("--allow-hosts: %w", err)
	}
	return listener.Policy{Ports: pr, Hosts: hp, NoPrivileged: !allowPrivileged}, nil
}

// Check validates the configuration before Run, naming the daemon's flag
// of each value it refuses. Run checks what only running can tell (the
// TCP API's files and addresses).
func (c Config) Check() error {
	switch {
	case c.Socket == "":
		return fmt.Errorf("--socket must not be empty")
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("--shutdown-timeout must not be negative")
	case c.ListenersResync < 0:
		return fmt.Errorf("--listeners-resync must not be negative (0: only when the file changes)")
	case !c.Ephemeral && c.StateDir == "":
		return fmt.Errorf("--state-dir must not be empty (or use --ephemeral)")
	case c.MaxListeners < 0:
		return fmt.Errorf("--max-listeners %d: must not be negative (0: unlimited)", c.MaxListeners)
	case c.MaxConnections < 0:
		return fmt.Errorf("--max-connections %d: must not be negative (0: unlimited)", c.MaxConnections)
	case c.History <= 0:
		return fmt.Errorf("--history %d: must be positive", c.History)
	case c.HistoryData <= 0:
		return fmt.Errorf("--history-data %d: must be positive", c.HistoryData)
	case c.HistoryBytes < minHistoryBytes:
		return fmt.Errorf("--history-bytes %d: at least %d (1 MiB)", c.HistoryBytes, minHistoryBytes)
	case c.WatcherLag <= 0:
		return fmt.Errorf("--watch-queue %d: must be positive", c.WatcherLag)
	case c.MaxWatchers <= 0:
		return fmt.Errorf("--max-watchers %d: must be positive", c.MaxWatchers)
	case c.History > events.MaxHistory:
		return fmt.Errorf("--history %d: at most %d events (about 150 bytes each)", c.History, events.MaxHistory)
	case c.MutationRate < 0:
		return fmt.Errorf("--api-rate %g: must not be negative (0: no limit)", c.MutationRate)
	case c.MutationBurst < 0:
		return fmt.Errorf("--api-burst %d: must not be negative", c.MutationBurst)
	case c.FDReserve < 0:
		return fmt.Errorf("--fd-reserve %d: must not be negative (0: the default)", c.FDReserve)
	}
	if err := checkHTTPAddr(c.HTTP); err != nil {
		return err
	}
	if err := c.Fleet.check(); err != nil {
		return err
	}
	if err := c.checkDeclaredSource(); err != nil {
		return err
	}
	return c.checkDescriptors()
}

// checkHTTPAddr checks --http is host:port, when given.
func checkHTTPAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--http %q: %v", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("--http %q: bad port %q", addr, port)
	}
	return nil
}

// checkDescriptors refuses a reserve that leaves the listeners no
// descriptors, and a --max-connections the descriptors cannot serve.
func (c Config) checkDescriptors() error {
	limit, reserve := descriptors(c.FDReserve)
	if limit == 0 {
		return nil
	}
	if reserve > limit-listenerBudgetMin {
		return fmt.Errorf("--fd-reserve %d: the open-file limit is %d, which would leave the listeners fewer than %d; lower it, or raise the limit (ulimit -n)",
			reserve, limit, listenerBudgetMin)
	}
	if c.MaxConnections > limit-reserve {
		return fmt.Errorf("--max-connections %d: the open-file limit is %d, and %d are kept for the API (--fd-reserve): at most %d; raise the limit (ulimit -n, LimitNOFILE=)",
			c.MaxConnections, limit, reserve, limit-reserve)
	}
	return nil
}

// listenerBudgetMin is the fewest descriptors the reserve must leave to
// listeners: one listener (two) and a connection.
const listenerBudgetMin = 3

// checkDeclaredSource refuses two sources of declared listeners at once:
// each would close the listeners the other declares.
func (c Config) checkDeclaredSource() error {
	if c.Listeners != "" && c.Fleet.Enabled() && c.Fleet.Desired {
		return fmt.Errorf("--listeners and --nats: the declared listeners come from one source, the file or the NATS bucket %s; "+
			"give --nats-desired=false to publish events to NATS while the file declares the listeners", fleet.Bucket)
	}
	return nil
}
