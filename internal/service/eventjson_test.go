package service

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/listenerd/listenerd/internal/eventjson"
	"github.com/listenerd/listenerd/internal/events"
)

// randomEvent is an event of kind k whose fields reach their zero and
// non-zero cases, extreme values and strings protojson refuses (invalid
// UTF-8) included.
func randomEvent(r *rand.Rand, k events.Kind) (events.Event, string) {
	pick := func(vals ...uint64) uint64 { return vals[r.IntN(len(vals))] }
	addrs := []netip.Addr{
		{}, // the zero Addr: "invalid IP"
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("::1"),
		netip.MustParseAddr("2001:db8::42"),
		netip.MustParseAddr("::ffff:192.0.2.7"),
		netip.MustParseAddr("fe80::1%eth0"),
		netip.MustParseAddr("fe80::1%\"q\\\x01"),
		netip.MustParseAddr("fe80::1%\xff"),
	}
	addrPort := func() netip.AddrPort {
		return netip.AddrPortFrom(addrs[r.IntN(len(addrs))], uint16(pick(0, 1, 80, 6969, 65535, uint64(r.IntN(65536)))))
	}
	strs := []string{"", "", "ln-1a2b3c4d", "a", "é€\U0001F600", "tab\there \"q\" \\ \x01\x1f\x7f", strings.Repeat("x", 300), "bad\xffutf8"}
	str := func() string { return strs[r.IntN(len(strs))] }
	dur := func() time.Duration {
		return time.Duration(int64(pick(0, 1, 999, 1000, uint64(time.Millisecond), uint64(time.Second), uint64(90*time.Minute+7),
			uint64(r.Int64()), uint64(-r.Int64()), 1<<63)))
	}
	e := events.Event{
		Seq:      pick(0, 1, 127, 128, 1<<40, r.Uint64()),
		Time:     int64(pick(0, 1, 999_999_999, 1_000_000_000, 1_000_001_000, uint64(time.Now().UnixNano()), uint64(r.Int64()), uint64(-r.Int64()), 1<<63)),
		Listener: str(),
		Kind:     k,
		Conn:     pick(0, 1, 9, 10, 12345, r.Uint64()),
		Tuple:    events.Tuple{Remote: addrPort(), Local: addrPort()},
		BytesIn:  pick(0, 16, 1<<35, r.Uint64()),
		BytesOut: pick(0, 16, r.Uint64()),
		Duration: dur(),
		Close:    events.CloseReason(pick(0, 1, 2, 5, 9, 14, 15, 200)),
		Reject:   events.RejectReason(pick(0, 1, 6, 10, 11, 200)),
	}
	if r.IntN(4) > 0 {
		e.Detail = &events.Detail{Error: str(), Backoff: dur(), Count: pick(0, 3), Address: str(), Name: str(),
			Data: []byte(str()), Outbound: r.IntN(2) == 0, Position: int(int64(pick(0, 1, 7, uint64(1<<40), uint64(r.Int64())))),
			Handler: str(), Drained: pick(0, 2), Destroyed: pick(0, 5)}
		if r.IntN(2) == 0 {
			e.Detail.Fault = &events.FaultEvent{Fault: events.Fault{Name: str()}, Draw: r.Float64()}
		}
		if r.IntN(2) == 0 {
			e.Detail.Reconcile = &events.Reconcile{Action: str(), Change: str(), Source: str()}
		}
	}
	return e, []string{"", "0123456789abcdef", "bad\xffboot"}[r.IntN(3)]
}

// AppendEventJSON, which writes the connection kinds straight from the
// event, writes byte for byte what it wrote through the API message
// (appendEventJSONViaProto, the encoder before it), and what protojson
// writes, compacted, for every kind, and fails where it failed.
func TestAppendEventDirect(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	direct := map[events.Kind]int{}
	for k := events.KindUnspecified; k <= events.KindListenerReconciled; k++ {
		for i := range 5000 {
			e, boot := randomEvent(r, k)
			prefix := []byte("prefix:")
			got, gotErr := AppendEventJSON(prefix, &e, boot)
			want, wantErr := appendEventJSONViaProto([]byte("prefix:"), &e, boot)
			if (gotErr == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
				t.Fatalf("kind %v case %d: %+v %+v boot %q\n got %q (%v)\nwant %q (%v)", k, i, e, e.Detail, boot, got, gotErr, want, wantErr)
			}
			if pj, err := protojson.Marshal(eventToProto(&e, boot, 0)); err == nil {
				var c bytes.Buffer
				if err := json.Compact(&c, pj); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, append([]byte("prefix:"), c.Bytes()...)) {
					t.Fatalf("kind %v case %d: %+v\n got %q\nprotojson %q", k, i, e, got, c.Bytes())
				}
			} else if gotErr == nil {
				t.Fatalf("kind %v case %d: protojson refuses (%v), AppendEventJSON wrote %q", k, i, err, got)
			}
			if b, ok := appendDirect(&e, boot); ok {
				direct[k]++
				if !bytes.Equal(b, got[len("prefix:"):]) {
					t.Fatalf("kind %v case %d: direct %q", k, i, b)
				}
			}
		}
	}
	// The direct path is taken for the connection kinds (most of their
	// random events: it is not protojson compared with itself), and for
	// no other.
	for k := events.KindUnspecified; k <= events.KindListenerReconciled; k++ {
		switch k {
		case events.KindConnectionOpened, events.KindConnectionClosed, events.KindConnectionRejected,
			events.KindConnectionQueued, events.KindConnectionHalfClosed:
			if direct[k] < 1000 {
				t.Errorf("kind %v: direct path taken %d times of 5000", k, direct[k])
			}
		default:
			if direct[k] != 0 {
				t.Errorf("kind %v: direct path taken %d times", k, direct[k])
			}
		}
	}
}

func BenchmarkAppendEventJSON(b *testing.B) {
	e := events.Event{Seq: 123456, Time: time.Now().UnixNano(), Listener: "ln-1a2b3c4d", Kind: events.KindConnectionClosed,
		Conn: 12345, BytesIn: 16, BytesOut: 16, Duration: 3 * time.Millisecond, Close: 1,
		Tuple: events.Tuple{Remote: netip.MustParseAddrPort("127.0.0.1:54321"), Local: netip.MustParseAddrPort("127.0.0.1:6969")}}
	buf := make([]byte, 0, 1024)
	b.Run("via-proto", func(b *testing.B) {
		for b.Loop() {
			buf, _ = appendEventJSONViaProto(buf[:0], &e, "0123456789abcdef")
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			buf, _ = AppendEventJSON(buf[:0], &e, "0123456789abcdef")
		}
	})
}

func appendDirect(e *events.Event, boot string) ([]byte, bool) {
	return eventjson.AppendEvent(nil, e, boot)
}
