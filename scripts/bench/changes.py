"""Make changes at random times to a running PVE (fakepve) through its HTTP API and record,
for each, what was done, when it finished in PVE and what NetBox should show afterwards:
the input of the change-detection benchmark (docs/design/watch.md, step 6).

    python changes.py --env STATE_DIR/env.json --count 100 --duration 300 --seed 1 --out changes.json

Kinds (--kinds, default all; each change picks one at random among those possible):
  create   a QEMU VM with the id from /cluster/nextid on a random online node (never an id
           this run has seen: then /cluster/nextid?vmid=<above all seen>): name, memory,
           cores, net0 with a MAC, a small disk (--disk-storage, '' for none); left stopped
  destroy  a VM this run created (preferred) or an existing stopped one (--no-destroy-existing
           to spare those); a running one is stopped first
  migrate  to another online node. --migrate-via lxc (default): a container, POST
           /nodes/{node}/lxc/{vmid}/migrate (restart=1 when running), because fakepve 0.5.0
           does not implement QEMU migration (its POST .../qemu/{vmid}/migrate is a no-op
           task that ends OK); --migrate-via qemu: a VM, offline when stopped, online when
           running (real PVE, or a fakepve that models it)
  memory   POST .../qemu/{vmid}/config memory=N on a stopped VM (a running one would only
           get a pending change, invisible until its next start)
  power    status/start of a stopped VM or status/stop of a running one (kind start / stop)

Guests that are templates, HA-managed, locked or on an offline node are left alone.

Each change waits for its task (GET /nodes/{node}/tasks/{upid}/status until stopped,
exitstatus OK, --task-timeout), then for GET /cluster/resources (what the operator polls)
to show it (--visible-timeout). Anything else stops the run with exit status 1; the records
so far go to OUT.failed.json.

Output (--out): a JSON list, one object per change in order:
  at         unix time the change finished in PVE (its last task seen stopped)
  kind       create | destroy | migrate | memory | start | stop
  vmid, type (qemu | lxc), node (where the guest is afterwards; for destroy: where it was)
  expect     what NetBox should show afterwards: {"exists": false}; {"memory_mib": N};
             {"node": "pve2"}; {"status": "active" | "offline"}; for create
             {"exists": true, "name", "node", "status": "offline", "memory_mib", "vcpus", "macs"}
  requested  unix time of the first request of the change
  visible    unix time /cluster/resources first showed it
  upids      the tasks, in order (a destroy of a running VM: the stop, then the destroy)
  scheduled  seconds after the start the change was due; `lag` how late it started
  from, to   the node before and after (migrate); the memory before (memory)

A per-kind summary goes to stderr. Python 3 standard library only.
"""

import argparse
import json
import random
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

API = '/api2/json'
MIB = 1024 * 1024
KINDS = ('create', 'destroy', 'migrate', 'memory', 'power')
MEMORY_CHOICES = (512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
POLL = 0.2


class Failure(Exception):
    """A change that PVE refused, did not finish, or that /cluster/resources does not show."""


class Pve(object):
    def __init__(self, env, timeout=30):
        self.url = env['PVE_URL'].rstrip('/')
        self.auth = 'PVEAPIToken={0}={1}'.format(env['PVE_TOKEN_ID'], env['PVE_TOKEN_SECRET'])
        self.ctx = ssl.create_default_context(cafile=env['PVE_CA_FILE']) if env.get('PVE_CA_FILE') \
            else ssl.create_default_context()
        self.timeout = timeout
        self.requests = 0

    def call(self, method, path, params=None):
        """The `data` of the answer; Failure on an HTTP error, with PVE's message and field errors."""
        params = dict((k, v) for k, v in (params or {}).items() if v is not None)
        url = self.url + API + path
        body = None
        if method in ('GET', 'DELETE'):
            if params:
                url += '?' + urllib.parse.urlencode(params)
        else:
            body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(url, data=body, method=method, headers={'Authorization': self.auth})
        if body is not None:
            req.add_header('Content-Type', 'application/x-www-form-urlencoded')
        self.requests += 1
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as r:
                return json.load(r).get('data')
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors='replace')
            try:
                doc = json.loads(text)
                text = (doc.get('message') or '').strip() or text
                if doc.get('errors'):
                    text += ' ' + json.dumps(doc['errors'], sort_keys=True)
            except ValueError:
                pass
            raise Failure('{0} {1} -> HTTP {2}: {3}'.format(method, path, e.code, text.strip())) from None
        except (urllib.error.URLError, OSError) as e:
            raise Failure('{0} {1} -> {2}'.format(method, path, e)) from None

    def resources(self):
        """(guests by vmid, online node names) from /cluster/resources."""
        data = self.call('GET', '/cluster/resources')
        guests = dict((int(r['vmid']), r) for r in data if r.get('type') in ('qemu', 'lxc'))
        nodes = sorted(r['node'] for r in data if r.get('type') == 'node' and r.get('status') == 'online')
        return guests, nodes

    def wait_task(self, upid, timeout):
        """Wait for the task to stop; returns the time it was seen stopped. Failure unless it ended OK."""
        if not isinstance(upid, str) or not upid.startswith('UPID:'):
            raise Failure('expected a task UPID, got {0!r}'.format(upid))
        node = upid.split(':')[1]
        path = '/nodes/{0}/tasks/{1}/status'.format(node, urllib.parse.quote(upid, safe=''))
        deadline = time.time() + timeout
        while True:
            status = self.call('GET', path)
            now = time.time()
            if status.get('status') == 'stopped':
                if status.get('exitstatus') != 'OK':
                    raise Failure('task {0} failed: {1}'.format(upid, status.get('exitstatus')))
                return now
            if now > deadline:
                raise Failure('task {0} still {1} after {2}s'.format(upid, status.get('status'), timeout))
            time.sleep(POLL)


def memory_mib(guest):
    return int(guest.get('maxmem') or 0) // MIB


def usable(guest, online):
    """A guest the changes may touch: not a template, not HA-managed, not locked, on an online node."""
    return (not guest.get('template') and not guest.get('hastate') and not guest.get('lock')
            and guest.get('node') in online and guest.get('status') in ('running', 'stopped'))


class Changer(object):
    def __init__(self, pve, args, rng):
        self.pve = pve
        self.args = args
        self.rng = rng
        self.created = []  # vmids created by this run that still exist
        self.seen = set()  # every vmid this run has seen: a create never reuses one
        self.macs = set()
        self.changed_at = {}  # vmid -> when this run last changed it (for --settle)

    # ---------------------------------------------------------------- choice

    def candidates(self, kind, guests, online):
        """What the kind can change now: a list of (guest, extra) pairs, or [None] for create."""
        now = time.time()
        guests = dict((v, g) for v, g in guests.items()
                      if now - self.changed_at.get(v, float('-inf')) >= self.args.settle)
        qemu = [g for g in guests.values() if g['type'] == 'qemu' and usable(g, online)]
        if kind == 'create':
            return [None] if online else []
        if kind == 'destroy':
            mine = [g for g in qemu if g['vmid'] in self.created]
            if mine:
                return mine
            return [g for g in qemu if g['status'] == 'stopped'] if self.args.destroy_existing else []
        if kind == 'migrate':
            if len(online) < 2:
                return []
            want = 'lxc' if self.args.migrate_via == 'lxc' else 'qemu'
            return [g for g in guests.values() if g['type'] == want and usable(g, online)]
        if kind == 'memory':
            return [g for g in qemu if g['status'] == 'stopped']
        if kind == 'power':
            return qemu
        raise ValueError(kind)

    def pick(self, guests, online):
        """(kind, guest or None, kind first drawn if it was not possible)."""
        kinds = list(self.args.kinds)
        first = self.rng.choice(kinds)
        options = dict((k, self.candidates(k, guests, online)) for k in kinds)
        kind = first
        if not options[kind]:
            possible = [k for k in kinds if options[k]]
            if not possible:
                raise Failure('no kind of change is possible now (kinds {0})'.format(','.join(kinds)))
            kind = self.rng.choice(possible)
        pool = sorted(options[kind], key=lambda g: g['vmid'] if g else 0)
        if kind == 'destroy' and self.created and self.args.destroy_existing and self.rng.random() < 0.2:
            # Now and then an existing guest even when some of ours are left.
            existing = [g for g in self.candidates('memory', guests, online) if g['vmid'] not in self.created]
            pool = sorted(existing, key=lambda g: g['vmid']) or pool
        return kind, self.rng.choice(pool), (first if first != kind else None)

    # ----------------------------------------------------------------- kinds

    def mac(self):
        while True:
            mac = 'BC:24:11:{0:02X}:{1:02X}:{2:02X}'.format(*(self.rng.randrange(256) for _ in range(3)))
            if mac not in self.macs:
                self.macs.add(mac)
                return mac

    def do_create(self, _guest, online, rec):
        node = self.rng.choice(online)
        vmid = int(self.pve.call('GET', '/cluster/nextid'))
        if vmid in self.seen:
            # PVE hands out the lowest free id, which may be one this run destroyed: a later step that
            # matches NetBox by vmid could not tell the two apart. Ask for one above all ids seen.
            vmid = int(self.pve.call('GET', '/cluster/nextid', {'vmid': max(self.seen) + 1}))
        self.seen.add(vmid)
        name = 'chg{0}-{1}'.format(self.args.seed, vmid)
        memory = self.rng.choice(MEMORY_CHOICES)
        cores = self.rng.choice((1, 2, 4))
        mac = self.mac()
        params = {'vmid': vmid, 'name': name, 'memory': memory, 'cores': cores, 'sockets': 1,
                  'net0': 'virtio={0},bridge={1}'.format(mac, self.args.bridge)}
        if self.args.disk_storage:
            params['scsi0'] = '{0}:{1}'.format(self.args.disk_storage, self.args.disk_gib)
        rec.update(vmid=vmid, type='qemu', node=node)
        rec['requested'] = time.time()
        upid = self.pve.call('POST', '/nodes/{0}/qemu'.format(node), params)
        rec['upids'].append(upid)
        rec['at'] = self.pve.wait_task(upid, self.args.task_timeout)
        self.created.append(vmid)
        rec['expect'] = {'exists': True, 'name': name, 'node': node, 'status': 'offline', 'memory_mib': memory,
                         'vcpus': cores, 'macs': [mac]}

        def shown(guests):
            g = guests.get(vmid)
            return (g is not None and g['type'] == 'qemu' and g.get('name') == name and g['node'] == node
                    and g['status'] == 'stopped' and memory_mib(g) == memory and not g.get('lock'))
        return shown

    def do_destroy(self, guest, online, rec):
        vmid, node = guest['vmid'], guest['node']
        rec.update(vmid=vmid, type='qemu', node=node, created_by_run=vmid in self.created)
        base = '/nodes/{0}/qemu/{1}'.format(node, vmid)
        rec['requested'] = time.time()
        if guest['status'] == 'running':
            upid = self.pve.call('POST', base + '/status/stop')
            rec['upids'].append(upid)
            self.pve.wait_task(upid, self.args.task_timeout)
            rec['stopped_first'] = True
        upid = self.pve.call('DELETE', base)
        rec['upids'].append(upid)
        rec['at'] = self.pve.wait_task(upid, self.args.task_timeout)
        if vmid in self.created:
            self.created.remove(vmid)
        rec['expect'] = {'exists': False}
        return lambda guests: vmid not in guests

    def do_migrate(self, guest, online, rec):
        vmid, node, kind = guest['vmid'], guest['node'], guest['type']
        target = self.rng.choice([n for n in online if n != node])
        rec.update(vmid=vmid, type=kind, node=target, **{'from': node, 'to': target})
        params = {'target': target}
        if guest['status'] == 'running':
            if kind == 'lxc':
                params['restart'] = 1
            else:
                params['online'] = 1
        rec['mode'] = 'restart' if params.get('restart') else 'online' if params.get('online') else 'offline'
        rec['requested'] = time.time()
        upid = self.pve.call('POST', '/nodes/{0}/{1}/{2}/migrate'.format(node, kind, vmid), params)
        rec['upids'].append(upid)
        rec['at'] = self.pve.wait_task(upid, self.args.task_timeout)
        rec['expect'] = {'node': target}
        status = guest['status']

        def shown(guests):
            g = guests.get(vmid)
            return g is not None and g['node'] == target and not g.get('lock') and g['status'] == status
        return shown

    def do_memory(self, guest, online, rec):
        vmid, node = guest['vmid'], guest['node']
        before = memory_mib(guest)
        memory = self.rng.choice([m for m in MEMORY_CHOICES if m != before])
        rec.update(vmid=vmid, type='qemu', node=node, memory_before=before)
        rec['requested'] = time.time()
        upid = self.pve.call('POST', '/nodes/{0}/qemu/{1}/config'.format(node, vmid), {'memory': memory})
        rec['upids'].append(upid)
        rec['at'] = self.pve.wait_task(upid, self.args.task_timeout)
        rec['expect'] = {'memory_mib': memory}
        return lambda guests: vmid in guests and memory_mib(guests[vmid]) == memory

    def do_power(self, guest, online, rec):
        vmid, node = guest['vmid'], guest['node']
        action = 'stop' if guest['status'] == 'running' else 'start'
        want = 'stopped' if action == 'stop' else 'running'
        rec.update(kind=action, vmid=vmid, type='qemu', node=node)
        rec['requested'] = time.time()
        upid = self.pve.call('POST', '/nodes/{0}/qemu/{1}/status/{2}'.format(node, vmid, action))
        rec['upids'].append(upid)
        rec['at'] = self.pve.wait_task(upid, self.args.task_timeout)
        rec['expect'] = {'status': 'offline' if action == 'stop' else 'active'}
        return lambda guests: vmid in guests and guests[vmid]['status'] == want

    # ------------------------------------------------------------------ one

    def change(self, rec):
        guests, online = self.pve.resources()
        self.seen.update(guests)
        kind, guest, first = self.pick(guests, online)
        if kind == 'power':
            # Balance starts and stops: draw the action, then a guest in the matching state.
            qemu = self.candidates('power', guests, online)
            running = sorted((g for g in qemu if g['status'] == 'running'), key=lambda g: g['vmid'])
            stopped = sorted((g for g in qemu if g['status'] == 'stopped'), key=lambda g: g['vmid'])
            side = self.rng.choice([s for s in (running, stopped) if s])
            guest = self.rng.choice(side)
        rec['kind'] = kind
        if first:
            rec['instead_of'] = first
        shown = getattr(self, 'do_' + kind)(guest, online, rec)
        self.changed_at[rec['vmid']] = rec['at']
        deadline = time.time() + self.args.visible_timeout
        while True:
            now_guests, _ = self.pve.resources()
            now = time.time()
            if shown(now_guests):
                rec['visible'] = now
                return
            if now > deadline:
                g = now_guests.get(rec['vmid'])
                raise Failure('{0} of {1} {2} finished in PVE (tasks {3}) but /cluster/resources does not show it '
                              'after {4}s: expected {5}, /cluster/resources has {6}'.format(
                                  rec['kind'], rec['type'], rec['vmid'], ', '.join(rec['upids']),
                                  self.args.visible_timeout, json.dumps(rec['expect'], sort_keys=True),
                                  json.dumps(dict((k, g.get(k)) for k in ('node', 'name', 'status', 'maxmem', 'lock',
                                                                          'template', 'hastate')) if g else None,
                                             sort_keys=True)))
            time.sleep(POLL)


def summary(records, out=sys.stderr):
    kinds = sorted(set(r['kind'] for r in records))
    print('{0:<8} {1:>5} {2:>10} {3:>10} {4:>10}'.format('kind', 'count', 'pve p50 s', 'pve max s', 'seen max s'),
          file=out)
    for kind in kinds + ['all']:
        rs = [r for r in records if kind in ('all', r['kind'])]
        pve = sorted(r['at'] - r['requested'] for r in rs)
        seen = sorted(r['visible'] - r['at'] for r in rs)
        if not rs:
            continue
        print('{0:<8} {1:>5} {2:>10.3f} {3:>10.3f} {4:>10.3f}'.format(kind, len(rs), pve[len(pve) // 2], pve[-1],
                                                                       seen[-1]), file=out)
    fell = [r for r in records if r.get('instead_of')]
    if fell:
        print('{0} change(s) drew a kind that was not possible then and took another: {1}'.format(
            len(fell), ', '.join('{0}->{1}'.format(r['instead_of'], r['kind']) for r in fell)), file=out)
    lags = [r['lag'] for r in records]
    if lags:
        print('start lag behind schedule: max {0:.3f}s'.format(max(lags)), file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--env', required=True,
                    help="fakepve's env.json (PVE_URL, PVE_TOKEN_ID, PVE_TOKEN_SECRET, PVE_CA_FILE)")
    ap.add_argument('--count', type=int, default=100)
    ap.add_argument('--duration', type=float, default=300, help='seconds the changes are spread over')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--out', required=True)
    ap.add_argument('--kinds', default=','.join(KINDS), help='comma-separated, among ' + ','.join(KINDS))
    ap.add_argument('--migrate-via', choices=('lxc', 'qemu'), default='lxc')
    ap.add_argument('--no-destroy-existing', dest='destroy_existing', action='store_false',
                    help='destroy only VMs this run created')
    ap.add_argument('--disk-storage', default='local-lvm', help="storage of created VMs' disk ('' for no disk)")
    ap.add_argument('--disk-gib', type=int, default=1)
    ap.add_argument('--bridge', default='vmbr0')
    ap.add_argument('--task-timeout', type=float, default=120)
    ap.add_argument('--visible-timeout', type=float, default=30,
                    help='seconds /cluster/resources may take to show a finished change (real PVE: pvestatd, ~10s)')
    ap.add_argument('--settle', type=float, default=0,
                    help='seconds before a guest this run changed may be changed again (so that a '
                         'later change never hides an earlier one from a reader of NetBox)')
    ap.add_argument('--progress', help='append each record to this file as one JSON line when it is done')
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(',') if k]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        ap.error('unknown kinds: {0}'.format(','.join(unknown) or '(none)'))
    if args.count < 1 or args.duration < 0:
        ap.error('--count must be at least 1 and --duration not negative')
    with open(args.env) as f:
        env = json.load(f)

    rng = random.Random(args.seed)
    pve = Pve(env)
    changer = Changer(pve, args, rng)
    try:
        guests, online = pve.resources()
    except Failure as e:
        print('FAILED before any change: {0}'.format(e), file=sys.stderr)
        sys.exit(1)
    if not guests:
        print('WARNING: /cluster/resources lists no guest: an empty cluster, or a token without VM.Audit '
              '(then no change can be seen and the first one fails)', file=sys.stderr)
    if not online:
        print('FAILED before any change: /cluster/resources lists no online node', file=sys.stderr)
        sys.exit(1)
    schedule = sorted(rng.uniform(0, args.duration) for _ in range(args.count))
    records = []
    start = time.time()
    print('{0} changes over {1:g}s against {2} (kinds {3}, migrate via {4})'.format(
        args.count, args.duration, pve.url, ','.join(args.kinds), args.migrate_via), file=sys.stderr, flush=True)
    try:
        for i, offset in enumerate(schedule):
            wait = start + offset - time.time()
            if wait > 0:
                time.sleep(wait)
            rec = {'n': i + 1, 'scheduled': round(offset, 3), 'lag': round(max(0.0, -wait), 3), 'upids': []}
            try:
                changer.change(rec)
            except Failure as e:
                rec['error'] = str(e)
                records.append(rec)
                raise
            records.append(rec)
            if args.progress:
                with open(args.progress, 'a') as f:
                    f.write(json.dumps(rec, sort_keys=True) + '\n')
            print('{0:>4} {1:>7.2f}s {2:<8} {3:<4} {4:>6} {5:<6} {6}'.format(
                rec['n'], rec['at'] - start, rec['kind'], rec['type'], rec['vmid'], rec['node'],
                json.dumps(rec['expect'], sort_keys=True)), file=sys.stderr, flush=True)
    except Failure as e:
        failed = args.out + '.failed.json'
        with open(failed, 'w') as f:
            json.dump(records, f, indent=1, sort_keys=True)
        print('FAILED at change {0}: {1}\n(the {0} record(s) so far are in {2}; {3} not written)'.format(
            len(records), e, failed, args.out), file=sys.stderr)
        sys.exit(1)
    with open(args.out, 'w') as f:
        json.dump(records, f, indent=1, sort_keys=True)
    print('{0} changes in {1:.1f}s, {2} PVE requests; written to {3}'.format(
        len(records), time.time() - start, pve.requests, args.out), file=sys.stderr)
    summary(records)


if __name__ == '__main__':
    main()
