package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// timeLayout is how tables show a point in time (local time).
const timeLayout = "2006-01-02 15:04:05"

// writeJSON writes m as protojson on exactly one line, zero values left
// out as protojson does by default: the lines of streams (events), which
// writeEventJSON spells the same way on its fast path.
func writeJSON(w io.Writer, m proto.Message) error {
	return writeProtoJSON(w, m, protojson.MarshalOptions{})
}

// writeDoc writes m, the whole answer of a command, as one JSON document on
// one line: protojson with its zero values written out (a count of 0 is
// "0", not left out), so that scripts find every field. Unset optional
// fields (max_connections when unlimited) and unset messages stay out.
func writeDoc(w io.Writer, m proto.Message) error {
	return writeProtoJSON(w, m, protojson.MarshalOptions{EmitDefaultValues: true})
}

func writeProtoJSON(w io.Writer, m proto.Message, opts protojson.MarshalOptions) error {
	b, err := opts.Marshal(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	// protojson may vary its whitespace; compact it so every object is one
	// stable line.
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// table writes aligned columns; the header row is left out with --no-headers.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, noHeaders bool, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if !noHeaders {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// humanBytes shows a byte count in IEC units: 18 B, 1.2 KiB, 3.0 MiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// humanDuration shows a duration rounded for people: 850ms, 1.2s, 3m12s,
// 2h5m, 3d4h.
func humanDuration(d time.Duration) string {
	if d < 0 {
		return "-" + humanDuration(-d)
	}
	switch {
	case d == 0:
		return "0s"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return strconv.FormatInt(d.Round(time.Millisecond).Milliseconds(), 10) + "ms"
	case d < time.Minute:
		s := strconv.FormatFloat(d.Round(100*time.Millisecond).Seconds(), 'f', 1, 64)
		return strings.TrimSuffix(s, ".0") + "s"
	case d < time.Hour:
		d = d.Round(time.Second)
		return twoUnits(int(d.Minutes()), "m", int(d.Seconds())%60, "s")
	case d < 24*time.Hour:
		d = d.Round(time.Minute)
		return twoUnits(int(d.Hours()), "h", int(d.Minutes())%60, "m")
	default:
		d = d.Round(time.Hour)
		return twoUnits(int(d.Hours())/24, "d", int(d.Hours())%24, "h")
	}
}

// twoUnits shows "3m12s", or "3m" when the smaller unit is zero.
func twoUnits(big int, bigUnit string, small int, smallUnit string) string {
	if small == 0 {
		return strconv.Itoa(big) + bigUnit
	}
	return strconv.Itoa(big) + bigUnit + strconv.Itoa(small) + smallUnit
}

// optDuration shows an optional limit duration, where unset or zero means
// never.
func optDuration(d *durationpb.Duration) string {
	if d == nil || d.AsDuration() == 0 {
		return "none"
	}
	return humanDuration(d.AsDuration())
}

func localTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().Local().Format(timeLayout)
}

// enumWord is an enum value name without its type prefix, lower case:
// STATE_LISTENING → listening.
func enumWord(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

func stateWord(s listenerdv1.State) string {
	if s == listenerdv1.State_STATE_UNSPECIFIED {
		return "unknown"
	}
	return enumWord(s.String(), "STATE_")
}

func overflowWord(p listenerdv1.OverflowPolicy) string {
	if p == listenerdv1.OverflowPolicy_OVERFLOW_POLICY_UNSPECIFIED {
		return "reject"
	}
	return enumWord(p.String(), "OVERFLOW_POLICY_")
}

func closeReasonWord(r listenerdv1.CloseReason) string {
	return enumWord(r.String(), "CLOSE_REASON_")
}

func rejectReasonWord(r listenerdv1.RejectReason) string {
	return enumWord(r.String(), "REJECT_REASON_")
}

func kindWord(k listenerdv1.EventKind) string {
	return enumWord(k.String(), "EVENT_KIND_")
}

// connStateWord is open or queued; "" when the daemon did not say.
func connStateWord(s listenerdv1.ConnectionState) string {
	if s == listenerdv1.ConnectionState_CONNECTION_STATE_UNSPECIFIED {
		return ""
	}
	return enumWord(s.String(), "CONNECTION_STATE_")
}

// queuedOnce reports a connection that waits in its listener's queue, or
// waited there before it was served.
func queuedOnce(c *listenerdv1.Connection) bool {
	return c.GetState() == listenerdv1.ConnectionState_CONNECTION_STATE_QUEUED || c.GetQueueWait().AsDuration() > 0
}

func familyWord(f listenerdv1.Family) string {
	switch f {
	case listenerdv1.Family_FAMILY_IPV4:
		return "IPv4"
	case listenerdv1.Family_FAMILY_IPV6:
		return "IPv6"
	}
	return "unknown"
}

// choice is a word a flag takes, with one line of help.
type choice struct {
	word, help string
}

// choices are the words of a flag, the default first.
type choices []choice

func (cs choices) words() []string {
	words := make([]string, len(cs))
	for i, c := range cs {
		words[i] = c.word
	}
	return words
}

// help lists the choices a line each, aligned, the default marked, for a
// command's --help.
func (cs choices) help() string {
	width := 0
	for _, c := range cs {
		width = max(width, len(c.word))
	}
	var b strings.Builder
	for i, c := range cs {
		help := c.help
		if i == 0 {
			help += " (the default)"
		}
		fmt.Fprintf(&b, "\n  %-*s  %s", width, c.word, help)
	}
	return b.String()
}

// completions are the words with their help as descriptions.
func (cs choices) completions() []cobra.Completion {
	out := make([]cobra.Completion, len(cs))
	for i, c := range cs {
		out[i] = cobra.CompletionWithDesc(c.word, c.help)
	}
	return out
}

// optCount shows an optional count, or unset when it is not set.
func optCount(n *uint32, unset string) string {
	if n == nil {
		return unset
	}
	return strconv.FormatUint(uint64(*n), 10)
}

// maxConnsWord shows max_connections: "-" when unset (unlimited).
func maxConnsWord(l *listenerdv1.Limits) string {
	if l == nil {
		return "-"
	}
	return optCount(l.MaxConnections, "-")
}

// address is where a listener is: its bound address, or what it asked for
// when it is not bound (FAILED), with port 0 written "*" (any port), which
// is not mistaken for a port.
func address(l *listenerdv1.Listener) string {
	if a := l.GetStatus().GetBoundAddress(); a != "" {
		return a
	}
	host := l.GetSpec().GetHost()
	if host == "" {
		host = "127.0.0.1"
	}
	port := "*"
	if p := l.GetSpec().GetPort(); p != 0 {
		port = strconv.FormatUint(uint64(p), 10)
	}
	return net.JoinHostPort(host, port)
}

func remote(t *listenerdv1.FiveTuple) string {
	if t == nil {
		return "?"
	}
	return net.JoinHostPort(t.GetRemoteAddress(), strconv.FormatUint(uint64(t.GetRemotePort()), 10))
}

func local(t *listenerdv1.FiveTuple) string {
	if t == nil {
		return "?"
	}
	return net.JoinHostPort(t.GetLocalAddress(), strconv.FormatUint(uint64(t.GetLocalPort()), 10))
}

// writeListeners prints listeners as a table (text, wide); ctl ls -o json
// prints the ListListenersResponse instead (writeDoc).
func (a *app) writeListeners(w io.Writer, ls []*listenerdv1.Listener) error {
	// A QUEUED column after ACTIVE when a listener queues.
	const queuedAt = 5
	queued := slices.ContainsFunc(ls, queues)
	header := []string{"ID", "NAME", "ADDRESS", "STATE", "ACTIVE", "ACCEPTED", "REJECTED", "MAX", "MODE"}
	if queued {
		header = slices.Insert(header, queuedAt, "QUEUED")
	}
	if a.wide() {
		header = append(header, "IN", "OUT", "CREATED")
	}
	t := newTable(w, a.noHeaders, header...)
	for _, l := range ls {
		st := l.GetStatus()
		row := []string{
			l.GetId(),
			l.GetName(),
			address(l),
			stateWord(st.GetState()),
			strconv.FormatUint(st.GetActiveConnections(), 10),
			strconv.FormatUint(st.GetAcceptedConnections(), 10),
			strconv.FormatUint(st.GetRejectedConnections(), 10),
			maxConnsWord(l.GetSpec().GetLimits()),
			modeWord(l.GetSpec().GetHandler()),
		}
		if queued {
			row = slices.Insert(row, queuedAt, strconv.FormatUint(st.GetQueuedConnections(), 10))
		}
		if a.wide() {
			row = append(row, humanBytes(st.GetBytesIn()), humanBytes(st.GetBytesOut()), localTime(st.GetCreateTime()))
		}
		t.row(row...)
	}
	return t.flush()
}

// queues reports a listener whose queue is in play: its overflow policy is
// QUEUE, or connections wait in its queue (from before a change of policy).
// Only then do ls and get show the queued count.
func queues(l *listenerdv1.Listener) bool {
	return l.GetSpec().GetLimits().GetOverflow() == listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE ||
		l.GetStatus().GetQueuedConnections() > 0
}

// writeListener prints one listener as "key: value" lines, or as JSON.
func (a *app) writeListener(w io.Writer, l *listenerdv1.Listener) error {
	if a.json() {
		return writeDoc(w, l)
	}
	spec, st := l.GetSpec(), l.GetStatus()
	backlog := "system default"
	if spec.Backlog != nil {
		backlog = strconv.FormatUint(uint64(spec.GetBacklog()), 10)
	}
	rows := [][2]string{
		{"id", l.GetId()},
		{"name", l.GetName()},
		{"state", stateWord(st.GetState())},
		{"address", address(l)},
		{"mode", modeLine(spec.GetHandler())},
	}
	for _, f := range limitFields(spec.GetLimits()) {
		rows = append(rows, [2]string{strings.ReplaceAll(f.flag, "-", " "), f.value})
	}
	rows = append(rows, [][2]string{
		{"backlog", backlog},
		{"allow half-open", strconv.FormatBool(spec.GetAllowHalfOpen())},
		{"pause on connect", strconv.FormatBool(spec.GetPauseOnConnect())},
		{"allow", strings.Join(spec.GetAllowCidrs(), ", ")},
		{"deny", strings.Join(spec.GetDenyCidrs(), ", ")},
		{"active", strconv.FormatUint(st.GetActiveConnections(), 10)},
	}...)
	if queues(l) {
		rows = append(rows, [2]string{"queued", strconv.FormatUint(st.GetQueuedConnections(), 10)})
	}
	rows = append(rows, [][2]string{
		{"accepted", strconv.FormatUint(st.GetAcceptedConnections(), 10)},
		{"rejected", strconv.FormatUint(st.GetRejectedConnections(), 10)},
		{"bytes in", humanBytes(st.GetBytesIn())},
		{"bytes out", humanBytes(st.GetBytesOut())},
		{"created", a.when(st.GetCreateTime())},
		{"closed", a.when(st.GetCloseTime())},
		{"last error", st.GetLastError()},
	}...)
	return writeRows(w, rows)
}

// writeRows prints "key: value" lines, the values aligned, "-" for an
// empty one.
func writeRows(w io.Writer, rows [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	for _, r := range rows {
		v := r[1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], v)
	}
	return tw.Flush()
}

// when shows a time with how long ago it was.
func (a *app) when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return fmt.Sprintf("%s (%s ago)", localTime(ts), humanDuration(a.now().Sub(ts.AsTime())))
}

// limitField is one limit as ctl shows it.
type limitField struct {
	flag  string // the ctl flag that sets it
	value string // "" for none
	// brief leaves it out of limitsLine: it is at its default, and shown
	// only when set, to keep the line short.
	brief bool
}

// limitFields is how ctl shows limits, in the order of their flags: the
// line of ctl limit and of limits_changed events (limitsLine), and the rows
// of ctl get.
func limitFields(l *listenerdv1.Limits) []limitField {
	if l == nil {
		l = &listenerdv1.Limits{}
	}
	fields := []limitField{
		{flag: "max-connections", value: optCount(l.MaxConnections, "unlimited")},
		{flag: "overflow", value: overflowWord(l.GetOverflow())},
	}
	if l.GetOverflow() == listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE { // the queue's own, ignored otherwise
		n := l.GetQueueLength()
		if n == 0 {
			n = defaultQueueLength
		}
		fields = append(fields,
			limitField{flag: "queue-length", value: strconv.FormatUint(uint64(n), 10)},
			limitField{flag: "queue-timeout", value: optDuration(l.GetQueueTimeout())})
	}
	fields = append(fields,
		limitField{flag: "idle-timeout", value: optDuration(l.GetIdleTimeout())},
		limitField{flag: "max-lifetime", value: optDuration(l.GetMaxLifetime())})
	rate, burst := l.GetAcceptRate(), l.GetAcceptBurst()
	rateField := limitField{flag: "accept-rate", value: "unlimited", brief: rate <= 0}
	if rate > 0 {
		rateField.value = strconv.FormatFloat(rate, 'g', -1, 64) + "/s"
	}
	burstField := limitField{flag: "accept-burst", brief: burst == 0}
	if burst > 0 {
		burstField.value = strconv.FormatUint(uint64(burst), 10)
		if rate <= 0 {
			burstField.value += " (kept; no accept-rate to apply it to)"
		}
	}
	return append(fields, rateField, burstField,
		limitField{flag: "max-per-source", value: optCount(l.MaxConnectionsPerSource, "unlimited"), brief: l.MaxConnectionsPerSource == nil})
}

// limitsLine is limits on one line, "flag=value" each: what ctl limit
// prints, and the limits_changed events.
func limitsLine(l *listenerdv1.Limits) string {
	var parts []string
	for _, f := range limitFields(l) {
		if !f.brief {
			parts = append(parts, f.flag+"="+f.value)
		}
	}
	return strings.Join(parts, " ")
}

// writeConnections prints connections as a table; ctl conns -o json prints
// the ListConnectionsResponse instead (writeDoc).
func (a *app) writeConnections(w io.Writer, cs []*listenerdv1.Connection) error {
	// STATE and WAIT columns after AGE when a connection is or was queued.
	const queueAt = 4
	queued := slices.ContainsFunc(cs, queuedOnce)
	header := []string{"ID", "REMOTE", "LOCAL", "AGE", "IN", "OUT"}
	if queued {
		header = slices.Insert(header, queueAt, "STATE", "WAIT")
	}
	if a.wide() {
		header = append(header, "FAMILY", "OPENED")
	}
	faulted := slices.ContainsFunc(cs, func(c *listenerdv1.Connection) bool { return len(c.GetFaults()) > 0 })
	if faulted {
		header = append(header, "FAULTS")
	}
	t := newTable(w, a.noHeaders, header...)
	now := a.now()
	for _, c := range cs {
		age := ""
		if c.GetOpenTime() != nil {
			age = humanDuration(now.Sub(c.GetOpenTime().AsTime()))
		}
		row := []string{c.GetId(), remote(c.GetTuple()), local(c.GetTuple()), age,
			humanBytes(c.GetBytesIn()), humanBytes(c.GetBytesOut())}
		if queued {
			wait := ""
			if queuedOnce(c) {
				wait = humanDuration(c.GetQueueWait().AsDuration())
			}
			row = slices.Insert(row, queueAt, connStateWord(c.GetState()), wait)
		}
		if a.wide() {
			row = append(row, familyWord(c.GetTuple().GetFamily()), localTime(c.GetOpenTime()))
		}
		if faulted {
			row = append(row, connFaultsCell(c.GetFaults()))
		}
		t.row(row...)
	}
	return t.flush()
}

// eventLine is the text form of an event in ctl watch:
//
//	seq=12 ln-1a2b3c4d connection_opened c=ln-1a2b3c4d.3 127.0.0.1:54321 -> 127.0.0.1:6969
//
// With wide set it starts with the event's local time.
func eventLine(ev *listenerdv1.Event, wide bool) string {
	var b strings.Builder
	if wide && ev.GetTime() != nil {
		b.WriteString(ev.GetTime().AsTime().Local().Format("15:04:05.000") + " ")
	}
	fmt.Fprintf(&b, "seq=%d %s ", ev.GetSequence(), ev.GetListenerId())
	switch k := ev.GetKind().(type) {
	case *listenerdv1.Event_ListenerStarted:
		fmt.Fprintf(&b, "listener_started %s", k.ListenerStarted.GetBoundAddress())
		if n := k.ListenerStarted.GetName(); n != "" {
			fmt.Fprintf(&b, " name=%s", n)
		}
	case *listenerdv1.Event_ConnectionOpened:
		o := k.ConnectionOpened
		fmt.Fprintf(&b, "connection_opened c=%s %s -> %s", o.GetConnectionId(), remote(o.GetTuple()), local(o.GetTuple()))
	case *listenerdv1.Event_ConnectionHalfClosed:
		fmt.Fprintf(&b, "connection_half_closed c=%s", k.ConnectionHalfClosed.GetConnectionId())
	case *listenerdv1.Event_ConnectionClosed:
		c := k.ConnectionClosed
		fmt.Fprintf(&b, "connection_closed c=%s %s reason=%s in=%d out=%d duration=%s",
			c.GetConnectionId(), remote(c.GetTuple()), closeReasonWord(c.GetReason()),
			c.GetBytesIn(), c.GetBytesOut(), humanDuration(c.GetDuration().AsDuration()))
		if e := c.GetError(); e != "" {
			fmt.Fprintf(&b, " error=%q", e)
		}
		if f := c.GetFault(); f != "" {
			fmt.Fprintf(&b, " fault=%s", f)
		}
	case *listenerdv1.Event_ConnectionQueued:
		q := k.ConnectionQueued
		fmt.Fprintf(&b, "connection_queued c=%s %s -> %s position=%d", q.GetConnectionId(), remote(q.GetTuple()), local(q.GetTuple()), q.GetPosition())
	case *listenerdv1.Event_ConnectionRejected:
		r := k.ConnectionRejected
		b.WriteString("connection_rejected ")
		if id := r.GetConnectionId(); id != "" {
			fmt.Fprintf(&b, "c=%s ", id) // it had waited in the queue
		}
		fmt.Fprintf(&b, "%s -> %s reason=%s", remote(r.GetTuple()), local(r.GetTuple()), rejectReasonWord(r.GetReason()))
		if w := r.GetQueueWait(); w != nil {
			fmt.Fprintf(&b, " waited=%s", humanDuration(w.AsDuration()))
		}
		if f := r.GetFault(); f != "" {
			fmt.Fprintf(&b, " fault=%s", f)
		}
	case *listenerdv1.Event_AcceptError:
		e := k.AcceptError
		fmt.Fprintf(&b, "accept_error error=%q backoff=%s count=%d", e.GetError(), humanDuration(e.GetBackoff().AsDuration()), e.GetCount())
	case *listenerdv1.Event_LimitsChanged:
		fmt.Fprintf(&b, "limits_changed %s", limitsLine(k.LimitsChanged.GetLimits()))
	case *listenerdv1.Event_ListenerClosed:
		c := k.ListenerClosed
		fmt.Fprintf(&b, "listener_closed drained=%d destroyed=%d", c.GetDrained(), c.GetDestroyed())
	case *listenerdv1.Event_ListenerReconciled:
		r := k.ListenerReconciled
		fmt.Fprintf(&b, "listener_reconciled action=%s", r.GetAction())
		if n := r.GetName(); n != "" {
			fmt.Fprintf(&b, " name=%s", n)
		}
		if c := r.GetChange(); c != "" {
			fmt.Fprintf(&b, " change=%q", c)
		}
		if e := r.GetError(); e != "" {
			fmt.Fprintf(&b, " error=%q", e)
		}
		fmt.Fprintf(&b, " source=%q", r.GetSource())
	case *listenerdv1.Event_ConnectionData:
		d := k.ConnectionData
		fmt.Fprintf(&b, "connection_data c=%s %s len=%d data=%q", d.GetConnectionId(),
			enumWord(d.GetDirection().String(), "DIRECTION_"), d.GetLength(), d.GetData())
	case *listenerdv1.Event_HandlerAttached:
		h := k.HandlerAttached
		fmt.Fprintf(&b, "handler_attached h=%s max=%d", h.GetHandlerId(), h.GetMaxConnections())
		if l := h.GetLabel(); l != "" {
			fmt.Fprintf(&b, " label=%q", l)
		}
	case *listenerdv1.Event_HandlerDetached:
		h := k.HandlerDetached
		fmt.Fprintf(&b, "handler_detached h=%s reason=%q", h.GetHandlerId(), h.GetReason())
	case *listenerdv1.Event_ConnectionTaken:
		c := k.ConnectionTaken
		fmt.Fprintf(&b, "connection_taken c=%s h=%s", c.GetConnectionId(), c.GetHandlerId())
	default:
		if !faultEventLine(&b, ev) {
			b.WriteString("unknown_event")
		}
	}
	return b.String()
}

// followPrinter prints a listener's events like a Node.js server's log
// (CONNECTED: 127.0.0.1:54321), for ctl listen --follow.
type followPrinter struct {
	// remotes maps open connection ids to their remote address, for events
	// that carry only the id.
	remotes map[string]string
}

func newFollowPrinter() *followPrinter {
	return &followPrinter{remotes: make(map[string]string)}
}

// line returns the log line for ev, or "" for an event not shown. last
// reports the listener's closed event, after which nothing follows.
func (p *followPrinter) line(ev *listenerdv1.Event) (line string, last bool) {
	switch k := ev.GetKind().(type) {
	case *listenerdv1.Event_ConnectionOpened:
		r := remote(k.ConnectionOpened.GetTuple())
		p.remotes[k.ConnectionOpened.GetConnectionId()] = r
		return "CONNECTED: " + r, false
	case *listenerdv1.Event_ConnectionHalfClosed:
		return "END: " + p.remoteOf(k.ConnectionHalfClosed.GetConnectionId()), false
	case *listenerdv1.Event_ConnectionClosed:
		c := k.ConnectionClosed
		delete(p.remotes, c.GetConnectionId())
		return fmt.Sprintf("CLOSED: %s (%s)", remote(c.GetTuple()), closedSummary(c)), false
	case *listenerdv1.Event_ConnectionQueued:
		q := k.ConnectionQueued
		r := remote(q.GetTuple())
		p.remotes[q.GetConnectionId()] = r
		return fmt.Sprintf("QUEUED: %s (%s ahead)", r, plural(uint64(q.GetPosition()), "connection")), false
	case *listenerdv1.Event_ConnectionRejected:
		r := k.ConnectionRejected
		delete(p.remotes, r.GetConnectionId())
		why := strings.ReplaceAll(rejectReasonWord(r.GetReason()), "_", " ")
		if f := r.GetFault(); f != "" {
			why += " " + f
		}
		if w := r.GetQueueWait(); w != nil {
			why += ", waited " + humanDuration(w.AsDuration())
		}
		return fmt.Sprintf("REJECTED: %s (%s)", remote(r.GetTuple()), why), false
	case *listenerdv1.Event_AcceptError:
		e := k.AcceptError
		s := fmt.Sprintf("ERROR: accept: %s (retrying in %s", e.GetError(), humanDuration(e.GetBackoff().AsDuration()))
		if e.GetCount() > 1 {
			s += fmt.Sprintf(", %d times", e.GetCount())
		}
		return s + ")", false
	case *listenerdv1.Event_ConnectionData:
		d := k.ConnectionData
		if d.GetDirection() != listenerdv1.Direction_DIRECTION_IN {
			return "", false
		}
		s := fmt.Sprintf("DATA: %s: %q", p.remoteOf(d.GetConnectionId()), d.GetData())
		if d.GetLength() > uint64(len(d.GetData())) {
			s += fmt.Sprintf(" (%s in all)", humanBytes(d.GetLength()))
		}
		return s, false
	case *listenerdv1.Event_LimitsChanged:
		return "LIMITS: " + limitsLine(k.LimitsChanged.GetLimits()), false
	case *listenerdv1.Event_ListenerClosed:
		c := k.ListenerClosed
		return fmt.Sprintf("SERVER CLOSED (%d drained, %d destroyed)", c.GetDrained(), c.GetDestroyed()), true
	}
	// listener_started: listen already printed the address.
	return "", false
}

// closedSummary says how a connection ended: "peer closed, in 18 B, out
// 18 B, 5ms".
func closedSummary(c *listenerdv1.ConnectionClosed) string {
	why := strings.ReplaceAll(closeReasonWord(c.GetReason()), "_", " ")
	if f := c.GetFault(); f != "" {
		why += " " + f
	}
	if e := c.GetError(); e != "" {
		why += ": " + e
	}
	return fmt.Sprintf("%s, in %s, out %s, %s", why,
		humanBytes(c.GetBytesIn()), humanBytes(c.GetBytesOut()), humanDuration(c.GetDuration().AsDuration()))
}

// remoteOf is the remote address of an open connection, or its id when the
// connection opened before the follow began.
func (p *followPrinter) remoteOf(id string) string {
	if r, ok := p.remotes[id]; ok {
		return r
	}
	return id
}
