package ctl

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/listener"
)

// natsWait bounds ctl's requests to NATS: a guard.
const natsWait = 10 * time.Second

// bucketKey is one key of the bucket as ctl read it.
type bucketKey struct {
	value    []byte
	revision uint64
	created  time.Time // the server's time of the write
}

// openFleetBucket connects and returns the bucket, and its keys of kind
// (fleet.DesiredPrefix, fleet.StatusPrefix, fleet.HostPrefix) by key. create makes a bucket
// that does not exist yet (with replicas); without it, a missing bucket
// has no keys and kv is nil.
func openFleetBucket(ctx context.Context, conn fleet.ConnConfig, create bool, replicas int, kinds ...string) (nc *nats.Conn, kv jetstream.KeyValue, keys map[string]bucketKey, err error) {
	nc, err = conn.Connect()
	if err != nil {
		return nil, nil, nil, natsError("cannot reach NATS: %v", err)
	}
	defer func() {
		if err != nil {
			nc.Close()
		}
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, nil, err
	}
	octx, cancel := context.WithTimeout(ctx, natsWait)
	defer cancel()
	if create {
		kv, err = fleet.OpenBucket(octx, js, replicas)
	} else if kv, err = js.KeyValue(octx, fleet.Bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		return nc, nil, map[string]bucketKey{}, nil
	}
	if err != nil {
		return nil, nil, nil, natsError("bucket %s: %v", fleet.Bucket, err)
	}
	var patterns []string
	for _, k := range kinds {
		if k == fleet.HostPrefix {
			patterns = append(patterns, fleet.AllHostKeys)
		} else {
			patterns = append(patterns, fleet.HostKeys(k, "*"))
		}
	}
	w, err := kv.WatchFiltered(octx, patterns, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, nil, nil, natsError("watching %s: %v", fleet.Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	keys = map[string]bucketKey{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, nil, nil, natsError("the watch of %s ended", fleet.Bucket)
			}
			if e == nil {
				return nc, kv, keys, nil
			}
			keys[e.Key()] = bucketKey{value: e.Value(), revision: e.Revision(), created: e.Created()}
		case <-octx.Done():
			if ctx.Err() != nil {
				return nil, nil, nil, ctx.Err()
			}
			return nil, nil, nil, natsError("reading %s: no answer within %v", fleet.Bucket, natsWait)
		}
	}
}

// keyChange is one step of ctl fleet apply's plan: create, update or
// delete a desired key, or leave it.
type keyChange struct {
	Action string   `json:"action"` // create, update, delete, unchanged
	Name   string   `json:"name"`
	Key    string   `json:"key"`
	Diff   []string `json:"diff,omitempty"`
	Note   string   `json:"note,omitempty"`
	Error  string   `json:"error,omitempty"`

	value    []byte
	revision uint64 // of the key now; 0: none
}

// String is the change as one line, as ctl apply prints its changes.
func (c keyChange) String() string {
	return declare.Change{Action: declare.Action(c.Action), Name: c.Name, Diff: c.Diff, Note: c.Note}.String()
}

// hostPlan is one host's part of the plan.
type hostPlan struct {
	Host    string      `json:"host"`
	Changes []keyChange `json:"changes"`
}

// planFleet compares the file's hosts with the bucket's desired keys.
func planFleet(file string, fl *declare.Fleet, keys map[string]bucketKey, prune bool) ([]hostPlan, error) {
	var plans []hostPlan
	for _, host := range fl.Names {
		hp := hostPlan{Host: host, Changes: []keyChange{}}
		named := map[string]bool{}
		for _, e := range fl.Hosts[host].Entries {
			named[e.Name] = true
			value, err := declare.EncodeEntry(e)
			if err != nil {
				return nil, fmt.Errorf("host %q listener %q: %v", host, e.Name, err)
			}
			key := fleet.DesiredKey(host, e.Name)
			c := keyChange{Name: e.Name, Key: key, value: value}
			cur, ok := keys[key]
			switch {
			case !ok:
				c.Action = "create"
			case string(cur.value) == string(value):
				c.Action, c.revision = "unchanged", cur.revision
			default:
				c.Action, c.revision = "update", cur.revision
				old, err := declare.ParseEntry(key, e.Name, cur.value, listener.DefaultDrainTimeout)
				if err != nil {
					c.Note = "its value now does not read"
				} else {
					c.Diff = declare.DiffEntries(old, e)
				}
			}
			hp.Changes = append(hp.Changes, c)
		}
		if prune {
			for _, key := range slices.Sorted(maps.Keys(keys)) {
				_, h, name, ok := fleet.SplitKey(key)
				if !ok || h != host || named[name] {
					continue
				}
				hp.Changes = append(hp.Changes, keyChange{Action: "delete", Name: name, Key: key, revision: keys[key].revision,
					Note: "not in " + file})
			}
		}
		order := []string{"delete", "update", "create", "unchanged"}
		slices.SortStableFunc(hp.Changes, func(a, b keyChange) int {
			return slices.Index(order, a.Action) - slices.Index(order, b.Action)
		})
		plans = append(plans, hp)
	}
	return plans, nil
}

// write carries a change out, refusing it when the key changed since the
// plan read it.
func (c *keyChange) write(ctx context.Context, kv jetstream.KeyValue) error {
	octx, cancel := context.WithTimeout(ctx, natsWait)
	defer cancel()
	var err error
	switch c.Action {
	case "create":
		_, err = kv.Create(octx, c.Key, c.value)
	case "update":
		_, err = kv.Update(octx, c.Key, c.value, c.revision)
	case "delete":
		err = kv.Delete(octx, c.Key, jetstream.LastRevision(c.revision))
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return status.Errorf(codes.Aborted, "%s changed since the plan was made: run ctl fleet apply again", c.Key)
	}
	if err != nil {
		return natsError("%s: %v", c.Key, err)
	}
	return nil
}

func (a *app) fleetApplyCmd() *cobra.Command {
	var conn fleet.ConnConfig
	var file string
	var dryRun, prune bool
	var replicas int
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Write a fleet file's listeners, host by host, to the bucket the daemons reconcile",
		Long: `Write the desired listeners of each host of a fleet file to the NATS
key-value bucket ` + fleet.Bucket + `, which each daemon started with --nats
reconciles for its own --host-name. The file names hosts, each holding what
a listeners file holds (see the README's "Declared listeners"):

  hosts:
    east:
      listeners:
        web: {spec: {host: 127.0.0.1, port: 8080, handler: {echo: {}}}}
      drainTimeout: 5s
    west:
      listeners: {}

ctl prints the plan first, host by host, computed against the bucket's
desired keys (not the daemons):

  host east:
    create web
    update api: max_connections 10 -> 100
    delete old (not in fleet.yaml)          only with --prune
    unchanged chat

then writes it; a key changed by someone else since the plan was read is
not overwritten (exit code of ABORTED). --dry-run stops after the plan.
--prune deletes the keys of listeners, on the hosts the file names, that it
does not name; other hosts are never touched. -o json prints the plan and
each change's outcome as one JSON document. ctl fleet ls shows what the
daemons made of it.

--nats, --nats-creds, --nats-token-file and --nats-ca default to
LISTENERD_NATS, LISTENERD_NATS_CREDS, LISTENERD_NATS_TOKEN_FILE and
LISTENERD_NATS_CA.`,
		Example: `  ctl fleet apply -f fleet.yaml --dry-run
  ctl fleet apply -f fleet.yaml --prune -o json`,
		Args: exactArgs(0, "no arguments (the file is -f FILE)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErrorf("-f FILE is required")
			}
			if err := checkNATS(conn); err != nil {
				return err
			}
			if replicas < 1 || replicas > 5 {
				return usageErrorf("--nats-replicas %d: 1 to 5", replicas)
			}
			fl, err := declare.ReadFleetFile(file, func(h string) error { return fleet.CheckToken("host name", h) })
			if err != nil {
				return usageErrorf("%v", err)
			}
			conn.Name = "ctl fleet apply"
			nc, kv, keys, err := openFleetBucket(cmd.Context(), conn, !dryRun, replicas, fleet.DesiredPrefix)
			if err != nil {
				return err
			}
			defer nc.Close()
			plans, err := planFleet(file, fl, keys, prune)
			if err != nil {
				return usageErrorf("%v", err)
			}
			return a.applyFleet(cmd.Context(), kv, plans, dryRun)
		},
	}
	f := cmd.Flags()
	natsFlags(f, &conn)
	f.StringVarP(&file, "filename", "f", "", "the fleet file (YAML: hosts: {HOST: {listeners: ...}})")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	f.BoolVar(&prune, "prune", false, "delete the keys of listeners the file does not name, on the hosts it names")
	f.IntVar(&replicas, "nats-replicas", 1, "replicas of the bucket "+fleet.Bucket+" when ctl creates it (1-5)")
	return cmd
}

// applyFleet prints the plan and, unless dryRun, writes it.
func (a *app) applyFleet(ctx context.Context, kv jetstream.KeyValue, plans []hostPlan, dryRun bool) error {
	if !a.json() {
		for _, hp := range plans {
			fmt.Fprintf(a.stdout, "host %s:\n", hp.Host)
			for _, c := range hp.Changes {
				fmt.Fprintf(a.stdout, "  %s\n", c)
			}
		}
		if dryRun {
			a.note("dry run: nothing was changed")
		}
	}
	var first error
	failed, total := 0, 0
	for i := range plans {
		for j := range plans[i].Changes {
			c := &plans[i].Changes[j]
			if dryRun || c.Action == "unchanged" {
				continue
			}
			total++
			if err := c.write(ctx, kv); err != nil {
				c.Error = err.Error()
				failed++
				if first == nil {
					first = err
				}
				if !a.json() {
					msg, _ := a.describe(err)
					a.note("%s %s on %s: %s", c.Action, c.Name, plans[i].Host, msg)
				}
			}
		}
	}
	if a.json() {
		enc := json.NewEncoder(a.stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(struct {
			DryRun bool       `json:"dryRun"`
			Hosts  []hostPlan `json:"hosts"`
		}{dryRun, plans}); err != nil {
			return err
		}
	}
	if first != nil {
		_, code := a.describe(first)
		return &messageError{code: code, msg: fmt.Sprintf("%d of %d changes failed", failed, total)}
	}
	return nil
}

// lsRow is one desired listener in ctl fleet ls.
type lsRow struct {
	Host     string          `json:"host"`
	Name     string          `json:"name"`
	Revision uint64          `json:"revision"`
	Desired  json.RawMessage `json:"desired"`
	// Status is the daemon's report; nil when it has written none.
	Status *fleet.Status `json:"status"`
	// Pending: the status is of an older revision than the desired key's.
	Pending bool `json:"pending"`
	// Deleted: the desired key is deleted, and the daemon still reports
	// the listener (it drains); Desired is null.
	Deleted bool `json:"deleted"`
	// HostState is the liveness of the host's daemon (fleet.HostUp,
	// HostGone, HostStopped, HostUnknown); HostSeen the NATS server's
	// time of its host key's last write, absent without one.
	HostState string     `json:"hostState"`
	HostSeen  *time.Time `json:"hostSeen,omitempty"`
}

// lsHost is one host key in ctl fleet ls -o json.
type lsHost struct {
	Host  string    `json:"host"`
	State string    `json:"state"`
	Seen  time.Time `json:"seen"` // the NATS server's time of the key's last write
	// What the key holds.
	Boot     string    `json:"boot"`
	PID      int       `json:"pid"`
	Interval string    `json:"interval"`
	Version  string    `json:"version"`
	Stopped  bool      `json:"stopped"`
	Updated  time.Time `json:"updated"` // the daemon's clock at the write
}

// lsNow is the time ctl fleet ls judges liveness at: the NATS server's
// clock when it tells it (a stream info's timestamp), never earlier than
// the newest host key write the bucket shows; without it, ctl's own
// clock, likewise. Every write time is the server's, so with the server's
// clock the clock of ctl's machine does not matter.
func lsNow(ctx context.Context, kv jetstream.KeyValue, keys map[string]bucketKey) time.Time {
	now := time.Now()
	if kv != nil {
		octx, cancel := context.WithTimeout(ctx, natsWait)
		defer cancel()
		if st, err := kv.Status(octx); err == nil {
			if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil && !bs.StreamInfo().TimeStamp.IsZero() {
				now = bs.StreamInfo().TimeStamp
			}
		}
	}
	for key, k := range keys {
		if strings.HasPrefix(key, fleet.HostPrefix+".") && k.created.After(now) {
			now = k.created
		}
	}
	return now
}

func (a *app) fleetLsCmd() *cobra.Command {
	var conn fleet.ConnConfig
	var host string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List every host's desired listeners in the bucket, with the status their daemon reports",
		Long: `List the desired listeners of every host (or of --host) in the NATS key-value
bucket ` + fleet.Bucket + `, with what each host's daemon last reported of them:

  HOST   NAME  STATE      ADDRESS          ERROR
  east   web   listening  127.0.0.1:8080   -
  west   api   pending    -                -
  north  db    gone       127.0.0.1:5432   -

STATE is the listener's state as its daemon reported it: listening,
failed, draining (closing: its connections drain), missing (its create
failed: see ERROR; or it was closed through the API, and the next
reconcile puts it back), or pending when the daemon has not yet reported
the key's latest revision (it is down, or busy). A listener whose desired
key was deleted is listed, draining, until its daemon has closed it.

Each daemon writes its host key (` + fleet.HostPrefix + `.<host>) when it starts watching
the bucket and every --nats-heartbeat (10s by default), and once more,
stopped, when it shuts down cleanly. For every listener of a host that is
not up, STATE says so in place of what its daemon last reported (which
-o json keeps):

  gone      its host key was last written more than ` + fmt.Sprint(fleet.MissedBeats) + ` heartbeat intervals
            ago: the daemon was killed, its machine lost, or it is cut
            off from NATS
  stopped   its daemon shut down cleanly

"Ago" is by the NATS server's clock: each write's time is the server's,
and so is "now" (the time a stream info request is answered; never
earlier than the newest host key write in the bucket). The clock of the
machine ctl runs on does not matter; should the server not tell its
time, ctl's own clock stands in. A host with no host key (a daemon older
than host keys) is shown as before.

It reads NATS directly: no daemon is asked. -o json prints one document:
{"listeners": [...], "hosts": [...]}; each listener has its host's
"hostState" (up, gone, stopped, or unknown: no host key) and "hostSeen"
(the server's time of the host key's last write), beside the status its
daemon last reported; each host has its state, "seen", and what its key
holds (boot id, pid, interval, version, stopped).

--nats and its credentials as for ctl fleet watch.`,
		Example: `  ctl fleet ls
  ctl fleet ls --host east -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkNATS(conn); err != nil {
				return err
			}
			if host != "" {
				if err := fleet.CheckToken("--host", host); err != nil {
					return usageErrorf("%v", err)
				}
			}
			conn.Name = "ctl fleet ls"
			nc, kv, keys, err := openFleetBucket(cmd.Context(), conn, false, 1, fleet.DesiredPrefix, fleet.StatusPrefix, fleet.HostPrefix)
			if err != nil {
				return err
			}
			now := lsNow(cmd.Context(), kv, keys)
			nc.Close()
			rows, hosts := fleetRows(keys, host, now)
			return a.printFleetLs(rows, hosts)
		},
	}
	natsFlags(cmd.Flags(), &conn)
	cmd.Flags().StringVar(&host, "host", "", "only this host's listeners (its --host-name)")
	return cmd
}

// fleetRows joins the desired keys with their status keys, by host and
// name; a status key without a desired key (its listener drains after
// the key's deletion) is a row of its own. Each row has its host's
// liveness at now (by the host keys); hosts are the host keys.
func fleetRows(keys map[string]bucketKey, only string, now time.Time) ([]lsRow, []lsHost) {
	hosts := []lsHost{}
	byHost := map[string]*lsHost{}
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		host, ok := strings.CutPrefix(key, fleet.HostPrefix+".")
		if !ok || fleet.CheckToken("host", host) != nil || (only != "" && host != only) {
			continue
		}
		k := keys[key]
		h, state := fleet.Liveness(k.value, k.created, now)
		hosts = append(hosts, lsHost{Host: host, State: state, Seen: k.created, Boot: h.Boot, PID: h.PID,
			Interval: h.Interval, Version: h.Version, Stopped: h.Stopped, Updated: h.Updated})
	}
	for i := range hosts {
		byHost[hosts[i].Host] = &hosts[i]
	}
	rows := []lsRow{}
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		kind, host, name, ok := fleet.SplitKey(key)
		if !ok || (only != "" && host != only) {
			continue
		}
		if kind == fleet.StatusPrefix {
			if _, desired := keys[fleet.DesiredKey(host, name)]; desired {
				continue // the desired key's row has it
			}
			var st fleet.Status
			if json.Unmarshal(keys[key].value, &st) == nil {
				rows = append(rows, lsRow{Host: host, Name: name, Revision: st.Revision, Status: &st, Deleted: true})
			}
			continue
		}
		k := keys[key]
		r := lsRow{Host: host, Name: name, Revision: k.revision, Desired: json.RawMessage(k.value)}
		if !json.Valid(k.value) {
			r.Desired, _ = json.Marshal(string(k.value))
		}
		if sk, ok := keys[fleet.StatusKey(host, name)]; ok {
			var st fleet.Status
			if json.Unmarshal(sk.value, &st) == nil {
				r.Status = &st
			}
		}
		r.Pending = r.Status == nil || r.Status.Revision < k.revision
		rows = append(rows, r)
	}
	for i := range rows {
		rows[i].HostState = fleet.HostUnknown
		if h := byHost[rows[i].Host]; h != nil {
			rows[i].HostState, rows[i].HostSeen = h.State, &h.Seen
		}
	}
	slices.SortStableFunc(rows, func(a, b lsRow) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Name, b.Name))
	})
	return rows, hosts
}

func (a *app) printFleetLs(rows []lsRow, hosts []lsHost) error {
	if a.json() {
		enc := json.NewEncoder(a.stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(struct {
			Listeners []lsRow  `json:"listeners"`
			Hosts     []lsHost `json:"hosts"`
		}{rows, hosts})
	}
	t := newTable(a.stdout, a.noHeaders, "HOST", "NAME", "STATE", "ADDRESS", "ERROR")
	for _, r := range rows {
		state, addr, msg := "pending", "", ""
		if r.Status != nil {
			addr, msg = r.Status.Address, r.Status.Error
			if !r.Pending {
				state = r.Status.State
			}
		}
		if r.HostState == fleet.HostGone || r.HostState == fleet.HostStopped {
			state = r.HostState // what it last reported is in -o json
		}
		t.row(r.Host, r.Name, state, addr, msg)
	}
	return t.flush()
}
