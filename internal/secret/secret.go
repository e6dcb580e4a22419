// Package secret holds values that must never be printed: client secrets and
// access tokens. Its String type redacts itself in every formatting path
// (fmt verbs, %#v, slog), so a secret that ends up in a log call or an error
// by mistake shows as "[redacted]" instead of its value.
package secret

import (
	"fmt"
	"log/slog"
)

// Redacted is what a String prints as.
const Redacted = "[redacted]"

// String is a secret value. Reveal returns the value; every other way of
// turning it into text yields Redacted.
type String string

// Reveal returns the secret value. Call it only where the value is sent to
// its one legitimate destination (the token endpoint, the caller).
func (s String) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (s String) String() string { return Redacted }

// GoString implements fmt.GoStringer.
func (s String) GoString() string { return Redacted }

// Format implements fmt.Formatter, so no verb (%s, %v, %q, %x, %d...) can
// print the value.
func (s String) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue implements slog.LogValuer.
func (s String) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText implements encoding.TextMarshaler, so JSON and YAML encoders
// redact too.
func (s String) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
