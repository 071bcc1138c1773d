// Validates Argo CD, Flux, External Secrets and Prometheus Operator objects offline against
// the schemas of the @kubernetes-models/* packages that scripts/tools.sh installs:
//   node scripts/packaging/validate-crs.mjs FILE.yaml...
// Every document must be of a known group (an unknown kind fails); `new Cls(doc).validate()`
// throws on a schema error. Exits non-zero naming each invalid object.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules =
  process.env.PNBO_NODE_MODULES ||
  join(process.env.PNBO_CACHE_DIR || "/var/cache/proxmox-netbox-operator", "tools/node/node_modules");
const packages = [
  [/^argoproj\.io$/, "@kubernetes-models/argo-cd"],
  [/^[a-z]+\.toolkit\.fluxcd\.io$/, "@kubernetes-models/flux-cd"],
  [/^(generators\.)?external-secrets\.io$/, "@kubernetes-models/external-secrets"],
  [/^monitoring\.coreos\.com$/, "@kubernetes-models/prometheus-operator"],
];
const { parseAllDocuments } = await import(pathToFileURL(join(modules, "yaml/dist/index.js")));

let failed = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const d of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (d.errors.length) {
      console.error(`${file}: YAML error: ${d.errors[0].message}`);
      failed++;
      continue;
    }
    const doc = d.toJS();
    if (doc == null) continue;
    const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    const [group, version] = String(doc.apiVersion).split("/");
    const pkg = packages.find(([re]) => re.test(group))?.[1];
    if (!pkg || !version) {
      console.error(`${where}: no schema for apiVersion ${doc.apiVersion}`);
      failed++;
      continue;
    }
    // The compiled schemas allow unknown fields; at least the top level must be exact.
    const extra = Object.keys(doc).filter((k) => !["apiVersion", "kind", "metadata", "spec"].includes(k));
    if (extra.length) {
      console.error(`${where}: unknown top-level field(s) ${extra.join(", ")}`);
      failed++;
      continue;
    }
    let Cls;
    try {
      Cls = (await import(pathToFileURL(join(modules, pkg, group, version, `${doc.kind}.js`))))[doc.kind];
    } catch (e) {
      console.error(`${where}: no schema for ${doc.apiVersion} ${doc.kind} in ${pkg}`);
      failed++;
      continue;
    }
    try {
      new Cls(doc).validate();
      checked++;
    } catch (e) {
      console.error(`${where}: INVALID: ${e.message}`);
      failed++;
    }
  }
}
if (failed) {
  console.error(`${failed} invalid object(s)`);
  process.exit(1);
}
if (!checked) {
  console.error("no object checked");
  process.exit(1);
}
console.log(`  ok  ${checked} Argo CD / Flux / External Secrets / Prometheus Operator objects valid`);
