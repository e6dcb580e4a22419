package main

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// none is what a table shows for an absent value or an empty list.
const none = "-"

// writeJSON prints m as protojson followed by a line break: indented when
// multiline, else on one line; with emitUnpopulated, zero fields too. The
// whitespace is normalised (protojson varies it on purpose), so equal
// messages print alike.
func writeJSON(w io.Writer, m proto.Message, multiline, emitUnpopulated bool) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: emitUnpopulated}.Marshal(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if multiline {
		err = json.Indent(&buf, b, "", "  ")
	} else {
		err = json.Compact(&buf, b)
	}
	if err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

// row writes one row; cells must not contain tabs or line breaks.
func (t *table) row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// flush writes the table out.
func (t *table) flush() error { return t.tw.Flush() }

// orDash returns s, or none when s is empty.
func orDash(s string) string {
	if s == "" {
		return none
	}
	return s
}

// joinOrDash joins a list with commas, or returns none when it is empty.
func joinOrDash(list []string) string {
	if len(list) == 0 {
		return none
	}
	return strings.Join(list, ",")
}

// formatTimestamp renders ts in UTC (RFC 3339), or none when unset.
func formatTimestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return none
	}
	return ts.AsTime().UTC().Format(time.RFC3339Nano)
}

// until renders how long from now until ts, rounded to the second; past
// when ts is not after now; none when ts is unset.
func until(ts *timestamppb.Timestamp, now time.Time, past string) string {
	if ts == nil {
		return none
	}
	d := ts.AsTime().Sub(now).Round(time.Second)
	if d <= 0 {
		return past
	}
	return d.String()
}

// ago renders how long before now ts was, rounded to the second; none
// when ts is unset.
func ago(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return none
	}
	d := max(now.Sub(ts.AsTime()).Round(time.Second), 0)
	return d.String() + " ago"
}

// enumName is the name of an enum value without the prefix all of the
// enum's values share ("EVENT_INITIAL" shows as "INITIAL"), or its number
// when the value is unknown.
func enumName(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	v := ed.Values().ByNumber(n)
	if v == nil {
		return strconv.Itoa(int(n))
	}
	return strings.TrimPrefix(string(v.Name()), enumPrefix(ed))
}

// enumPrefix is the longest prefix ending in '_' that every value of ed
// has and that leaves every name non-empty; "" when there is none.
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	vals := ed.Values()
	if vals.Len() < 2 {
		return ""
	}
	prefix := string(vals.Get(0).Name())
	for i := 1; i < vals.Len(); i++ {
		name := string(vals.Get(i).Name())
		n := 0
		for n < len(prefix) && n < len(name) && prefix[n] == name[n] {
			n++
		}
		prefix = prefix[:n]
	}
	cut := strings.LastIndexByte(prefix, '_')
	if cut < 0 {
		return ""
	}
	prefix = prefix[:cut+1]
	for i := range vals.Len() {
		if len(vals.Get(i).Name()) == len(prefix) {
			return ""
		}
	}
	return prefix
}

// field is one name/value pair of a flattened message.
type field struct{ name, value string }

// flatten lists every field of m, in declaration order, as name/value
// pairs, whatever fields the message has:
//   - scalars (zero values included) as they are, enums by name;
//   - nested messages as one pair per field with dotted names
//     ("shared_tier.hits"), or one pair with the value "-" when unset;
//     Timestamp, Duration and the wrapper types as one value;
//   - repeated scalars as one comma-separated value;
//   - repeated messages per element as name[label].field, where label is
//     the element's first field when that is a string that tells the
//     elements apart ("providers[dev].ok"), else its index;
//   - maps per key as name[key], sorted by key;
//   - of a oneof, only the member that is set.
//
// Empty lists and maps show as "-".
func flatten(m protoreflect.Message) []field {
	var out []field
	flattenInto(&out, "", m)
	return out
}

func flattenInto(out *[]field, prefix string, m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && m.WhichOneof(od) != fd {
			continue
		}
		name := prefix + string(fd.Name())
		switch {
		case fd.IsMap():
			flattenMap(out, name, fd, m.Get(fd).Map())
		case fd.IsList():
			flattenList(out, name, fd, m.Get(fd).List())
		case fd.Message() != nil:
			if !m.Has(fd) {
				*out = append(*out, field{name, none})
				continue
			}
			flattenMessage(out, name, m.Get(fd).Message())
		default:
			*out = append(*out, field{name, scalar(fd, m.Get(fd))})
		}
	}
}

// flattenMessage adds a set message value: one pair for well-known types,
// else one per field.
func flattenMessage(out *[]field, name string, m protoreflect.Message) {
	if v, ok := wellKnown(m); ok {
		*out = append(*out, field{name, v})
		return
	}
	flattenInto(out, name+".", m)
}

func flattenList(out *[]field, name string, fd protoreflect.FieldDescriptor, list protoreflect.List) {
	if list.Len() == 0 {
		*out = append(*out, field{name, none})
		return
	}
	if fd.Message() == nil {
		vals := make([]string, list.Len())
		for i := range list.Len() {
			vals[i] = scalar(fd, list.Get(i))
		}
		*out = append(*out, field{name, strings.Join(vals, ",")})
		return
	}
	labels, labelField := listLabels(fd.Message(), list)
	for i := range list.Len() {
		elem := list.Get(i).Message()
		elemName := name + "[" + labels[i] + "]"
		if v, ok := wellKnown(elem); ok {
			*out = append(*out, field{elemName, v})
			continue
		}
		if labelField == nil {
			flattenInto(out, elemName+".", elem)
			continue
		}
		var rest []field
		flattenInto(&rest, elemName+".", elem)
		skip := elemName + "." + string(labelField.Name())
		for _, f := range rest {
			if f.name != skip {
				*out = append(*out, f)
			}
		}
	}
}

// listLabels names the elements of a list of messages: by their first
// field (returned) when it is a non-repeated string that is set and
// different in every element, else by index.
func listLabels(md protoreflect.MessageDescriptor, list protoreflect.List) ([]string, protoreflect.FieldDescriptor) {
	labels := make([]string, list.Len())
	for i := range labels {
		labels[i] = strconv.Itoa(i)
	}
	if md.Fields().Len() == 0 {
		return labels, nil
	}
	first := md.Fields().Get(0)
	if first.Kind() != protoreflect.StringKind || first.IsList() || first.ContainingOneof() != nil {
		return labels, nil
	}
	seen := make(map[string]bool, list.Len())
	byName := make([]string, list.Len())
	for i := range list.Len() {
		s := list.Get(i).Message().Get(first).String()
		if s == "" || seen[s] || strings.ContainsAny(s, "[]\t\n") {
			return labels, nil
		}
		seen[s] = true
		byName[i] = s
	}
	return byName, first
}

func flattenMap(out *[]field, name string, fd protoreflect.FieldDescriptor, m protoreflect.Map) {
	if m.Len() == 0 {
		*out = append(*out, field{name, none})
		return
	}
	type kv struct {
		key string
		val protoreflect.Value
	}
	var entries []kv
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		entries = append(entries, kv{scalar(fd.MapKey(), k.Value()), v})
		return true
	})
	slices.SortFunc(entries, func(a, b kv) int { return cmp.Compare(a.key, b.key) })
	for _, e := range entries {
		elemName := name + "[" + e.key + "]"
		if fd.MapValue().Message() != nil {
			flattenMessage(out, elemName, e.val.Message())
			continue
		}
		*out = append(*out, field{elemName, scalar(fd.MapValue(), e.val)})
	}
}

// wellKnown renders Timestamp, Duration and the wrapper types as one
// value.
func wellKnown(m protoreflect.Message) (string, bool) {
	md := m.Descriptor()
	switch md.FullName() {
	case "google.protobuf.Timestamp", "google.protobuf.Duration":
		secs := m.Get(md.Fields().ByName("seconds")).Int()
		nanos := m.Get(md.Fields().ByName("nanos")).Int()
		if md.FullName() == "google.protobuf.Duration" {
			return (time.Duration(secs)*time.Second + time.Duration(nanos)).String(), true
		}
		return time.Unix(secs, nanos).UTC().Format(time.RFC3339Nano), true
	}
	if md.ParentFile() != nil && md.ParentFile().Package() == "google.protobuf" && strings.HasSuffix(string(md.Name()), "Value") && md.Fields().Len() == 1 {
		if fd := md.Fields().ByName("value"); fd != nil && !fd.IsList() && fd.Message() == nil {
			return scalar(fd, m.Get(fd)), true
		}
	}
	return "", false
}

// scalar renders a non-message value of field fd.
func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		return enumName(fd.Enum(), v.Enum())
	case protoreflect.BytesKind:
		return base64.StdEncoding.EncodeToString(v.Bytes())
	case protoreflect.StringKind:
		if s := v.String(); s != "" {
			return strings.NewReplacer("\t", " ", "\n", " ").Replace(s)
		}
		return `""`
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	}
	return v.String() // bools and integers
}
