package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// retryPolicy paces watch resumes: the delay starts at initial and doubles up
// to max; after giveUp of failures in a row (or, when tries is set, that
// many failed attempts in a row) the watch fails.
type retryPolicy struct {
	initial, max, giveUp time.Duration
	tries                int
}

var defaultRetry = retryPolicy{
	initial: 100 * time.Millisecond,
	max:     2 * time.Second,
	// Generous: a daemon restarting drains its connections first (30s by
	// default) before the new one serves.
	giveUp: 2 * time.Minute,
}

// watcher follows WatchEvents and resumes it after a slow-watcher cut
// (RESOURCE_EXHAUSTED) or a lost connection (UNAVAILABLE) from the last
// sequence it delivered, so that nothing the daemon still holds is lost.
type watcher struct {
	client listenerdv1.ListenerServiceClient
	// req selects listeners and kinds; after_sequence and boot_id are set
	// per attempt.
	req *listenerdv1.WatchEventsRequest
	// emit delivers one event to out; done ends the watch with no error.
	emit func(out *bufio.Writer, ev *listenerdv1.Event) (done bool, err error)
	// out buffers what emit writes to stdout; it is flushed after each
	// response's events, so a busy stream costs a write per batch, not
	// one per event, and a quiet one still prints each event at once.
	out     *bufio.Writer
	retry   retryPolicy
	note    func(format string, args ...any)
	verbose bool

	// last is the resume point: the last sequence delivered, or the head
	// when the watch began from now, or --since. nil before the first
	// response of a watch from now.
	last *uint64
	// bootID is the daemon boot the sequences belong to.
	bootID string

	// opened, when set, runs once, after the first response of the first
	// stream: the watcher is registered in the daemon from then on. An
	// error it returns ends the watch as it is (openErr).
	opened  func() error
	openErr error
	// reached: a stream has opened at least once; a lost connection is
	// resumed only then.
	reached bool

	// restarted, when set, makes the watch carry on across a daemon
	// restart (a new boot): it is called with the old and the new boot id,
	// and the watch goes on from the new daemon's head. Unset, a restart
	// ends the watch with an error.
	restarted func(ctx context.Context, oldBoot, newBoot string) error
}

// errRestarted is a resume refused because the daemon restarted: the
// events after the resume point are gone.
type errRestarted struct {
	oldBoot, newBoot string
}

func (e *errRestarted) Error() string {
	return fmt.Sprintf("listenerd restarted (boot %s, now %s)", e.oldBoot, e.newBoot)
}

func (a *app) newWatcher(client listenerdv1.ListenerServiceClient, req *listenerdv1.WatchEventsRequest,
	emit func(*bufio.Writer, *listenerdv1.Event) (bool, error)) *watcher {
	return &watcher{client: client, req: req, emit: emit, out: bufio.NewWriterSize(a.stdout, 64<<10),
		retry: a.retry, note: a.note, verbose: a.verbose}
}

// errStreamEnded is a stream the daemon ended with OK status.
var errStreamEnded = errors.New("stream ended")

// run watches until ctx is cancelled (nil), emit says done (nil), or the
// stream fails in a way a resume cannot fix.
func (w *watcher) run(ctx context.Context) error {
	delay := w.retry.initial
	var failingSince time.Time
	failures := 0
	announced := false
	for {
		progressed, done, err := w.attempt(ctx)
		if w.openErr != nil {
			return w.openErr
		}
		if done || ctx.Err() != nil {
			return nil
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, errStreamEnded) {
			w.note("listenerd ended the event stream")
			return nil
		}
		if progressed {
			failingSince, delay, announced, failures = time.Time{}, w.retry.initial, false, 0
		}
		if rs := w.restart(err); rs != nil && w.restarted != nil {
			if err := w.restarted(ctx, rs.oldBoot, rs.newBoot); err != nil {
				return err
			}
			// From the new daemon's head: its sequences start again.
			w.last, w.bootID = nil, ""
			failingSince, delay, announced, failures = time.Time{}, w.retry.initial, false, 0
			continue
		}
		st, _ := grpcStatus(err)
		if !w.reached && st.Code() == codes.Unavailable {
			// Never reached the daemon: there is nothing to resume, and it
			// is down (or the socket is wrong). Fail now, as other
			// commands do.
			return err
		}
		switch st.Code() {
		case codes.ResourceExhausted, codes.Unavailable:
		case codes.OutOfRange:
			return w.gapError(st)
		default:
			return err
		}
		if progressed && st.Code() == codes.ResourceExhausted {
			// Cut loose for falling behind: resume at once.
			w.note("watch fell behind and was cut off by listenerd; resuming after seq=%d", w.resumePoint())
			continue
		}
		now := time.Now()
		failures++
		if failingSince.IsZero() {
			failingSince = now
		} else if now.Sub(failingSince) >= w.retry.giveUp || w.retry.tries > 0 && failures >= w.retry.tries {
			return err
		}
		if !announced {
			announced = true
			if st.Code() == codes.Unavailable {
				w.note("lost the connection to listenerd; reconnecting to resume after seq=%d", w.resumePoint())
			} else {
				w.note("listenerd refused the watch (%s); retrying", st.Message())
			}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, w.retry.max)
	}
}

// restart returns the boots of a resume the daemon refused because it
// restarted, nil for any other error.
func (w *watcher) restart(err error) *errRestarted {
	var rs *errRestarted
	if errors.As(err, &rs) {
		return rs
	}
	st, ok := grpcStatus(err)
	if !ok || st.Code() != codes.OutOfRange || errorInfo(st).GetReason() != "BOOT_MISMATCH" {
		return nil
	}
	return &errRestarted{oldBoot: w.bootID, newBoot: errorInfo(st).GetMetadata()["boot_id"]}
}

func (w *watcher) resumePoint() uint64 {
	if w.last == nil {
		return 0
	}
	return *w.last
}

// attempt runs one stream. progressed reports that the stream opened (its
// first response came).
func (w *watcher) attempt(ctx context.Context) (progressed, done bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := proto.CloneOf(w.req)
	resuming := w.last != nil
	if resuming {
		after := *w.last
		req.AfterSequence = &after
		req.BootId = w.bootID
	}
	s, err := w.client.WatchEvents(ctx, req)
	if err != nil {
		return false, false, err
	}
	first := true
	for {
		resp, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, false, errStreamEnded
		}
		if err != nil {
			return progressed, false, err
		}
		if first {
			first, progressed, w.reached = false, true, true
			if w.bootID != "" && resp.GetBootId() != "" && resp.GetBootId() != w.bootID {
				if w.restarted != nil {
					return progressed, false, &errRestarted{oldBoot: w.bootID, newBoot: resp.GetBootId()}
				}
				return progressed, false, &messageError{code: ExitError, msg: fmt.Sprintf(
					"listenerd restarted (boot %s, now %s): the events after seq=%d are gone; "+
						"re-list with 'ctl ls' and watch from now with 'ctl watch'",
					w.bootID, resp.GetBootId(), w.resumePoint())}
			}
			if resp.GetBootId() != "" {
				w.bootID = resp.GetBootId()
			}
			if !resuming {
				head := resp.GetHeadSequence()
				w.last = &head
			}
			if f := w.opened; f != nil {
				w.opened = nil
				if w.openErr = f(); w.openErr != nil {
					return progressed, false, w.openErr
				}
			}
			if w.verbose {
				if resuming {
					w.note("watching after seq=%d (head seq=%d, boot %s)", *w.last, resp.GetHeadSequence(), w.bootID)
				} else {
					w.note("watching from now (head seq=%d, boot %s)", resp.GetHeadSequence(), w.bootID)
				}
			}
		}
		for _, ev := range resp.GetEvents() {
			if w.last != nil && ev.GetSequence() <= *w.last {
				continue // already delivered before a resume
			}
			seq := ev.GetSequence()
			w.last = &seq
			done, err := w.emit(w.out, ev)
			if err != nil || done {
				return progressed, done, errors.Join(err, w.out.Flush())
			}
		}
		if err := w.out.Flush(); err != nil {
			return progressed, false, err
		}
	}
}

// gapError explains OUT_OF_RANGE: the resume point is not held, either
// compacted away, ahead of the history, or from a previous daemon boot.
func (w *watcher) gapError(st *status.Status) error {
	const advice = "; re-list with 'ctl ls' and watch from now with 'ctl watch'"
	info := errorInfo(st)
	after := w.resumePoint()
	oldest, hasOldest := metaUint(info, "oldest")
	newest, hasNewest := metaUint(info, "newest")
	var msg string
	switch {
	case hasNewest && after > newest:
		msg = fmt.Sprintf("cannot watch after seq=%d: the newest event listenerd holds is seq=%d", after, newest)
	case hasOldest:
		msg = fmt.Sprintf("cannot resume the watch after seq=%d: listenerd no longer holds events before seq=%d", after, oldest)
	case info.GetReason() == "BOOT_MISMATCH" || (info == nil && w.bootID != ""):
		// The daemon refused the boot id given with the resume point (older
		// daemons sent no ErrorInfo).
		msg = fmt.Sprintf("cannot resume the watch after seq=%d: listenerd restarted (it was boot %s), and the events of its previous run are gone", after, w.bootID)
	default:
		msg = fmt.Sprintf("cannot resume the watch after seq=%d: %s", after, st.Message())
	}
	return &messageError{code: ExitError, msg: msg + advice}
}

// errorInfo returns the ErrorInfo detail of st, if any.
func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// metaUint finds a number in info's metadata under a key containing word
// (listenerd sends oldest_sequence and newest_sequence).
func metaUint(info *errdetails.ErrorInfo, word string) (uint64, bool) {
	for k, v := range info.GetMetadata() {
		if strings.Contains(strings.ToLower(k), word) {
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				return n, true
			}
		}
	}
	return 0, false
}

// parseKind reads an event kind: connection_opened, connection-opened or
// EVENT_KIND_CONNECTION_OPENED.
func parseKind(s string) (listenerdv1.EventKind, error) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	n = "EVENT_KIND_" + strings.TrimPrefix(n, "EVENT_KIND_")
	if v, ok := listenerdv1.EventKind_value[n]; ok && v != 0 {
		return listenerdv1.EventKind(v), nil
	}
	return 0, usageErrorf("unknown event kind %q (want one of: %s)", s, strings.Join(kindWords(), ", "))
}

func kindWords() []string {
	var words []string
	for i := int32(1); ; i++ {
		name, ok := listenerdv1.EventKind_name[i]
		if !ok {
			return words
		}
		words = append(words, enumWord(name, "EVENT_KIND_"))
	}
}

// watchRequest builds the WatchEventsRequest of ctl watch (without the resume
// point, which the watcher sets).
func watchRequest(ids, kinds []string) (*listenerdv1.WatchEventsRequest, error) {
	req := &listenerdv1.WatchEventsRequest{ListenerIds: ids}
	for _, k := range kinds {
		kind, err := parseKind(k)
		if err != nil {
			return nil, err
		}
		req.Kinds = append(req.Kinds, kind)
	}
	return req, nil
}

func (a *app) watchCmd() *cobra.Command {
	var (
		since   uint64
		kinds   []string
		data    bool
		dataMax uint32
		keep    bool
	)
	cmd := &cobra.Command{
		Use:   "watch [ID...]",
		Short: "Stream events of all listeners or of the ones named",
		Long: `Stream events as they happen, one line each, until Ctrl-C (exit 0).

With IDs (ids or names), only the events of those listeners; with --kind, only
those kinds (repeatable): ` + strings.Join(kindWords(), ", ") + `.
A name follows the name: when its listener closes and a new one is created
with that name (a new id), the new one's events follow too. A watch of ids
only ends by itself (exit 0) once each of those listeners has closed, after
printing its listener_closed event; --keep watches on.
--since SEQ first replays the events after SEQ that the daemon still holds.
--data adds connection_data events: the bytes moved each way, cut to
--data-max bytes an event (default 256, at most 65536; len= says how many
moved). The daemon records data only while a watcher asks for it.

When the daemon cuts a watcher that falls behind, or the connection is lost,
watch resumes by itself after the last event it printed, so nothing the daemon
still holds is missed, and says so on stderr. When the daemon restarted in
the meantime (a new boot id), the events in between are gone: watch says so
in one line on stderr ("listenerd restarted …: events … were missed") and
goes on with the new daemon's events; with --since it exits 1 instead. It
gives up after 2m without the daemon (exit 4), and at once when it never
reached it. When the events needed are no longer held it exits 1: re-list
with ctl ls and watch from now.

-o json prints JSON lines (NDJSON): one Event object a line, nothing else on
stdout (each event carries its daemon's bootId, which changes at a restart);
-o wide prefixes the time.`,
		Example: `  ctl watch
  ctl watch ln-1a2b3c4d web --kind connection_opened --kind connection_closed
  ctl watch --since 120 -o json
  ctl watch ln-1a2b3c4d        # ends once that listener has closed
  ctl watch web --data --data-max 1024`,
		RunE: func(cmd *cobra.Command, ids []string) error {
			req, err := watchRequest(ids, kinds)
			if err != nil {
				return err
			}
			if fs := cmd.Flags(); data || fs.Changed("data-max") {
				if fs.Changed("data-max") && (dataMax == 0 || dataMax > 65536) {
					return usageErrorf("--data-max must be 1-65536")
				}
				if fs.Changed("data") && !data {
					return usageErrorf("--data-max needs --data")
				}
				req.IncludeData, req.DataMaxBytes = true, dataMax
				if len(req.Kinds) > 0 && !slices.Contains(req.Kinds, listenerdv1.EventKind_EVENT_KIND_CONNECTION_DATA) {
					req.Kinds = append(req.Kinds, listenerdv1.EventKind_EVENT_KIND_CONNECTION_DATA)
				}
			}
			if slices.Contains(req.Kinds, listenerdv1.EventKind_EVENT_KIND_CONNECTION_DATA) {
				req.IncludeData = true // asking for the kind is asking for data
			}
			scope := newWatchScope(ids, keep, req)
			client, err := a.dial()
			if err != nil {
				return err
			}
			if err := scope.resolve(cmd.Context(), a, client, false); err != nil {
				return err
			}
			w := a.newWatcher(client, req, func(out *bufio.Writer, ev *listenerdv1.Event) (bool, error) {
				show, done := scope.take(ev)
				if !show {
					return done, nil
				}
				if a.json() {
					return done, writeEventJSON(out, ev)
				}
				_, err := fmt.Fprintln(out, eventLine(ev, a.wide()))
				return done, err
			})
			if cmd.Flags().Changed("since") {
				w.last = &since
			} else {
				w.restarted = func(ctx context.Context, oldBoot, newBoot string) error {
					a.note("listenerd restarted (boot %s, now %s): events after seq=%d were missed; watching the new daemon's events from now",
						oldBoot, newBoot, w.resumePoint())
					return scope.resolve(ctx, a, client, true)
				}
			}
			return w.run(cmd.Context())
		},
	}
	cmd.Flags().Uint64Var(&since, "since", 0, "replay the events after this sequence number first")
	cmd.Flags().StringArrayVar(&kinds, "kind", nil, "only events of this kind (repeatable)")
	cmd.Flags().BoolVar(&data, "data", false, "also stream connection_data events (the bytes moved)")
	cmd.Flags().BoolVar(&keep, "keep", false, "with ids only: watch on after those listeners have closed")
	cmd.Flags().Uint32Var(&dataMax, "data-max", 0, "bytes of data kept per data event, 1-65536 (default 256; implies --data)")
	return cmd
}
