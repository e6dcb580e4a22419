package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// maxPageSize is the largest page ListTokens serves.
const maxPageSize = 1000

// runInvalidate implements "invalidate".
func runInvalidate(ctx context.Context, c *cli, args []string) error {
	var (
		keyID, provider, clientID, client string
		scopes                            scopeList
		all                               bool
	)
	fs := c.flagSet("invalidate", "-key-id ID | -provider P -client-id ID [-scope S]... | -client NAME | -all",
		`Drop cached tokens (AdminService.InvalidateTokens) and print how many
entries were invalidated. Exactly one selector is required. Watchers of an
invalidated key get a new token at once (EVENT_INVALIDATED).`, func(fs *flag.FlagSet) {
			fs.StringVar(&keyID, "key-id", "", "one entry, by its key `id` (as get, watch and list show it)")
			fs.StringVar(&provider, "provider", "", "the entries of one client id at this provider `name` (with -client-id)")
			fs.StringVar(&clientID, "client-id", "", "the entries of this OAuth 2.0 client `id` (with -provider)")
			fs.Var(&scopes, "scope", "with -provider/-client-id: only the entry of exactly this scope set; repeatable, or a comma list")
			fs.StringVar(&client, "client", "", "the entries of a broker-held client, by its configured `name`")
			fs.BoolVar(&all, "all", false, "every entry")
		})
	if err := c.parse(fs, args); err != nil {
		return err
	}
	format, err := c.format(formatTable, formatTable, formatJSON)
	if err != nil {
		return err
	}
	byClientID := provider != "" || clientID != ""
	chosen := 0
	for _, set := range []bool{keyID != "", byClientID, client != "", all} {
		if set {
			chosen++
		}
	}
	req := &tokenbrokerv1.InvalidateTokensRequest{}
	switch {
	case chosen != 1:
		return usagef("exactly one of -key-id, -provider/-client-id, -client or -all is required")
	case len(scopes) > 0 && !byClientID:
		return usagef("-scope: only with -provider and -client-id")
	case byClientID && (provider == "" || clientID == ""):
		return usagef("-provider and -client-id: must be given together")
	case keyID != "":
		req.Selector = &tokenbrokerv1.InvalidateTokensRequest_KeyId{KeyId: keyID}
	case byClientID:
		req.Selector = &tokenbrokerv1.InvalidateTokensRequest_ClientId{ClientId: &tokenbrokerv1.ClientIdSelector{
			Provider: provider, ClientId: clientID, Scopes: scopes,
		}}
	case client != "":
		req.Selector = &tokenbrokerv1.InvalidateTokensRequest_Client{Client: client}
	default:
		req.Selector = &tokenbrokerv1.InvalidateTokensRequest_All{All: true}
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := tokenbrokerv1.NewAdminServiceClient(conn).InvalidateTokens(cctx, req)
	if err != nil {
		return err
	}
	if format == formatJSON {
		return writeJSON(c.stdout, resp, true, true)
	}
	noun := "entries"
	if resp.GetInvalidated() == 1 {
		noun = "entry"
	}
	_, err = fmt.Fprintf(c.stdout, "invalidated %d %s\n", resp.GetInvalidated(), noun)
	return err
}

// listColumns are the columns of "list".
var listColumns = []string{"KEY ID", "PROVIDER", "CLIENT ID", "SCOPES", "EXPIRES IN", "REFRESH IN", "WATCHERS", "HITS", "LAST USED"}

// runList implements "list".
func runList(ctx context.Context, c *cli, args []string) error {
	var pageSize, limit int
	fs := c.flagSet("list", "[-page-size N] [-limit N]",
		`List the cache entries (AdminService.ListTokens), ordered by key id,
fetching every page unless -limit says otherwise. The table never shows a
token or a secret; -o json prints one ListTokensResponse with every entry
fetched (next_page_token set when -limit stopped early). -timeout applies
to each page.`, func(fs *flag.FlagSet) {
			fs.IntVar(&pageSize, "page-size", 0, "entries per request, 1 to 1000 (default: the server's, 100)")
			fs.IntVar(&limit, "limit", 0, "the most entries to list (default: all)")
		})
	if err := c.parse(fs, args); err != nil {
		return err
	}
	format, err := c.format(formatTable, formatTable, formatJSON)
	if err != nil {
		return err
	}
	if pageSize < 0 || pageSize > maxPageSize {
		return usagef("-page-size: must be between 1 and %d", maxPageSize)
	}
	if limit < 0 {
		return usagef("-limit: must not be negative")
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	admin := tokenbrokerv1.NewAdminServiceClient(conn)
	var entries []*tokenbrokerv1.TokenEntry
	next := ""
	for {
		size := pageSize
		if remaining := limit - len(entries); limit > 0 && (size == 0 || remaining < size) {
			size = min(remaining, maxPageSize)
		}
		cctx, cancel := c.withTimeout(ctx)
		resp, err := admin.ListTokens(cctx, &tokenbrokerv1.ListTokensRequest{PageSize: int32(size), PageToken: next})
		cancel()
		if err != nil {
			return err
		}
		entries = append(entries, resp.GetEntries()...)
		prev := next
		next = resp.GetNextPageToken()
		if next == "" || (limit > 0 && len(entries) >= limit) {
			break
		}
		if next == prev {
			return errors.New("the server returned the same page token twice")
		}
	}
	if limit > 0 && len(entries) > limit {
		entries = entries[:limit]
	}
	if format == formatJSON {
		return writeJSON(c.stdout, &tokenbrokerv1.ListTokensResponse{Entries: entries, NextPageToken: next}, true, false)
	}
	now := time.Now()
	t := newTable(c.stdout)
	t.row(listColumns...)
	for _, e := range entries {
		t.row(
			orDash(e.GetKeyId()),
			orDash(e.GetProvider()),
			orDash(e.GetClientId()),
			joinOrDash(e.GetScopes()),
			until(e.GetExpiresAt(), now, "expired"),
			until(e.GetRefreshAt(), now, "due"),
			strconv.Itoa(int(e.GetWatchers())),
			strconv.FormatInt(e.GetHits(), 10),
			ago(e.GetLastUsed(), now),
		)
	}
	return t.flush()
}

// runStats implements "stats".
func runStats(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet("stats", "",
		`Print the broker's counters and gauges (AdminService.GetStats) as name/value
pairs: every field of the answer, nested ones with dotted names
(shared_tier.hits), per-provider ones as providers[NAME].FIELD, "-" for
what is absent. -o json prints the GetStatsResponse message, zeros
included.`, func(*flag.FlagSet) {})
	if err := c.parse(fs, args); err != nil {
		return err
	}
	format, err := c.format(formatTable, formatTable, formatJSON)
	if err != nil {
		return err
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := tokenbrokerv1.NewAdminServiceClient(conn).GetStats(cctx, &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		return err
	}
	if format == formatJSON {
		return writeJSON(c.stdout, resp, true, true)
	}
	t := newTable(c.stdout)
	t.row("NAME", "VALUE")
	for _, f := range flatten(resp.ProtoReflect()) {
		t.row(f.name, f.value)
	}
	return t.flush()
}
