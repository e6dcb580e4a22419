// Package verifier checks access tokens for resource servers: the domain
// behind TokenVerifierService.VerifyToken and the Envoy ext_authz server.
//
// A JWT is matched to a configured provider by its issuer ("iss"), parsed
// with go-jose, and its signature checked against the provider's keys
// (JWKS). The keys come from the provider's OpenID discovery document
// (issuer + "/.well-known/openid-configuration" → jwks_uri), a configured
// jwks_uri, or a file. They are cached, refreshed on a schedule (Run) and
// when a token names a key the cache does not know: such refreshes are
// coalesced (one request however many tokens are waiting) and
// rate-limited (at most one per MinRefreshInterval). When the endpoint is
// down or answers garbage, the keys fetched last keep serving.
//
// Algorithms are allowlisted per provider (RS256, ES256 and PS256 by
// default; HMAC is never allowed, "none" is unknown to go-jose), and
// tokens whose header carries a key or a pointer to one (jwk, jku, x5u,
// x5c) are refused: the key is always the provider's.
//
// Provider rules: flavour "cognito" checks token_use = access, the
// client_id and the pool's issuer; flavour "oauth2" (RFC 9068) checks the
// audience and, where configured, the "at+jwt" typ header. Scopes are read
// from "scope" (space-separated) or "scp" (a list). Opaque tokens are
// checked with the provider's RFC 7662 introspection endpoint.
//
// Results are cached in a cost-bounded ristretto cache under the SHA-256
// of the token (never the token) until the token expires (introspection
// results at most IntrospectionCacheTTL); a JWKS refresh that removes a
// key evicts the results it signed.
//
// A refusal is a *RefusedError with a stable Reason; an error of another
// kind (errors.Is(err, ErrUnavailable)) means the token could not be
// checked. No token, and no part of one, appears in an error, a log line
// or a metric.
package verifier
