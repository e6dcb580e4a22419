package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// scopeList is a repeatable flag whose values may also be comma lists.
type scopeList []string

// String implements flag.Value.
func (s *scopeList) String() string { return strings.Join(*s, ",") }

// Set implements flag.Value.
func (s *scopeList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return errors.New("empty scope in the list")
		}
		*s = append(*s, part)
	}
	return nil
}

// selectorFlags are the flags that make a TokenSelector.
type selectorFlags struct {
	client     string
	provider   string
	clientID   string
	secretFile string
	scopes     scopeList
	audience   string
	resource   string
}

// register defines the selector flags on fs.
func (s *selectorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.client, "client", "", "a broker-held client, by its configured `name`")
	fs.StringVar(&s.provider, "provider", "", "pass-through credentials: the provider's `name` (with -client-id)")
	fs.StringVar(&s.clientID, "client-id", "", "pass-through credentials: the OAuth 2.0 client `id` (with -provider)")
	fs.StringVar(&s.secretFile, "client-secret-file", "", "`file` holding the pass-through client secret (env "+envClientSecret+")")
	fs.Var(&s.scopes, "scope", "`scope` to request; repeatable, or a comma list")
	fs.StringVar(&s.audience, "audience", "", "the `audience` parameter to send upstream")
	fs.StringVar(&s.resource, "resource", "", "the resource `URI` to send upstream (RFC 8707)")
}

// build checks the selector flags and makes the selector. The pass-through
// secret comes from -client-secret-file, else the environment, and is
// added to the secrets c scrubs from messages.
func (s *selectorFlags) build(c *cli) (*tokenbrokerv1.TokenSelector, error) {
	sel := &tokenbrokerv1.TokenSelector{Scopes: s.scopes, Audience: s.audience, Resource: s.resource}
	passthrough := s.provider != "" || s.clientID != ""
	switch {
	case s.client != "" && passthrough:
		return nil, usagef("-client and -provider/-client-id: give only one")
	case s.client != "":
		if s.secretFile != "" {
			return nil, usagef("-client-secret-file: only with -provider/-client-id")
		}
		sel.Credentials = &tokenbrokerv1.TokenSelector_Client{Client: s.client}
		return sel, nil
	case !passthrough:
		return nil, usagef("-client, or -provider with -client-id, is required")
	case s.provider == "" || s.clientID == "":
		return nil, usagef("-provider and -client-id: must be given together")
	}
	var sec secret.String
	if s.secretFile != "" {
		v, err := readSecretFile(s.secretFile)
		if err != nil {
			return nil, fmt.Errorf("-client-secret-file: %w", err)
		}
		sec = v
	} else {
		sec = secret.String(c.getenv(envClientSecret))
		if sec == "" {
			return nil, usagef("-provider/-client-id: the client secret is required, in -client-secret-file or %s", envClientSecret)
		}
	}
	c.secrets = append(c.secrets, sec)
	sel.Credentials = &tokenbrokerv1.TokenSelector_ClientCredentials{ClientCredentials: &tokenbrokerv1.ClientCredentials{
		Provider: s.provider, ClientId: s.clientID, ClientSecret: sec.Reveal(),
	}}
	return sel, nil
}

const selectorDoc = `The token is selected by -client NAME (a client the broker holds) or by
-provider P -client-id ID (pass-through credentials), whose secret comes
from -client-secret-file F or the environment variable ` + envClientSecret + `.`

// runGet implements "get".
func runGet(ctx context.Context, c *cli, args []string) error {
	var sel selectorFlags
	var minTTL time.Duration
	fs := c.flagSet("get", "[flags]", `Get an access token (GetToken). By default only the token is printed,
so that TOKEN=$(tokenbrokerctl get ...) works; -o json prints the Token
message, -o table its key id and timing without the token.

`+selectorDoc, func(fs *flag.FlagSet) {
		sel.register(fs)
		fs.DurationVar(&minTTL, "min-ttl", 0, "the least remaining life the token must have (at most 24h)")
	})
	if err := c.parse(fs, args); err != nil {
		return err
	}
	format, err := c.format(formatToken, formatToken, formatJSON, formatTable)
	if err != nil {
		return err
	}
	if minTTL < 0 || minTTL > 24*time.Hour {
		return usagef("-min-ttl: must be between 0 and 24h")
	}
	selector, err := sel.build(c)
	if err != nil {
		return err
	}
	req := &tokenbrokerv1.GetTokenRequest{Selector: selector}
	if minTTL > 0 {
		req.MinTtl = durationpb.New(minTTL)
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(cctx, req)
	if err != nil {
		return err
	}
	tok := resp.GetToken()
	switch format {
	case formatJSON:
		return writeJSON(c.stdout, tok, true, false)
	case formatTable:
		return writeTokenTable(c.stdout, tok, time.Now())
	}
	_, err = fmt.Fprintln(c.stdout, tok.GetAccessToken())
	return err
}

// writeTokenTable prints a token's key id, type, scopes and timing as
// name/value pairs, never the token itself.
func writeTokenTable(w io.Writer, tok *tokenbrokerv1.Token, now time.Time) error {
	t := newTable(w)
	t.row("key_id", orDash(tok.GetKeyId()))
	t.row("token_type", orDash(tok.GetTokenType()))
	t.row("scopes", joinOrDash(tok.GetScopes()))
	t.row("issued_at", formatTimestamp(tok.GetIssuedAt()))
	t.row("expires_at", formatTimestamp(tok.GetExpiresAt()))
	t.row("expires_in", until(tok.GetExpiresAt(), now, "expired"))
	t.row("refresh_at", formatTimestamp(tok.GetRefreshAt()))
	t.row("refresh_in", until(tok.GetRefreshAt(), now, "due"))
	return t.flush()
}

// runWatch implements "watch".
func runWatch(ctx context.Context, c *cli, args []string) error {
	var sel selectorFlags
	fs := c.flagSet("watch", "[flags]", `Subscribe to a token (WatchToken) and print one line per event: the time
it arrived, the event (INITIAL, REFRESHED, INVALIDATED, UNAVAILABLE), the
key id and expires_at, or the error of an UNAVAILABLE event. -o json
prints each event as one JSON object per line, token included; -o token
prints each new access token on a line of its own. Runs until interrupted
(exit 0) or until the stream fails.

`+selectorDoc, sel.register)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	format, err := c.format(formatTable, formatTable, formatJSON, formatToken)
	if err != nil {
		return err
	}
	selector, err := sel.build(c)
	if err != nil {
		return err
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).WatchToken(sctx, &tokenbrokerv1.WatchTokenRequest{Selector: selector})
	if err != nil {
		return watchEnd(ctx, err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return watchEnd(ctx, err)
		}
		if err := c.writeEvent(ev, format, time.Now()); err != nil {
			return err
		}
	}
}

// watchEnd turns the error that ended a watch stream into the command's
// result: none when the user interrupted it or the server ended it
// cleanly.
func watchEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// writeEvent prints one watch event in format.
func (c *cli) writeEvent(ev *tokenbrokerv1.WatchTokenResponse, format string, now time.Time) error {
	var err error
	switch format {
	case formatJSON:
		err = writeJSON(c.stdout, ev, false, false)
	case formatToken:
		if tok := ev.GetToken(); tok != nil {
			_, err = fmt.Fprintln(c.stdout, tok.GetAccessToken())
		} else {
			fmt.Fprintf(c.stderr, "%s: %s: %s\n", progName, eventName(ev.GetEvent()), c.scrub(statusText(ev)))
		}
	default:
		line := now.UTC().Format(time.RFC3339) + " " + eventName(ev.GetEvent())
		if tok := ev.GetToken(); tok != nil {
			line += " key_id=" + orDash(tok.GetKeyId()) + " expires_at=" + formatTimestamp(tok.GetExpiresAt())
		}
		if ev.GetError() != nil {
			line += fmt.Sprintf(" error=%q", c.scrub(statusText(ev)))
		}
		_, err = fmt.Fprintln(c.stdout, line)
	}
	return err
}

// eventName is an event's name without the EVENT_ prefix.
func eventName(e tokenbrokerv1.WatchTokenResponse_Event) string {
	return enumName(e.Descriptor(), e.Number())
}

// statusText renders an event's error as "<code>: <message>".
func statusText(ev *tokenbrokerv1.WatchTokenResponse) string {
	st := status.FromProto(ev.GetError())
	return st.Code().String() + ": " + st.Message()
}
