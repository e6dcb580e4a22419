package access

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrPermissionDenied is matched (errors.Is) by every error Policy.Authorize
// and Authenticator.Authorize return. Such an error is a *DeniedError.
var ErrPermissionDenied = errors.New("permission denied")

// DeniedError says what the policy did not grant. Its message names the
// client or scope that was refused, never the policy, the identity's other
// grants or a secret.
type DeniedError struct {
	// Reason is the message, for example `identity may not use client "payments"`.
	Reason string
}

// Error implements error.
func (e *DeniedError) Error() string { return e.Reason }

// Unwrap returns ErrPermissionDenied.
func (e *DeniedError) Unwrap() error { return ErrPermissionDenied }

// GRPCStatus returns the error as a PermissionDenied status with the same
// message, so status.FromError and status.Code map it without a table.
func (e *DeniedError) GRPCStatus() *status.Status {
	return status.New(codes.PermissionDenied, e.Reason)
}

func denied(format string, args ...any) error {
	return &DeniedError{Reason: fmt.Sprintf(format, args...)}
}

// ConfigError is returned by New and NewPolicy for bad configuration. Field
// is the path of the offending entry (for example "rules[2].identity"); Rule
// says what it must be. The offending value itself is not repeated (it may
// be a key pasted by mistake).
type ConfigError struct {
	// Field is the path of the offending entry.
	Field string
	// Rule says what the entry must be.
	Rule string
}

// Error implements error.
func (e *ConfigError) Error() string { return e.Field + ": " + e.Rule }

func indexed(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }
