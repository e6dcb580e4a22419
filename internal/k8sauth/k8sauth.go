// Package k8sauth verifies Kubernetes projected service-account tokens
// offline, so that a caller can prove who it is with the token the kubelet
// mounts into its pod.
//
// A token is a JWT signed by the cluster's service-account issuer. Its
// keys come from the issuer's OpenID discovery document (issuer +
// "/.well-known/openid-configuration" → jwks_uri, as the API server
// exposes it) or from a JWKS file, held by the verifier package's key
// cache (verifier.KeySource): cached, fetched again when a token names an
// unknown key id (coalesced, at most once per MinRefreshInterval) and on
// schedule. Parsing is go-jose's (verifier.ParseJWT, which also refuses
// tokens that carry their own key or a pointer to one).
//
// A token is accepted when it is signed with RS256 or ES256 by a key of
// the issuer, its "iss" is the issuer, its "aud" holds the configured
// audience, "exp" is set and neither it nor "nbf"/"iat" is off by more
// than the leeway, and its "kubernetes.io" claim names the namespace, the
// service account and the pod it is bound to (a projected token; legacy
// secret-based tokens carry no pod and are refused). The caller is then
// "k8s:NAMESPACE:SERVICEACCOUNT" (ident.K8s).
//
// A refusal is a *verifier.RefusedError whose Reason says why (expired,
// wrong_audience, unknown_key, bad_signature, ...) and whose message never
// holds the token.
package k8sauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// MaxTokenSize is the longest token verified; longer ones are refused as
// malformed without parsing. It is a fixed limit, not a configuration key.
const MaxTokenSize = 16 << 10

// Algorithms are the signing algorithms accepted: those a Kubernetes API
// server signs service-account tokens with.
var Algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// Config configures a Verifier.
type Config struct {
	// Issuer is the service-account issuer: the exact "iss" of the tokens
	// (the API server's --service-account-issuer). Without JWKSFile the
	// keys are found by discovery under it, so it must then be an https
	// URL (http only on a loopback host). Required.
	Issuer string
	// JWKSFile, when set, holds the issuer's keys (the API server's
	// /openid/v1/jwks) and is read instead of discovery.
	JWKSFile string
	// Audience must be one of a token's audiences
	// (auth.kubernetes.audience). Required.
	Audience string
	// Leeway is the tolerance of the time checks; 0: none
	// (auth.kubernetes.leeway).
	Leeway time.Duration
	// RefreshInterval is how often Run fetches the keys again; more than
	// 0 (verifier.jwks_refresh_interval). Required.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two fetches caused by
	// an unknown key id; more than 0 (verifier.jwks_min_refresh_interval).
	// Required.
	MinRefreshInterval time.Duration
	// HTTPClient fetches the discovery document and the keys. Nil: a plain
	// http.Client.
	HTTPClient *http.Client
	// Logger receives refusals and failed key fetches. Nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// check returns an error naming the first bad field of c and its rule.
func (c *Config) check() error {
	bad := func(field string, v any, rule, key string) error {
		return fmt.Errorf("k8sauth: Config.%s is %v, want %s (configuration %s)", field, v, rule, key)
	}
	switch {
	case c.Issuer == "":
		return errors.New("k8sauth: Issuer is required")
	case c.Audience == "":
		return bad("Audience", `""`, "a non-empty audience", "auth.kubernetes.audience")
	case c.Leeway < 0:
		return bad("Leeway", c.Leeway, "at least 0 (0: none)", "auth.kubernetes.leeway")
	case c.RefreshInterval <= 0:
		return bad("RefreshInterval", c.RefreshInterval, "more than 0", "verifier.jwks_refresh_interval")
	case c.MinRefreshInterval <= 0:
		return bad("MinRefreshInterval", c.MinRefreshInterval, "more than 0", "verifier.jwks_min_refresh_interval")
	}
	return nil
}

// Verifier checks service-account tokens. It is safe for concurrent use.
type Verifier struct {
	issuer   string
	audience string
	leeway   time.Duration
	interval time.Duration
	keys     *verifier.KeySource
	logger   *slog.Logger
	now      func() time.Time
}

// New checks cfg and returns a Verifier; a zero value is an error like
// any other bad value (the configuration holds the defaults). No key is
// fetched until Run or the first token.
func New(cfg Config) (*Verifier, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ks, err := verifier.NewKeySource(verifier.KeySourceConfig{
		Name:               "kubernetes",
		Issuer:             cfg.Issuer,
		JWKSFile:           cfg.JWKSFile,
		HTTPClient:         cfg.HTTPClient,
		MinRefreshInterval: cfg.MinRefreshInterval,
		Logger:             cfg.Logger,
	})
	if err != nil {
		return nil, errors.New("k8sauth: " + err.Error())
	}
	return &Verifier{
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		leeway:   cfg.Leeway,
		interval: cfg.RefreshInterval,
		keys:     ks,
		logger:   cfg.Logger,
		now:      cfg.Now,
	}, nil
}

// Run fetches the keys at once and then every RefreshInterval until ctx
// ends; it returns nil then.
func (v *Verifier) Run(ctx context.Context) error {
	v.keys.Run(ctx, v.interval)
	return nil
}

// Close ends the key fetches in flight.
func (v *Verifier) Close() { v.keys.Close() }

// claims are the claims of a projected service-account token.
type claims struct {
	jwt.Claims
	Kubernetes *struct {
		Namespace      string `json:"namespace"`
		ServiceAccount *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"serviceaccount"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// nameRE is the shape of namespace and service-account names (DNS
// subdomains); nothing else may enter an identity.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)

// Verify checks token and returns the caller's identity,
// "k8s:NAMESPACE:SERVICEACCOUNT". A refusal is a *verifier.RefusedError
// (logged at info with its reason, never with the token); an error
// matching verifier.ErrUnavailable means the keys could not be fetched.
func (v *Verifier) Verify(ctx context.Context, token string) (string, error) {
	name, err := v.verify(ctx, token)
	if err != nil {
		reason := "keys_unavailable"
		var re *verifier.RefusedError
		if errors.As(err, &re) {
			reason = re.Reason.String()
		}
		v.logger.LogAttrs(ctx, slog.LevelInfo, "kubernetes service-account token refused",
			slog.String("reason", reason), slog.String("error", err.Error()))
	}
	return name, err
}

func (v *Verifier) verify(ctx context.Context, token string) (string, error) {
	if len(token) > MaxTokenSize {
		return "", refuse(verifier.ReasonMalformed, "token is longer than %d bytes", MaxTokenSize)
	}
	tok, _, err := verifier.ParseJWT(token)
	if err != nil {
		return "", err
	}
	h := tok.Headers[0]
	if !slices.Contains(Algorithms, jose.SignatureAlgorithm(h.Algorithm)) {
		return "", refuse(verifier.ReasonDisallowedAlgorithm, "signing algorithm must be RS256 or ES256")
	}
	keys, err := v.keys.Lookup(ctx, h.KeyID)
	if err != nil {
		return "", err
	}
	if len(keys) == 0 {
		return "", refuse(verifier.ReasonUnknownKey, "the issuer does not publish the key the token names")
	}
	var c claims
	ok := false
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue
		}
		if err := tok.Claims(k.Key, &c); err == nil {
			ok = true
			break
		}
	}
	if !ok {
		return "", refuse(verifier.ReasonBadSignature, "signature does not verify with the issuer's key")
	}
	if c.Issuer != v.issuer {
		return "", refuse(verifier.ReasonWrongIssuer, "token's issuer is not the configured service-account issuer")
	}
	if !slices.Contains([]string(c.Audience), v.audience) {
		return "", refuse(verifier.ReasonWrongAudience, "token's audience does not include %q", v.audience)
	}
	now := v.now()
	switch {
	case c.Expiry == nil:
		return "", refuse(verifier.ReasonMalformed, `token has no "exp" claim`)
	case now.After(c.Expiry.Time().Add(v.leeway)):
		return "", refuse(verifier.ReasonExpired, "token expired at %s", c.Expiry.Time().UTC().Format(time.RFC3339))
	case c.NotBefore != nil && c.NotBefore.Time().After(now.Add(v.leeway)):
		return "", refuse(verifier.ReasonNotYetValid, "token is not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339))
	case c.IssuedAt != nil && c.IssuedAt.Time().After(now.Add(v.leeway)):
		return "", refuse(verifier.ReasonNotYetValid, "token is issued in the future (%s)", c.IssuedAt.Time().UTC().Format(time.RFC3339))
	}
	k := c.Kubernetes
	if k == nil || k.ServiceAccount == nil || k.Pod == nil || k.Pod.Name == "" {
		return "", refuse(verifier.ReasonMalformed, `token has no "kubernetes.io" namespace, serviceaccount and pod claims (a projected service-account token bound to a pod is required)`)
	}
	ns, sa := k.Namespace, k.ServiceAccount.Name
	if !nameRE.MatchString(ns) || !nameRE.MatchString(sa) {
		return "", refuse(verifier.ReasonMalformed, `token's "kubernetes.io" namespace or service-account name is not a Kubernetes name`)
	}
	if c.Subject != "system:serviceaccount:"+ns+":"+sa {
		return "", refuse(verifier.ReasonMalformed, `token's "sub" does not name its "kubernetes.io" service account`)
	}
	return ident.K8s(ns, sa), nil
}

// refuse returns a *verifier.RefusedError.
func refuse(r verifier.Reason, format string, args ...any) error {
	return &verifier.RefusedError{Reason: r, Message: fmt.Sprintf(format, args...)}
}
