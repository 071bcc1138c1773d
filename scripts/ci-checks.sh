#!/usr/bin/env bash
# Packaging checks (called by scripts/test.sh): Helm chart lint and render with default and
# non-default values, rejection of bad values (each by its message), offline validation of
# every rendered object, of deploy/ and of the examples, deploy/ equal to the chart's default
# rendering (scripts/packaging/gen-deploy.sh), chart CRDs equal to crds/, the GitOps objects
# and the chart's ServiceMonitor/PrometheusRule against their real schemas, and the Argo CD
# health check on sample objects.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PATH="$(bash scripts/tools.sh):$PATH"
CHART=charts/proxmox-netbox-operator
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
ok() { printf '  ok  %s\n' "$*"; }

helm lint --strict "$CHART" >/dev/null && ok "helm lint --strict"
helm template pno "$CHART" --namespace pno > "$OUT/default.yaml" && ok "helm template (defaults)"
helm template pno "$CHART" --namespace pno -f tests/chart/full-values.yaml > "$OUT/full.yaml" && ok "helm template (non-default values)"
if helm template pno "$CHART" -f tests/chart/bad-values.yaml > /dev/null 2>"$OUT/bad.err"; then
  echo "bad values were accepted" >&2; exit 1
fi
grep -q "replicas" "$OUT/bad.err" && grep -q "logFormat" "$OUT/bad.err" && grep -q "pullPolicy" "$OUT/bad.err" && ok "values.schema.json rejects bad values"
# reject WHAT MESSAGE-REGEX HELM-ARGS...: the chart must refuse these values with that message.
reject() {
  local what="$1" want="$2"; shift 2
  if helm template pno "$CHART" "$@" > /dev/null 2>"$OUT/reject.err"; then
    echo "accepted bad values ($what): $*" >&2; exit 1
  fi
  grep -qE -- "$want" "$OUT/reject.err" || {
    echo "bad values ($what) rejected, but not with the message /$want/:" >&2; cat "$OUT/reject.err" >&2; exit 1; }
}
reject "replicas > 1 without leader election" "replicas > 1 needs leaderElection.enabled=true" \
  --set replicas=2 --set leaderElection.enabled=false
reject "memory limit not a quantity" "at '/resources/limits/memory'" --set resources.limits.memory=lots
reject "misspelt resource name" "at '/resources/limits': additional properties 'memroy'" --set resources.limits.memroy=1Gi
reject "negative cpu request" "at '/resources/requests/cpu'" --set resources.requests.cpu=-1
reject "cpu request as an object" "at '/resources/requests/cpu'" --set resources.requests.cpu.value=1
reject "unknown resources key" "at '/resources': additional properties 'request'" --set resources.request.cpu=1
reject "egress CIDR without prefix" "at '/networkPolicy/egressCidrs/0'" --set 'networkPolicy.egressCidrs={10.0.0.0}'
reject "egress CIDR with a bad octet" "at '/networkPolicy/egressCidrs/1'" --set 'networkPolicy.egressCidrs={10.0.0.0/8,300.1.0.0/16}'
reject "egress CIDR with a bad prefix" "at '/networkPolicy/egressCidrs/0'" --set 'networkPolicy.egressCidrs={10.0.0.0/33}'
reject "egress CIDR a hostname" "at '/networkPolicy/egressCidrs/0'" --set 'networkPolicy.egressCidrs={netbox.example.com}'
reject "PDB minAvailable == replicas" "podDisruptionBudget.minAvailable \(1\) must be lower than replicas \(1\)" \
  --set podDisruptionBudget.enabled=true
reject "PDB minAvailable > replicas" "podDisruptionBudget.minAvailable \(3\) must be lower than replicas \(2\)" \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=3 --set replicas=2
reject "ServiceMonitor without the metrics Service" "metrics.serviceMonitor.enabled needs metrics.service.enabled=true" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
ok "chart rejects bad values, each with its message (leader election, resources, egressCidrs, PDB, ServiceMonitor)"
kubectl kustomize deploy/ > "$OUT/deploy.yaml" && ok "kubectl kustomize deploy/"
# deploy/ is the chart's default rendering: regenerate and compare.
bash scripts/packaging/gen-deploy.sh "$OUT/deploy-gen"
if ! diff -r -x kustomization.yaml -x namespace.yaml "$OUT/deploy-gen" deploy/ > "$OUT/deploy.diff"; then
  cat "$OUT/deploy.diff" >&2
  echo "deploy/ is stale or hand-edited: it differs from the chart's default rendering; run scripts/packaging/gen-deploy.sh" >&2
  exit 1
fi
python3 - <<'PY'
import os, yaml
# Every file of deploy/ is in the kustomization (and so in `kubectl apply -k deploy/`).
res = yaml.safe_load(open('deploy/kustomization.yaml'))['resources']
files = sorted(f for f in os.listdir('deploy') if f.endswith('.yaml') and f != 'kustomization.yaml')
assert sorted(res) == files, ('deploy/kustomization.yaml resources differ from deploy/*.yaml', res, files)
PY
ok "deploy/ == scripts/packaging/gen-deploy.sh output (helm template, default values)"
cmp -s "$CHART/crds/crds.yaml" crds/crds.yaml || { echo "chart CRDs differ from crds/crds.yaml" >&2; exit 1; }
ok "chart CRDs == crds/crds.yaml"

python3 - "$OUT" <<'PY'
import json, re, subprocess, sys, yaml
out = sys.argv[1]
def docs(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]
def rules(ds):
    got = set()
    for d in ds:
        if d['kind'] in ('Role', 'ClusterRole'):
            for r in d['rules']:
                for g in r['apiGroups']:
                    for res in r['resources']:
                        for v in r['verbs']:
                            got.add((g, res, v))
    return got
chart, deploy = docs(out + '/default.yaml'), docs(out + '/deploy.yaml')
assert rules(chart) == rules(deploy), ('RBAC differs', rules(chart) ^ rules(deploy))
def pod(ds):
    d = [x for x in ds if x['kind'] == 'Deployment'][0]['spec']['template']['spec']
    c = d['containers'][0]
    return d['securityContext'], c['securityContext'], c['readinessProbe'], c['livenessProbe'], c['args'][0]
assert pod(chart) == pod(deploy), ('Deployment security or probes differ', pod(chart), pod(deploy))
# Every rendered object passes the Kubernetes 1.33 schemas (ServiceMonitor is a CRD: checked below).
for name in ('default', 'full', 'deploy'):
    plain = [d for d in docs(f'{out}/{name}.yaml') if d['kind'] not in ('ServiceMonitor', 'PrometheusRule', 'CustomResourceDefinition')]
    path = f'{out}/{name}-plain.yaml'
    yaml.safe_dump_all(plain, open(path, 'w'))
    subprocess.run(['kubernetes-validate', '--strict', '-k', '1.33.0', '--quiet', path], check=True)
    crds = [d for d in docs(f'{out}/{name}.yaml') if d['kind'] == 'CustomResourceDefinition']
    for c in crds:
        assert c['spec']['versions'][0]['schema']['openAPIV3Schema'], c['metadata']['name']
# Prometheus Operator objects of the chart, for the schema check below.
monitoring = [d for d in docs(out + '/full.yaml') if d['apiVersion'].startswith('monitoring.coreos.com/')]
assert sorted(d['kind'] for d in monitoring) == ['PrometheusRule', 'ServiceMonitor'], monitoring
yaml.safe_dump_all(monitoring, open(out + '/monitoring.yaml', 'w'))
sm = [d for d in docs(out + '/full.yaml') if d['kind'] == 'ServiceMonitor'][0]
assert sm['spec']['endpoints'][0]['port'] == 'metrics'
pr = [d for d in docs(out + '/full.yaml') if d['kind'] == 'PrometheusRule'][0]
alerts = {r['alert']: r['expr'] for r in pr['spec']['groups'][0]['rules']}
assert '7200' in alerts['ProxmoxNetBoxSyncStale'], alerts
assert 'reason="HostKeyMismatch"' in alerts['ProxmoxNetBoxHostKeyMismatch'], alerts
# The discovery warning codes the alerts name are the codes the operator emits.
codes = set(re.findall(r'pub const [A-Z_]+: &str = "(\w+)";', open('src/hardware/discovery.rs').read()))
named = set(re.findall(r'\w+', re.search(r'reason=~"([^"]+)"', alerts['ProxmoxNetBoxDiscoveryWarnings']).group(1)))
assert named | {'HostKeyMismatch'} == codes, ('discovery alert codes differ from src/hardware/discovery.rs', named, codes)
ops = open('docs/operations.md').read()
assert all(a in ops for a in alerts), 'every alert of the chart is documented in docs/operations.md'
# Every metric an alert or the Grafana dashboard uses is one the operator registers.
import re
import glob
registered = set()
for path in glob.glob('src/**/*.rs', recursive=True):
    text = open(path).read()
    if 'Registry' in text:
        registered |= set(re.findall(r'^\s*"([a-z_]+)",$', text.split('#[cfg(test)]')[0], re.M))
used = set()
dashboard = json.load(open('docs/grafana-dashboard.json'))
panel_exprs = [t['expr'] for p in dashboard['panels'] for t in p['targets']]
assert len(panel_exprs) >= 7, panel_exprs
for expr in list(alerts.values()) + panel_exprs:
    used |= {m.removeprefix('proxmox_netbox_') for m in re.findall(r'proxmox_netbox_[a-z_]+', expr)}
base = {u.removesuffix('_total').removesuffix('_bucket').removesuffix('_sum').removesuffix('_count') for u in used}
assert base <= registered, ('unknown metrics', base - registered, registered)
# Plain Secrets of the examples pass the Kubernetes schemas.
subprocess.run(['kubernetes-validate', '--strict', '-k', '1.33.0', '--quiet', 'examples/secrets.yaml'], check=True)
# Examples against the CRD schemas.
schemas = {}
for c in docs('crds/crds.yaml'):
    schemas[c['spec']['names']['kind']] = c['spec']['versions'][0]['schema']['openAPIV3Schema']
import jsonschema
for path in ('examples/proxmoxcluster.yaml', 'examples/nodesshcredential.yaml'):
    for d in docs(path):
        s = dict(schemas[d['kind']])
        jsonschema.validate(d, s)
print('  ok  chart RBAC and Deployment == deploy/, all objects valid for Kubernetes 1.33, examples valid for the CRDs')
PY

# GitOps objects and the chart's ServiceMonitor/PrometheusRule against the schemas of the
# Argo CD, Flux, External Secrets and Prometheus Operator models (npm @kubernetes-models/*).
node scripts/packaging/validate-crs.mjs docs/gitops/*.yaml "$OUT/monitoring.yaml"
python3 - <<'PY'
import glob, yaml
ds = {f: [d for d in yaml.safe_load_all(open(f)) if d] for f in sorted(glob.glob('docs/gitops/*.yaml'))}
kinds = [d['kind'] for f in ds for d in ds[f]]
for k, n in (('Application', 2), ('HelmRepository', 1), ('HelmRelease', 1), ('GitRepository', 1), ('Kustomization', 1)):
    assert kinds.count(k) >= n, (k, kinds)
assert 'Secret' not in kinds, 'no plaintext Secret in GitOps examples'
# Flux: every sourceRef names an object defined in the same file (namespace defaults to the referrer's).
flux = ds['docs/gitops/flux.yaml']
defined = {(d['kind'], d['metadata']['name'], d['metadata'].get('namespace')) for d in flux}
for d in flux:
    spec = d['spec']
    refs = [spec['sourceRef']] if 'sourceRef' in spec else []
    if d['kind'] == 'HelmRelease':
        refs.append(spec['chart']['spec']['sourceRef'])
        assert refs[-1]['kind'] == 'HelmRepository', 'the HelmRelease installs from a HelmRepository'
        chart = yaml.safe_load(open('charts/proxmox-netbox-operator/Chart.yaml'))
        assert spec['chart']['spec']['chart'] == chart['name'], spec['chart']
        assert str(spec['chart']['spec']['version']) == chart['version'], ('HelmRelease chart version', chart['version'])
    for r in refs:
        key = (r['kind'], r['name'], r.get('namespace', d['metadata'].get('namespace')))
        assert key in defined, f"flux.yaml: {d['kind']}/{d['metadata']['name']} references {key}, not defined in the file"
print('  ok  GitOps examples complete and self-consistent (every Flux sourceRef defined, no plaintext Secret)')
PY
if command -v lua5.4 >/dev/null; then
  lua5.4 - <<'LUA'
local f = assert(io.open("docs/gitops/argocd-health.lua")); local src = f:read("a"); f:close()
local function health(o) obj = o; return load(src)() end
local function cond(s, r) return {metadata = {generation = 2}, status = {observedGeneration = 2, conditions = {{type = "Ready", status = s, reason = r, message = "m"}}}} end
assert(health(cond("True", "Synced")).status == "Healthy")
assert(health(cond("False", "Suspended")).status == "Suspended")
assert(health(cond("False", "PartialRead")).status == "Degraded")
assert(health({metadata = {generation = 3}, status = {observedGeneration = 2, conditions = {}}}).status == "Progressing")
assert(health({metadata = {generation = 1}}).status == "Progressing")
-- A condition without reason (or message) must not make the script fail.
local function bare(s) return {metadata = {generation = 1}, status = {observedGeneration = 1, conditions = {{type = "Ready", status = s}}}} end
local h = health(bare("False")); assert(h.status == "Degraded" and h.message == "Ready=False", h.message)
h = health(bare("True")); assert(h.status == "Healthy" and h.message == "Ready=True", h.message)
assert(health(bare("Unknown")).status == "Progressing")
assert(health(cond("False", nil)).message == "Ready=False: m")
assert(health({status = {observedGeneration = 1, conditions = {}}}).status == "Progressing")
print("  ok  Argo CD health check: Healthy, Suspended, Degraded, Progressing, conditions without reason")
LUA
else
  echo "lua5.4 missing: install it (apt-get install lua5.4)" >&2; exit 1
fi
# Relative links in the README and docs/ point at files that exist.
python3 - <<'PY'
import pathlib, re
bad = []
for md in [pathlib.Path('README.md'), *pathlib.Path('docs').rglob('*.md')]:
    # Code (a pattern such as `^[a-z]([a-z.-]*[a-z])?$`) holds no links.
    text = re.sub(r'`[^`\n]*`', '', md.read_text())
    for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
        if '://' not in target and not (md.parent / target).exists():
            bad.append(f'{md}: {target}')
assert not bad, bad
print('  ok  relative links in README.md and docs/ resolve')
PY
echo "packaging checks passed"
