package main

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestConfigProblemsAllAtOnce: the file's unreadable values, the rule
// violations and the secret files' problems are reported in one go, each
// with where its key came from (file and line, flag, environment).
func TestConfigProblemsAllAtOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(`cache:
  refresh_fraction: 1.5
providers:
  - name: p
    token_url: https://idp.example/token
    burst: 10.7
auth:
  allow_unauthenticated: true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	env := map[string]string{"TOKENBROKER_LISTEN": "nope"}
	err := run(context.Background(), []string{"-config", path, "-log-format", "xml"}, func(k string) string { return env[k] }, &out, &out)
	if err == nil {
		t.Fatal("run = nil error")
	}
	for _, want := range []string{
		path + ":6: providers[0].burst: must be an integer, got 10.7",
		path + ":2: cache.refresh_fraction: must be in (0, 1)",
		"env TOKENBROKER_LISTEN: listen: must be host:port",
		"flag -log-format: log.format: must be json or text",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("run error =\n%v\nwant it to contain %q", err, want)
		}
	}

	// Secret and key files: every problem, located, with the path resolved.
	if err := os.WriteFile(path, []byte(`providers:
  - name: p
    token_url: https://idp.example/token
clients:
  - name: c
    provider: p
    client_id: id
    client_secret_file: missing-secret
tls:
  cert_file: missing-cert.pem
  key_file: missing-key.pem
auth:
  allow_unauthenticated: true
insecure_allow_remote: true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), []string{"-config", path}, func(string) string { return "" }, &out, &out)
	if err == nil {
		t.Fatal("run = nil error")
	}
	for _, want := range []string{
		path + `:8: clients[0].client_secret_file: cannot read "` + filepath.Join(dir, "missing-secret") + `": no such file or directory`,
		path + `:10: tls.cert_file: cannot read "` + filepath.Join(dir, "missing-cert.pem") + `"`,
		path + `:11: tls.key_file: cannot read "` + filepath.Join(dir, "missing-key.pem") + `"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("run error =\n%v\nwant it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "tls: tls:") {
		t.Errorf("run error = %v, want no doubled tls: prefix", err)
	}
}

// waitFor waits until out holds text for which match returns a non-nil
// result, or run ends (done), and returns that result.
func waitFor(t *testing.T, out *testkit.LogBuffer, done <-chan error, match func(string) []string) []string {
	t.Helper()
	for {
		if m := match(out.String()); m != nil {
			return m
		}
		select {
		case err := <-done:
			t.Fatalf("run ended: %v\n%s", err, out.String())
		case <-out.Wrote():
		}
	}
}

// TestDevBannerCurlWorks: without $TOKENBROKER_DEV_SECRET, the -dev
// banner's drop-in curl command carries the demo secret made for this
// run, so it works when pasted into any shell: the credentials it shows
// get a token from the drop-in endpoint. With the variable set, the
// secret is not printed and the command fails loudly where it is unset.
func TestDevBannerCurlWorks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stdout, stderr := new(testkit.LogBuffer), new(testkit.LogBuffer)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-dev", "-listen", "127.0.0.1:0", "-http-listen", "127.0.0.1:0"}, func(string) string { return "" }, stdout, stderr)
	}()
	curlRE := regexp.MustCompile(`curl -s -u ([^:\s]+):(\S+) -d grant_type=client_credentials (http://\S+/oauth2/token)`)
	banner := func(s string) []string {
		if !strings.Contains(s, "Ctrl-C") {
			return nil
		}
		if m := curlRE.FindStringSubmatch(s); m != nil {
			return m
		}
		t.Fatalf("no curl command in the banner:\n%s", s)
		return nil
	}
	m := waitFor(t, stdout, done, banner)
	if strings.Contains(m[2], "$") {
		t.Fatalf("banner's curl command uses a variable for the secret: %s", m[0])
	}
	req, err := http.NewRequest(http.MethodPost, m[3], strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(m[1], m[2])
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST with the banner's credentials: status %d, want 200", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run = %v", err)
	}

	// With the secret from the environment, the banner does not print it.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	out2 := new(testkit.LogBuffer)
	done = make(chan error, 1)
	go func() {
		env := map[string]string{"TOKENBROKER_DEV_SECRET": "my-own-dev-secret"}
		done <- run(ctx2, []string{"-dev", "-listen", "127.0.0.1:0", "-http-listen", "127.0.0.1:0"}, func(k string) string { return env[k] }, out2, stderr)
	}()
	waitFor(t, out2, done, func(s string) []string {
		if strings.Contains(s, "Ctrl-C") {
			return []string{s}
		}
		return nil
	})
	if s := out2.String(); strings.Contains(s, "my-own-dev-secret") || !strings.Contains(s, "${TOKENBROKER_DEV_SECRET:?") {
		t.Errorf("banner with $TOKENBROKER_DEV_SECRET:\n%s\nwant the variable with a :? guard, not the secret", s)
	}
	cancel2()
	<-done
}
