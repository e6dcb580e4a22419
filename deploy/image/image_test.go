package image

import (
	"archive/tar"
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImage builds the image twice from this checkout, writes it, opens
// the OCI layout and the tarball again with go-containerregistry, and
// checks: the same digest both times (the checkout must not change
// meanwhile) and the same image in both files; the entrypoint,
// command, user 65532, labels and platform; the layer's files (root-owned,
// the commit's time, sorted, binaries executable); and that the tokenbroker
// binary taken from the layer runs -version and prints the linked version
// and commit.
func TestImage(t *testing.T) {
	src, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	created := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	o := Options{Source: src, Arch: runtime.GOARCH, Version: "v0.0.0-test", Commit: "0123456789abcdef", Created: created}
	first, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want, err := first.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := second.Digest(); err != nil || got != want {
		t.Fatalf("two builds of the same commit: digests %s and %s (%v)", want, got, err)
	}

	dir := t.TempDir()
	if err := Write(first, dir, o.Version); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want ||
		im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v0.0.0-test" {
		t.Fatalf("OCI layout index: %+v, want one manifest %s named v0.0.0-test", im.Manifests, want)
	}
	img, err := p.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	fromTar, err := tarball.ImageFromPath(filepath.Join(dir, "tokenbroker.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// docker's tarball format keeps the config and layers, not the
	// manifest: the same config is the same image.
	wantConfig, err := first.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fromTar.ConfigName(); err != nil || got != wantConfig {
		t.Errorf("tarball's image config %s (%v), want %s", got, err, wantConfig)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || !reflect.DeepEqual(c.Entrypoint, []string{"/usr/local/bin/tokenbroker"}) ||
		!reflect.DeepEqual(c.Cmd, []string{"-config", "/etc/tokenbroker/config.yaml"}) {
		t.Errorf("user %q, entrypoint %q, cmd %q", c.User, c.Entrypoint, c.Cmd)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Time.Equal(created) {
		t.Errorf("platform %s/%s created %s", cf.OS, cf.Architecture, cf.Created.Time)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.title":    "tokenbroker",
		"org.opencontainers.image.source":   "https://github.com/tokenbroker/tokenbroker",
		"org.opencontainers.image.version":  "v0.0.0-test",
		"org.opencontainers.image.revision": "0123456789abcdef",
		"org.opencontainers.image.created":  "2026-11-22T10:00:00Z",
	} {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	bin := filepath.Join(t.TempDir(), "tokenbroker")
	names := readLayer(t, layers[0], created, bin)
	wantNames := []string{"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
		"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/tokenbroker", "usr/local/bin/tokenbrokerctl"}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("layer entries %q, want %q", names, wantNames)
	}
	out, err := exec.CommandContext(ctx, bin, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "tokenbroker v0.0.0-test (commit 0123456789abcdef, go") {
		t.Errorf("tokenbroker -version from the layer: %q (%v)", out, err)
	}
}

// readLayer lists the layer's entries in order, checks their owner, time
// and modes, and writes usr/local/bin/tokenbroker to bin.
func readLayer(t *testing.T, l v1.Layer, created time.Time, bin string) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(bufio.NewReader(rc))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(created) {
			t.Errorf("%s: uid %d gid %d time %s", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if strings.HasPrefix(h.Name, "usr/local/bin/tokenbroker") && h.Mode != 0o755 {
			t.Errorf("%s: mode %o, want 755", h.Name, h.Mode)
		}
		if h.Name == "usr/local/bin/tokenbroker" {
			f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}
