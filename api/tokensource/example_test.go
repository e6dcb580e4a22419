package tokensource_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/api/tokensource"
)

// A service subscribes once at start-up to the token of the broker-held
// client "payments" and sends it with every HTTP request. Each request
// reads the latest pushed token; none waits for the broker.
func Example() {
	// The connection to the broker (here a sidecar on loopback).
	conn, err := grpc.NewClient("127.0.0.1:7443", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Wait at most 10 s for the first token.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := tokensource.New(ctx, conn, &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "payments"},
		Scopes:      []string{"payments/read"},
	})
	if err != nil {
		log.Fatal(err) // for example NotFound: the broker holds no client "payments"
	}
	defer src.Close()

	// oauth2.Transport asks src for the token on every request; src is
	// cheap, so it needs no oauth2.ReuseTokenSource in front.
	client := &http.Client{Transport: &oauth2.Transport{Source: src}, Timeout: 10 * time.Second}
	resp, err := client.Get("https://payments.example.com/v1/balance")
	if err != nil {
		log.Fatal(err) // a tokensource.ErrNoToken here means no valid token is held
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

// A complete program against `make run` (the -dev broker on
// 127.0.0.1:7443 and its demo client), as the README shows it with
// package main: its body is main's, word for word (TestREADMEProgram
// checks that, and runs the README's text against an in-process -dev
// broker).
func Example_devBroker() {
	// The broker: plaintext is fine on loopback; use TLS anywhere else.
	conn, err := grpc.NewClient("127.0.0.1:7443", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Subscribe to the token of the broker-held client "demo", waiting at
	// most 10 s for the first one.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := tokensource.New(ctx, conn, &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "demo"},
		Scopes:      []string{"demo/read"},
	})
	if err != nil {
		log.Fatal(err) // no token within 10 s, or refused (NotFound, PermissionDenied, …)
	}
	defer src.Close()

	// Token makes no RPC: it returns the latest token the broker pushed,
	// or an error wrapping tokensource.ErrNoToken, never an expired token.
	tok, err := src.Token()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s token, expires in %s\n", tok.Type(), time.Until(tok.Expiry).Round(time.Second))

	// An HTTP client that sends "Authorization: Bearer <token>" with every
	// request; here to the broker's own /healthz, which ignores it. For
	// gRPC, dial with grpc.WithPerRPCCredentials(src) (over TLS).
	client := &http.Client{Transport: &oauth2.Transport{Source: src}, Timeout: 10 * time.Second}
	resp, err := client.Get("http://127.0.0.1:7080/healthz")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("GET /healthz:", resp.Status)
}

// A gRPC client sends the token with every call: the Source is its
// PerRPCCredentials. gRPC refuses to send it over a connection without
// transport security unless the Source was made WithInsecure.
func ExampleSource_GetRequestMetadata() {
	broker, err := grpc.NewClient("127.0.0.1:7443", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := tokensource.New(ctx, broker, &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "ledger"},
		Scopes:      []string{"ledger/write"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	// Every call on this connection carries "authorization: Bearer <token>".
	ledger, err := grpc.NewClient("ledger.internal:443",
		grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(nil, "")),
		grpc.WithPerRPCCredentials(src))
	if err != nil {
		log.Fatal(err)
	}
	defer ledger.Close()
	// ... ledgerv1.NewLedgerServiceClient(ledger).Post(ctx, ...)
}

// Token returns the held token, or an error once no valid token is held:
// it never returns an expired token, and never calls the broker.
func ExampleSource_Token() {
	conn, err := grpc.NewClient("127.0.0.1:7443", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := tokensource.New(ctx, conn, &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "payments"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	tok, err := src.Token()
	if err != nil {
		log.Printf("no token to send: %v", err) // wraps ErrNoToken and the broker's status
		return
	}
	req, _ := http.NewRequest(http.MethodGet, "https://api.example.com/v1/things", nil)
	tok.SetAuthHeader(req)
}

// The broker may require callers to authenticate with an API key: the
// stream carries the outgoing metadata of New's context.
func ExampleNew_apiKey() {
	conn, err := grpc.NewClient("broker.internal:7443", grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(nil, "")))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey())
	src, err := tokensource.New(ctx, conn, &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "payments"},
	}, tokensource.WithMinRemaining(time.Minute), tokensource.WithBackoff(500*time.Millisecond, 30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
}

// apiKey stands for however the service loads its broker API key.
func apiKey() string { return "" }
