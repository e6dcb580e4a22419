package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestStringRedactsEverywhere(t *testing.T) {
	const value = "hunter2-very-secret"
	s := String(value)
	if got := s.Reveal(); got != value {
		t.Fatalf("Reveal() = %q, want %q", got, value)
	}
	type wrapper struct{ S String }
	var outputs []string
	for _, verb := range []string{"%s", "%v", "%+v", "%#v", "%q", "%x", "%X", "%d", "%10s"} {
		outputs = append(outputs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, wrapper{s}), fmt.Sprintf(verb, &s))
	}
	outputs = append(outputs, fmt.Sprint(s), fmt.Sprintln(s), s.String(), s.GoString())
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("msg", "secret", s, "w", wrapper{s})
	slog.New(slog.NewTextHandler(&buf, nil)).Info("msg", "secret", s)
	outputs = append(outputs, buf.String())
	js, err := json.Marshal(wrapper{s})
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(js))
	for _, out := range outputs {
		if strings.Contains(out, value) || strings.Contains(out, fmt.Sprintf("%x", value)) {
			t.Errorf("output leaks the secret: %q", out)
		}
		if !strings.Contains(out, Redacted) {
			t.Errorf("output %q does not say %q", out, Redacted)
		}
	}
}
