package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds the configuration file Load reads.
const maxFileSize = 1 << 20

// Load returns Default() overlaid with the YAML file at path. Keys the file
// omits, or sets to null, keep their defaults; a provider's omitted keys
// take theirs from DefaultProvider. Unknown keys, values of the wrong type
// (a fraction for an integer key included) and files holding more than one
// YAML document are errors; every such problem is reported at once, each
// naming the file, the line and, where it can tell, the key. A relative
// path in clients[].client_secret_file, tls.cert_file, tls.key_file,
// tls.client_ca_file, sealing.keys_file, cache.hmac_key_file,
// shared.redis.password_file or shared.redis.tls's files is resolved
// against the file's directory, made absolute.
//
// Load does not validate the result.
func Load(path string) (Config, error) {
	cfg, src, err := loadFile(path)
	if err == nil {
		err = src.Err()
	}
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// loadFile is Load that also returns the file's Sources. A non-nil error
// means the file could not be read or parsed at all; problems of single
// values are in src.Err(), and cfg holds every value that could be read.
func loadFile(path string) (cfg Config, src *Sources, err error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, nil, fmt.Errorf("config: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Config{}, nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return Config{}, nil, fmt.Errorf("%s: file is larger than %d bytes", path, maxFileSize)
	}
	return decodeFile(data, path)
}

// loadBytes is Load on data read from the file called name.
func loadBytes(data []byte, name string) (Config, error) {
	cfg, src, err := decodeFile(data, name)
	if err == nil {
		err = src.Err()
	}
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// decodeFile decodes data, read from the file called name, over the
// defaults; see loadFile for its results.
func decodeFile(data []byte, name string) (Config, *Sources, error) {
	cfg := Default()
	src := newSources(name)

	// First pass: the node tree, to count documents, to learn which keys
	// each provider sets, and to map error lines to keys.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, src, nil // empty file: all defaults
		}
		return Config{}, nil, syntaxError(name, err, data)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return Config{}, nil, syntaxError(name, err, data)
	default:
		return Config{}, nil, fmt.Errorf("%s:%d: a second YAML document starts here; the file must hold exactly one", name, extra.Line)
	}
	src.index(&doc)

	// Second pass: strict decoding into the defaults. Type errors leave
	// the value they concern as it was and do not stop the decoding.
	idx := indexLines(&doc)
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&cfg); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return Config{}, nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, msg := range te.Errors {
			key, err := typeError(name, msg, idx)
			src.errs = append(src.errs, err)
			if key != "" {
				src.bad[key] = true
			}
		}
	}
	for _, p := range fractions(&doc, reflect.TypeOf(cfg)) {
		src.errs = append(src.errs, fmt.Errorf("%s:%d: %s: must be an integer, got %s", name, p.line, p.key, p.value))
		src.bad[p.key] = true
	}
	if err := applyProviderDefaults(&doc, cfg.Providers); err != nil && len(src.errs) == 0 {
		src.errs = append(src.errs, fileError(name, err, &doc))
	}
	noEmptyParameters(&cfg)
	base := filepath.Dir(name)
	if abs, err := filepath.Abs(base); err == nil {
		base = abs
	}
	rt := &cfg.Shared.Redis.TLS
	paths := []*string{&cfg.TLS.CertFile, &cfg.TLS.KeyFile, &cfg.TLS.ClientCAFile, &cfg.Sealing.KeysFile, &cfg.Cache.HMACKeyFile,
		&cfg.Shared.Redis.PasswordFile, &rt.CAFile, &rt.CertFile, &rt.KeyFile, &cfg.Auth.Kubernetes.JWKSFile}
	for i := range cfg.Clients {
		cl := &cfg.Clients[i]
		paths = append(paths, &cl.ClientSecretFile, &cl.ClientKeyFile, &cl.ClientAssertionFile, &cl.ClientCertFile)
	}
	for i := range cfg.Providers {
		if v := cfg.Providers[i].Verify; v != nil {
			paths = append(paths, &v.JWKSFile)
		}
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return cfg, src, nil
}

// fraction is a number with a fractional part where an integer belongs.
type fraction struct {
	key   string
	line  int
	value string
}

// fractions returns the scalars of doc that hold a number with a fractional
// part (or an infinity or NaN) for a key of t whose type is an integer: the
// YAML library would silently truncate them.
func fractions(doc *yaml.Node, t reflect.Type) []fraction {
	var out []fraction
	var walk func(n *yaml.Node, t reflect.Type, segs []string, depth int)
	walk = func(n *yaml.Node, t reflect.Type, segs []string, depth int) {
		if n == nil || depth > 100 {
			return
		}
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, t, segs, depth+1)
			}
		case yaml.MappingNode:
			if t.Kind() != reflect.Struct {
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				for f := 0; f < t.NumField(); f++ {
					if yamlKey(t.Field(f)) == k.Value {
						walk(v, t.Field(f).Type, append(segs[:len(segs):len(segs)], k.Value), depth+1)
					}
				}
			}
		case yaml.SequenceNode:
			if t.Kind() != reflect.Slice {
				return
			}
			for i, c := range n.Content {
				walk(c, t.Elem(), append(segs[:len(segs):len(segs)], "["+strconv.Itoa(i)+"]"), depth+1)
			}
		case yaml.ScalarNode:
			switch t.Kind() {
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
				reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			default:
				return
			}
			if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
				return // decodes itself (ByteSize, Duration)
			}
			if n.ShortTag() != "!!float" {
				return
			}
			if f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64); err == nil && f == math.Trunc(f) && !math.IsInf(f, 0) {
				return
			}
			out = append(out, fraction{key: renderPath(segs), line: n.Line, value: n.Value})
		}
	}
	walk(doc, t, nil, 0)
	return out
}

// unmarshalerType is yaml.Unmarshaler's type.
var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// maxSyntaxScanLines bounds the files whose syntax errors syntaxError
// places by parsing their prefixes (which costs a parse per line).
const maxSyntaxScanLines = 5000

// syntaxError turns a syntax error of the YAML library into one naming the
// file and the line where the problem is. The library names the line where
// the enclosing block starts, or the one before the problem; so the line is
// found as the first line whose inclusion makes the text fail the same way.
func syntaxError(name string, err error, data []byte) error {
	m := syntaxRE.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	line, msg := m[1], m[2]
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) <= maxSyntaxScanLines {
		for n := 1; n <= len(lines); n++ {
			if perr := parseAll(bytes.Join(lines[:n], nil)); perr != nil {
				if pm := syntaxRE.FindStringSubmatch(perr.Error()); pm != nil && pm[2] == msg {
					line = strconv.Itoa(n)
					break
				}
			}
		}
	}
	return fmt.Errorf("%s:%s: %s", name, line, msg)
}

// parseAll parses every YAML document of data, returning the first error.
func parseAll(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// applyProviderDefaults sets every field of providers[i] whose key the i-th
// provider in doc omits (or sets to null) to its DefaultProvider value.
// Decoding into a slice starts each element from its zero value, and an
// explicit 0 must stay 0 (and fail validation) rather than become a default,
// so presence is read from the document itself. Merge keys and aliases are
// resolved by decoding each provider into a map.
func applyProviderDefaults(doc *yaml.Node, providers []Provider) error {
	if len(providers) == 0 {
		return nil
	}
	var shadow struct {
		Providers []map[string]any `yaml:"providers"`
	}
	if err := doc.Decode(&shadow); err != nil {
		return err
	}
	def := reflect.ValueOf(DefaultProvider())
	t := def.Type()
	for i := range providers {
		var keys map[string]any
		if i < len(shadow.Providers) {
			keys = shadow.Providers[i]
		}
		p := reflect.ValueOf(&providers[i]).Elem()
		for f := 0; f < t.NumField(); f++ {
			tag := yamlKey(t.Field(f))
			if tag == "" {
				continue
			}
			if v, ok := keys[tag]; !ok || v == nil {
				p.Field(f).Set(def.Field(f))
			}
		}
	}
	return nil
}

// yamlKey returns the YAML key of a struct field, "" if it has none.
func yamlKey(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	return tag
}

// yamlKeys returns the YAML keys of struct type t, in field order.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if k := yamlKey(t.Field(i)); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// sectionKeys maps the Go type names the YAML decoder puts in its messages
// to the keys valid there, for "unknown key" errors.
var sectionKeys = func() map[string][]string {
	m := map[string][]string{}
	for _, v := range []any{Config{}, Cache{}, Provider{}, Client{}, Server{}, Log{}, Metrics{}, TLS{}, Auth{}, KubernetesAuth{}, APIKey{}, PolicyRule{}, Admin{}, Sealing{}, Shared{}, Redis{}, RedisTLS{}, ProviderVerify{}, Verifier{}, VerifierHeaders{}, PathScopes{}, SDS{}, SDSSecret{}} {
		t := reflect.TypeOf(v)
		m[t.String()] = yamlKeys(t)
	}
	return m
}()

// typeRules turns the decoder's "cannot unmarshal ... into T" into a rule.
var typeRules = map[string]string{
	"float64":             "must be a number",
	"int":                 "must be an integer",
	"uint32":              "must be an integer from 1 to 4294967295",
	"bool":                "must be true or false",
	"string":              "must be a string",
	"[]config.Provider":   "must be a list",
	"[]config.Client":     "must be a list",
	"[]config.APIKey":     "must be a list",
	"[]config.PolicyRule": "must be a list",
	"[]string":            "must be a list",
}

var (
	lineRE     = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
	syntaxRE   = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)
	notFoundRE = regexp.MustCompile(`(?s)^field (.*) not found in type (\S+)$`)
	alreadyRE  = regexp.MustCompile(`(?s)^field (.*) already set in type \S+$`)
	dupKeyRE   = regexp.MustCompile(`(?s)^mapping key (".*") already defined at line (\d+)$`)
	cannotRE   = regexp.MustCompile(`(?s)^cannot unmarshal (!!\S+)(.*) into (\S+)$`)
)

// fileError turns an error of the YAML library into one naming the file,
// the line and, when doc tells which, the key.
func fileError(name string, err error, doc *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		if m := syntaxRE.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s:%s: %s", name, m[1], m[2])
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	idx := indexLines(doc)
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		_, err := typeError(name, msg, idx)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// typeError rewrites one "line N: message" of a yaml.TypeError, and
// returns the key it concerns ("" if it cannot tell).
func typeError(name, msg string, idx lineIndex) (string, error) {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return "", fmt.Errorf("%s: %s", name, msg)
	}
	line, _ := strconv.Atoi(m[1])
	rule := m[2]
	var key string
	switch {
	case notFoundRE.MatchString(rule):
		sm := notFoundRE.FindStringSubmatch(rule)
		key = idx.key(line, sm[1])
		rule = fmt.Sprintf("unknown key %q", sm[1])
		if valid := sectionKeys[sm[2]]; len(valid) > 0 {
			rule += " (valid keys here: " + strings.Join(valid, ", ") + ")"
		}
		if key == "" {
			key = idx.scalar(line)
		}
	case alreadyRE.MatchString(rule):
		sm := alreadyRE.FindStringSubmatch(rule)
		key = idx.key(line, sm[1])
		rule = "key is set more than once"
	case dupKeyRE.MatchString(rule):
		sm := dupKeyRE.FindStringSubmatch(rule)
		k, err := strconv.Unquote(sm[1])
		if err != nil {
			k = sm[1]
		}
		key = idx.key(line, k)
		rule = "key is set more than once (first at line " + sm[2] + ")"
	case cannotRE.MatchString(rule):
		sm := cannotRE.FindStringSubmatch(rule)
		if sm[1] == "!!map" || sm[1] == "!!seq" {
			key = idx.collection(line)
		} else {
			key = idx.scalar(line)
		}
		if r, ok := typeRules[sm[3]]; ok {
			rule = r + " (got " + sm[1] + sm[2] + ")"
		} else if _, ok := sectionKeys[sm[3]]; ok {
			rule = "must be a mapping of keys to values (got " + sm[1] + sm[2] + ")"
		}
	default:
		key = idx.scalar(line)
	}
	if key == "" {
		return "", fmt.Errorf("%s:%d: %s", name, line, rule)
	}
	return key, fmt.Errorf("%s:%d: %s: %s", name, line, key, rule)
}

// nodeKind classifies what a path recorded in a lineIndex came from.
type nodeKind int

const (
	kindKey        nodeKind = iota // a mapping key
	kindScalar                     // a scalar or alias value
	kindCollection                 // a mapping or sequence value
)

// lineEntry is one node on a line: its key path, as segments, and kind.
type lineEntry struct {
	segs []string
	kind nodeKind
}

// lineIndex maps a line number to the nodes that start on it.
type lineIndex map[int][]lineEntry

// indexLines records the key path of every node of doc by line. The root
// itself is not recorded: an error about it has no key.
func indexLines(doc *yaml.Node) lineIndex {
	idx := lineIndex{}
	if doc == nil {
		return idx
	}
	add := func(line int, segs []string, kind nodeKind) {
		if len(segs) > 0 {
			idx[line] = append(idx[line], lineEntry{segs: segs, kind: kind})
		}
	}
	var walk func(n *yaml.Node, segs []string, depth int)
	walk = func(n *yaml.Node, segs []string, depth int) {
		if n == nil || depth > 100 {
			return
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, segs, depth+1)
			}
		case yaml.MappingNode:
			add(n.Line, segs, kindCollection)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				child := append(segs[:len(segs):len(segs)], k.Value)
				add(k.Line, child, kindKey)
				walk(v, child, depth+1)
			}
		case yaml.SequenceNode:
			add(n.Line, segs, kindCollection)
			for i, c := range n.Content {
				walk(c, append(segs[:len(segs):len(segs)], "["+strconv.Itoa(i)+"]"), depth+1)
			}
		default:
			add(n.Line, segs, kindScalar)
		}
	}
	walk(doc, nil, 0)
	return idx
}

// key returns the path of the mapping key called name on line.
func (idx lineIndex) key(line int, name string) string {
	for _, e := range idx[line] {
		if e.kind == kindKey && e.segs[len(e.segs)-1] == name {
			return renderPath(e.segs)
		}
	}
	return ""
}

// scalar returns the path of the scalar value on line; when several share
// the line (flow style), the path of their closest common ancestor.
func (idx lineIndex) scalar(line int) string {
	var common []string
	found := false
	for _, e := range idx[line] {
		if e.kind != kindScalar {
			continue
		}
		if !found {
			common, found = e.segs, true
			continue
		}
		n := 0
		for n < len(common) && n < len(e.segs) && common[n] == e.segs[n] {
			n++
		}
		common = common[:n]
	}
	return renderPath(common)
}

// collection returns the path of the outermost mapping or sequence on line.
func (idx lineIndex) collection(line int) string {
	var best []string
	for _, e := range idx[line] {
		if e.kind == kindCollection && (best == nil || len(e.segs) < len(best)) {
			best = e.segs
		}
	}
	return renderPath(best)
}

// renderPath joins segments as "providers[1].token_url".
func renderPath(segs []string) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 && !strings.HasPrefix(s, "[") {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}
