package config

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ByteSize is an amount of memory in bytes. In YAML it is written as a
// non-negative integer (a count of bytes) or as a whole number followed by a
// unit: binary IEC units (KiB, MiB, GiB, TiB, PiB, EiB: powers of 1024) or
// decimal SI units (B, KB, MB, GB, TB, PB, EB: powers of 1000), for example
// "64MiB", "512KiB", "10MB" or "1000". Units are matched without regard to
// case, and a space may separate the number from the unit.
type ByteSize uint64

// Common sizes.
const (
	KiB ByteSize = 1 << 10 // 1024 bytes
	MiB ByteSize = 1 << 20 // 1024 KiB
	GiB ByteSize = 1 << 30 // 1024 MiB
)

// byteUnit is one unit ByteSize understands.
type byteUnit struct {
	name string
	size uint64
}

// byteUnits lists the units from largest to smallest within each system, so
// String picks the largest unit that divides a size exactly.
var (
	binaryUnits = []byteUnit{
		{"EiB", 1 << 60}, {"PiB", 1 << 50}, {"TiB", 1 << 40},
		{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	}
	decimalUnits = []byteUnit{
		{"EB", 1e18}, {"PB", 1e15}, {"TB", 1e12},
		{"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
	}
)

// unitNames is the list of units shown in error messages.
const unitNames = "B, KB, MB, GB, TB, PB, EB, KiB, MiB, GiB, TiB, PiB, EiB"

// ParseByteSize parses a size such as "64MiB", "10 MB" or "1000" (bytes).
func ParseByteSize(s string) (ByteSize, error) {
	in := strings.TrimSpace(s)
	i := 0
	for i < len(in) && in[i] >= '0' && in[i] <= '9' {
		i++
	}
	num, unit := in[:i], strings.TrimSpace(in[i:])
	if num == "" {
		if strings.HasPrefix(in, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, optionally followed by a unit (%s)", s, unitNames)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: too large (at most %d bytes)", s, uint64(math.MaxUint64))
	}
	if unit == "" {
		return ByteSize(n), nil
	}
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("invalid size %q: must be a whole number; use a smaller unit instead of a fraction", s)
	}
	mult, ok := lookupUnit(unit)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use one of %s)", s, unit, unitNames)
	}
	hi, lo := bits.Mul64(n, mult)
	if hi != 0 {
		return 0, fmt.Errorf("invalid size %q: too large (at most %d bytes)", s, uint64(math.MaxUint64))
	}
	return ByteSize(lo), nil
}

// lookupUnit returns the size of the unit called name, ignoring case.
func lookupUnit(name string) (uint64, bool) {
	for _, list := range [][]byteUnit{binaryUnits, decimalUnits} {
		for _, u := range list {
			if strings.EqualFold(u.name, name) {
				return u.size, true
			}
		}
	}
	return 0, false
}

// String formats b with the largest binary unit that divides it exactly,
// else the largest such decimal unit, else in bytes: "64MiB", "10MB", "0B".
// ParseByteSize reads the result back to the same value.
func (b ByteSize) String() string {
	n := uint64(b)
	if n == 0 {
		return "0B"
	}
	for _, list := range [][]byteUnit{binaryUnits, decimalUnits} {
		for _, u := range list {
			if n%u.size == 0 {
				return strconv.FormatUint(n/u.size, 10) + u.name
			}
		}
	}
	return strconv.FormatUint(n, 10) + "B" // unreachable: "B" divides everything
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErrorf(n, "must be a size such as 64MiB or a number of bytes")
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return typeErrorf(n, "%v", err)
	}
	*b = v
	return nil
}

// MarshalYAML implements yaml.Marshaler; it writes String().
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// Duration is a time.Duration that YAML reads from a Go duration string such
// as "30s", "1m30s" or "250ms". A bare number is rejected, except 0, because
// its unit would be a guess.
type Duration time.Duration

// ParseDuration parses a Go duration string ("30s", "1h"); "0" is also
// accepted. Other numbers without a unit are rejected.
func ParseDuration(s string) (Duration, error) {
	in := strings.TrimSpace(s)
	if in == "0" {
		return 0, nil
	}
	if in != "" && strings.Trim(in, "+-.0123456789") == "" {
		return 0, fmt.Errorf("invalid duration %q: missing unit; write e.g. %q or %q", s, in+"s", in+"ms")
	}
	d, err := time.ParseDuration(in)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a Go duration such as 30s, 1m30s or 250ms (units ns, us, ms, s, m, h)", s)
	}
	return Duration(d), nil
}

// String formats d like time.Duration ("1m30s", "0s"); ParseDuration reads
// the result back to the same value.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErrorf(n, "must be a duration such as 30s")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return typeErrorf(n, "%v", err)
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler; it writes String().
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// typeErrorf returns a *yaml.TypeError in the library's "line N: message"
// form, so the decoder collects it with its own errors and Load can name the
// key the line belongs to.
func typeErrorf(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
}
