// Package image builds tokenbroker's container image without a container
// daemon and without a base image: static tokenbroker and tokenbrokerctl
// binaries, the build machine's CA certificates and a passwd entry for the
// non-root user, in one layer, assembled with go-containerregistry. The
// same commit gives the same image digest: the binaries are built with
// -trimpath and no build id, every file has the commit's time and root
// ownership, the layer's entries are sorted, and the image's creation time
// is the commit's (or SOURCE_DATE_EPOCH).
//
// deploy/Dockerfile builds the equivalent image with Docker; its USER,
// ENTRYPOINT, CMD and LABEL lines are checked against the settings here.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's settings, shared by the builder and deploy/Dockerfile.
const (
	// User is the numeric user and group the broker runs as (distroless's
	// "nonroot").
	User = "65532:65532"
	// BinDir holds tokenbroker and tokenbrokerctl.
	BinDir = "/usr/local/bin"
	// CACertificates is where the CA bundle is, in the image and on the
	// build machine.
	CACertificates = "/etc/ssl/certs/ca-certificates.crt"
	// ConfigPath is the configuration file the default command reads; the
	// Helm chart mounts its ConfigMap there.
	ConfigPath = "/etc/tokenbroker/config.yaml"
	// Source is the project's repository, for the source label.
	Source = "https://github.com/tokenbroker/tokenbroker"
)

// Entrypoint and Cmd are the image's entrypoint and default arguments.
var (
	Entrypoint = []string{BinDir + "/tokenbroker"}
	Cmd        = []string{"-config", ConfigPath}
	// ExposedPorts are the broker's default gRPC and HTTP ports.
	ExposedPorts = []string{"7443/tcp", "7080/tcp"}
)

// StaticLabels are the org.opencontainers.image.* labels whose values do
// not depend on the build; Labels adds version, revision and created.
var StaticLabels = map[string]string{
	"org.opencontainers.image.title":       "tokenbroker",
	"org.opencontainers.image.description": "gRPC OAuth 2.0 token broker: cached client-credentials access tokens for a fleet",
	"org.opencontainers.image.source":      Source,
	"org.opencontainers.image.url":         Source,
}

// Labels returns every label of an image built from commit at version,
// created at created.
func Labels(version, commit string, created time.Time) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.version":  version,
		"org.opencontainers.image.revision": commit,
		"org.opencontainers.image.created":  created.UTC().Format(time.RFC3339),
	}
	for k, v := range StaticLabels {
		l[k] = v
	}
	return l
}

// Options says what to build.
type Options struct {
	// Source is the main module's directory (holding cmd/tokenbroker).
	Source string
	// Arch is the GOARCH of the image (linux only).
	Arch string
	// Version and Commit are linked into the binaries and labelled.
	Version, Commit string
	// Created is every file's modification time and the image's
	// creation time.
	Created time.Time
	// CACertificates is the CA bundle copied into the image; default the
	// build machine's (CACertificates).
	CACertificates string
	// WorkDir receives the binaries; default a temporary directory.
	WorkDir string
}

// Build compiles the binaries (CGO_ENABLED=0, -trimpath, no build id,
// version and commit linked in) and assembles the image.
func Build(ctx context.Context, o Options) (v1.Image, error) {
	if o.Source == "" || o.Arch == "" || o.Version == "" || o.Commit == "" || o.Created.IsZero() {
		return nil, errors.New("image: Source, Arch, Version, Commit and Created are required")
	}
	if o.CACertificates == "" {
		o.CACertificates = CACertificates
	}
	work := o.WorkDir
	if work == "" {
		dir, err := os.MkdirTemp("", "tokenbroker-image-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		work = dir
	}
	ldflags := fmt.Sprintf("-s -w -buildid= -X main.version=%s -X main.commit=%s", o.Version, o.Commit)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags,
		"-o", work+string(filepath.Separator), "./cmd/tokenbroker", "./cmd/tokenbrokerctl")
	cmd.Dir = o.Source
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch, "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("image: go build: %w\n%s", err, out)
	}
	files := map[string]file{
		"etc/passwd": {mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		"etc/group":  {mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
	}
	for dst, src := range map[string]string{
		strings.TrimPrefix(CACertificates, "/"):             o.CACertificates,
		strings.TrimPrefix(BinDir, "/") + "/tokenbroker":    filepath.Join(work, "tokenbroker"),
		strings.TrimPrefix(BinDir, "/") + "/tokenbrokerctl": filepath.Join(work, "tokenbrokerctl"),
	} {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		mode := int64(0o755)
		if !strings.HasPrefix(dst, strings.TrimPrefix(BinDir, "/")) {
			mode = 0o644
		}
		files[dst] = file{mode: mode, data: data}
	}
	return Assemble(files, o.Arch, o.Version, o.Commit, o.Created)
}

// file is a regular file of the layer.
type file struct {
	mode int64
	data []byte
}

// Assemble makes the image from files (paths relative to /), a layer of
// their tar stream: every parent directory, entries sorted, root-owned,
// modified at created. archive/tar writes the stream, since
// go-containerregistry makes layers from tar streams but has no helper
// that writes one from files.
func Assemble(files map[string]file, arch, version, commit string, created time.Time) (v1.Image, error) {
	names := map[string]bool{}
	for p := range files {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			names[d+"/"] = true
		}
		names[p] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := created.UTC().Truncate(time.Second)
	for _, n := range sorted {
		h := &tar.Header{Name: n, ModTime: mtime, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			f := files[n]
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, f.mode, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("image: layer: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(files[n].data); err != nil {
				return nil, fmt.Errorf("image: layer: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: mtime},
			CreatedBy: "tokenbroker deploy/image: static tokenbroker and tokenbrokerctl, CA certificates, user 65532",
			Comment:   "commit " + commit,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: mtime}
	cf.Config.User = User
	cf.Config.Entrypoint = Entrypoint
	cf.Config.Cmd = Cmd
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=" + BinDir + ":/usr/bin:/bin", "SSL_CERT_FILE=" + CACertificates}
	cf.Config.Labels = Labels(version, commit, mtime)
	cf.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range ExposedPorts {
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return img, nil
}

// Write stores img under dir as an OCI image layout (dir/oci, for skopeo
// and crane) and a tarball (dir/tokenbroker.tar, for docker load and crane
// push), both with the reference tokenbroker:TAG.
func Write(img v1.Image, dir, tag string) error {
	ref, err := name.NewTag("tokenbroker:" + SafeTag(tag))
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	oci := filepath.Join(dir, "oci")
	if err := os.RemoveAll(oci); err != nil {
		return err
	}
	p, err := layout.Write(oci, empty.Index)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
	})); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := tarball.WriteToFile(filepath.Join(dir, "tokenbroker.tar"), ref, img); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// SafeTag turns a version (git describe output) into a valid tag: at most
// 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'.
func SafeTag(version string) string {
	b := []byte(version)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), ".-")
	if len(s) > 128 {
		s = s[:128]
	}
	if s == "" {
		s = "latest"
	}
	return s
}

// GitInfo returns the version (git describe --tags --always --dirty), the
// commit and the commit's time of the checkout at dir. SOURCE_DATE_EPOCH,
// when set, is the time instead.
func GitInfo(ctx context.Context, dir string) (version, commit string, created time.Time, err error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("image: git %s: %w", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	if version, err = git("describe", "--tags", "--always", "--dirty"); err != nil {
		return "", "", time.Time{}, err
	}
	if commit, err = git("rev-parse", "HEAD"); err != nil {
		return "", "", time.Time{}, err
	}
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		if epoch, err = git("log", "-1", "--format=%ct"); err != nil {
			return "", "", time.Time{}, err
		}
	}
	secs, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("image: SOURCE_DATE_EPOCH or commit time %q: not a number of seconds", epoch)
	}
	return version, commit, time.Unix(secs, 0).UTC(), nil
}
