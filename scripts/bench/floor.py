"""The floor of the benchmark: how long NetBox takes to accept the guests' objects (VMs,
interfaces, MAC addresses, virtual disks, IP addresses) from the simplest possible client
(no reads, no diff), with the operator's batch size and number of requests in flight.

    python floor.py EXPECTED_JSON NETBOX_URL TOKEN RUN_ID [--same-objects] [--marks M] [--mac-at-create]

Without --same-objects: bare bulk creates with the fewest fields NetBox accepts.
With --same-objects: the same objects the operator ends up with: its ownership mark (the
owner custom field on VMs and their children; VMs' other custom fields), and the bulk
PATCH passes NetBox's API requires for references that cannot be given at creation (a VM's
primary IPs; an interface's primary MAC unless --mac-at-create). Needs the operator's tag
and custom fields to exist (run after a sync).

What each part costs (docs/benchmarks.md, "What the first sync costs"):
--marks none|cf|tag|both   which ownership marks go on every object; `operator`: the
                           operator's marks on guests' objects, the custom field (builds
                           of 2026-12-03 also put the tag on VMs) (default: operator
                           with --same-objects, none without)
--mac-at-create            MAC addresses created first, unassigned, and given to the
                           interface as its primary MAC in the interface's create (NetBox
                           assigns it), instead of the primary MAC PATCH pass

Prints JSON: total seconds, object count, and seconds per step.
"""
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

# The operator's batch size and requests in flight (`SyncSettings::batch_size` in
# src/pipeline/live.rs, `spec.netbox.maxInFlight` default 4).
BATCH = 50
IN_FLIGHT = 4


def call(url, token, method, path, body=None):
    req = urllib.request.Request(url + '/api/' + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json',
                                          'Accept': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read() or b'null')
    except urllib.error.HTTPError as e:
        raise SystemExit('{0} {1}: {2} {3}'.format(method, path, e.code, e.read()[:2000].decode(errors='replace')))


def bulk(url, token, method, path, objects, group=None):
    """Batches of BATCH objects, IN_FLIGHT at a time. Objects with the same group (a VM's
    virtual disks) stay in one batch: NetBox recomputes the VM's disk total on each disk
    save, and two batches in flight for one VM leave a wrong total behind."""
    batches = []
    for o in objects:
        same = group and batches and group(batches[-1][-1]) == group(o)
        if batches and (len(batches[-1]) < BATCH or same):
            batches[-1].append(o)
        else:
            batches.append([o])
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        results = list(pool.map(lambda b: call(url, token, method, path, b), batches))
    return [o for r in results for o in r]


def main():
    expected, url, token, run = sys.argv[1:5]
    args = sys.argv[5:]
    same = '--same-objects' in args
    marks_kind = args[args.index('--marks') + 1] if '--marks' in args else ('operator' if same else 'none')
    mac_at_create = '--mac-at-create' in args
    inv = json.load(open(expected))
    guests = [g for g in inv['guests'] if not g['template']]
    prefix = 'floor-{0}-{1}{2}-{3}'.format('same' if same else 'bare', marks_kind,
                                           '-macfirst' if mac_at_create else '', run)
    ctype = call(url, token, 'POST', 'virtualization/cluster-types/', {'name': prefix, 'slug': prefix})
    cluster = call(url, token, 'POST', 'virtualization/clusters/', {'name': prefix, 'type': ctype['id']})

    def marks(**cf):
        """The ownership marks chosen by --marks (`cf`: a VM's other custom fields)."""
        out = {}
        if marks_kind in ('tag', 'both'):
            out['tags'] = [owner_tag]
        if marks_kind in ('cf', 'both', 'operator'):
            out['custom_fields'] = dict({'proxmox_owner': 'floor/' + prefix}, **cf)
        return out

    if marks_kind in ('tag', 'both'):
        owner_tag = call(url, token, 'GET', 'extras/tags/?slug=proxmox-netbox-operator')['results'][0]['id']
    steps = {}
    started = time.time()

    def step(name, method, path, objects, group=None):
        t = time.time()
        out = bulk(url, token, method, path, objects, group) if objects else []
        steps[name] = round(time.time() - t, 1)
        return out

    vms = step('vms', 'POST', 'virtualization/virtual-machines/',
               [dict({'name': g['name'], 'cluster': cluster['id'], 'status': 'active'},
                     **marks(proxmox_vmid=g['vmid'], proxmox_guest_type=g['type'])) for g in guests])
    ids = dict((g['vmid'], vm['id']) for g, vm in zip(guests, vms))
    nic_keys = [(g['vmid'], n) for g in guests for n in g['nics']]
    if mac_at_create:
        macs = step('mac addresses (unassigned)', 'POST', 'dcim/mac-addresses/',
                    [dict({'mac_address': n['mac']}, **marks()) for _, n in nic_keys if n['mac']])
        mac_ids = iter(m['id'] for m in macs)
        ifaces = step('vm interfaces (with primary mac)', 'POST', 'virtualization/interfaces/',
                      [dict({'virtual_machine': ids[vmid], 'name': n['slot']},
                            **dict(marks(), **({'primary_mac_address': next(mac_ids)} if n['mac'] else {})))
                       for vmid, n in nic_keys])
    else:
        ifaces = step('vm interfaces', 'POST', 'virtualization/interfaces/',
                      [dict({'virtual_machine': ids[vmid], 'name': n['slot']}, **marks()) for vmid, n in nic_keys])
        with_mac = [(n, i) for (_, n), i in zip(nic_keys, ifaces) if n['mac']]
        macs = step('mac addresses', 'POST', 'dcim/mac-addresses/',
                    [dict({'mac_address': n['mac'], 'assigned_object_type': 'virtualization.vminterface',
                           'assigned_object_id': i['id']}, **marks()) for n, i in with_mac])
        if same:
            step('primary mac (PATCH)', 'PATCH', 'virtualization/interfaces/',
                 [{'id': i['id'], 'primary_mac_address': m['id']} for (_, i), m in zip(with_mac, macs)])
    disks = [dict({'virtual_machine': ids[g['vmid']], 'name': d['slot'],
                   'size': max(1, (d['sizeBytes'] or 0) // 1048576)}, **marks())
             for g in guests for d in g['disks']]
    step('virtual disks', 'POST', 'virtualization/virtual-disks/', disks, group=lambda d: d['virtual_machine'])
    first_iface = {}
    for (vmid, _), i in zip(nic_keys, ifaces):
        first_iface.setdefault(vmid, i['id'])
    ip_keys = [(g['vmid'], a) for g in guests for a in g.get('addresses', []) if g['vmid'] in first_iface]
    ips = step('ip addresses', 'POST', 'ipam/ip-addresses/',
               [dict({'address': a, 'assigned_object_type': 'virtualization.vminterface',
                      'assigned_object_id': first_iface[vmid]}, **marks()) for vmid, a in ip_keys])
    if same:
        primary = {}
        for (vmid, a), ip in zip(ip_keys, ips):
            primary.setdefault(vmid, {}).setdefault('primary_ip6' if ':' in a else 'primary_ip4', ip['id'])
        step('primary ips (PATCH)', 'PATCH', 'virtualization/virtual-machines/',
             [dict({'id': ids[vmid]}, **p) for vmid, p in primary.items()])
    elapsed = time.time() - started
    objects = len(vms) + len(ifaces) + len(macs) + len(disks) + len(ips)
    print(json.dumps({'seconds': round(elapsed, 1), 'objects': objects, 'steps': steps}))


if __name__ == '__main__':
    main()
