package sds_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/sds"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestCallerLimits: SDS subscriptions obey WatchToken's per-caller limits
// and share the caller's budget with its WatchToken streams: with
// max_watches_per_caller 2, two SDS streams fill it, and a third SDS
// stream and a WatchToken stream of the same caller get
// RESOURCE_EXHAUSTED.
func TestCallerLimits(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	cfg.Server.MaxWatchesPerCaller = 2
	h := start(t, cfg, issuer)
	c, cc := dial(t, h.addr)
	for i := range 2 {
		s := open(t, context.Background(), c, "sidecar", "", "api")
		if name, _ := secretOf(t, s.recv()); name != "api" {
			t.Fatalf("stream %d: secret name: got %q, want api", i, name)
		}
	}
	s := open(t, context.Background(), c, "sidecar", "", "api")
	if _, err := s.recvErr(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third SDS stream: got %v, want ResourceExhausted", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	w, err := tokenbrokerv1.NewTokenBrokerServiceClient(cc).WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{
		Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: apptest.HeldClient}, Scopes: []string{"api/read"}},
	})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("WatchToken beside two SDS streams: got %v, want ResourceExhausted", err)
	}
}

// TestOwnListenerIsTheMainServer: SDS on its own listener (sds.listen)
// is served with the main server's interceptors and codec: a call gets
// the access log line, a name with invalid UTF-8 is InvalidArgument naming
// the field (gRPC's own codec would answer Internal), and the listener's
// health service lists the SDS service.
func TestOwnListenerIsTheMainServer(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sds.sock")
	cfg.SDS.Listen = "unix:" + sock
	h := start(t, cfg, issuer)
	c, cc := dial(t, "unix://"+sock)

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	service := secretv3.SecretDiscoveryService_ServiceDesc.ServiceName
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.WaitForReady(true)) // the socket opens as Serve starts
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of %s on sds.listen: got %v, %v, want SERVING", service, resp.GetStatus(), err)
	}

	// A request with invalid UTF-8 in resource_names[0] (field 3), sent as
	// bytes: a Go client would refuse to marshal it.
	req := protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "api\xff")
	var out []byte
	err = cc.Invoke(ctx, "/"+service+"/FetchSecrets", &req, &out, grpc.ForceCodecV2(rawCodec{}))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "resource_names[0]") || !strings.Contains(st.Message(), "UTF-8") {
		t.Errorf("a name with invalid UTF-8: got %v, want InvalidArgument naming resource_names[0]", err)
	}
	waitLog(t, h.logs, `"grpc.method":"FetchSecrets"`, `"grpc.code":"InvalidArgument"`)

	// A stream's line.
	s := open(t, context.Background(), c, "sidecar", "", "api")
	secretOf(t, s.recv())
	s.cancel()
	waitLog(t, h.logs, `"grpc.method":"StreamSecrets"`, `"grpc.code":"Canceled"`)

	f, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: sds.TypeURL, ResourceNames: []string{"api"}})
	if err != nil {
		t.Fatalf("FetchSecrets: %v", err)
	}
	secretOf(t, f)
	waitLog(t, h.logs, `"grpc.method":"FetchSecrets"`, `"grpc.code":"OK"`)
}

// rawCodec sends a *[]byte as it is and receives into one.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// waitLog waits, at most wait, for a log line that holds every one of
// parts: the server writes a call's line after the caller saw its end.
func waitLog(t *testing.T, logs *testkit.LogBuffer, parts ...string) {
	t.Helper()
	timeout := time.After(wait)
	for {
		wrote := logs.Wrote()
		for line := range strings.Lines(logs.String()) {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return
			}
		}
		select {
		case <-wrote:
		case <-timeout:
			t.Errorf("no log line holding %q within %v", parts, wait)
			return
		}
	}
}
