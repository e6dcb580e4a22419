package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// nameRE is the rule for provider and client names.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// nameRule is how nameRE reads in an error.
const nameRule = "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"

// Validate checks c and returns every problem it finds, joined with
// errors.Join, or nil. Each problem reads "key.path: rule", for example
// "providers[1].token_url: must be an absolute https URL (http is allowed
// only for loopback hosts)". Values that may be secret are never quoted.
//
// Besides each key's own rule, Validate enforces three rules of safety:
// without tls, listen, http_listen and a TCP admin.listen must be loopback
// addresses unless insecure_allow_remote is set; in -dev mode (Dev) they
// must be loopback addresses whatever tls and insecure_allow_remote say;
// and callers must have a way to
// authenticate (tls.client_auth: require or auth.api_keys) unless
// auth.allow_unauthenticated is set or Dev is. In -dev mode policy may also
// name the client "demo", which -dev adds after Validate. Validate reads no
// file.
func (c *Config) Validate() error {
	var v validator

	if err := checkListen(c.Listen); err != "" {
		v.add("listen", "%s", err)
	}

	cc := c.Cache
	if c.Dev && (c.DevLifetime < Duration(time.Second) || c.DevLifetime <= cc.MinRemaining) {
		v.add("-dev-lifetime", "must be at least 1s and longer than cache.min_remaining (%s), got %s", cc.MinRemaining, c.DevLifetime)
	}
	if cc.MaxCost < MinCacheMaxCost || cc.MaxCost > MaxCacheMaxCost {
		v.add("cache.max_cost", "must be between %s and %s, got %s", MinCacheMaxCost, MaxCacheMaxCost, cc.MaxCost)
	}
	if !(cc.RefreshFraction > 0 && cc.RefreshFraction < 1) {
		v.add("cache.refresh_fraction", "must be in (0, 1), got %v", cc.RefreshFraction)
	}
	if !(cc.RefreshJitter >= 0 && cc.RefreshJitter < 0.5) {
		v.add("cache.refresh_jitter", "must be in [0, 0.5), got %v", cc.RefreshJitter)
	} else if cc.RefreshFraction > 0 && cc.RefreshFraction < 1 &&
		!(cc.RefreshFraction-cc.RefreshJitter > 0) {
		v.add("cache.refresh_jitter", "refresh_fraction - refresh_jitter must stay above 0, got %v - %v", cc.RefreshFraction, cc.RefreshJitter)
	}
	if cc.MinRemaining < 0 {
		v.add("cache.min_remaining", "must be >= 0, got %s", cc.MinRemaining)
	}
	if cc.NegativeTTL < 0 {
		v.add("cache.negative_ttl", "must be >= 0 (0 disables), got %s", cc.NegativeTTL)
	}
	if cc.FetchTimeout <= 0 {
		v.add("cache.fetch_timeout", "must be > 0, got %s", cc.FetchTimeout)
	}
	if cc.RefreshRetryBackoff <= 0 {
		v.add("cache.refresh_retry_backoff", "must be > 0, got %s", cc.RefreshRetryBackoff)
	} else if cc.RefreshRetryBackoffMax < cc.RefreshRetryBackoff {
		v.add("cache.refresh_retry_backoff_max", "must be >= cache.refresh_retry_backoff (%s), got %s", cc.RefreshRetryBackoff, cc.RefreshRetryBackoffMax)
	}
	if c.HTTPMaxBodyBytes < KiB || c.HTTPMaxBodyBytes > MiB {
		v.add("http_max_body_bytes", "must be between 1KiB and 1MiB, got %d bytes", int64(c.HTTPMaxBodyBytes))
	}

	// providers maps each valid, unique name to its index; every name
	// present counts for clients[].provider, so that one bad name is
	// reported once.
	providers := make(map[string]int, len(c.Providers))
	present := make(map[string]bool, len(c.Providers))
	for i, p := range c.Providers {
		present[p.Name] = true
		key := fmt.Sprintf("providers[%d]", i)
		switch first, dup := providers[p.Name]; {
		case !nameRE.MatchString(p.Name):
			v.add(key+".name", nameRule+", got %q", p.Name)
		case dup:
			v.add(key+".name", "%q is already the name of providers[%d]", p.Name, first)
		default:
			providers[p.Name] = i
		}
		if err := checkTokenURL(p.TokenURL); err != "" {
			v.add(key+".token_url", "%s", err)
		}
		if !validAuthMethod(p.AuthMethod) {
			v.add(key+".auth_method", authMethodRule+", got %q", p.AuthMethod)
		}
		checkParameters(&v, key+".parameters", p.Parameters)
		if p.Timeout <= 0 {
			v.add(key+".timeout", "must be > 0, got %s", p.Timeout)
		} else if cc.FetchTimeout > 0 && p.Timeout > cc.FetchTimeout {
			v.add(key+".timeout", "must not exceed cache.fetch_timeout (%s), which bounds a whole fetch, got %s", cc.FetchTimeout, p.Timeout)
		}
		if !(p.RateLimit > 0 && !math.IsInf(p.RateLimit, 1)) {
			v.add(key+".rate_limit", "must be a finite number > 0 (requests per second), got %v", p.RateLimit)
		}
		if p.Burst < 1 {
			v.add(key+".burst", "must be >= 1, got %d", p.Burst)
		}
		if !(p.FleetRateLimit >= 0 && !math.IsInf(p.FleetRateLimit, 1)) {
			v.add(key+".fleet_rate_limit", "must be a finite number >= 0 (requests per second; 0: none), got %v", p.FleetRateLimit)
		} else if p.FleetRateLimit > 0 && !c.Shared.Redis.Enabled() {
			v.add(key+".fleet_rate_limit", "needs shared.redis (the fleet's budget is kept in Redis), got %v", p.FleetRateLimit)
		}
		if p.FleetBurst < 1 {
			v.add(key+".fleet_burst", "must be >= 1, got %d", p.FleetBurst)
		}
		if !(p.PricePer1000Requests >= 0 && !math.IsInf(p.PricePer1000Requests, 1)) {
			v.add(key+".price_per_1000_requests", "must be a finite number >= 0 (0: no cost estimate), got %v", p.PricePer1000Requests)
		}
		for _, f := range []struct {
			name  string
			value float64
		}{{"passthrough_share", p.PassthroughShare}, {"passthrough_caller_share", p.PassthroughCallerShare}, {"passthrough_client_share", p.PassthroughClientShare}, {"fleet_local_share", p.FleetLocalShare}} {
			if !(f.value > 0 && f.value <= 1) {
				v.add(key+"."+f.name, "must be a fraction > 0 and <= 1, got %v", f.value)
			}
		}
		if p.DefaultLifetime <= 0 {
			v.add(key+".default_lifetime", "must be > 0, got %s", p.DefaultLifetime)
		}
		if p.MaxAttempts < 1 || p.MaxAttempts > 10 {
			v.add(key+".max_attempts", "must be between 1 and 10, got %d", p.MaxAttempts)
		}
		if p.RetryBackoff <= 0 {
			v.add(key+".retry_backoff", "must be > 0, got %s", p.RetryBackoff)
		} else if p.RetryBackoffMax < p.RetryBackoff {
			v.add(key+".retry_backoff_max", "must be >= retry_backoff (%s), got %s", p.RetryBackoff, p.RetryBackoffMax)
		}
	}

	clients := make(map[string]int, len(c.Clients))
	clientNames := make(map[string]bool, len(c.Clients))
	for i, cl := range c.Clients {
		clientNames[cl.Name] = true
		key := fmt.Sprintf("clients[%d]", i)
		switch first, dup := clients[cl.Name]; {
		case !nameRE.MatchString(cl.Name):
			v.add(key+".name", nameRule+", got %q", cl.Name)
		case dup:
			v.add(key+".name", "%q is already the name of clients[%d]", cl.Name, first)
		default:
			clients[cl.Name] = i
		}
		if !present[cl.Provider] {
			if cl.Provider == "" {
				v.add(key+".provider", "must name a configured provider")
			} else {
				v.add(key+".provider", "%q is not a configured provider", cl.Provider)
			}
		}
		if !validClientID(cl.ClientID) {
			v.add(key+".client_id", "must be 1-128 printable ASCII characters without spaces")
		}
		c.validateClientAuth(&v, i)
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		v.add("log.format", "must be json or text, got %q", c.Log.Format)
	}
	switch c.Log.Access {
	case "failures", "all":
	default:
		v.add("log.access", "must be failures or all, got %q", c.Log.Access)
	}

	if c.Server.MaxConcurrentStreams < 1 {
		v.add("server.max_concurrent_streams", "must be an integer from 1 to 4294967295, got %d", c.Server.MaxConcurrentStreams)
	}
	if c.Server.ShutdownTimeout <= 0 {
		v.add("server.shutdown_timeout", "must be > 0, got %s", c.Server.ShutdownTimeout)
	}
	if c.Server.KeepaliveMinTime < 0 {
		v.add("server.keepalive_min_time", "must be >= 0, got %s", c.Server.KeepaliveMinTime)
	}
	if c.Server.MaxConnectionAge < Duration(time.Second) {
		v.add("server.max_connection_age", "must be at least 1s, got %s", c.Server.MaxConnectionAge)
	}
	if c.Server.MaxConnectionAgeGrace <= 0 {
		v.add("server.max_connection_age_grace", "must be > 0, got %s", c.Server.MaxConnectionAgeGrace)
	}
	if c.Server.MaxWatchesPerCaller < 1 {
		v.add("server.max_watches_per_caller", "must be >= 1, got %d", c.Server.MaxWatchesPerCaller)
	}
	if r := c.Server.WatchOpensPerSecond; !(r > 0 && !math.IsInf(r, 1)) {
		v.add("server.watch_opens_per_second", "must be a finite number > 0 (stream opens per second), got %v", r)
	}
	if c.Server.WatchOpenBurst < 1 {
		v.add("server.watch_open_burst", "must be >= 1, got %d", c.Server.WatchOpenBurst)
	}
	if s := c.Server.MaxHeaderListSize; s < KiB || s > MiB {
		v.add("server.max_header_list_size", "must be between %s and %s, got %s", ByteSize(KiB), ByteSize(MiB), s)
	}

	c.validateSecurity(&v, clientNames)
	c.validateShared(&v)
	c.validateSDS(&v, clientNames)
	c.validateVerifier(&v)
	if p := c.HTTPDefaultProvider; p != "" && !slices.ContainsFunc(c.Providers, func(q Provider) bool { return q.Name == p }) {
		v.add("http_default_provider", "must name a configured provider, got %q", p)
	}

	return errors.Join(v.errs...)
}

// validator collects problems.
type validator struct{ errs []error }

// add records the problem "key: rule".
func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, fieldErr(key, format, args...))
}

// checkListen returns what is wrong with a listen address, "" if nothing.
func checkListen(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("must be host:port (for example 127.0.0.1:7443 or :7443), got %q", addr)
	}
	if strings.ContainsAny(host, " \t\r\n") {
		return fmt.Sprintf("host must not contain white space, got %q", host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return fmt.Sprintf("port must be a number from 0 to 65535, got %q", port)
	}
	return ""
}

// checkTokenURL returns what is wrong with a token endpoint URL, "" if
// nothing. The URL itself is not quoted back: it might hold a credential.
func checkTokenURL(raw string) string {
	const rule = "must be an absolute https URL (http is allowed only for loopback hosts)"
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Opaque != "" || u.Hostname() == "" {
		return rule
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return rule
		}
	default:
		return rule
	}
	if u.User != nil {
		return "must not contain user info (credentials belong in clients)"
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return "must not contain a fragment"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return "port must be a number from 1 to 65535"
		}
	}
	return ""
}

// isLoopback reports whether host is localhost, in 127.0.0.0/8 or ::1.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validClientID reports whether id is 1-128 printable ASCII bytes, no space.
func validClientID(id string) bool {
	if len(id) < 1 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}
