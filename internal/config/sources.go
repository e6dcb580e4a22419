package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FieldError is one problem of the configuration: the key it concerns, as
// a path such as "providers[1].token_url", and what is wrong. Validate,
// LoadSecrets and LoadKeys report their problems as FieldErrors (joined),
// so that Sources.Locate can tell where each key came from.
type FieldError struct {
	// Key is the key path, for example "providers[1].burst", or a flag
	// name such as "-dev-lifetime".
	Key string
	// Err is the rule the value breaks; it never quotes a secret.
	Err error
}

// Error reads "key: rule".
func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErr returns a *FieldError for key with the formatted rule.
func fieldErr(key, format string, args ...any) *FieldError {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

// Sources records where the keys of a configuration came from: the line of
// the file that set each one, and the flag or environment variable that
// overrode it. ParseSources returns it; Locate uses it. A nil *Sources
// knows nothing.
type Sources struct {
	file  string            // the configuration file, "" for none
	lines map[string]int    // key path → line of the file that sets it
	over  map[string]string // key path → "flag -x" or "env NAME"
	bad   map[string]bool   // key paths whose value could not be decoded
	errs  []error           // the file's decoding problems, located
}

// newSources returns empty Sources for the file called file.
func newSources(file string) *Sources {
	return &Sources{file: file, lines: map[string]int{}, over: map[string]string{}, bad: map[string]bool{}}
}

// Err returns the problems of the file's values that could not be decoded
// (wrong types, fractions for integers, unknown keys), joined, each
// naming the file, the line and the key; nil if there are none.
func (s *Sources) Err() error {
	if s == nil {
		return nil
	}
	return errors.Join(s.errs...)
}

// Locate returns err with each of its problems (the *FieldErrors joined
// in it, as Validate, LoadSecrets and LoadKeys return them) prefixed by
// where its key came from: "FILE:LINE: " for a key the file set (or, for
// a key the file omits, the closest enclosing key it set), "flag -NAME: "
// or "env NAME: " for one a flag or an environment variable set. A
// problem about a key whose value could not be decoded is dropped: Err
// already reports it. Other errors are kept as they are.
func (s *Sources) Locate(err error) error {
	if s == nil || err == nil {
		return err
	}
	var out []error
	for _, e := range flatten(err) {
		if fe, ok := e.(*FieldError); ok {
			if s.failed(fe.Key) {
				continue
			}
			if loc := s.where(fe.Key); loc != "" {
				e = &locatedError{loc: loc, err: fe}
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// locatedError is a problem with where its key came from.
type locatedError struct {
	loc string
	err error
}

func (e *locatedError) Error() string { return e.loc + ": " + e.err.Error() }
func (e *locatedError) Unwrap() error { return e.err }

// flatten returns the single problems of err: the leaves of errors.Join
// trees (an error whose text is exactly its parts' texts, one a line), or
// err itself.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	parts := j.Unwrap()
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		texts = append(texts, p.Error())
	}
	if strings.Join(texts, "\n") != err.Error() {
		return []error{err} // a wrapper with text of its own: keep it whole
	}
	var out []error
	for _, p := range parts {
		out = append(out, flatten(p)...)
	}
	return out
}

// where returns where key came from, "" if from a default.
func (s *Sources) where(key string) string {
	if o, ok := s.over[key]; ok {
		return o
	}
	for k := key; k != ""; k = parentKey(k) {
		if line, ok := s.lines[k]; ok {
			return s.file + ":" + strconv.Itoa(line)
		}
	}
	return ""
}

// failed reports whether key, or a key enclosing it, could not be decoded
// (and is not overridden by a flag or environment variable since).
func (s *Sources) failed(key string) bool {
	if _, ok := s.over[key]; ok {
		return false
	}
	for k := key; k != ""; k = parentKey(k) {
		if s.bad[k] {
			return true
		}
	}
	return false
}

// setBy records that a flag or environment variable (how) set key.
func (s *Sources) setBy(key, how string) {
	if s != nil {
		s.over[key] = how
	}
}

// parentKey returns the key enclosing key: "providers[1]" for
// "providers[1].burst", "providers" for "providers[1]", "" for "listen".
func parentKey(key string) string {
	i := strings.LastIndexAny(key, ".[")
	if i <= 0 {
		return ""
	}
	return key[:i]
}

// index records the line of every key and list item of doc, from the
// loader's own line index (indexLines). Aliases are recorded where they
// are used, not followed.
func (s *Sources) index(doc *yaml.Node) {
	for line, entries := range indexLines(doc) {
		for _, e := range entries {
			if e.kind != kindKey && !strings.HasPrefix(e.segs[len(e.segs)-1], "[") {
				continue // a key's value: the key's line stands for it
			}
			p := renderPath(e.segs)
			if l, ok := s.lines[p]; !ok || line < l {
				s.lines[p] = line
			}
		}
	}
}
