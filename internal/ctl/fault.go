package ctl

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// faultFlags are the flags of one fault: those of ctl fault add, and the
// keys of ctl listen --fault KIND,key=value,….
type faultFlags struct {
	name           string
	direction      string
	probability    float64
	sources        []string
	conns          []string
	newOnly        bool
	ttl            time.Duration
	latency        time.Duration
	jitter         time.Duration
	rate           uint64
	burst          uint64
	sliceSize      uint32
	sliceVariation uint32
	delay          time.Duration
	bytes          uint64
}

func (o *faultFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.name, "name", "", "the fault's name, unique in the listener (default: the kind)")
	fs.StringVar(&o.direction, "direction", "both", "the bytes it acts on: in (client to handler), out (handler to client) or both")
	fs.Float64Var(&o.probability, "probability", 1, "the share of connections it applies to, 0-1, drawn once per connection")
	fs.StringSliceVar(&o.sources, "source", nil, "only connections from this source CIDR; repeat or separate with commas")
	fs.StringSliceVar(&o.conns, "conn", nil, "only this connection id; repeat or separate with commas")
	fs.BoolVar(&o.newOnly, "new-only", false, "only connections opened from now on")
	fs.DurationVar(&o.ttl, "ttl", 0, "remove the fault after this long (default: never)")
	fs.DurationVar(&o.latency, "latency", 0, "latency: delay added to each chunk")
	fs.DurationVar(&o.jitter, "jitter", 0, "latency: plus or minus this")
	fs.Uint64Var(&o.rate, "rate", 0, "bandwidth: bytes a second")
	fs.Uint64Var(&o.burst, "burst", 0, "bandwidth: bucket depth in bytes (default: rate/50)")
	fs.Uint32Var(&o.sliceSize, "slice-size", 0, "slicer: average slice in bytes")
	fs.Uint32Var(&o.sliceVariation, "slice-variation", 0, "slicer: plus or minus this many bytes")
	fs.DurationVar(&o.delay, "delay", 0, "slicer: between slices; slow_close: before the FIN; timeout: close after (default never); reset: after; delay_accept: hold")
	fs.Uint64Var(&o.bytes, "bytes", 0, "limit_data: bytes that pass before the end; reset: RST after this many")
}

// faultKinds are the kind words, in the API's order.
var faultKinds = []string{"latency", "bandwidth", "slicer", "slow_close", "timeout", "blackhole", "reset", "limit_data", "refuse", "delay_accept"}

func parseFaultKind(s string) (listenerdv1.FaultKind, error) {
	k, ok := listenerdv1.FaultKind_value["FAULT_KIND_"+strings.ToUpper(strings.ReplaceAll(s, "-", "_"))]
	if !ok || k == 0 {
		return 0, usageErrorf("unknown fault kind %q (want %s)", s, strings.Join(faultKinds, ", "))
	}
	return listenerdv1.FaultKind(k), nil
}

// fault builds the fault of kind from the flags; fs says which were given.
func (o *faultFlags) fault(kind string, fs *pflag.FlagSet) (*listenerdv1.Fault, error) {
	k, err := parseFaultKind(kind)
	if err != nil {
		return nil, err
	}
	f := &listenerdv1.Fault{Name: o.name, Kind: k,
		Rate: o.rate, Burst: o.burst, SliceSize: o.sliceSize, SliceVariation: o.sliceVariation, Bytes: o.bytes}
	if f.Name == "" {
		f.Name = strings.ReplaceAll(faultWord(k), "_", "-")
	}
	switch o.direction {
	case "both", "":
	case "in":
		f.Direction = listenerdv1.FaultDirection_FAULT_DIRECTION_IN
	case "out":
		f.Direction = listenerdv1.FaultDirection_FAULT_DIRECTION_OUT
	default:
		return nil, usageErrorf("--direction %q: want in, out or both", o.direction)
	}
	if fs.Changed("probability") {
		p := o.probability
		f.Probability = &p
	}
	if len(o.sources) > 0 || len(o.conns) > 0 || o.newOnly {
		f.Scope = &listenerdv1.FaultScope{SourceCidrs: o.sources, ConnectionIds: o.conns, NewOnly: o.newOnly}
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
		out  **durationpb.Duration
	}{{"ttl", o.ttl, &f.Ttl}, {"latency", o.latency, &f.Latency}, {"jitter", o.jitter, &f.Jitter}, {"delay", o.delay, &f.Delay}} {
		if d.v < 0 {
			return nil, usageErrorf("--%s must not be negative", d.flag)
		}
		if d.v > 0 {
			*d.out = durationpb.New(d.v)
		}
	}
	return f, nil
}

// parseFaultSpec reads ctl listen's --fault KIND[,key=value…], the keys
// being ctl fault add's flags.
func parseFaultSpec(spec string) (*listenerdv1.Fault, error) {
	parts := strings.Split(spec, ",")
	var o faultFlags
	fs := pflag.NewFlagSet("fault", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.addFlags(fs)
	args := make([]string, 0, len(parts)-1)
	for _, kv := range parts[1:] {
		if !strings.Contains(kv, "=") {
			return nil, usageErrorf("--fault %q: %q is not key=value", spec, kv)
		}
		args = append(args, "--"+kv)
	}
	if err := fs.Parse(args); err != nil {
		return nil, usageErrorf("--fault %q: %v", spec, err)
	}
	f, err := o.fault(parts[0], fs)
	if err != nil {
		return nil, usageErrorf("--fault %q: %v", spec, err)
	}
	return f, nil
}

func faultWord(k listenerdv1.FaultKind) string { return enumWord(k.String(), "FAULT_KIND_") }

func (a *app) faultCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fault",
		Short: "Add, list and remove a listener's faults",
		Long: `Faults are toxiproxy's toxics on a listener's own connections: latency,
bandwidth, slicer, slow_close, timeout, blackhole, reset and limit_data on the
bytes, refuse and delay_accept on the accept. Each has a name, a direction, a
probability drawn once per connection when it opens, a scope (every
connection, --new-only, --conn IDS, --source CIDRS) and an optional --ttl.
ctl watch shows fault_added, fault_applied and fault_removed, and the closes
and rejects a fault makes (reason=fault fault=NAME); ctl conns shows each
connection's draw for each fault (FAULTS).`,
		Example: `  ctl fault add web latency --latency 50ms --jitter 10ms --direction out --probability 0.5 --source 10.0.0.0/8
  ctl fault ls web
  ctl fault rm web latency`,
	}
	cmd.AddCommand(a.faultAddCmd(), a.faultLsCmd(), a.faultRmCmd())
	return cmd
}

func (a *app) faultAddCmd() *cobra.Command {
	var o faultFlags
	var replace bool
	cmd := &cobra.Command{
		Use:   "add LISTENER KIND [flags]",
		Short: "Put a fault in force on a listener",
		Long: `Put a fault of KIND in force on a listener (id or name): on its open
connections that the fault picks (reset and timeout on any; the byte kinds on
connections served since the listener's first fault) and on every new one.
KIND is one of: ` + strings.Join(faultKinds[:5], ", ") + `,
` + strings.Join(faultKinds[5:], ", ") + `. Each kind reads its own flags (below). --replace changes the fault of that
name instead, keeping every connection's draw.

Removing a timeout passes on everything it held (nothing is lost); a
blackhole drops what it takes. A half-close passes through every kind that
passes bytes, after them. reset sends a real RST; refuse answers new
connections with RST (the client's connect or first read fails with
ECONNRESET).`,
		Example: `  ctl fault add web latency --latency 50ms --jitter 10ms --direction out --probability 0.5 --source 10.0.0.0/8
  ctl fault add web bandwidth --rate 1000000 --burst 16384
  ctl fault add web slicer --slice-size 64 --slice-variation 32 --delay 1ms
  ctl fault add web slow_close --delay 2s
  ctl fault add web timeout                    # hold every byte; --delay 5s closes after 5s
  ctl fault add web blackhole --direction in
  ctl fault add web reset --delay 1s           # or --bytes 1024, or neither: at once
  ctl fault add web limit_data --bytes 4096 --direction out
  ctl fault add web refuse --probability 0.1
  ctl fault add web delay_accept --delay 500ms --ttl 1m
  ctl fault add web latency --name latency --latency 200ms --replace`,
		Args: exactArgs(2, "a listener id or name and a fault kind"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := o.fault(args[1], cmd.Flags())
			if err != nil {
				return err
			}
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			if replace {
				resp, err := client.UpdateFault(ctx, &listenerdv1.UpdateFaultRequest{ListenerId: args[0], Fault: f})
				if err != nil {
					return err
				}
				f = resp.GetFault()
			} else {
				resp, err := client.AddFault(ctx, &listenerdv1.AddFaultRequest{ListenerId: args[0], Fault: f})
				if err != nil {
					return err
				}
				f = resp.GetFault()
			}
			if a.json() {
				return writeDoc(a.stdout, f)
			}
			_, err = fmt.Fprintf(a.stdout, "fault %s on %s: %s\n", f.GetName(), args[0], faultLine(f))
			return err
		},
	}
	o.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&replace, "replace", false, "change the fault of that name (UpdateFault) instead of adding one")
	return cmd
}

func (a *app) faultLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls LISTENER",
		Short: "List a listener's faults",
		Long: `List the faults in force on a listener, oldest first: NAME, KIND,
DIRECTION, PROBABILITY, SCOPE, what the kind does, and when it expires.
-o json prints one JSON document, the ListFaultsResponse: {"faults": [...]}.`,
		Example: `  ctl fault ls web
  ctl fault ls web -o json`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.ListFaults(ctx, &listenerdv1.ListFaultsRequest{ListenerId: args[0]})
			if err != nil {
				return err
			}
			if a.json() {
				return writeDoc(a.stdout, resp)
			}
			t := newTable(a.stdout, a.noHeaders, "NAME", "KIND", "DIRECTION", "PROBABILITY", "SCOPE", "DOES", "EXPIRES")
			for _, f := range resp.GetFaults() {
				t.row(f.GetName(), faultWord(f.GetKind()), faultDirWord(f.GetDirection()),
					strconv.FormatFloat(f.GetProbability(), 'g', -1, 64), faultScope(f.GetScope()), faultLine(f), localTime(f.GetExpireTime()))
			}
			return t.flush()
		},
	}
}

func (a *app) faultRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm LISTENER NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove faults from a listener",
		Long: `Take faults out of force, by name. Connections a fault held go on at once with
what it held: nothing lost, nothing twice.`,
		Example: `  ctl fault rm web latency
  ctl fault rm web latency reset`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return exactArgs(2, "a listener id or name and a fault name")(cmd, args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			for _, name := range args[1:] {
				if _, err := client.RemoveFault(ctx, &listenerdv1.RemoveFaultRequest{ListenerId: args[0], Name: name}); err != nil {
					return err
				}
				if !a.json() {
					fmt.Fprintf(a.stdout, "removed fault %s from %s\n", name, args[0])
				}
			}
			return nil
		},
	}
}

func faultDirWord(d listenerdv1.FaultDirection) string {
	if d == listenerdv1.FaultDirection_FAULT_DIRECTION_UNSPECIFIED {
		return "both"
	}
	return enumWord(d.String(), "FAULT_DIRECTION_")
}

func faultScope(s *listenerdv1.FaultScope) string {
	var parts []string
	if s.GetNewOnly() {
		parts = append(parts, "new-only")
	}
	if c := s.GetConnectionIds(); len(c) > 0 {
		parts = append(parts, "conn="+strings.Join(c, ","))
	}
	if c := s.GetSourceCidrs(); len(c) > 0 {
		parts = append(parts, "source="+strings.Join(c, ","))
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}

// faultLine says what a fault does: "latency 50ms ± 10ms".
func faultLine(f *listenerdv1.Fault) string {
	d := func(p *durationpb.Duration) string { return humanDuration(p.AsDuration()) }
	s := faultWord(f.GetKind())
	switch f.GetKind() {
	case listenerdv1.FaultKind_FAULT_KIND_LATENCY:
		s += " " + d(f.GetLatency())
		if f.GetJitter() != nil {
			s += " ± " + d(f.GetJitter())
		}
	case listenerdv1.FaultKind_FAULT_KIND_BANDWIDTH:
		s += fmt.Sprintf(" %s/s", humanBytes(f.GetRate()))
		if f.GetBurst() > 0 {
			s += " burst " + humanBytes(f.GetBurst())
		}
	case listenerdv1.FaultKind_FAULT_KIND_SLICER:
		s += fmt.Sprintf(" %d ± %d bytes, %s apart", f.GetSliceSize(), f.GetSliceVariation(), d(f.GetDelay()))
	case listenerdv1.FaultKind_FAULT_KIND_SLOW_CLOSE, listenerdv1.FaultKind_FAULT_KIND_DELAY_ACCEPT:
		s += " " + d(f.GetDelay())
	case listenerdv1.FaultKind_FAULT_KIND_TIMEOUT:
		if f.GetDelay() != nil {
			s += ", close after " + d(f.GetDelay())
		}
	case listenerdv1.FaultKind_FAULT_KIND_RESET:
		switch {
		case f.GetDelay() != nil:
			s += " after " + d(f.GetDelay())
		case f.GetBytes() > 0:
			s += fmt.Sprintf(" after %d bytes", f.GetBytes())
		default:
			s += " at once"
		}
	case listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA:
		s += fmt.Sprintf(" %d bytes", f.GetBytes())
	}
	return s
}

// faultEventLine is the text of a fault event in ctl watch, after
// "seq=N LISTENER ".
func faultEventLine(b *strings.Builder, ev *listenerdv1.Event) bool {
	switch k := ev.GetKind().(type) {
	case *listenerdv1.Event_FaultAdded:
		f := k.FaultAdded.GetFault()
		fmt.Fprintf(b, "fault_added fault=%s %s direction=%s probability=%g scope=%q", f.GetName(), faultLine(f),
			faultDirWord(f.GetDirection()), f.GetProbability(), faultScope(f.GetScope()))
	case *listenerdv1.Event_FaultRemoved:
		r := k.FaultRemoved
		fmt.Fprintf(b, "fault_removed fault=%s kind=%s", r.GetName(), faultWord(r.GetKind()))
		if r.GetExpired() {
			b.WriteString(" expired")
		}
	case *listenerdv1.Event_FaultApplied:
		p := k.FaultApplied
		b.WriteString("fault_applied ")
		if id := p.GetConnectionId(); id != "" {
			fmt.Fprintf(b, "c=%s ", id)
		}
		fmt.Fprintf(b, "%s fault=%s kind=%s", remote(p.GetTuple()), p.GetName(), faultWord(p.GetKind()))
		if p.GetConnectionId() != "" {
			fmt.Fprintf(b, " draw=%.4f", p.GetDraw())
		}
	default:
		return false
	}
	return true
}

// connFaultsCell shows a connection's draws in ctl conns:
// "lat=0.1100:on rst=0.6695:off".
func connFaultsCell(fs []*listenerdv1.ConnectionFault) string {
	cells := make([]string, len(fs))
	for i, f := range fs {
		on := "off"
		if f.GetApplies() {
			on = "on"
		}
		cells[i] = fmt.Sprintf("%s=%.4f:%s", f.GetFault(), f.GetDraw(), on)
	}
	return strings.Join(cells, " ")
}
