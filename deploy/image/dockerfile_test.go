package image

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDockerfileAgrees: deploy/Dockerfile (not built in CI: Docker does
// not run there) keeps the builder's user, entrypoint, command, exposed
// ports, environment and labels: every static label with its value, and
// version, revision and created from the build arguments.
func TestDockerfileAgrees(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var user, entrypoint, cmd, expose, env string
	labels := map[string]string{}
	final := false
	for _, line := range strings.Split(string(data), "\n") {
		word, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch word {
		case "FROM":
			final = strings.HasPrefix(rest, "scratch")
		case "USER":
			user = rest
		case "ENTRYPOINT":
			entrypoint = rest
		case "CMD":
			cmd = rest
		case "EXPOSE":
			expose = rest
		case "ENV":
			env = rest
		case "LABEL":
			k, v, _ := strings.Cut(rest, "=")
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			labels[k] = v
		}
	}
	if !final {
		t.Error("the last stage is not FROM scratch")
	}
	if user != User {
		t.Errorf("USER %q, want %q", user, User)
	}
	for _, c := range []struct {
		line string
		want []string
	}{{entrypoint, Entrypoint}, {cmd, Cmd}} {
		var got []string
		if err := json.Unmarshal([]byte(c.line), &got); err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: want the exec form of %q (%v)", c.line, c.want, err)
		}
	}
	ports := strings.Fields(expose)
	sort.Strings(ports)
	want := append([]string(nil), ExposedPorts...)
	sort.Strings(want)
	if !reflect.DeepEqual(ports, want) {
		t.Errorf("EXPOSE %q, want %q", ports, want)
	}
	img, err := Assemble(map[string]file{}, "amd64", "${VERSION}", "${COMMIT}", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cf.Config.Env, " "); env != got {
		t.Errorf("ENV %q, want %q", env, got)
	}
	wantLabels := cf.Config.Labels
	wantLabels["org.opencontainers.image.created"] = "${CREATED}"
	if !reflect.DeepEqual(labels, wantLabels) {
		t.Errorf("LABELs %q, want %q", labels, wantLabels)
	}
}
