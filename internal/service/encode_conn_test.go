package service

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
)

// encodeConnEvent writes exactly what proto.Marshal writes for the
// message eventToProto builds, over random connection events that reach
// every field's zero and non-zero cases.
func TestEncodeConnEvent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(vals ...uint64) uint64 { return vals[r.IntN(len(vals))] }
	addrs := []netip.Addr{
		{}, // the zero Addr: "invalid IP"
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("::1"),
		netip.MustParseAddr("2001:db8::42"),
		netip.MustParseAddr("::ffff:192.0.2.7"),
		netip.MustParseAddr("fe80::1%eth0"),
	}
	addrPort := func() netip.AddrPort {
		return netip.AddrPortFrom(addrs[r.IntN(len(addrs))], uint16(pick(0, 1, 80, 6969, 65535, uint64(r.IntN(65536)))))
	}
	strs := []string{"", "ln-1a2b3c4d", "a", strings.Repeat("x", 300)}
	for i := range 20000 {
		e := events.Event{
			Seq:      pick(0, 1, 127, 128, 1<<40, r.Uint64()),
			Time:     int64(pick(0, 1, 999_999_999, 1_000_000_000, uint64(time.Now().UnixNano()), uint64(r.Int64()))),
			Listener: strs[r.IntN(len(strs))],
			Kind:     []events.Kind{events.KindConnectionOpened, events.KindConnectionClosed}[r.IntN(2)],
			Conn:     pick(0, 1, 9, 10, 12345, r.Uint64()),
			Tuple:    events.Tuple{Remote: addrPort(), Local: addrPort()},
			BytesIn:  pick(0, 16, 1<<35, r.Uint64()),
			BytesOut: pick(0, 16, r.Uint64()),
			Duration: time.Duration(int64(pick(0, 1, uint64(time.Second), uint64(90*time.Minute+7), uint64(r.Int64())))),
			Close:    events.CloseReason(pick(0, 1, 2, 5, 9)),
		}
		if r.IntN(3) > 0 {
			e.Detail = &events.Detail{Error: strs[r.IntN(len(strs))]}
			if r.IntN(2) == 0 {
				e.Detail.Fault = &events.FaultEvent{Fault: events.Fault{Name: strs[r.IntN(len(strs))]}}
			}
		}
		boot := strs[r.IntN(3)]
		want, err := proto.Marshal(eventToProto(&e, boot, 0))
		if err != nil {
			t.Fatal(err)
		}
		if !isConnEvent(&e) {
			t.Fatalf("case %d: %v not handled", i, e.Kind)
		}
		got := encodeConnEvent(nil, &e, boot)
		if !bytes.Equal(got, want) {
			var gm listenerdv1.Event
			uerr := proto.Unmarshal(got, &gm)
			t.Fatalf("case %d: %+v\n got %x (%v: %v)\nwant %x (%v)", i, e, got, uerr, &gm, want, eventToProto(&e, boot, 0))
		}
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	e := events.Event{Seq: 123456, Time: time.Now().UnixNano(), Listener: "ln-1a2b3c4d", Kind: events.KindConnectionClosed,
		Conn: 12345, BytesIn: 16, BytesOut: 16, Duration: 3 * time.Millisecond, Close: 1,
		Tuple: events.Tuple{Remote: netip.MustParseAddrPort("127.0.0.1:54321"), Local: netip.MustParseAddrPort("127.0.0.1:6969")}}
	b.Run("proto", func(b *testing.B) {
		for b.Loop() {
			if _, err := proto.Marshal(eventToProto(&e, "0123456789abcdef", 0)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			_ = encodeConnEvent(make([]byte, 0, rawEventSize), &e, "0123456789abcdef")
		}
	})
}
