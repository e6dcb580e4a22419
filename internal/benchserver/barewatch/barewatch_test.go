package barewatch

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }

// initialMessage is a broker-like first message: issued at t0, expiring
// an hour later, to be refreshed at 45 minutes.
func initialMessage(t0 time.Time) *tokenbrokerv1.WatchTokenResponse {
	return &tokenbrokerv1.WatchTokenResponse{Event: tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL, Token: &tokenbrokerv1.Token{
		AccessToken: "not-a-real-token",
		TokenType:   "Bearer",
		Scopes:      []string{"api/read"},
		IssuedAt:    timestamppb.New(t0),
		ExpiresAt:   timestamppb.New(t0.Add(time.Hour)),
		RefreshAt:   timestamppb.New(t0.Add(45 * time.Minute)),
		KeyId:       "k1",
	}}
}

// TestStreamsGetEachPublishedMessage: two streams over loopback gRPC get
// the initial message, then each published one in turn, with the
// token's times moved and nothing else changed.
func TestStreamsGetEachPublishedMessage(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	initial := initialMessage(t0)
	srv := New(initial)
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)

	var streams []grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse]
	for range 2 {
		st, err := client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, initial) {
			t.Fatalf("first message: got %v, want %v", got, initial)
		}
		streams = append(streams, st)
	}
	for k := range 3 {
		at := t0.Add(time.Duration(k+1) * time.Minute)
		pub := srv.Publish(at)
		want := initialMessage(at)
		want.Event = tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED
		if !proto.Equal(pub, want) {
			t.Fatalf("publish %d: got %v, want %v", k+1, pub, want)
		}
		for i, st := range streams {
			got, err := st.Recv()
			if err != nil {
				t.Fatalf("stream %d, publish %d: %v", i, k+1, err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("stream %d, publish %d: got %v, want %v", i, k+1, got, want)
			}
		}
	}
	if !proto.Equal(initial, initialMessage(t0)) {
		t.Errorf("New's argument changed: got %v", initial)
	}
}
