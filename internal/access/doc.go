// Package access decides who a gRPC caller is and what it may do.
//
// Authentication (Authenticator) resolves a caller's Identity from a
// verified TLS client certificate (its first URI SAN, such as a SPIFFE ID,
// else its first DNS SAN) or from a bearer API key checked against SHA-256
// digests in constant time, and optionally lets unauthenticated callers in as
// "anonymous". Identity names are typed (package ident): "spiffe://…",
// "uri:…", "dns:…", "apikey:…" or "anonymous", so names of different kinds
// never match each other's policy entries. Its gRPC interceptors authenticate every call except health
// checks and reflection, keep the AdminService for admin identities, and
// put the Identity into the handler's context.
//
// Authorization (Policy) grants identities broker-held clients, scopes and
// the right to present their own credentials; with a policy configured,
// everything not granted is denied with an error matching
// ErrPermissionDenied. "*" matches every authenticated identity; the
// anonymous caller only by an explicit "anonymous" entry, which needs
// unauthenticated callers to be allowed.
//
// ServerTLSConfig builds the listener's TLS configuration and reloads the
// certificate and client CA when their files change.
package access
