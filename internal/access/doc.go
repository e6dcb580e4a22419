// Package access decides who a gRPC caller is and what it may do.
//
// Authentication (Authenticator) resolves a caller's Identity from a
// verified TLS client certificate (its first URI SAN, such as a SPIFFE ID,
// else its first DNS SAN) or from a bearer API key checked against SHA-256
// digests in constant time, and optionally lets unauthenticated callers in as
// "anonymous". Its gRPC interceptors authenticate every call except health
// checks and reflection, keep the AdminService for admin identities, and
// put the Identity into the handler's context.
//
// Authorization (Policy) grants identities broker-held clients, scopes and
// the right to present their own credentials; with a policy configured,
// everything not granted is denied with an error matching
// ErrPermissionDenied.
//
// ServerTLSConfig builds the listener's TLS configuration and reloads the
// certificate and client CA when their files change.
package access
