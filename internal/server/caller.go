package server

import (
	"context"

	"github.com/tokenbroker/tokenbroker/internal/access"
)

// callerName is the identity of the caller of ctx's call as the access
// interceptors established it (access.Identity.Name: a typed name, or
// "anonymous"), for the broker's per-caller pass-through limits; "" when
// the call carries none (no authenticator configured).
func callerName(ctx context.Context) string {
	if id, ok := access.FromContext(ctx); ok {
		return id.Name
	}
	return ""
}
