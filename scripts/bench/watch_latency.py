"""Watch NetBox while changes.py changes PVE: how long each change takes to show in NetBox,
then whether NetBox matches PVE once the changes are over.

    python watch_latency.py --netbox-url URL --netbox-token-file F --cluster NAME \
        --pve-env STATE_DIR/env.json --progress changes.jsonl --done changes.json --out latency.json

It reads the records changes.py appends to --progress (one JSON line per change, with `at`,
the unix time the change finished in PVE, and `expect`, what NetBox should show), and polls
NetBox for the VM of each pending change (by its `proxmox_vmid` custom field, in the NetBox
cluster --cluster) every --every seconds until it matches. A change's latency is the time
from `at` to the first poll that found it (so it is late by at most --every). It stops when
--done exists (changes.py wrote its output) and every change was seen, or failed after
--timeout seconds.

Then it compares NetBox with PVE's /cluster/resources (guests that are not templates): the
same vmids, and for each its node (the VM's device), status and memory. Output (--out): the
per-change records with `latency`, the summary (p50, p95, max per kind and overall, changes
not seen) and the differences. Exit status 1 when a change was not seen or NetBox differs.
Python 3 standard library only.
"""

import argparse
import json
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request

MIB = 1024 * 1024
STATUS = {'running': 'active', 'stopped': 'offline', 'paused': 'paused'}


class NetBox(object):
    def __init__(self, url, token, cluster):
        self.url = url.rstrip('/')
        self.token = token
        self.cluster = cluster
        self.requests = 0

    def get(self, path, params):
        query = urllib.parse.urlencode(params)
        req = urllib.request.Request('{0}{1}?{2}'.format(self.url, path, query))
        req.add_header('Authorization', 'Bearer ' + self.token if self.token.startswith('nbt_')
                       else 'Token ' + self.token)
        req.add_header('Accept', 'application/json')
        self.requests += 1
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def vms(self, **params):
        """The cluster's VMs matching `params`, every page."""
        out, offset = [], 0
        while True:
            page = self.get('/api/virtualization/virtual-machines/',
                            dict(params, cluster=self.cluster, limit=1000, offset=offset))
            out.extend(page['results'])
            offset += len(page['results'])
            if not page.get('next') or not page['results']:
                return out

    def vm(self, vmid):
        found = self.vms(cf_proxmox_vmid=vmid)
        return found[0] if found else None


def device_name(vm):
    return (vm.get('device') or {}).get('name')


def matches(vm, expect):
    """Whether NetBox's `vm` (or None) shows everything in `expect`."""
    if expect.get('exists') is False:
        return vm is None
    if vm is None:
        return False
    checks = {
        'name': lambda v: vm['name'] == v,
        'node': lambda v: device_name(vm) == v,
        'status': lambda v: vm['status']['value'] == v,
        'memory_mib': lambda v: vm['memory'] == v,
        'vcpus': lambda v: vm['vcpus'] is not None and float(vm['vcpus']) == float(v),
    }
    return all(check(expect[k]) for k, check in checks.items() if k in expect)


def percentile(values, p):
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return None
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def summary(records):
    out = {}
    kinds = sorted(set(r['kind'] for r in records))
    for kind in kinds + ['all']:
        rs = [r for r in records if kind in ('all', r['kind'])]
        seen = sorted(r['latency'] for r in rs if r.get('latency') is not None)
        out[kind] = {
            'count': len(rs), 'seen': len(seen),
            'p50': percentile(seen, 50), 'p95': percentile(seen, 95), 'max': seen[-1] if seen else None,
        }
    return out


def pve_guests(env):
    ctx = ssl.create_default_context(cafile=env['PVE_CA_FILE'])
    req = urllib.request.Request(env['PVE_URL'].rstrip('/') + '/api2/json/cluster/resources?type=vm')
    req.add_header('Authorization', 'PVEAPIToken={0}={1}'.format(env['PVE_TOKEN_ID'], env['PVE_TOKEN_SECRET']))
    with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
        data = json.load(r)['data']
    return dict((g['vmid'], g) for g in data if g.get('type') in ('qemu', 'lxc') and not g.get('template'))


def differences(netbox, env):
    """What NetBox shows differently from PVE, as a list of strings."""
    guests = pve_guests(env)
    vms = {}
    for vm in netbox.vms():
        vmid = (vm.get('custom_fields') or {}).get('proxmox_vmid')
        if vmid is not None:
            vms[vmid] = vm
    diffs = []
    for vmid in sorted(set(guests) - set(vms)):
        diffs.append('{0}: in PVE, not in NetBox'.format(vmid))
    for vmid in sorted(set(vms) - set(guests)):
        diffs.append('{0}: in NetBox, not in PVE'.format(vmid))
    for vmid in sorted(set(guests) & set(vms)):
        g, vm = guests[vmid], vms[vmid]
        want = {'node': g['node'], 'status': STATUS.get(g.get('status'), g.get('status')),
                'memory_mib': g.get('maxmem', 0) // MIB}
        if not matches(vm, want):
            diffs.append('{0}: PVE {1}, NetBox node {2} status {3} memory {4}'.format(
                vmid, json.dumps(want, sort_keys=True), device_name(vm), vm['status']['value'], vm['memory']))
    return diffs, len(guests)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--netbox-url', required=True)
    ap.add_argument('--netbox-token-file', required=True)
    ap.add_argument('--cluster', required=True, help='the NetBox cluster name')
    ap.add_argument('--pve-env', required=True, help="fakepve's env.json")
    ap.add_argument('--progress', required=True, help="changes.py's --progress file")
    ap.add_argument('--done', required=True, help="changes.py's --out: the run is over when it exists")
    ap.add_argument('--out', required=True)
    ap.add_argument('--every', type=float, default=0.5, help='seconds between two looks at a pending change')
    ap.add_argument('--timeout', type=float, default=120, help='seconds a change may take to show in NetBox')
    args = ap.parse_args()
    with open(args.netbox_token_file) as f:
        netbox = NetBox(args.netbox_url, f.read().strip(), args.cluster)
    with open(args.pve_env) as f:
        env = json.load(f)

    records, pending, read = [], [], 0
    while True:
        if os.path.exists(args.progress):
            with open(args.progress) as f:
                lines = f.read().splitlines()
            for line in lines[read:]:
                rec = json.loads(line)
                records.append(rec)
                pending.append(rec)
            read = len(lines)
        now = time.time()
        for rec in list(pending):
            if matches(netbox.vm(rec['vmid']), rec['expect']):
                rec['latency'] = round(time.time() - rec['at'], 3)
                pending.remove(rec)
                print('{0:>4} {1:<8} {2:>6} in NetBox after {3:6.2f}s'.format(
                    rec['n'], rec['kind'], rec['vmid'], rec['latency']), file=sys.stderr, flush=True)
            elif now - rec['at'] > args.timeout:
                rec['latency'] = None
                pending.remove(rec)
                print('{0:>4} {1:<8} {2:>6} NOT in NetBox after {3:g}s: expected {4}, NetBox has {5}'.format(
                    rec['n'], rec['kind'], rec['vmid'], args.timeout, json.dumps(rec['expect']),
                    json.dumps(netbox.vm(rec['vmid']))), file=sys.stderr, flush=True)
        if not pending and os.path.exists(args.done):
            break
        time.sleep(args.every)

    diffs, guests = differences(netbox, env)
    result = {'summary': summary(records), 'differences': diffs, 'guests': guests, 'changes': records}
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print('{0:<8} {1:>5} {2:>5} {3:>7} {4:>7} {5:>7}'.format('kind', 'count', 'seen', 'p50 s', 'p95 s', 'max s'),
          file=sys.stderr)
    for kind, s in result['summary'].items():
        fmt = lambda v: '{0:7.2f}'.format(v) if v is not None else '      -'
        print('{0:<8} {1:>5} {2:>5} {3} {4} {5}'.format(kind, s['count'], s['seen'], fmt(s['p50']), fmt(s['p95']),
                                                         fmt(s['max'])), file=sys.stderr)
    print('NetBox against PVE after the last change: {0} guests, {1} difference(s)'.format(guests, len(diffs)),
          file=sys.stderr)
    for d in diffs[:20]:
        print('  ' + d, file=sys.stderr)
    unseen = [r for r in records if r.get('latency') is None]
    sys.exit(1 if unseen or diffs else 0)


if __name__ == '__main__':
    main()
