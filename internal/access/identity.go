package access

import (
	"context"
	"crypto/tls"
	"crypto/x509"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
)

// Sources of an Identity.
const (
	// SourceMTLS: the identity is a SAN of a verified client certificate.
	SourceMTLS = "mtls"
	// SourceAPIKey: the identity is the name configured for a bearer API key.
	SourceAPIKey = "api_key"
	// SourceAnonymous: the caller did not authenticate and the configuration
	// allows that.
	SourceAnonymous = "anonymous"
)

// AnonymousName is the Name of unauthenticated callers' Identity.
const AnonymousName = ident.Anonymous

// Identity is who a caller is. It is not secret and may be logged.
type Identity struct {
	// Name is the typed identity (package ident): a certificate's SPIFFE
	// ID as is (spiffe://prod/ns/payments/sa/worker), "uri:" and another
	// URI SAN, "dns:" and a DNS SAN, "apikey:" and an API key's configured
	// identity, or "anonymous". Names of different kinds never collide.
	Name string
	// Source is how the caller proved it: SourceMTLS, SourceAPIKey or
	// SourceAnonymous.
	Source string
}

type identityKey struct{}

// NewContext returns a copy of ctx that carries id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the identity the interceptors stored in ctx.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// certState says what the peer's TLS connection shows.
type certState int

const (
	// noCert: no TLS, or no verified client certificate.
	noCert certState = iota
	// certNoSAN: a verified certificate without URI or DNS SANs.
	certNoSAN
	// certOK: a verified certificate with a usable SAN.
	certOK
)

// peerCertIdentity returns the identity of the verified client certificate
// of the call in ctx. Certificates the TLS stack did not verify against the
// client CA (tls.RequestClientCert, tls.RequireAnyClientCert) are ignored.
func peerCertIdentity(ctx context.Context) (Identity, certState) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, noCert
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, noCert
	}
	name := certName(info.State.VerifiedChains[0][0])
	if name == "" {
		return Identity{}, certNoSAN
	}
	return Identity{Name: name, Source: SourceMTLS}, certOK
}

// TLSIdentity returns the identity of a TLS connection's verified client
// certificate (for listeners other than gRPC, such as HTTPS), or the
// anonymous identity when it presented none or one without a SAN.
func TLSIdentity(state *tls.ConnectionState) Identity {
	if state != nil && len(state.VerifiedChains) > 0 && len(state.VerifiedChains[0]) > 0 {
		if name := certName(state.VerifiedChains[0][0]); name != "" {
			return Identity{Name: name, Source: SourceMTLS}
		}
	}
	return Identity{Name: AnonymousName, Source: SourceAnonymous}
}

// certName returns the typed identity of the certificate's first URI SAN
// (its SPIFFE ID, else "uri:" and the URI), else of its first DNS SAN
// ("dns:" and the name), else "".
func certName(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if s := ident.URI(u); s != "" {
			return s
		}
	}
	for _, d := range c.DNSNames {
		if d != "" {
			return ident.DNS(d)
		}
	}
	return ""
}
