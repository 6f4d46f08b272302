package ctl

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// protojsonLine is what writeJSON prints for ev, or its error.
func protojsonLine(ev *listenerdv1.Event) (string, error) {
	var b bytes.Buffer
	err := writeJSON(&b, ev)
	return b.String(), err
}

func checkSameJSON(t *testing.T, ev *listenerdv1.Event) {
	t.Helper()
	want, wantErr := protojsonLine(ev)
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	gotErr := writeEventJSON(bw, ev)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if (wantErr == nil) != (gotErr == nil) || b.String() != want {
		t.Fatalf("event %v\nprotojson: %q (%v)\nfast:      %q (%v)", ev, want, wantErr, b.String(), gotErr)
	}
}

// The fast encoder writes byte for byte what protojson writes, for every
// kind (the others go through protojson), every field set or not, and the
// values protojson refuses.
func TestEventJSONMatchesProtojson(t *testing.T) {
	for _, s := range sampleEvents {
		checkSameJSON(t, s.ev)
	}
	// Oneof cases holding no message, which never come off the wire.
	for _, k := range []any{
		&listenerdv1.Event_ConnectionOpened{}, (*listenerdv1.Event_ConnectionOpened)(nil),
		&listenerdv1.Event_ConnectionClosed{}, (*listenerdv1.Event_ConnectionClosed)(nil),
		&listenerdv1.Event_ConnectionRejected{}, (*listenerdv1.Event_ConnectionRejected)(nil),
		&listenerdv1.Event_ConnectionHalfClosed{}, (*listenerdv1.Event_ConnectionHalfClosed)(nil),
		&listenerdv1.Event_ConnectionData{}, (*listenerdv1.Event_ConnectionData)(nil),
	} {
		ev := &listenerdv1.Event{Sequence: 1}
		reflectSetKind(ev, k)
		checkSameJSON(t, ev)
	}
	r := rand.New(rand.NewPCG(1, 2))
	const n = 20000
	fast := 0
	for range n {
		ev := &listenerdv1.Event{}
		fill(r, ev.ProtoReflect(), 0)
		checkSameJSON(t, ev)
		if _, ok := appendEventJSON(nil, ev); ok {
			fast++
		}
	}
	// Six of the event's kinds have a fast path; random fills also make
	// values it hands to protojson. A tenth is far from zero either way.
	if fast < n/10 {
		t.Fatalf("only %d of %d random events took the fast path", fast, n)
	}
}

// The fast path is taken for the kinds a busy listener streams: it is not
// a test that only ever compares protojson with itself.
func TestEventJSONFastPathIsTaken(t *testing.T) {
	for _, s := range sampleEvents {
		_, ok := appendEventJSON(nil, s.ev)
		switch s.ev.GetKind().(type) {
		case *listenerdv1.Event_ConnectionOpened, *listenerdv1.Event_ConnectionClosed, *listenerdv1.Event_ConnectionRejected,
			*listenerdv1.Event_ConnectionHalfClosed, *listenerdv1.Event_ConnectionData:
			if !ok {
				t.Errorf("%T went through protojson", s.ev.GetKind())
			}
		default:
			if ok {
				t.Errorf("%T took the fast path", s.ev.GetKind())
			}
		}
	}
}

// fill sets a random subset of m's fields to random values, through
// protoreflect, so that a field added to the proto is filled too and the
// comparison above catches an encoder that does not know it.
func fill(r *rand.Rand, m protoreflect.Message, depth int) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp", "google.protobuf.Duration":
		fillTime(r, m)
		return
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil {
			continue // one of each oneof below
		}
		if r.IntN(4) != 0 {
			setRandom(r, m, fd, depth)
		}
	}
	oneofs := m.Descriptor().Oneofs()
	for i := range oneofs.Len() {
		od := oneofs.Get(i)
		if r.IntN(10) != 0 {
			setRandom(r, m, od.Fields().Get(r.IntN(od.Fields().Len())), depth)
		}
	}
}

func setRandom(r *rand.Rand, m protoreflect.Message, fd protoreflect.FieldDescriptor, depth int) {
	if fd.IsList() || fd.IsMap() {
		return // no event message has one; protojson takes any that is added
	}
	var v protoreflect.Value
	switch fd.Kind() {
	case protoreflect.StringKind:
		v = protoreflect.ValueOfString(randString(r))
	case protoreflect.BytesKind:
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		v = protoreflect.ValueOfBytes(b)
	case protoreflect.BoolKind:
		v = protoreflect.ValueOfBool(r.IntN(2) == 0)
	case protoreflect.EnumKind:
		v = protoreflect.ValueOfEnum(protoreflect.EnumNumber(r.IntN(12) - 1)) // some unknown, -1 too
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		v = protoreflect.ValueOfUint32([]uint32{0, 1, 80, 65535, r.Uint32()}[r.IntN(5)])
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		v = protoreflect.ValueOfUint64([]uint64{0, 1, 1 << 53, 1<<64 - 1, r.Uint64()}[r.IntN(5)])
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		v = protoreflect.ValueOfInt32(int32(r.Uint32()))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		v = protoreflect.ValueOfInt64(int64(r.Uint64()))
	case protoreflect.DoubleKind:
		v = protoreflect.ValueOfFloat64([]float64{0, 1.5, 100, 1e21, r.Float64() * 1000}[r.IntN(5)])
	case protoreflect.FloatKind:
		v = protoreflect.ValueOfFloat32(float32(r.Float64() * 1000))
	case protoreflect.MessageKind:
		if depth > 4 {
			return
		}
		sub := m.NewField(fd).Message()
		fill(r, sub, depth+1)
		v = protoreflect.ValueOfMessage(sub)
	default:
		panic(fmt.Sprintf("field %s of kind %v: teach fill about it", fd.FullName(), fd.Kind()))
	}
	m.Set(fd, v)
}

// fillTime sets a Timestamp's or Duration's seconds and nanos: mostly
// valid, with every number of fractional digits, and sometimes out of
// range or with mismatched signs, which protojson refuses.
func fillTime(r *rand.Rand, m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	secs := []int64{0, 1, -1, 1764133200, 253402300799, 253402300800, -62135596800, -62135596801, 315576000001, -5}[r.IntN(10)]
	nanos := []int32{0, 1, 1200000, 5000, 123456789, 999999999, 1000000000, -1, -999999999, -1000000000, 500000000}[r.IntN(11)]
	m.Set(fields.ByName("seconds"), protoreflect.ValueOfInt64(secs))
	m.Set(fields.ByName("nanos"), protoreflect.ValueOfInt32(nanos))
}

// randString mixes plain text with what JSON must escape, multibyte and
// invalid UTF-8.
func randString(r *rand.Rand) string {
	parts := []string{"", "ln-1a2b3c4d", "127.0.0.1", "::1", `"`, `\`, "\n", "\t", "\b", "\f", "\r", "\x00", "\x1f", "\x7f",
		"é", "日本", "\u2028", "\ufffd", "\xff", "\xe2\x82", "connection reset by peer", "<>&"}
	var s string
	for range r.IntN(5) {
		s += parts[r.IntN(len(parts))]
	}
	return s
}

// BenchmarkEventJSON compares the fast encoder with protojson on the
// events a busy echo listener streams.
//
//	go test -run '^$' -bench EventJSON ./internal/ctl
func BenchmarkEventJSON(b *testing.B) {
	now := timestamppb.New(time.Unix(1764133200, 123456000))
	evs := []*listenerdv1.Event{
		{Sequence: 1201, ListenerId: "ln-1a2b3c4d", BootId: "08ef8cde6ad1ca2e", Time: now,
			Kind: &listenerdv1.Event_ConnectionOpened{ConnectionOpened: &listenerdv1.ConnectionOpened{ConnectionId: "ln-1a2b3c4d.600", Tuple: tuple(54321)}}},
		{Sequence: 1202, ListenerId: "ln-1a2b3c4d", BootId: "08ef8cde6ad1ca2e", Time: now,
			Kind: &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{
				ConnectionId: "ln-1a2b3c4d.600", Tuple: tuple(54321), BytesIn: 16, BytesOut: 16,
				Duration: durationpb.New(1200 * time.Microsecond), Reason: listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED}}},
	}
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			for _, ev := range evs {
				if err := writeJSON(io.Discard, ev); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("fast", func(b *testing.B) {
		out := bufio.NewWriter(io.Discard)
		for b.Loop() {
			for _, ev := range evs {
				if err := writeEventJSON(out, ev); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// reflectSetKind stores k, one of Event's oneof wrappers, in ev.Kind.
func reflectSetKind(ev *listenerdv1.Event, k any) {
	reflect.ValueOf(ev).Elem().FieldByName("Kind").Set(reflect.ValueOf(k))
}
