package service

import (
	"bytes"
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// The API's Handler is a oneof; the engine's handlers are named in the
// table the server gives the manager. The two meet here, for every handler
// at once: the oneof field set is the handler's name, and its message, in
// protobuf's JSON form with the .proto's field names, is the handler's
// options. A new handler needs nothing in this file.

var durationName = (&durationpb.Duration{}).ProtoReflect().Descriptor().FullName()

// handlerFromProto maps a requested handler to the engine's spec. Unset is
// discard. Durations in its options are checked here, as every other
// duration of a request is; the rest is the handler's to check.
func handlerFromProto(h *listenerdv1.Handler) (listener.HandlerSpec, error) {
	if h == nil {
		return listener.HandlerSpec{}, nil
	}
	m := h.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("kind"))
	if fd == nil {
		return listener.HandlerSpec{}, nil
	}
	field := "spec.handler." + string(fd.Name())
	msg := m.Get(fd).Message()
	var err error
	msg.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if f.Message() != nil && f.Message().FullName() == durationName {
			_, err = duration(field+"."+string(f.Name()), v.Message().Interface().(*durationpb.Duration))
		}
		return err == nil
	})
	if err != nil {
		return listener.HandlerSpec{}, err
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg.Interface())
	if err != nil {
		return listener.HandlerSpec{}, listener.Invalid(field, "%v", err)
	}
	var opts bytes.Buffer
	if err := json.Compact(&opts, b); err != nil { // protojson's spacing varies from build to build
		return listener.HandlerSpec{}, listener.Invalid(field, "%v", err)
	}
	spec := listener.HandlerSpec{Kind: string(fd.Name())}
	if opts.String() != "{}" {
		spec.Options = opts.Bytes()
	}
	return spec, nil
}

// handlerToProto maps the engine's handler spec back to the API's oneof.
// A handler the API does not know (or options it cannot read) leaves the
// oneof unset; that cannot happen for a spec handlerFromProto made.
func handlerToProto(h listener.HandlerSpec) *listenerdv1.Handler {
	p := &listenerdv1.Handler{}
	m := p.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(h.Name()))
	if fd == nil || fd.ContainingOneof() == nil || fd.Message() == nil {
		return p
	}
	msg := m.NewField(fd).Message()
	if len(h.Options) > 0 {
		if err := protojson.Unmarshal(h.Options, msg.Interface()); err != nil {
			return p
		}
	}
	m.Set(fd, protoreflect.ValueOfMessage(msg))
	return p
}
