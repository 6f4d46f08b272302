package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
)

// The stream's defaults.
const (
	// Stream is the JetStream stream the events go to, created when
	// missing.
	Stream = "LISTENERD_EVENTS"
	// Prefix starts every subject of the stream.
	Prefix = "listenerd.events"
	// NoListener stands for the listener of a daemon-level event.
	NoListener = "_"
	// GapToken is the last token of a host's gap records' subject.
	GapToken = "_gap"
	// DefaultMaxAge is how long the stream keeps an event.
	DefaultMaxAge = 7 * 24 * time.Hour
	// DefaultDuplicates is the stream's duplicate window: a publish
	// repeated within it (after a reconnect) is stored once. It covers a
	// reconnect with room to spare.
	DefaultDuplicates = 5 * time.Minute
)

// Subject is where an event of host goes:
// listenerd.events.<host>.<listener id>.<kind>, with "_" for no listener.
func Subject(host, listenerID string, kind events.Kind) string {
	if listenerID == "" {
		listenerID = NoListener
	}
	return Prefix + "." + host + "." + listenerID + "." + KindWord(kind)
}

// GapSubject is where host's gap records go.
func GapSubject(host string) string { return Prefix + "." + host + "." + GapToken }

// HostSubjects selects every event and gap record of host ("" or "*": of
// every host).
func HostSubjects(host string) string {
	if host == "" {
		host = "*"
	}
	return Prefix + "." + host + ".>"
}

// KindWord is the kind as a subject token and as ctl prints it:
// connection_opened.
func KindWord(k events.Kind) string {
	return strings.ToLower(strings.TrimPrefix(listenerdv1.EventKind(k).String(), "EVENT_KIND_"))
}

// MsgID is a message's Nats-Msg-Id: the boot id and the sequence of its
// (first) event.
func MsgID(boot string, seq uint64) string { return boot + "-" + strconv.FormatUint(seq, 10) }

// LastSeqHeader names the sequence of a message's last event when it
// holds more than one.
const LastSeqHeader = "Listenerd-Last-Seq"

// DefaultPack is how many events of one subject a message holds at most
// (Options.Pack, up to MaxPack), and packBytes about how many bytes.
const (
	DefaultPack = 64
	MaxPack     = 1000
	packBytes   = 16 << 10
)

// Events yields each event of a message's payload: one event's JSON per
// line, in sequence order, all of the message's subject. A payload of one
// event is that event's JSON alone.
func Events(data []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			if len(line) > 0 && !yield(line) {
				return
			}
		}
	}
}

// ParseMsgID reads what MsgID wrote.
func ParseMsgID(id string) (boot string, seq uint64, ok bool) {
	i := strings.LastIndexByte(id, '-')
	if i <= 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(id[i+1:], 10, 64)
	return id[:i], seq, err == nil
}

// CheckToken refuses what cannot be one token of a subject: empty, or
// with a dot, a wildcard or white space. flag names the setting.
func CheckToken(flag, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s must not be empty", flag)
	case strings.ContainsAny(s, ".*> \t\r\n"):
		return fmt.Errorf("%s %q: must be one NATS subject token (no '.', '*', '>' or white space)", flag, s)
	}
	return nil
}

// Gap is the record published when the history no longer held events not
// yet published: sequences From to To of boot BootID on Host are lost.
type Gap struct {
	Host   string    `json:"host"`
	BootID string    `json:"bootId"`
	From   uint64    `json:"fromSequence"`
	To     uint64    `json:"toSequence"`
	Time   time.Time `json:"time"`
}

// GapRecord is a gap record's payload: {"gap":{...}}.
type GapRecord struct {
	Gap *Gap `json:"gap"`
}

// GapMsgID is a gap record's Nats-Msg-Id.
func GapMsgID(g *Gap) string {
	return g.BootID + "-gap-" + strconv.FormatUint(g.From, 10) + "-" + strconv.FormatUint(g.To, 10)
}

// ParseGap reads a gap record's payload.
func ParseGap(b []byte) (*Gap, error) {
	var r GapRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if r.Gap == nil {
		return nil, errors.New("not a gap record")
	}
	return r.Gap, nil
}

// Line is the text form of a gap record, for ctl fleet watch.
func (g *Gap) Line() string {
	return fmt.Sprintf("host=%s boot=%s gap: seq=%d..%d lost (NATS was unreachable longer than the daemon's history lasts)",
		g.Host, g.BootID, g.From, g.To)
}
