package ctl

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet"
)

func (a *app) fleetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "The fleet in NATS JetStream: the daemons' events, their desired listeners and status (listenerd --nats)",
		Example: `  ctl fleet watch --nats nats://127.0.0.1:4222 --host web-1
  ctl fleet apply -f fleet.yaml --dry-run
  ctl fleet ls --host web-1`,
	}
	cmd.AddCommand(a.fleetWatchCmd(), a.fleetApplyCmd(), a.fleetLsCmd())
	return cmd
}

// fleetWatch is what ctl fleet watch asks for.
type fleetWatch struct {
	conn     fleet.ConnConfig
	since    time.Duration
	sinceSeq uint64
	host     string
	listener string
}

func (a *app) fleetWatchCmd() *cobra.Command {
	fw := &fleetWatch{}
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream the events of every daemon, or of one host or listener, from NATS JetStream",
		Long: `Stream the events that listenerd daemons started with --nats publish to the
JetStream stream ` + fleet.Stream + `, one line each as ctl watch prints them, each
prefixed with host=NAME, until Ctrl-C (exit 0). It reads NATS directly: no
daemon is asked.

Without --since or --since-seq it starts from now; --since 1h first replays
the last hour the stream still holds, --since-seq N from the stream's message N.
--host and --listener keep one host's or one listener's events.

When a daemon could not reach NATS for longer than its event history lasts,
the stream holds a gap record in place of the events lost, printed as one
line: host=H boot=B gap: seq=F..T lost.

-o json prints each event as ctl watch -o json does with "host" added first,
and gap records as {"gap":{...}}.

--nats, --nats-creds, --nats-token-file and --nats-ca default to
LISTENERD_NATS, LISTENERD_NATS_CREDS, LISTENERD_NATS_TOKEN_FILE and
LISTENERD_NATS_CA.`,
		Example: `  ctl fleet watch --nats nats://127.0.0.1:4222
  ctl fleet watch --host web-1 --since 10m
  ctl fleet watch --listener ln-1a2b3c4d --since-seq 1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkNATS(fw.conn); err != nil {
				return err
			}
			if fw.since < 0 {
				return usageErrorf("--since must not be negative")
			}
			if fw.since > 0 && cmd.Flags().Changed("since-seq") {
				return usageErrorf("--since and --since-seq: give one of them")
			}
			if cmd.Flags().Changed("since-seq") && fw.sinceSeq == 0 {
				return usageErrorf("--since-seq counts from 1")
			}
			for _, f := range []struct{ flag, v string }{{"--host", fw.host}, {"--listener", fw.listener}} {
				if f.v != "" {
					if err := fleet.CheckToken(f.flag, f.v); err != nil {
						return usageErrorf("%v", err)
					}
				}
			}
			return a.runFleetWatch(cmd.Context(), fw)
		},
	}
	f := cmd.Flags()
	natsFlags(f, &fw.conn)
	f.DurationVar(&fw.since, "since", 0, "first replay the events of this last while (e.g. 10m)")
	f.Uint64Var(&fw.sinceSeq, "since-seq", 0, "first replay from this stream sequence (1: all the stream holds)")
	f.StringVar(&fw.host, "host", "", "only this host's events (its --host-name)")
	f.StringVar(&fw.listener, "listener", "", "only this listener's events (its id)")
	return cmd
}

// filters are the subjects fleet watch reads: the events asked for, and
// the gap records of the hosts asked for.
func (fw *fleetWatch) filters() []string {
	host, ln := fw.host, fw.listener
	if host == "" {
		host = "*"
	}
	if ln == "" {
		ln = "*"
	}
	return []string{fleet.Prefix + "." + host + "." + ln + ".*", fleet.GapSubject(host)}
}

func (a *app) runFleetWatch(ctx context.Context, fw *fleetWatch) error {
	fw.conn.Name = "ctl fleet watch"
	nc, err := fw.conn.Connect()
	if err != nil {
		return natsError("cannot reach NATS: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: fw.filters(), DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case fw.since > 0:
		t := time.Now().Add(-fw.since)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	case fw.sinceSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, fw.sinceSeq
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := js.OrderedConsumer(octx, fleet.Stream, cfg)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s not found: no daemon has published yet (listenerd --nats)", fleet.Stream)
		}
		return natsError("%v", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	out := bufio.NewWriterSize(a.stdout, 64<<10)
	var held fleetLines
	defer func() { _ = held.print(out) }()
	for {
		var opts []jetstream.NextOpt
		if len(held) > 0 { // print them once the stream pauses
			opts = append(opts, jetstream.NextMaxWait(fleetReorderWait))
		}
		m, err := it.Next(opts...)
		if errors.Is(err, nats.ErrTimeout) {
			if err := held.print(out); err != nil {
				return err
			}
			held = held[:0]
			continue
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return err
		}
		if err := a.fleetMsgLines(&held, m); err != nil {
			return err
		}
		if len(held) >= fleetReorderMax {
			if err := held.print(out); err != nil {
				return err
			}
			held = held[:0]
		}
	}
}

// The watch prints a host's events in sequence order: the publisher packs
// the events of one subject sent together into one message, so the
// stream holds, say, a batch's connection_closed events before an older
// connection_opened of the next message. It holds the lines read until
// the stream pauses for fleetReorderWait (a batch's messages are sent back
// to back), or fleetReorderMax are held (replaying), then prints them
// sorted by host and sequence.
const (
	fleetReorderWait = 50 * time.Millisecond
	fleetReorderMax  = 10000
)

// fleetLine is one line to print: an event or a gap record, with what
// orders it.
type fleetLine struct {
	host string
	seq  uint64
	text []byte
}

type fleetLines []fleetLine

// print writes the lines in order of host, then sequence, and flushes.
func (ls fleetLines) print(out *bufio.Writer) error {
	slices.SortStableFunc(ls, func(a, b fleetLine) int {
		if c := strings.Compare(a.host, b.host); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	for _, l := range ls {
		if _, err := out.Write(l.text); err != nil {
			return err
		}
	}
	return out.Flush()
}

// fleetMsgLines adds the lines of one message of the stream to held: its
// events, one line each, or a gap record.
func (a *app) fleetMsgLines(held *fleetLines, m jetstream.Msg) error {
	rest := strings.TrimPrefix(m.Subject(), fleet.Prefix+".")
	host, _, _ := strings.Cut(rest, ".")
	if strings.HasSuffix(m.Subject(), "."+fleet.GapToken) {
		g, err := fleet.ParseGap(m.Data())
		if err != nil {
			a.note("skipped a malformed gap record on %s: %v", m.Subject(), err)
			return nil
		}
		text := fmt.Appendf(nil, "%s\n", g.Line())
		if a.json() {
			text = fmt.Appendf(nil, "%s\n", m.Data())
		}
		*held = append(*held, fleetLine{host: host, seq: g.From, text: text})
		return nil
	}
	for data := range fleet.Events(m.Data()) {
		a.fleetEventLine(held, host, m.Subject(), data)
	}
	return nil
}

// fleetEventLine adds the line of one event of a message on subject to
// held: a message holds one or more, one JSON a line (fleet.Events).
func (a *app) fleetEventLine(held *fleetLines, host, subject string, data []byte) {
	var ev listenerdv1.Event
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &ev); err != nil {
		a.note("skipped a malformed event on %s: %v", subject, err)
		return
	}
	var text []byte
	if a.json() {
		sep := ","
		if string(data) == "{}" {
			sep = ""
		}
		text = fmt.Appendf(nil, "{\"host\":%q%s%s\n", host, sep, data[1:])
	} else {
		text = fmt.Appendf(nil, "host=%s %s\n", host, eventLine(&ev, a.wide()))
	}
	*held = append(*held, fleetLine{host: host, seq: ev.GetSequence(), text: text})
}

// natsFlags declares ctl's NATS flags, defaulting to their environment
// variables.
func natsFlags(f *pflag.FlagSet, c *fleet.ConnConfig) {
	f.StringVar(&c.URL, "nats", os.Getenv("LISTENERD_NATS"), "NATS URL (nats://HOST:PORT or tls://; off loopback TLS is required)")
	f.StringVar(&c.Creds, "nats-creds", os.Getenv("LISTENERD_NATS_CREDS"), "NATS credentials file")
	f.StringVar(&c.TokenFile, "nats-token-file", os.Getenv("LISTENERD_NATS_TOKEN_FILE"), "file holding the NATS token")
	f.StringVar(&c.CA, "nats-ca", os.Getenv("LISTENERD_NATS_CA"), "PEM CA bundle of the NATS servers (TLS)")
}

// checkNATS refuses NATS flags that cannot work, as a usage error.
func checkNATS(c fleet.ConnConfig) error {
	if c.URL == "" {
		return usageErrorf("--nats (or LISTENERD_NATS) is required")
	}
	if err := c.Check(); err != nil {
		return usageErrorf("%v", err)
	}
	return nil
}
