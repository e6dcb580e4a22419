package config

import (
	"math"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    ByteSize
		wantErr string // substring of the error; "" means success
	}{
		{in: "0", want: 0},
		{in: "1000", want: 1000},
		{in: "64MiB", want: 64 << 20},
		{in: "512KiB", want: 512 << 10},
		{in: "1GiB", want: 1 << 30},
		{in: "2TiB", want: 2 << 40},
		{in: "1PiB", want: 1 << 50},
		{in: "15EiB", want: 15 << 60},
		{in: "10MB", want: 10_000_000},
		{in: "1KB", want: 1000},
		{in: "3GB", want: 3_000_000_000},
		{in: "1TB", want: 1e12},
		{in: "7B", want: 7},
		{in: "64 MiB", want: 64 << 20},
		{in: " 64mib ", want: 64 << 20},
		{in: "18446744073709551615", want: math.MaxUint64},
		{in: "18446744073709551615B", want: math.MaxUint64},
		{in: "", wantErr: "want a whole number"},
		{in: "MiB", wantErr: "want a whole number"},
		{in: "-1", wantErr: "must not be negative"},
		{in: "-64MiB", wantErr: "must not be negative"},
		{in: "18446744073709551616", wantErr: "too large"},
		{in: "16EiB", wantErr: "too large"},
		{in: "99999999999999999999KiB", wantErr: "too large"},
		{in: "1.5GiB", wantErr: "must be a whole number"},
		{in: "64XB", wantErr: `unknown unit "XB"`},
		{in: "64 mebibytes", wantErr: "unknown unit"},
		{in: "0x40", wantErr: `unknown unit "x40"`},
		{in: "1e6", wantErr: "unknown unit"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseByteSize(%q) = %d, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseByteSize(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestByteSizeString(t *testing.T) {
	tests := []struct {
		in   ByteSize
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1000, "1KB"},
		{1024, "1KiB"},
		{1536, "1536B"},
		{64 * MiB, "64MiB"},
		{10_000_000, "10MB"},
		{GiB, "1GiB"},
		{1 << 60, "1EiB"},
		{math.MaxUint64, "18446744073709551615B"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", uint64(tt.in), got, tt.want)
		}
		back, err := ParseByteSize(tt.in.String())
		if err != nil || back != tt.in {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, nil", tt.in.String(), back, err, uint64(tt.in))
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "0s", want: 0},
		{in: "30s", want: 30 * time.Second},
		{in: "1m30s", want: 90 * time.Second},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: "1h", want: time.Hour},
		{in: "-5s", want: -5 * time.Second},
		{in: " 2s ", want: 2 * time.Second},
		{in: "5", wantErr: `missing unit; write e.g. "5s"`},
		{in: "30", wantErr: "missing unit"},
		{in: "1.5", wantErr: "missing unit"},
		{in: "-1", wantErr: "missing unit"},
		{in: "", wantErr: "want a Go duration"},
		{in: "5 seconds", wantErr: "want a Go duration"},
		{in: "1d", wantErr: "want a Go duration"},
		{in: "inf", wantErr: "want a Go duration"},
		{in: "9999999h", wantErr: "want a Go duration"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDuration(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || time.Duration(got) != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v, nil", tt.in, got, err, tt.want)
			}
			if back, err := ParseDuration(got.String()); err != nil || back != got {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v, nil", got.String(), back, err, got)
			}
		})
	}
}

// TestUnitsYAML checks the YAML forms, including plain integers and the
// "line N:" prefix Load relies on.
func TestUnitsYAML(t *testing.T) {
	type doc struct {
		Size ByteSize `yaml:"size"`
		Wait Duration `yaml:"wait"`
	}
	tests := []struct {
		in       string
		want     doc
		wantErrs []string
	}{
		{in: "size: 1024\nwait: 0", want: doc{Size: 1024}},
		{in: "size: 64MiB\nwait: 1m30s", want: doc{Size: 64 * MiB, Wait: Duration(90 * time.Second)}},
		{in: "size: \"10MB\"\nwait: \"2s\"", want: doc{Size: 10_000_000, Wait: Duration(2 * time.Second)}},
		{in: "size: -5\nwait: 5", wantErrs: []string{"line 1: invalid size \"-5\": must not be negative", "line 2: invalid duration \"5\": missing unit"}},
		{in: "size: [1]\nwait: {a: 1}", wantErrs: []string{"line 1: must be a size", "line 2: must be a duration"}},
	}
	for _, tt := range tests {
		var got doc
		err := yaml.Unmarshal([]byte(tt.in), &got)
		if len(tt.wantErrs) == 0 {
			if err != nil || got != tt.want {
				t.Errorf("yaml.Unmarshal(%q) = %+v, %v; want %+v, nil", tt.in, got, err, tt.want)
			}
			continue
		}
		for _, w := range tt.wantErrs {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("yaml.Unmarshal(%q) error = %v; want it to contain %q", tt.in, err, w)
			}
		}
	}

	out, err := yaml.Marshal(doc{Size: 64 * MiB, Wait: Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "size: 64MiB\nwait: 1m30s\n"; got != want {
		t.Errorf("yaml.Marshal = %q, want %q", got, want)
	}
}
