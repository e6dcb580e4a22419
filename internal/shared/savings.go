package shared

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// This file keeps the fleet's cost accounting (metrics.SavingsStore): one
// hash per provider, "{prefix}:s:<hex provider>", with two fields per
// client, "s:<client>" (calls served) and "u:<client>" (upstream
// requests), which every replica raises by its own counts (HINCRBY of
// deltas, flushed about once a second by metrics.RunSavings, never per
// call). A hash names at most SavingsMaxClients clients; counts of
// further clients go to metrics.OtherProvider ("_other"), as the
// replica's own accounting caps them. The set "{prefix}:sp" lists the
// providers. Every key lives SavingsTTL past its last write, so the
// figures of a provider nobody asks for any more end by themselves.

// SavingsMaxClients is the most clients one provider's fleet figures
// name; the metrics' label cap.
const SavingsMaxClients = metrics.MaxLabelValues

// DefaultSavingsTTL is how long the fleet's figures of a provider live
// past its last flush.
const DefaultSavingsTTL = 7 * 24 * time.Hour

// addSavingsScript raises the fleet's figures. KEYS[1] is the providers'
// set, KEYS[2..] one provider hash each. ARGV[1] is the client cap,
// ARGV[2] the TTL in milliseconds, ARGV[3] the name of the overflow
// client; then, per hash, the provider's name, the number n of its
// clients, and n × (client, served, upstream). A client the hash does not
// name yet, once it names the cap, is counted under the overflow client.
var addSavingsScript = redis.NewScript(`
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local other = ARGV[3]
local a = 4
for i = 2, #KEYS do
  local key = KEYS[i]
  redis.call("SADD", KEYS[1], ARGV[a])
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for j = 1, n do
    local client = ARGV[a]
    if client ~= other and redis.call("HEXISTS", key, "s:" .. client) == 0 then
      local named = redis.call("HLEN", key) / 2
      if redis.call("HEXISTS", key, "s:" .. other) == 1 then named = named - 1 end
      if named >= cap then client = other end
    end
    redis.call("HINCRBY", key, "s:" .. client, ARGV[a + 1])
    redis.call("HINCRBY", key, "u:" .. client, ARGV[a + 2])
    a = a + 3
  end
  redis.call("PEXPIRE", key, ttl)
end
redis.call("PEXPIRE", KEYS[1], ttl)
return 0
`)

func (t *Tier) savingsSetKey() string { return t.tag + ":sp" }

func (t *Tier) savingsKey(provider string) string {
	return t.tag + ":s:" + hex.EncodeToString([]byte(provider))
}

// AddSavings adds d, the replica's counts since its last flush, to the
// fleet's figures in one atomic script (metrics.SavingsStore). It runs
// under the breaker like every operation of the tier; on an error the
// caller keeps the counts for its next flush. A reply lost after Redis
// applied the script makes that next flush count them twice.
func (t *Tier) AddSavings(ctx context.Context, d []metrics.ClientSavings) error {
	if len(d) == 0 {
		return nil
	}
	byProvider := make(map[string][]metrics.ClientSavings)
	var order []string
	for _, c := range d {
		if _, ok := byProvider[c.Provider]; !ok {
			order = append(order, c.Provider)
		}
		byProvider[c.Provider] = append(byProvider[c.Provider], c)
	}
	keys := []string{t.savingsSetKey()}
	args := []any{SavingsMaxClients, t.opt.SavingsTTL.Milliseconds(), metrics.OtherProvider}
	for _, p := range order {
		keys = append(keys, t.savingsKey(p))
		cs := byProvider[p]
		args = append(args, p, len(cs))
		for _, c := range cs {
			args = append(args, c.Client, c.Served, c.Upstream)
		}
	}
	err := t.do(ctx, func(ctx context.Context) error {
		return addSavingsScript.Run(ctx, t.rdb, keys, args...).Err()
	})
	if err != nil {
		return fmt.Errorf("redis tier: savings: %w", err)
	}
	return nil
}

// LoadSavings returns the fleet's figures (metrics.SavingsStore), in two
// round trips: the providers, then their hashes.
func (t *Tier) LoadSavings(ctx context.Context) ([]metrics.ClientSavings, error) {
	var providers []string
	err := t.do(ctx, func(ctx context.Context) error {
		var err error
		providers, err = t.rdb.SMembers(ctx, t.savingsSetKey()).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redis tier: savings: %w", err)
	}
	if len(providers) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.MapStringStringCmd, len(providers))
	err = t.do(ctx, func(ctx context.Context) error {
		_, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, name := range providers {
				cmds[i] = p.HGetAll(ctx, t.savingsKey(name))
			}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redis tier: savings: %w", err)
	}
	var out []metrics.ClientSavings
	for i, name := range providers {
		out = append(out, parseSavings(name, cmds[i].Val())...)
	}
	return out, nil
}

// parseSavings turns one provider hash into figures; fields that are not
// counts of this file's making are skipped.
func parseSavings(provider string, h map[string]string) []metrics.ClientSavings {
	byClient := make(map[string]*metrics.ClientSavings)
	for field, v := range h {
		kind, client, ok := strings.Cut(field, ":")
		if !ok || kind != "s" && kind != "u" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		c := byClient[client]
		if c == nil {
			c = &metrics.ClientSavings{Provider: provider, Client: client}
			byClient[client] = c
		}
		if kind == "s" {
			c.Served = n
		} else {
			c.Upstream = n
		}
	}
	out := make([]metrics.ClientSavings, 0, len(byClient))
	for _, c := range byClient {
		out = append(out, *c)
	}
	return out
}

var _ metrics.SavingsStore = (*Tier)(nil)
