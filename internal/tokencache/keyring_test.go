package tokencache

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// testSecret returns a distinctive 32-byte secret derived from b.
func testSecret(b byte) []byte {
	s := make([]byte, KeySize)
	for i := range s {
		s[i] = b + byte(i)*7
	}
	return s
}

func newKeyring(t testing.TB, current string, keys ...Key) *Keyring {
	t.Helper()
	kr, err := NewKeyring(keys, current)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return kr
}

var (
	k1 = Key{ID: "k1", Secret: testSecret(1)}
	k2 = Key{ID: "k2", Secret: testSecret(100)}
)

func TestSealOpenRoundTrip(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	for _, plain := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("payload"), 1000)} {
		sealed := kr.Seal([]byte("prefix"), plain, []byte("aad"))
		if !bytes.HasPrefix(sealed, []byte("prefix")) {
			t.Fatalf("Seal dropped dst: got %q..., want it to start with \"prefix\"", sealed[:6])
		}
		sealed = sealed[len("prefix"):]
		if got, want := len(sealed), len(plain)+kr.Overhead(); got != want {
			t.Errorf("sealed %d bytes to %d, want %d", len(plain), got, want)
		}
		got, err := kr.Open(sealed, []byte("aad"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("Open: got %d bytes, want the %d sealed", len(got), len(plain))
		}
	}
}

func TestSealedFormat(t *testing.T) {
	kr := newKeyring(t, "key_2-B", Key{ID: "key_2-B", Secret: testSecret(3)})
	a := kr.Seal(nil, []byte("same"), nil)
	b := kr.Seal(nil, []byte("same"), nil)
	if got, want := string(a[:8]), "\x07key_2-B"; got != want {
		t.Errorf("sealed value starts %q, want %q (id length, id)", got, want)
	}
	if bytes.Equal(a[8:20], b[8:20]) {
		t.Error("two seals used the same nonce, want a random nonce each")
	}
	if got, want := len(a), 1+7+12+len("same")+16; got != want {
		t.Errorf("sealed length %d, want %d (id, 12-byte nonce, plaintext, 16-byte tag)", got, want)
	}
}

// TestOpenRejectsEveryAlteredByte flips each bit of a sealed value in
// turn: none opens.
func TestOpenRejectsEveryAlteredByte(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	sealed := kr.Seal(nil, []byte("attack at dawn"), []byte("aad"))
	for i := range sealed {
		for bit := range 8 {
			bad := bytes.Clone(sealed)
			bad[i] ^= 1 << bit
			if got, err := kr.Open(bad, []byte("aad")); err == nil {
				t.Fatalf("byte %d bit %d flipped: got %q, want an error", i, bit, got)
			} else if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("byte %d bit %d flipped: got error %v, want ErrCorrupt or ErrUnknownKey", i, bit, err)
			}
		}
	}
}

func TestOpenErrors(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	sealed := kr.Seal(nil, []byte("token"), []byte("key-a"))
	other := newKeyring(t, "k2", k2).Seal(nil, []byte("token"), []byte("key-a"))
	sameID := newKeyring(t, "k1", Key{ID: "k1", Secret: testSecret(50)}).Seal(nil, []byte("token"), []byte("key-a"))
	for _, tc := range []struct {
		name   string
		sealed []byte
		aad    string
		want   error
	}{
		{"another aad", sealed, "key-b", ErrCorrupt},
		{"no aad", sealed, "", ErrCorrupt},
		{"unknown key id", other, "key-a", ErrUnknownKey},
		{"same id, other secret", sameID, "key-a", ErrCorrupt},
		{"empty", nil, "key-a", ErrCorrupt},
		{"zero id length", []byte{0, 1, 2}, "key-a", ErrCorrupt},
		{"id longer than 16", append([]byte{17}, bytes.Repeat([]byte("a"), 40)...), "key-a", ErrCorrupt},
		{"truncated id", []byte{2, 'k'}, "key-a", ErrCorrupt},
		{"header only", sealed[:3], "key-a", ErrCorrupt},
		{"shorter than nonce and tag", sealed[:3+27], "key-a", ErrCorrupt},
		{"truncated ciphertext", sealed[:len(sealed)-1], "key-a", ErrCorrupt},
		{"extra byte", append(bytes.Clone(sealed), 0), "key-a", ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kr.Open(tc.sealed, []byte(tc.aad))
			if !errors.Is(err, tc.want) {
				t.Errorf("got %q, %v; want error %v", got, err, tc.want)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	old := newKeyring(t, "k1", k1)
	sealedOld := old.Seal(nil, []byte("old"), []byte("k"))

	rotated := newKeyring(t, "k2", k1, k2) // k2 current; order of the list does not matter
	if got, want := rotated.Current(), "k2"; got != want {
		t.Errorf("Current() = %q, want %q", got, want)
	}
	if got, want := fmt.Sprint(rotated.IDs()), "[k2 k1]"; got != want {
		t.Errorf("IDs() = %s, want %s (current first)", got, want)
	}
	if got, err := rotated.Open(sealedOld, []byte("k")); err != nil || string(got) != "old" {
		t.Errorf("rotated ring opens a k1 value: got %q, %v; want \"old\"", got, err)
	}
	sealedNew := rotated.Seal(nil, []byte("new"), []byte("k"))
	if !bytes.HasPrefix(sealedNew, []byte("\x02k2")) {
		t.Errorf("rotated ring seals with prefix %q, want \"\\x02k2\"", sealedNew[:3])
	}
	if _, err := old.Open(sealedNew, []byte("k")); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old ring opens a k2 value: got %v, want ErrUnknownKey", err)
	}

	retired := newKeyring(t, "k2", k2)
	if _, err := retired.Open(sealedOld, []byte("k")); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("ring without k1 opens a k1 value: got %v, want ErrUnknownKey", err)
	}
	if got, err := retired.Open(sealedNew, []byte("k")); err != nil || string(got) != "new" {
		t.Errorf("ring without k1 opens a k2 value: got %q, %v; want \"new\"", got, err)
	}
}

func TestNewKeyringCopiesSecrets(t *testing.T) {
	secret := testSecret(9)
	kr := newKeyring(t, "a", Key{ID: "a", Secret: secret})
	sealed := kr.Seal(nil, []byte("v"), nil)
	clear(secret)
	if _, err := kr.Open(sealed, nil); err != nil {
		t.Errorf("after the caller cleared its secret: got %v, want the value to open", err)
	}
	if _, err := newKeyring(t, "a", Key{ID: "a", Secret: secret}).Open(sealed, nil); err == nil {
		t.Error("a ring with the cleared secret opens the value, want an error")
	}
}

func TestNewKeyringErrors(t *testing.T) {
	short := []byte("0123456789abcdef") // 16 bytes: AES-128, not allowed
	for _, tc := range []struct {
		name    string
		keys    []Key
		current string
		want    string
	}{
		{"no keys", nil, "k1", "at least one key"},
		{"empty id", []Key{k1, {ID: "", Secret: testSecret(5)}}, "k1", "key 2: id must be 1 to 16 characters"},
		{"long id", []Key{{ID: strings.Repeat("a", 17), Secret: testSecret(5)}}, "k1", "key 1: id must be 1 to 16 characters"},
		{"bad character", []Key{{ID: "k 1", Secret: testSecret(5)}}, "k1", "key 1: id must be"},
		{"non-ASCII", []Key{{ID: "clé", Secret: testSecret(5)}}, "k1", "key 1: id must be"},
		{"short secret", []Key{{ID: "k1", Secret: short}}, "k1", `key "k1": secret must be 32 bytes (AES-256), got 16`},
		{"no secret", []Key{{ID: "k1"}}, "k1", `key "k1": secret must be 32 bytes (AES-256), got 0`},
		{"duplicate", []Key{k1, k2, {ID: "k1", Secret: testSecret(7)}}, "k1", `key "k1": duplicate key id`},
		{"current missing", []Key{k1, k2}, "k3", `current key "k3" is not among the keys`},
		{"current empty", []Key{k1}, "", "current key id is empty"},
		{"current invalid", []Key{k1}, "k 1", "current key id must be 1 to 16 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := NewKeyring(tc.keys, tc.current)
			if err == nil {
				t.Fatalf("got %v, want an error containing %q", kr, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %q, want it to contain %q", err, tc.want)
			}
			for _, k := range tc.keys {
				assertNoKeyMaterial(t, err.Error(), k.Secret)
			}
			assertNoKeyMaterial(t, err.Error(), short)
		})
	}
}

func TestRandomKeyring(t *testing.T) {
	a, b := RandomKeyring(), RandomKeyring()
	if got, want := a.Current(), "random"; got != want {
		t.Errorf("Current() = %q, want %q", got, want)
	}
	sealed := a.Seal(nil, []byte("v"), nil)
	if got, err := a.Open(sealed, nil); err != nil || string(got) != "v" {
		t.Errorf("own value: got %q, %v; want \"v\"", got, err)
	}
	if _, err := b.Open(sealed, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("another random ring opens the value: got %v, want ErrCorrupt", err)
	}
}

func TestParseKeys(t *testing.T) {
	s1, s2 := testSecret(1), testSecret(100)
	std1 := base64.StdEncoding.EncodeToString(s1)
	url2 := base64.RawURLEncoding.EncodeToString(s2)
	for _, tc := range []struct {
		name    string
		text    string
		wantIDs string // space-separated ids; empty when an error is wanted
		wantErr string
	}{
		{"one key", "k1:" + std1, "k1", ""},
		{"one key, newline", "k1:" + std1 + "\n", "k1", ""},
		{"raw URL", "k2:" + url2, "k2", ""},
		{"first is current", "k2:" + url2 + "\nk1:" + std1, "k2 k1", ""},
		{"comments, blanks, spaces, CRLF", "# sealing keys\r\n\r\n  k2 : " + url2 + "  # new\r\n\t#k0:old\r\nk1:" + std1 + "\r\n", "k2 k1", ""},
		{"standard without padding", "k1:" + strings.TrimRight(std1, "="), "k1", ""},
		{"empty", "", "", "no keys"},
		{"only comments", "# nothing\n\n   \n", "", "no keys"},
		{"no colon", std1, "", "line 1: want ID:BASE64"},
		{"empty id", "\n:" + std1, "", "line 2: key id must be 1 to 16 characters"},
		{"id too long", strings.Repeat("k", 17) + ":" + std1, "", "line 1: key id must be"},
		{"bad id character", "k.1:" + std1, "", "line 1: key id must be"},
		{"bad base64", "k1:" + strings.Repeat("!", 44), "", `line 1: key "k1": secret is not valid base64`},
		{"mixed alphabets", "k1:" + strings.Repeat("+-", 22), "", `line 1: key "k1": secret is not valid base64`},
		{"16 bytes", "k1:" + base64.StdEncoding.EncodeToString(s1[:16]), "", `line 1: key "k1": secret must be 32 bytes, got 16`},
		{"33 bytes", "k1:" + base64.StdEncoding.EncodeToString(append(s1, 0)), "", `line 1: key "k1": secret must be 32 bytes, got 33`},
		{"empty secret", "k1:", "", `line 1: key "k1": secret must be 32 bytes, got 0`},
		{"duplicate", "k1:" + std1 + "\n#\nk1:" + url2, "", `line 3: duplicate key id "k1"`},
		{"key in the id position", std1 + ":" + std1, "", "line 1: key id must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, current, err := ParseKeys([]byte(tc.text))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("got keys %v, want an error containing %q", keys, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got error %q, want it to contain %q", err, tc.wantErr)
				}
				if strings.HasPrefix(err.Error(), "tokencache") {
					t.Errorf("error %q has a package prefix, want the caller to name the source", err)
				}
				assertNoKeyMaterial(t, err.Error(), s1, s2, s1[:16])
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want ids %s", err, tc.wantIDs)
			}
			var ids []string
			for _, k := range keys {
				ids = append(ids, k.ID)
				want := s1
				if k.ID == "k2" {
					want = s2
				}
				if !bytes.Equal(k.Secret, want) {
					t.Errorf("key %s: secret decoded wrong", k.ID)
				}
			}
			if got := strings.Join(ids, " "); got != tc.wantIDs {
				t.Errorf("got ids %q, want %q", got, tc.wantIDs)
			}
			if want := strings.Fields(tc.wantIDs)[0]; current != want {
				t.Errorf("got current %q, want %q (the first key)", current, want)
			}
			if _, err := NewKeyring(keys, current); err != nil {
				t.Errorf("NewKeyring of parsed keys: %v", err)
			}
		})
	}
}

// TestKeyMaterialNeverPrints formats keys and keyrings every way fmt, slog,
// JSON and YAML can, directly and inside other values.
func TestKeyMaterialNeverPrints(t *testing.T) {
	key := Key{ID: "k1", Secret: testSecret(1)}
	keys := []Key{key, k2}
	kr := newKeyring(t, "k1", keys...)
	type wrapper struct {
		Key  Key
		Keys []Key
		Ring *Keyring
		Val  Keyring
	}
	w := wrapper{key, keys, kr, *kr}
	values := []any{key, &key, keys, kr, *kr, w, &w}
	var outputs []string
	for _, verb := range []string{"%s", "%v", "%+v", "%#v", "%q", "%x", "%X", "%d", "%T %v"} {
		for _, v := range values {
			if verb == "%T %v" {
				outputs = append(outputs, fmt.Sprintf(verb, v, v))
				continue
			}
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	outputs = append(outputs, fmt.Sprint(values...), fmt.Sprintln(values...), key.String(), key.GoString(), kr.String(), kr.GoString())
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		slog.New(h).Info("keys", "key", key, "keys", keys, "ring", kr, "ringval", *kr, "wrapper", w)
	}
	outputs = append(outputs, buf.String())
	for _, v := range values {
		js, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%T): %v", v, err)
		}
		ys, err := yaml.Marshal(v)
		if err != nil {
			t.Fatalf("yaml.Marshal(%T): %v", v, err)
		}
		outputs = append(outputs, string(js), string(ys))
	}
	for _, out := range outputs {
		assertNoKeyMaterial(t, out, key.Secret, k2.Secret)
	}
	if s := fmt.Sprint(key); !strings.Contains(s, "k1") || !strings.Contains(s, redacted) {
		t.Errorf("Key prints as %q, want its id and %q", s, redacted)
	}
	if s := fmt.Sprintf("%+v", kr); !strings.Contains(s, "k1") || !strings.Contains(s, "k2") {
		t.Errorf("Keyring prints as %q, want its key ids", s)
	}
}

// assertNoKeyMaterial fails if out contains any secret raw, in hex or in
// any base64 alphabet, or a decimal byte list of it as fmt prints []byte.
func assertNoKeyMaterial(t *testing.T, out string, secrets ...[]byte) {
	t.Helper()
	for _, s := range secrets {
		if len(s) == 0 {
			continue
		}
		head := s[:min(len(s), 8)]
		quoted := fmt.Sprintf("%q", s)
		forms := []string{
			string(s), hex.EncodeToString(s), strings.ToUpper(hex.EncodeToString(s)),
			base64.StdEncoding.EncodeToString(s), base64.RawURLEncoding.EncodeToString(s),
			strings.Trim(fmt.Sprint(head), "[]"), quoted[1 : len(quoted)-1],
		}
		for _, f := range forms {
			if strings.Contains(out, f) {
				t.Errorf("output leaks key material (%q): %q", f, out)
				return
			}
		}
	}
}
