"""Serve the third-party fake Proxmox VE API (PyPI `fakepve`) seeded from a topology file.

    python serve.py --topology tests/topologies/demo.json --state-dir DIR [--port N]
    python serve.py --generate nodes=3,guests=1000,seed=7[,name=CLUSTER][,octet=K] --state-dir DIR

fakepve answers every path of the PVE 9 schema; where it only has placeholders for what the
operator reads (node status, node network, disks, storage usage, guest-agent and LXC
addresses, cluster node addresses, Ceph pools and OSDs), this launcher answers with the
seeded data in the shapes real PVE uses (see shared/fixtures/pve). Faults from the topology:
offline nodes (595 "No route to host", online=0), guests without a running agent (500),
paths answering 403, the token's privileges, Ceph absent (500) or present, and any
fakepve `fail()` rule (`faults.fail`, or `--fail`).

Writes: fakepve models clone, config, start/shutdown/stop and destroy of QEMU guests with
tasks; this launcher adds QEMU `PUT .../resize` (fakepve leaves it a no-op), checks the
privileges of a `POST .../config` before its task as PVE does (fakepve: inside it), and seeds per
guest `protection`, `lock`, `start_secs`, `shutdown_secs`, `stop_secs`, `start_error` and
`acpi` (QEMU only). `--time-scale F` turns PVE seconds into F real seconds (0, the default:
every task has finished before its request answers); `--ceph-slow S` makes every operation on
RBD storage take S PVE seconds more (a slow clone, listed with lock `clone` until it ends).

Tokens: `PVE_TOKEN_ID` (the topology's `token_id`, default netbox-sync@pve!operator) holds
the read privileges (or `--privileges`); `PVE_PROVISION_TOKEN_ID` (netbox-sync@pve!provision)
holds them plus the provisioning privileges. Users for ticket authentication:
`PVE_USERNAME` (netbox-sync@pve, read privileges) and `PVE_PROVISION_USERNAME`
(netbox-provision@pve, the provisioning token's privileges). All on `/`.

Writes to the state dir: ca.crt (verify TLS with it), env.json (url, tokens, users, ca file,
expected file, pid) and expected.json (the seeded inventory, for tests to compare with).
Listens on 127.0.0.1 only. Runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import sys

from fakepve import FakePve
from fakepve.certs import make_cert
from fakepve.lxc import SIZE_UNITS, format_size, parse_size as parse_volume_size
from fakepve.model import PveError, TaskError
from fakepve.qemu import is_cdrom, join_drive, split_drive, volume_ref
from fakepve.routing import param_error
from fakepve.server import GENERIC, USER, ok, error, params

GIB = 1024 ** 3
API = '/api2/json'
READ_PRIVILEGES = ['Sys.Audit', 'VM.Audit', 'Datastore.Audit', 'VM.GuestAgent.Audit', 'VM.Monitor']
# What provisioning needs (src/pve/permissions.rs PROVISIONING_PRIVILEGES), plus what this fake
# also wants: VM.Config.HWType for the cloud-init keys (real PVE takes VM.Config.Cloudinit), and
# SDN.Use, which PVE 8+ checks on bridges (this fake does not).
PROVISION_PRIVILEGES = ['VM.Allocate', 'VM.Clone', 'VM.Config.CPU', 'VM.Config.Memory', 'VM.Config.Disk',
                        'VM.Config.Network', 'VM.Config.Cloudinit', 'VM.Config.Options', 'VM.PowerMgmt',
                        'Datastore.AllocateSpace', 'VM.Config.HWType', 'SDN.Use']
PROVISION_TOKEN_ID = 'netbox-sync@pve!provision'
PROVISION_USER = 'netbox-provision@pve'
# Guest keys of a topology besides the config: the fake's runtime behaviour of the guest.
GUEST_RUNTIME = ('start_secs', 'shutdown_secs', 'stop_secs', 'start_error', 'acpi')
RESIZE = '/nodes/{node}/qemu/{vmid}/resize'
# PVE's size string of a resize: +N (grow by) or N (new size), in bytes unless K, M, G or T follows.
RESIZE_SIZE = re.compile(r'^(\+)?(\d+(?:\.\d+)?)([KMGT])?$')


def mac(rng):
    """A MAC in Proxmox's BC:24:11 prefix."""
    return 'BC:24:11:{0:02X}:{1:02X}:{2:02X}'.format(rng.randrange(256), rng.randrange(256), rng.randrange(256))


def node_network(index, ip):
    """A realistic node: two NICs in an LACP bond under a VLAN-aware bridge, a storage NIC,
    a VLAN interface on the bridge and one on a NIC."""
    base = ip.rsplit('.', 1)[0]
    host = ip.rsplit('.', 1)[1]
    first = ip.split('.')[0]
    storage = '172.16.10' if first == '10' else first + '.16.10'
    return [
        {'iface': 'eno1', 'type': 'eth', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
         'exists': 1, 'active': 1, 'priority': 3},
        {'iface': 'eno2', 'type': 'eth', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
         'exists': 1, 'active': 1, 'priority': 4},
        {'iface': 'enp65s0f0', 'type': 'eth', 'method': 'static', 'method6': 'manual', 'families': ['inet'],
         'exists': 1, 'active': 1, 'autostart': 1, 'mtu': '9000', 'address': '{0}.{1}'.format(storage, host),
         'netmask': '24', 'cidr': '{0}.{1}/24'.format(storage, host), 'comments': 'storage network\n', 'priority': 5},
        {'iface': 'bond0', 'type': 'bond', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
         'slaves': 'eno1 eno2', 'bond_mode': '802.3ad', 'bond-xmit-hash-policy': 'layer3+4',
         'active': 1, 'autostart': 1, 'priority': 6},
        {'iface': 'vmbr0', 'type': 'bridge', 'method': 'static', 'method6': 'manual', 'families': ['inet'],
         'bridge_ports': 'bond0', 'bridge_stp': 'off', 'bridge_fd': '0', 'bridge_vlan_aware': 1,
         'bridge_vids': '2-4094', 'address': ip, 'netmask': '24', 'cidr': ip + '/24',
         'gateway': base + '.1', 'active': 1, 'autostart': 1, 'priority': 7},
        {'iface': 'vmbr0.50', 'type': 'vlan', 'method': 'static', 'method6': 'manual', 'families': ['inet'],
         'vlan-id': '50', 'vlan-raw-device': 'vmbr0', 'address': '{0}.50.0.{1}'.format(first, host), 'netmask': '24',
         'cidr': '{0}.50.0.{1}/24'.format(first, host), 'active': 1, 'autostart': 1, 'comments': 'management\n',
         'priority': 8},
        {'iface': 'vlan60', 'type': 'vlan', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
         'vlan-id': 60, 'vlan-raw-device': 'enp65s0f0', 'active': 1, 'autostart': 1, 'priority': 9},
    ]


def node_disks(index, rng):
    """Physical disks as /nodes/{node}/disks/list answers."""
    return [
        {'devpath': '/dev/nvme0n1', 'model': 'SAMSUNG MZQL2960HCJR-00A07', 'serial': 'S64FNE0R{0:06d}'.format(index),
         'size': 960197124096, 'type': 'nvme', 'health': 'PASSED', 'wearout': 98, 'used': 'LVM',
         'vendor': 'unknown', 'gpt': 1, 'rpm': 0, 'wwn': 'eui.36344630529{0:05d}'.format(index), 'osdid': -1},
        {'devpath': '/dev/sda', 'model': 'ST4000NM000A-2HZ100', 'serial': 'WS2{0:05d}'.format(index),
         'size': 4000787030016, 'type': 'hdd', 'health': 'PASSED', 'wearout': 'N/A', 'used': 'ZFS',
         'vendor': 'ATA     ', 'gpt': 1, 'rpm': 7200, 'wwn': '0x5000c500{0:08x}'.format(index), 'osdid': -1},
        {'devpath': '/dev/sdb', 'model': 'INTEL SSDSC2KG480G8', 'serial': 'PHYG{0:08d}'.format(index),
         'size': 480103981056, 'type': 'ssd', 'health': 'OK', 'wearout': 91, 'used': 'ceph osd',
         'vendor': 'ATA     ', 'gpt': 0, 'rpm': 0, 'wwn': '0x55cd2e41{0:08x}'.format(index),
         'osdid': index},
    ]


def generate(nodes, guests, seed, name=None, octet=10):
    """A deterministic topology of `nodes` nodes and `guests` guests (guest g is the same
    whatever the count; addresses depend on g and `octet`, their first octet, only, so two
    seeds overlap in IP space)."""
    rng = random.Random(seed)
    topo = {'cluster': name or 'gen{0}x{1}'.format(nodes, guests), 'ceph': 'installed', 'nodes': [], 'guests': [],
            'storage': [
                {'name': 'local', 'type': 'dir', 'content': 'iso,vztmpl,backup', 'shared': 0,
                 'total': 100 * GIB, 'used': 20 * GIB},
                {'name': 'local-lvm', 'type': 'lvmthin', 'content': 'images,rootdir', 'shared': 0,
                 'total': 800 * GIB, 'used': 300 * GIB},
                {'name': 'ceph-vm', 'type': 'rbd', 'content': 'images,rootdir', 'shared': 1,
                 'total': 12000 * GIB, 'used': 4100 * GIB},
                {'name': 'nfs-backup', 'type': 'nfs', 'content': 'backup', 'shared': 1,
                 'total': 20000 * GIB, 'used': 9000 * GIB}]}
    for i in range(nodes):
        topo['nodes'].append({'name': 'pve{0}'.format(i + 1), 'ip': '{0}.10.0.{1}'.format(octet, 11 + i)})
    for g in range(guests):
        vmid = 100 + g
        node = 'pve{0}'.format(g % nodes + 1)
        kind = 'lxc' if g % 4 == 3 else 'qemu'
        status = 'stopped' if g % 10 == 9 else 'running'
        template = g % 50 == 49
        name = '{0}-{1:04d}'.format('ct' if kind == 'lxc' else 'vm', g)
        tags = ';'.join(sorted(rng.sample(['prod', 'web', 'db', 'k8s', 'backup'], rng.randrange(0, 3))))
        ip = '{0}.{1}.{2}.{3}'.format(octet, 20 + g // 60000, (g // 250) % 250, g % 250 + 2)
        gateway = '{0}.20.0.1'.format(octet)
        if kind == 'qemu':
            config = {'name': name, 'cores': rng.choice([1, 2, 4]), 'sockets': rng.choice([1, 1, 2]),
                      'memory': str(rng.choice([1024, 2048, 4096, 8192])), 'ostype': rng.choice(['l26', 'l26', 'win11']),
                      'agent': '1', 'scsihw': 'virtio-scsi-single', 'boot': 'order=scsi0',
                      'scsi0': 'ceph-vm:vm-{0}-disk-0,iothread=1,size={1}G'.format(vmid, rng.choice([16, 32, 64])),
                      'net0': 'virtio={0},bridge=vmbr0,firewall=1,tag={1}'.format(mac(rng), 100 + g % 5),
                      'ipconfig0': 'ip={0}/24,gw={1}'.format(ip, gateway)}
            if g % 3 == 0:
                config['virtio1'] = 'local-lvm:vm-{0}-disk-1,size=100G'.format(vmid)
            if g % 7 == 0:
                config['net1'] = 'e1000={0},bridge=vmbr0,link_down=1'.format(mac(rng))
            if tags:
                config['tags'] = tags
            guest = {'vmid': vmid, 'type': 'qemu', 'node': node, 'name': name, 'status': status,
                     'template': template, 'config': config}
            if g % 10 == 0 and not template:
                guest['ha'] = 'started' if status == 'running' else 'stopped'
            if status == 'running' and not template and g % 5 != 4:
                guest['agent'] = [{'name': 'eth0', 'hardware-address': config['net0'].split('=')[1].split(',')[0].lower(),
                                   'ip-addresses': [{'ip-address': ip, 'ip-address-type': 'ipv4', 'prefix': 24}]}]
        else:
            config = {'hostname': name, 'cores': rng.choice([1, 2]), 'memory': rng.choice([512, 1024]),
                      'swap': 512, 'ostype': 'debian', 'arch': 'amd64', 'unprivileged': 1,
                      'rootfs': 'local-lvm:vm-{0}-disk-0,size=8G'.format(vmid),
                      'net0': 'name=eth0,bridge=vmbr0,hwaddr={0},ip={1}/24,gw={2},type=veth'.format(mac(rng), ip, gateway)}
            if tags:
                config['tags'] = tags
            guest = {'vmid': vmid, 'type': 'lxc', 'node': node, 'name': name, 'status': status,
                     'template': template, 'config': config}
        topo['guests'].append(guest)
    return topo


def parse_size(text):
    m = re.search(r'size=(\d+(?:\.\d+)?)([KMGT])?', text)
    if not m:
        return None
    return int(float(m.group(1)) * {'K': 1024, 'M': 1024 ** 2, 'G': GIB, 'T': 1024 ** 4}.get(m.group(2) or 'G'))


def expected(topo):
    """The inventory the operator should read, for tests."""
    out = {'cluster': topo['cluster'], 'nodes': [], 'guests': []}
    offline = set(topo.get('faults', {}).get('offline_nodes', []))
    for i, n in enumerate(topo['nodes']):
        out['nodes'].append({'name': n['name'], 'ip': n['ip'], 'online': n['name'] not in offline,
                             'interfaces': sorted(x['iface'] for x in node_network(i, n['ip'])),
                             'disks': len(node_disks(i + 1, random.Random(0)))})
    for g in topo['guests']:
        cfg = g['config']
        nics = []
        for key in sorted(k for k in cfg if re.fullmatch(r'net\d+', k)):
            props = dict(p.split('=', 1) for p in cfg[key].split(',') if '=' in p)
            model_mac = [v for k, v in props.items() if k in ('virtio', 'e1000', 'rtl8139', 'vmxnet3')]
            nics.append({'slot': key, 'mac': (props.get('hwaddr') or (model_mac[0] if model_mac else '')).upper(),
                         'bridge': props.get('bridge'), 'tag': int(props['tag']) if 'tag' in props else None,
                         'linkDown': props.get('link_down') == '1'})
        disks = []
        for key in sorted(cfg):
            if re.fullmatch(r'(scsi|virtio|sata|ide)\d+|efidisk0|tpmstate0|rootfs|mp\d+', key) and 'media=cdrom' not in cfg[key]:
                disks.append({'slot': key, 'sizeBytes': parse_size(cfg[key])})
        if g['type'] == 'qemu':
            vcpus = int(cfg.get('vcpus') or 0) or int(cfg.get('sockets', 1)) * int(cfg.get('cores', 1))
        else:
            vcpus = int(cfg['cores']) if 'cores' in cfg else None
        memory = str(cfg.get('memory', 512))
        memory = int(memory.split('current=')[-1].split(',')[0])
        addresses = set()
        for key, value in cfg.items():
            if re.fullmatch(r'ipconfig\d+|net\d+', key):
                for part in value.split(','):
                    k, _, v = part.partition('=')
                    if k in ('ip', 'ip6') and '/' in v:
                        addresses.add(v)
        for iface in g.get('agent') or []:
            for a in iface.get('ip-addresses', []):
                if not a['ip-address'].startswith(('127.', '::1', 'fe80')):
                    addresses.add('{0}/{1}'.format(a['ip-address'], a['prefix']))
        out['guests'].append({'vmid': g['vmid'], 'type': g['type'], 'node': g['node'], 'name': g['name'],
                              'addresses': sorted(addresses), 'vcpus': vcpus, 'memoryMib': memory,
                              'haState': g.get('ha'),
                              'status': g['status'], 'template': bool(g.get('template')), 'nics': nics,
                              'disks': disks, 'tags': sorted(t for t in cfg.get('tags', '').split(';') if t),
                              'agentRunning': bool(g.get('agent')), 'lock': g.get('lock'),
                              'protection': bool(g.get('protection')) or str(cfg.get('protection', 0)) == '1'})
    out['guests'].sort(key=lambda x: x['vmid'])
    return out


class SeededPve(FakePve):
    """fakepve with the operator's read paths answered from the topology."""

    def __init__(self, topo, **kwargs):
        super().__init__(**kwargs)
        self.topo = topo
        self.node_index = dict((n['name'], i) for i, n in enumerate(topo['nodes']))
        self.forbidden = set(topo.get('faults', {}).get('forbidden', []))

    def seeded(self, path):
        """Data for a path the topology answers, or None to let fakepve answer."""
        if path == '/cluster/ha/resources':
            return [{'sid': 'vm:{0}'.format(g['vmid']) if g['type'] == 'qemu' else 'ct:{0}'.format(g['vmid']),
                     'type': 'vm' if g['type'] == 'qemu' else 'ct', 'state': g['ha'], 'max_restart': 1,
                     'max_relocate': 1, 'digest': 'seeded'}
                    for g in self.topo['guests'] if g.get('ha')]
        m = re.fullmatch(r'/nodes/([^/]+)/(status|network|disks/list)', path)
        if m and m.group(1) in self.node_index:
            name, what = m.group(1), m.group(2)
            i = self.node_index[name]
            node = self.topo['nodes'][i]
            if what == 'network':
                return node_network(i, node['ip'])
            if what == 'disks/list':
                return node_disks(i + 1, random.Random(i))
            return {'cpu': 0.031, 'cpuinfo': {'cpus': 64, 'cores': 32, 'sockets': 2, 'model': 'AMD EPYC 7543 32-Core Processor',
                                              'mhz': '2794.748', 'hvm': '1'},
                    'memory': {'total': 512 * GIB, 'used': 190 * GIB, 'free': 322 * GIB},
                    'uptime': 1209600 + i, 'kversion': 'Linux 6.14.11-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.14.11-4',
                    'pveversion': 'pve-manager/9.1.3/7b3ab5a0b0b5c9a1', 'loadavg': ['0.31', '0.42', '0.40'],
                    'rootfs': {'total': 100 * GIB, 'used': 12 * GIB}}
        return None

    async def _generic(self, request):
        path = request.path[len(API):] if request.path.startswith(API) else request.path
        match = request[GENERIC]
        if request.method == 'PUT' and match is not None and match.template == RESIZE:
            user = request[USER]

            async def call(_match, values):
                return await self._qm_resize(values, user)
            # The schema's checks first (size pattern, disk name, VM.Config.Disk on /vms/{vmid}).
            return ok(await self.answer(request, match, await params(request), user, call))
        data = self.seeded(path)
        if data is not None:
            return ok(data)
        return await super()._generic(request)

    async def _config_post(self, request):
        # PVE checks the privileges of every key before it starts the qmconfig task (a 403 for the
        # request); fakepve only inside the task. Check them first, then let fakepve go on.
        p = await params(request)
        self._verify(request, p)
        vm = self._vm(request)
        self._check_config_privileges(vm, request[USER], p)
        return await super()._config_post(request)

    def _check_config_privileges(self, vm, user, p):
        """The per-key privilege checks of fakepve's config write (_apply_config), as a PveError 403."""
        updates = dict(p)
        for key in ('digest', 'skiplock', 'background_delay'):
            updates.pop(key, None)
        deletes = [k for k in str(updates.pop('delete', '') or '').split(',') if k]
        for key in list(updates) + deletes:
            priv = self._config_priv(key)
            if priv == 'root':
                if user != 'root@pam':
                    raise PveError(403, "only root can set '{0}' config".format(key))
            elif key.startswith('ide') and 'media=cdrom' in str(updates.get(key, '')):
                self.require(user, '/vms/{0}'.format(vm.vmid), 'VM.Config.CDROM')
            else:
                self.require(user, '/vms/{0}'.format(vm.vmid), priv)

    async def _qm_resize(self, v, user):
        """PUT /nodes/{node}/qemu/{vmid}/resize as qemu-server 9 does it: a `resize` task that
        checks the digest, the lock, the disk and the storage privilege, refuses to shrink, and
        writes the new size into the drive (and the volume, charging the storage's free space)."""
        vm = self.find(v['node'], v['vmid'])
        if v.get('skiplock') and user != 'root@pam':
            raise param_error(skiplock='Only root may use this option.')
        self.need_quorum()
        disk, text, digest, skiplock = v['disk'], str(v['size']), v.get('digest'), v.get('skiplock')

        async def body():
            if digest and digest != vm.digest():
                raise TaskError('checksum mismatch (file change by other user?)')
            if vm.lock and not skiplock:
                raise TaskError('VM is locked ({0})'.format(vm.lock))
            value = vm.config.get(disk)
            if not value:
                raise TaskError("disk '{0}' does not exist".format(disk))
            volume, props = split_drive(value)
            if not volume or volume == 'none':
                raise TaskError("disk '{0}' has no associated volume".format(disk))
            if is_cdrom(volume, props):
                raise TaskError("you can't resize a cdrom")
            sid, name = volume_ref(volume)
            if sid is None:
                raise TaskError("resize file/device '{0}' is not possible".format(volume))
            store = self.storages.get(sid)
            if store is None:
                raise TaskError("storage '{0}' does not exist".format(sid))
            if not self.allowed(user, '/storage/' + sid, 'Datastore.AllocateSpace'):
                raise TaskError('Permission check failed (/storage/{0}, Datastore.AllocateSpace)'.format(sid))
            vol = store.get('volumes', {}).get(name)
            size = int(vol['size']) if vol and vol.get('size') else parse_volume_size(props.get('size', ''))
            if not size:
                raise TaskError("Could not determine current size of volume '{0}'".format(volume))
            found = RESIZE_SIZE.match(text)
            if not found:
                raise TaskError('internal error')
            new = float(found.group(2)) * SIZE_UNITS.get(found.group(3) or '', 1)
            new = int(new + size if found.group(1) else new)
            if new < size:
                raise TaskError('shrinking disks is not supported')
            if new == size:
                return None
            if 'avail' in store:
                if new - size > store['avail']:
                    raise TaskError("unable to write to storage '{0}': No space left on device".format(sid))
                store['avail'] -= new - size
            await self.ceph_io(vm, [disk])
            if vol is not None:
                vol['size'] = new
            vm.config[disk] = join_drive(volume, dict(props, size=format_size(new)))
            return None
        return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)

    async def _cluster_status(self, request):
        offline = set(self.topo.get('faults', {}).get('offline_nodes', []))
        data = [{'type': 'cluster', 'id': 'cluster', 'name': self.cluster_name, 'nodes': len(self.topo['nodes']),
                 'quorate': 1, 'version': 7}]
        for idx, n in enumerate(self.topo['nodes'], 1):
            data.append({'type': 'node', 'id': 'node/' + n['name'], 'name': n['name'], 'nodeid': idx, 'level': '',
                         'ip': n['ip'], 'online': 0 if n['name'] in offline else 1, 'local': 1 if idx == 1 else 0})
        return ok(data)

    async def _ceph_status(self, request):
        if self.topo.get('ceph', 'absent') != 'installed':
            return error(500, 'binary not installed: /usr/bin/ceph-mon')
        return await super()._ceph_status(request)


def seed(pve, topo):
    pve.cluster_name = topo['cluster']
    pve.version = topo.get('version', '9.1.3')
    pve.release_version = pve.version.rsplit('.', 1)[0]
    pve.nodes = {}
    for n in topo['nodes']:
        pve.add_node(n['name'])
    pve.storages = {}
    for s in topo.get('storage', []):
        pve.storages[s['name']] = {'type': s['type'], 'active': 1, 'content': s['content'], 'files': set(),
                                   'shared': s.get('shared', 0), 'avail': s['total'] - s['used'],
                                   'path': '/mnt/pve/' + s['name']}
    for g in topo['guests']:
        config = dict(g['config'])
        if g.get('protection'):
            config['protection'] = 1
        if g['type'] == 'qemu':
            guest = pve.add_vm(g['vmid'], g['name'], node=g['node'], status=g['status'], config=config,
                               template=bool(g.get('template')))
            guest.agent = {'interfaces': g['agent']} if g.get('agent') else None
        else:
            guest = pve.add_ct(g['vmid'], g['name'], node=g['node'], status=g['status'], config=config,
                               template=bool(g.get('template')), defaults=False)
            if 'acpi' in g:
                raise SystemExit('guest {0}: acpi is modelled for QEMU guests only'.format(g['vmid']))
        if g.get('lock'):
            guest.lock = g['lock']
            guest.config['lock'] = g['lock']
        for key in GUEST_RUNTIME:
            if key in g:
                setattr(guest, key, g[key])
    faults = topo.get('faults', {})
    for node in faults.get('offline_nodes', []):
        pve.set_node_offline(node)
    for path in faults.get('forbidden', []):
        pve.fail('GET', path, 403, 'Permission check failed ({0}, Sys.Audit)'.format(path))
    for rule in faults.get('fail', []):
        # fakepve's fail(): {method, path (a suffix or a schema template), status and message, or error
        # (a catalogue name; an in-task one answers with a UPID whose task fails), times, html}.
        pve.fail(rule['method'], rule['path'], status=rule.get('status'), message=rule.get('message'),
                 html=bool(rule.get('html')), error=rule.get('error'), times=rule.get('times'))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--topology')
    ap.add_argument('--generate', help='nodes=N,guests=M[,seed=S][,name=CLUSTER][,octet=K: first octet of the addresses]')
    ap.add_argument('--state-dir', required=True)
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--offline-node', action='append', default=[])
    ap.add_argument('--forbid', action='append', default=[], help='GET path answering 403')
    ap.add_argument('--privileges', help='comma-separated privileges of the token on / (default: read-only set)')
    ap.add_argument('--no-ceph', action='store_true')
    ap.add_argument('--ticket-ttl', type=float, help='seconds a login ticket is valid (PVE: 7200)')
    ap.add_argument('--mutate-percent', type=float, default=0.0,
                    help='change the memory of this share of the guests (benchmarks of a resync)')
    ap.add_argument('--remove-percent', type=float, default=0.0,
                    help='leave out this share of the guests (a resync that removes some)')
    ap.add_argument('--time-scale', type=float, default=0.0,
                    help='real seconds per PVE second of a task (0: every task finishes before its request answers)')
    ap.add_argument('--ceph-slow', type=float, default=0.0,
                    help='PVE seconds every RBD-backed operation takes (a clone, start or resize on rbd storage); '
                         'with --time-scale a clone onto it stays listed with lock "clone" that long')
    ap.add_argument('--fail', action='append', default=[], type=json.loads,
                    help='a fakepve fail() rule as JSON: {"method", "path", "status" and "message", or "error", "times"}')
    args = ap.parse_args()
    if args.topology:
        with open(args.topology) as f:
            topo = json.load(f)
    elif args.generate:
        opts = dict(kv.split('=') for kv in args.generate.split(','))
        topo = generate(int(opts['nodes']), int(opts['guests']), int(opts.get('seed', 7)), opts.get('name'),
                        int(opts.get('octet', 10)))
    else:
        ap.error('--topology or --generate is required')
    if args.mutate_percent:
        step = max(1, int(round(100 / args.mutate_percent)))
        for g in topo['guests'][::step]:
            g['config']['memory'] = str(int(g['config'].get('memory', 512)) + 1024)
    if args.remove_percent:
        step = max(1, int(round(100 / args.remove_percent)))
        gone = set(g['vmid'] for g in topo['guests'][1::step])
        topo['guests'] = [g for g in topo['guests'] if g['vmid'] not in gone]
    faults = topo.setdefault('faults', {})
    faults.setdefault('offline_nodes', []).extend(args.offline_node)
    faults.setdefault('forbidden', []).extend(args.forbid)
    faults.setdefault('fail', []).extend(args.fail)
    if args.no_ceph:
        topo['ceph'] = 'absent'

    os.makedirs(args.state_dir, exist_ok=True)
    certfile, keyfile, _ = make_cert(args.state_dir, name='fakepve')
    pve = SeededPve(topo, user='root@pam', password=secrets.token_urlsafe(16), host='127.0.0.1', port=args.port)
    seed(pve, topo)
    if args.ticket_ttl:
        pve.ticket_ttl = args.ticket_ttl
    pve.time_scale = args.time_scale
    if args.ceph_slow:
        pve.ceph_slow(args.ceph_slow, health='HEALTH_OK')
    token_id = topo.get('token_id', 'netbox-sync@pve!operator')
    token_secret = str(__import__('uuid').uuid4())
    pve.apitokens[token_id] = token_secret
    privileges = args.privileges.split(',') if args.privileges else topo.get('privileges', READ_PRIVILEGES)
    pve.grant(token_id, '/', *privileges)
    # A user for ticket (user/password) authentication, with the same privileges.
    username = 'netbox-sync@pve'
    password = secrets.token_urlsafe(16)
    pve.users[username] = password
    pve.grant(username, '/', *privileges)
    # A token (of the same user, as a second token of the operator would be) and a user for
    # provisioning: the read privileges plus what clone, config, resize, power and destroy need.
    # fakepve grants a token its user's privileges too; the user holds only the read ones.
    provision_secret = str(__import__('uuid').uuid4())
    pve.apitokens[PROVISION_TOKEN_ID] = provision_secret
    pve.grant(PROVISION_TOKEN_ID, '/', *(list(privileges) + PROVISION_PRIVILEGES))
    provision_password = secrets.token_urlsafe(16)
    pve.users[PROVISION_USER] = provision_password
    pve.grant(PROVISION_USER, '/', *(list(privileges) + PROVISION_PRIVILEGES))
    await pve.start(certfile, keyfile)

    expected_file = os.path.join(args.state_dir, 'expected.json')
    with open(expected_file, 'w') as f:
        json.dump(expected(topo), f, indent=1, sort_keys=True)
    env = {'PVE_URL': pve.url, 'PVE_TOKEN_ID': token_id, 'PVE_TOKEN_SECRET': token_secret,
           'PVE_USERNAME': username, 'PVE_PASSWORD': password,
           'PVE_PROVISION_TOKEN_ID': PROVISION_TOKEN_ID, 'PVE_PROVISION_TOKEN_SECRET': provision_secret,
           'PVE_PROVISION_USERNAME': PROVISION_USER, 'PVE_PROVISION_PASSWORD': provision_password,
           'PVE_CA_FILE': certfile, 'PVE_EXPECTED_FILE': expected_file, 'PVE_PID': os.getpid()}
    tmp = os.path.join(args.state_dir, 'env.json.tmp')
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
        json.dump(env, f)
    os.replace(tmp, os.path.join(args.state_dir, 'env.json'))
    print('fakepve seeded with {0} nodes and {1} guests on {2}'.format(len(topo['nodes']), len(topo['guests']), pve.url),
          file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await pve.stop()


if __name__ == '__main__':
    asyncio.run(main())
