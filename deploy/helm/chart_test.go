// Package helm holds the tests of the Helm chart in tokenbroker/: it is
// rendered with the Helm v4 SDK, without a cluster.
package helm

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// rendered is one rendering of the chart, decoded.
type rendered struct {
	deployment     *appsv1.Deployment
	configMap      *corev1.ConfigMap
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy
	serviceMonitor *monitoringv1.ServiceMonitor
	notes          string
}

// render renders the chart with values over values.yaml and decodes every
// object strictly (a field the typed object lacks fails the test).
func render(t *testing.T, values string) rendered {
	t.Helper()
	chrt, err := loader.Load("tokenbroker")
	if err != nil {
		t.Fatal(err)
	}
	var overrides map[string]any
	if err := yaml.Unmarshal([]byte(values), &overrides); err != nil {
		t.Fatal(err)
	}
	vals, err := util.ToRenderValues(chrt, overrides, common.ReleaseOptions{Name: "tb", Namespace: "auth", IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") {
			r.notes = files[n]
			continue
		}
		for _, doc := range strings.Split(files[n], "\n---") {
			if strings.TrimSpace(doc) == "" || strings.TrimSpace(doc) == "---" {
				continue
			}
			var head struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v\n%s", n, err, doc)
			}
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "apps/v1 Deployment":
				r.deployment = &appsv1.Deployment{}
				obj = r.deployment
			case "v1 ConfigMap":
				r.configMap = &corev1.ConfigMap{}
				obj = r.configMap
			case "v1 Service":
				r.service = &corev1.Service{}
				obj = r.service
			case "v1 ServiceAccount":
				r.serviceAccount = &corev1.ServiceAccount{}
				obj = r.serviceAccount
			case "policy/v1 PodDisruptionBudget":
				r.pdb = &policyv1.PodDisruptionBudget{}
				obj = r.pdb
			case "networking.k8s.io/v1 NetworkPolicy":
				r.networkPolicy = &networkingv1.NetworkPolicy{}
				obj = r.networkPolicy
			case "monitoring.coreos.com/v1 ServiceMonitor":
				r.serviceMonitor = &monitoringv1.ServiceMonitor{}
				obj = r.serviceMonitor
			default:
				t.Fatalf("%s: unexpected object %s %s", n, head.APIVersion, head.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s: strict decoding into %T: %v\n%s", n, obj, err, doc)
			}
		}
	}
	if r.deployment == nil || r.configMap == nil || r.service == nil || r.serviceAccount == nil {
		t.Fatalf("missing objects: %+v", r)
	}
	return r
}

// checkPod checks the pod's security settings, probes, resources and
// Secret volumes, and that every volume mount has its volume.
func checkPod(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", psc)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the broker's own service-account token is mounted; it needs no API access")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container security context %+v", sc)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.GRPC == nil || p.GRPC.Port != 7443 {
			t.Errorf("%s probe %+v, want the gRPC health service on 7443", name, p)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400) {
			t.Errorf("secret volume %s: defaultMode %v, want 0400", v.Name, v.Secret.DefaultMode)
		}
	}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s has no volume", m.Name)
		}
	}
}

// checkConfig runs the rendered broker configuration through the
// broker's own loading and validation, as tokenbroker -check does
// (the Secrets' files, absent here, are not read).
func checkConfig(t *testing.T, cm *corev1.ConfigMap) config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("rendered configuration: %v\n%s", err, cm.Data["config.yaml"])
	}
	return cfg
}

// TestChartDefaults renders the default values: one replica, every
// security setting, gRPC probes, Service ports, a PodDisruptionBudget,
// no NetworkPolicy or ServiceMonitor, a configuration the broker accepts,
// no secret value anywhere, and the projected-token snippet in NOTES.txt.
func TestChartDefaults(t *testing.T) {
	r := render(t, "")
	checkPod(t, r.deployment)
	if *r.deployment.Spec.Replicas != 1 || r.deployment.Spec.Template.Spec.Affinity != nil {
		t.Errorf("replicas %d, affinity %+v", *r.deployment.Spec.Replicas, r.deployment.Spec.Template.Spec.Affinity)
	}
	ports := map[string]int32{}
	for _, p := range r.service.Spec.Ports {
		ports[p.Name] = p.Port
	}
	if ports["grpc"] != 7443 || ports["http"] != 7080 || ports["metrics"] != 9090 {
		t.Errorf("service ports %v", ports)
	}
	if r.pdb == nil || r.networkPolicy != nil || r.serviceMonitor != nil {
		t.Errorf("pdb %v, network policy %v, service monitor %v", r.pdb != nil, r.networkPolicy != nil, r.serviceMonitor != nil)
	}
	cfg := checkConfig(t, r.configMap)
	if cfg.Listen != ":7443" || cfg.HTTPListen != ":7080" || len(cfg.Shared.Redis.Addrs) != 0 {
		t.Errorf("listen %q, http_listen %q, redis %v", cfg.Listen, cfg.HTTPListen, cfg.Shared.Redis.Addrs)
	}
	for _, want := range []string{"audience: tokenbroker", "path: tokenbroker", "mountPath: /var/run/secrets/tokens"} {
		if !strings.Contains(r.notes, want) {
			t.Errorf("NOTES.txt lacks %q", want)
		}
	}
	values, err := os.ReadFile("tokenbroker/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(values), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.HasPrefix(k, "#") || strings.TrimSpace(v) == "" || strings.TrimSpace(v) == `""` {
			continue
		}
		if strings.Contains(k, "password") || k == "client_secret" || strings.Contains(k, "private_key") || k == "sha256" {
			t.Errorf("values.yaml holds a secret value: %s", line)
		}
	}
}

// TestChartRedisReplicas renders three replicas sharing a Redis tier:
// sealing, HMAC and Redis password files from Secrets (mounted 0400, the
// configuration pointing at them), hard pod anti-affinity, the
// NetworkPolicy and the ServiceMonitor; the configuration is accepted.
func TestChartRedisReplicas(t *testing.T) {
	r := render(t, `
replicaCount: 3
antiAffinity: hard
redis:
  enabled: true
  addrs: ["redis.auth.svc:6379"]
  existingSecret: tokenbroker-redis
sealing:
  existingSecret: tokenbroker-sealing
hmacKey:
  existingSecret: tokenbroker-hmac
networkPolicy:
  enabled: true
  allowedNamespaceLabels:
    tokenbroker-client: "true"
  egress:
    - to:
        - ipBlock:
            cidr: 0.0.0.0/0
      ports:
        - port: 443
          protocol: TCP
serviceMonitor:
  enabled: true
`)
	checkPod(t, r.deployment)
	spec := r.deployment.Spec.Template.Spec
	if *r.deployment.Spec.Replicas != 3 || spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil ||
		len(spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Errorf("replicas %d, affinity %+v", *r.deployment.Spec.Replicas, spec.Affinity)
	}
	cfg := checkConfig(t, r.configMap)
	red := cfg.Shared.Redis
	if len(red.Addrs) != 1 || red.PasswordFile != "/etc/tokenbroker/redis/password" ||
		cfg.Sealing.KeysFile != "/etc/tokenbroker/sealing/keys" || cfg.Cache.HMACKeyFile != "/etc/tokenbroker/hmac/hmac-key" {
		t.Errorf("redis %+v, sealing %q, hmac %q", red, cfg.Sealing.KeysFile, cfg.Cache.HMACKeyFile)
	}
	secrets := map[string]string{}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	for vol, name := range map[string]string{"redis": "tokenbroker-redis", "sealing": "tokenbroker-sealing", "hmac": "tokenbroker-hmac", "secret-clients": "tokenbroker-clients"} {
		if secrets[vol] != name {
			t.Errorf("volume %s: secret %q, want %q", vol, secrets[vol], name)
		}
	}
	if r.networkPolicy == nil || r.serviceMonitor == nil || len(r.serviceMonitor.Spec.Endpoints) != 1 ||
		r.serviceMonitor.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("network policy %v, service monitor %+v", r.networkPolicy != nil, r.serviceMonitor)
	}
}

// TestChartRefusesReplicasWithoutRedis: several replicas without a shared
// tier, or a tier without shared keys, fail at render time.
func TestChartRefusesReplicasWithoutRedis(t *testing.T) {
	chrt, err := loader.Load("tokenbroker")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []map[string]any{
		{"replicaCount": 2},
		{"redis": map[string]any{"enabled": true, "addrs": []any{"r:6379"}}},
	} {
		vals, err := util.ToRenderValues(chrt, v, common.ReleaseOptions{Name: "tb", Namespace: "auth"}, common.DefaultCapabilities)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := engine.Render(chrt, vals); err == nil || !bytes.Contains([]byte(err.Error()), []byte("needs")) {
			t.Errorf("values %v rendered (%v)", v, err)
		}
	}
}
