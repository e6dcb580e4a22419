// Command build-image builds tokenbroker's OCI image (make image): static
// binaries of the main module, no base image, user 65532, reproducible
// from the commit. It writes OUT/oci (an OCI image layout) and
// OUT/tokenbroker.tar (a tarball for docker load or crane push) and prints
// the image's digest.
//
// Usage (from deploy/):
//
//	go run ./image/cmd/build-image -out ../bin/image [-source ..] [-arch amd64]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/tokenbroker/tokenbroker/deploy/image"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "build-image:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", "../bin/image", "directory receiving oci/ and tokenbroker.tar")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the image (linux)")
	src := flag.String("source", "..", "the main module's directory")
	ca := flag.String("ca-certificates", image.CACertificates, "CA bundle copied into the image")
	flag.Parse()
	ctx := context.Background()
	if _, err := os.Stat(filepath.Join(*src, "cmd", "tokenbroker")); err != nil {
		return fmt.Errorf("-source %s: not the main module's directory: %w", *src, err)
	}
	o := image.Options{Source: *src, Arch: *arch, CACertificates: *ca}
	var err error
	if o.Version, o.Commit, o.Created, err = image.GitInfo(ctx, o.Source); err != nil {
		return err
	}
	img, err := image.Build(ctx, o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := image.Write(img, *out, o.Version); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("tokenbroker:%s %s (%s, commit %s, created %s)\n  %s/oci\n  %s/tokenbroker.tar\n",
		image.SafeTag(o.Version), digest, o.Arch, o.Commit, o.Created.Format("2006-01-02T15:04:05Z"), *out, *out)
	return nil
}
