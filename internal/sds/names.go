package sds

import (
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/sds/sdsname"
)

// ParseName parses a name of the form "oauth2:CLIENT:SCOPE+SCOPE" (or
// "oauth2:CLIENT" for the client's default scopes): the broker-held
// client CLIENT and the scopes between the '+' signs. Everything after the
// second ':' is scopes, so a scope may hold ':' (a Cognito resource server
// URL) but not '+'. It reports false for any other form. Whether the
// client exists and the scopes are valid is for the broker and the policy
// to say.
func ParseName(name string) (broker.Selector, bool) {
	rest, ok := strings.CutPrefix(name, sdsname.ParsedPrefix)
	if !ok {
		return broker.Selector{}, false
	}
	client, scopes, hasScopes := strings.Cut(rest, ":")
	if client == "" {
		return broker.Selector{}, false
	}
	sel := broker.Selector{Client: client}
	if hasScopes {
		if scopes == "" {
			return broker.Selector{}, false
		}
		sel.Scopes = strings.Split(scopes, "+")
		for _, sc := range sel.Scopes {
			if sc == "" {
				return broker.Selector{}, false
			}
		}
	}
	return sel, true
}

// version is the xDS version of tok's secret: its issue time in Unix
// nanoseconds, which is the same wherever the same token is served.
func version(tok broker.Token) string {
	return strconv.FormatInt(tok.IssuedAt.UnixNano(), 10)
}

// withdrawnVersion is the xDS version of the empty secret that replaces
// tok once it has expired with no successor (stream.withdraw).
func withdrawnVersion(tok broker.Token) string {
	return version(tok) + "-expired"
}

// emptyResource returns name's secret with an empty value: no header
// value at all, not even the format's prefix, so that Envoy's generic
// credential injector finds no credential.
func (s *Server) emptyResource(name string) (*anypb.Any, error) {
	return secretResource(name, "")
}

// resource returns name's secret holding tok: a generic_secret whose
// inline value is the header value.
func (s *Server) resource(name string, tok broker.Token) (*anypb.Any, error) {
	return secretResource(name, s.prefix+tok.AccessToken.Reveal()+s.suffix)
}

// secretResource returns name's generic_secret with the inline value.
func secretResource(name, value string) (*anypb.Any, error) {
	sec := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
				InlineString: value,
			}},
		}},
	}
	res, err := anypb.New(sec)
	if err != nil {
		// Marshalling a Secret does not fail; say nothing of its content.
		return nil, status.Error(codes.Internal, "internal error")
	}
	return res, nil
}
