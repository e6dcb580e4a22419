package server

import (
	"context"
	"strconv"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ruleUTF8 is the rule broken by a string field holding invalid UTF-8.
const ruleUTF8 = "must be valid UTF-8"

// A request whose string field holds invalid UTF-8 fails to unmarshal in
// the gRPC codec, before any interceptor runs, and gRPC answers such a
// failure with codes.Internal. So the server's codec (utf8Codec) finds the
// field itself and lets the call go on with an empty request marked in
// utf8Marks; the outermost interceptor moves the mark into the call's
// context (so that every call takes its mark with it, whatever happens
// next), and the innermost one answers InvalidArgument naming the field,
// after authentication, logged and counted like any invalid request.

// utf8Marks holds, per request message that failed to unmarshal, the path
// of its first string field with invalid UTF-8.
type utf8Marks struct{ m sync.Map }

// take removes and returns the mark of msg, "" when there is none.
func (u *utf8Marks) take(msg any) string {
	if v, ok := u.m.LoadAndDelete(msg); ok {
		return v.(string)
	}
	return ""
}

// utf8Codec is gRPC's proto codec, except that a message with invalid
// UTF-8 in a string field unmarshals as an empty message marked in marks.
type utf8Codec struct {
	base  encoding.CodecV2
	marks *utf8Marks
}

// newUTF8Codec returns the codec for a server whose interceptors use marks.
func newUTF8Codec(marks *utf8Marks) utf8Codec {
	return utf8Codec{base: encoding.GetCodecV2(grpcproto.Name), marks: marks}
}

// Name implements encoding.CodecV2.
func (c utf8Codec) Name() string { return grpcproto.Name }

// Marshal implements encoding.CodecV2. A message already encoded (a
// GetToken response shared by the calls that get the same token, see
// encoded.go) is its bytes.
func (c utf8Codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMessage); ok {
		return m.marshal(), nil
	}
	return c.base.Marshal(v)
}

// Unmarshal implements encoding.CodecV2. Any failure other than invalid
// UTF-8 is returned as it is.
func (c utf8Codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	field, found := invalidUTF8Field(m.ProtoReflect().Descriptor(), data.Materialize(), "")
	if !found {
		return err
	}
	proto.Reset(m)
	c.marks.m.Store(v, field)
	return nil
}

// invalidUTF8Field walks the wire encoding b of a message of type md and
// returns the path of its first string field (prefix included) that holds
// invalid UTF-8, in the API's notation: "selector.scopes[2]". found is
// false when there is none, or b is malformed before one is found.
func invalidUTF8Field(md protoreflect.MessageDescriptor, b []byte, prefix string) (path string, found bool) {
	var seen map[protowire.Number]int // entries of repeated fields so far
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return "", false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue // unknown fields are kept as bytes, never checked
		}
		name := prefix + string(fd.Name())
		if fd.IsList() {
			if seen == nil {
				seen = make(map[protowire.Number]int)
			}
			name += "[" + strconv.Itoa(seen[num]) + "]"
			seen[num]++
		}
		switch {
		case fd.IsMap():
			if p, ok := invalidUTF8Field(fd.Message(), v, name+"."); ok {
				return p, true
			}
		case fd.Kind() == protoreflect.StringKind:
			if !utf8.Valid(v) {
				return name, true
			}
		case fd.Kind() == protoreflect.MessageKind:
			if p, ok := invalidUTF8Field(fd.Message(), v, name+"."); ok {
				return p, true
			}
		}
	}
	return "", false
}

// utf8FieldKey is the context key of a call's invalid UTF-8 field.
type utf8FieldKey struct{}

// unaryUTF8Mark is the outermost unary interceptor: it moves the request's
// mark, if any, into the call's context.
func unaryUTF8Mark(marks *utf8Marks) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if field := marks.take(req); field != "" {
			ctx = context.WithValue(ctx, utf8FieldKey{}, field)
		}
		return handler(ctx, req)
	}
}

// unaryUTF8Reject is an innermost unary interceptor: a call whose request
// held invalid UTF-8 gets InvalidArgument naming the field; its handler
// does not run.
func unaryUTF8Reject(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if field, ok := ctx.Value(utf8FieldKey{}).(string); ok {
		return nil, StatusFromError(invalid(field, ruleUTF8), false).Err()
	}
	return handler(ctx, req)
}

// streamUTF8 is the outermost stream interceptor: a received message that
// held invalid UTF-8 is an InvalidArgument error naming the field,
// returned by RecvMsg to the handler (which ends the stream with it).
func streamUTF8(marks *utf8Marks) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &utf8Stream{ServerStream: ss, marks: marks})
	}
}

// utf8Stream checks each received message for a mark.
type utf8Stream struct {
	grpc.ServerStream
	marks *utf8Marks
}

// RecvMsg implements grpc.ServerStream.
func (s *utf8Stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if field := s.marks.take(m); field != "" {
		return StatusFromError(invalid(field, ruleUTF8), false).Err()
	}
	return nil
}
