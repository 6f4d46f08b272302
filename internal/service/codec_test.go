package service

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
)

// rawCodec sends a request's bytes as they are, as a client in any
// language may.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal([]byte, any) error   { return nil }
func (rawCodec) Name() string                  { return "proto" }

func str(num protowire.Number, s string) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), []byte(s))
}

// A string that is not valid UTF-8 is refused by its field's own check,
// INVALID_ARGUMENT naming the field, not INTERNAL from the decoder; at any
// depth of the request. Bytes that are no message stay INTERNAL.
func TestInvalidUTF8NamesTheField(t *testing.T) {
	_, conn, _ := newClientConn(t, events.Options{})
	bad := "a\xffb"
	spec := func(fields ...[]byte) []byte { return str(2, string(concat(fields...))) }
	forward := str(7, string(str(3, string(str(1, bad+":80")))))
	for _, tc := range []struct {
		name, method string
		req          []byte
		code         codes.Code
		field        string
	}{
		{"name", listenerdv1.ListenerService_CreateListener_FullMethodName, concat(str(1, bad), spec()), codes.InvalidArgument, "name"},
		{"host", listenerdv1.ListenerService_CreateListener_FullMethodName, spec(str(1, bad)), codes.InvalidArgument, "spec.host"},
		{"cidr", listenerdv1.ListenerService_CreateListener_FullMethodName, spec(str(8, "10.0.0.0/8"), str(8, bad)), codes.InvalidArgument, "spec.allow_cidrs[1]"},
		{"upstream", listenerdv1.ListenerService_CreateListener_FullMethodName, spec(forward), codes.InvalidArgument, "spec.handler.forward.upstream"},
		{"id", listenerdv1.ListenerService_GetListener_FullMethodName, str(1, bad), codes.NotFound, "a\uFFFDb"},
		{"not a message", listenerdv1.ListenerService_GetListener_FullMethodName, []byte{0x0a, 0x05, 'a'}, codes.Internal, "unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out []byte
			err := conn.Invoke(ctx(t), tc.method, tc.req, &out, grpc.ForceCodec(rawCodec{}))
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("%s: %v; want %v naming %q", tc.method, err, tc.code, tc.field)
			}
		})
	}
}

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// A long value is quoted back clipped: the request may carry 64 KiB, its
// error (and that error's log line) names the field and the size.
func TestLongValuesAreClipped(t *testing.T) {
	c := newClient(t, events.Options{})
	long := strings.Repeat("x", 60000)
	for _, tc := range []struct {
		field string
		call  func() error
	}{
		{"name", func() error {
			_, err := c.CreateListener(ctx(t), &listenerdv1.CreateListenerRequest{Name: long, Spec: echoSpec()})
			return err
		}},
		{"spec.allow_cidrs[0]", func() error {
			_, err := c.CreateListener(ctx(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{AllowCidrs: []string{long}}})
			return err
		}},
		{"boot_id", func() error {
			s, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{BootId: long})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}},
	} {
		err := tc.call()
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, tc.field) || !strings.Contains(msg, "(60000 bytes)") || len(msg) > 1000 {
			t.Errorf("%s of 60000 bytes: %d-byte message %.200q; want the field, clipped", tc.field, len(msg), msg)
		}
	}
}
