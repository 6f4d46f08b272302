package server

import (
	"context"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// rawBytes sends a request's bytes as they are.
type rawBytes struct{}

func (rawBytes) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawBytes) Unmarshal([]byte, any) error   { return nil }
func (rawBytes) Name() string                  { return "proto" }

// Bytes that are not gRPC on the TCP API: a connection that does not
// speak HTTP/2 is closed (grpc-go sends its settings and hangs up), and a
// request that is not a message gets INTERNAL, gRPC's status for a
// request that does not parse, which grpc-go sets before any interceptor
// runs, credentials or not. The daemon serves on.
func TestNonGRPCBytes(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{Ephemeral: true, API: APIConfig{Listen: "127.0.0.1:0", TokenFile: p.tokenFile}})
	c := testkit.Dial(t, d.addr)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("an HTTP/1.1 request: read %q, %v; want the connection closed", got, err)
	}
	conn := d.dial(t, insecure.NewCredentials())
	authed := metadata.AppendToOutgoingContext(testContext(t), "authorization", "Bearer "+p.token)
	for name, ctx := range map[string]context.Context{"without credentials": testContext(t), "with the token": authed} {
		var out []byte
		err := conn.Invoke(ctx, listenerdv1.ListenerService_GetListener_FullMethodName, []byte{0x0a, 0x05, 'a'}, &out, grpc.ForceCodec(rawBytes{}))
		if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "unmarshal") {
			t.Errorf("bytes that are no message, %s: %v; want INTERNAL (unmarshal)", name, err)
		}
	}
	if _, err := listenerdv1.NewListenerServiceClient(conn).ListListeners(authed, &listenerdv1.ListListenersRequest{}); err != nil {
		t.Fatalf("a good call after: %v", err)
	}
}
