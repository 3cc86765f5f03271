/**
 * Egress control end to end, as root inside real sandboxes, against the fixture's own
 * "internet" (documentation ranges, in namespaces of its own) and canaries on the addresses
 * that must never be reached. Nothing here sends a packet off this machine.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import type { AuditEvent, ExecResult, SandboxInfo } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, networkLeftovers, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };

let net: TestInternet;
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

async function sandbox(allow: string[], extra: { deny?: string[]; bandwidthMbps?: number; template?: string } = {}): Promise<SandboxInfo> {
  const info = await engine.createSandbox(admin, {
    template: extra.template ?? 'base',
    timeoutSeconds: 300,
    network: { allow, ...(extra.deny ? { deny: extra.deny } : {}), ...(extra.bandwidthMbps ? { bandwidthMbps: extra.bandwidthMbps } : {}) },
  });
  ids.push(info.id);
  return info;
}

async function sh(id: string, script: string, timeoutSeconds = 30): Promise<ExecResult> {
  return engine.exec(admin, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds });
}

async function py(id: string, code: string, timeoutSeconds = 30): Promise<ExecResult> {
  return engine.exec(admin, id, { cmd: ['python3', '-c', code], timeoutSeconds });
}

/** curl with a short budget; prints the body, or "FAIL <exit code>". */
function curl(args: string): string {
  return `curl -sS --max-time 5 ${args} || echo "FAIL $?"`;
}

function netEvents(sandboxId: string, type: 'net.dns' | 'net.connect'): AuditEvent[] {
  return engine.listEvents(admin, { sandbox: sandboxId, type, limit: 1000 });
}

async function waitFor<T>(fn: () => T | undefined, what: string, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  net = await startTestInternet();
  dataDir = tempDataDir('net');
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, ids);
  } finally {
    if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
    await net?.close();
  }
});

describe('no allowlist', () => {
  test('only lo, and every connect fails fast', async () => {
    const s = await engine.createSandbox(admin, { template: 'base', timeoutSeconds: 120 });
    ids.push(s.id);
    const links = await sh(s.id, 'ls /sys/class/net');
    assert.equal(links.stdout.trim(), 'lo');
    const t0 = Date.now();
    const r = await py(s.id, `
import socket
for dst in [("203.0.113.10", 80), ("10.254.254.1", 80), ("169.254.77.77", 80)]:
    try:
        socket.create_connection(dst, timeout=3); print("CONNECTED", dst)
    except OSError as e:
        print("refused", e.errno)
`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /CONNECTED/);
    assert.ok(Date.now() - t0 < 2000, 'connects must fail at once, not time out');
    assert.match(await sh(s.id, 'cat /etc/resolv.conf').then((x) => x.stdout), /no network/);
    assert.ok(!existsSync(`/run/netns/airlock-${s.id}`), 'no network namespace is named for it');
    await engine.killSandbox(admin, s.id);
  });
});

describe('allowlist a.test', () => {
  let s: SandboxInfo;
  let other: SandboxInfo;

  before(async () => {
    s = await sandbox(['a.test']);
    other = await sandbox(['b.test']);
  });

  test('a.test works over HTTP and HTTPS', async () => {
    await engine.writeFile(admin, s.id, '/work/ca.pem', Buffer.from(net.caPem));
    const r = await sh(s.id, `${curl('http://a.test/')}; ${curl('--cacert /work/ca.pem https://a.test/')}; ${curl('http://a.test:8080/')}`);
    assert.equal(r.stdout.match(/hello from 203\.0\.113\.10 host=a\.test/g)?.length, 3, r.stdout + r.stderr);
  });

  test('HTTP(S)_PROXY style through the gateway works with the same checks', async () => {
    await engine.writeFile(admin, s.id, '/work/ca.pem', Buffer.from(net.caPem));
    const proxy = "http://$(awk '/nameserver/ {print $2}' /etc/resolv.conf):3128";
    const r = await sh(s.id, [
      curl(`-x ${proxy} http://a.test/`),
      curl(`-x ${proxy} --cacert /work/ca.pem https://a.test/`),
      curl(`-x ${proxy} http://b.test/`),
      curl(`-x ${proxy} -k https://b.test/`),
      // A tunnel to a.test carrying TLS or a request for b.test: a.test's front would route it there.
      curl(`-p -x ${proxy} --connect-to b.test:443:a.test:443 --cacert /work/ca.pem https://b.test/`),
      curl(`-p -x ${proxy} --connect-to b.test:80:a.test:80 http://b.test/`),
    ].join('; '));
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.filter((l) => /hello from 203\.0\.113\.10 host=a\.test/.test(l)).length, 2, r.stdout + r.stderr);
    assert.equal(lines.filter((l) => /hello from 203\.0\.113\.11|host=b\.test/.test(l)).length, 0, r.stdout);
    assert.equal(lines.filter((l) => /^FAIL /.test(l)).length, 3, r.stdout); // https b.test (403 to the CONNECT) and both tunnels
    const explicit = await waitFor(() => {
      const e = netEvents(s.id, 'net.connect').filter((x) => x.data.mode === 'explicit');
      return e.filter((x) => x.data.verdict === 'allow' && x.data.name === 'a.test').length >= 2 ? e : undefined;
    }, 'explicit-mode events');
    assert.ok(explicit.some((e) => e.data.verdict === 'not-allowed' && e.data.name === 'b.test'));
    const tunnelled = await waitFor(() => {
      const e = netEvents(s.id, 'net.connect').filter((x) => x.data.mode === 'explicit' && x.data.verdict === 'refused');
      return e.length >= 2 ? e : undefined;
    }, 'refused tunnels');
    assert.deepEqual(tunnelled.map((e) => [e.data.name, e.data.reason, e.data.requestedName]).sort(),
      [['a.test', 'host-changed', 'b.test'], ['a.test', 'sni-mismatch', 'b.test']]);
  });

  test('b.test, raw IPs, IPv6, UDP and ICMP fail', async () => {
    const r = await sh(s.id, [
      curl('http://b.test/'),
      curl('--resolve b.test:80:203.0.113.11 http://b.test/'),
      curl('http://203.0.113.11/'),
      curl('-k https://203.0.113.10/'),
      curl('-g "http://[2001:db8::1]/"'),
    ].join('; '));
    assert.doesNotMatch(r.stdout, /hello from/, r.stdout);
    assert.equal(r.stdout.match(/FAIL/g)?.length, 5, r.stdout + r.stderr);
    const u = await py(s.id, `
import socket, struct
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\x01a\\x04test\\x00\\x00\\x01\\x00\\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1.5)
for dst in [("203.0.113.53", 53), ("203.0.113.10", 9999)]:
    u.sendto(q, dst)
    try: u.recvfrom(512); print("UDP-ANSWERED", dst)
    except OSError: print("udp-dropped")
for fam, kind in [(socket.AF_INET, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)]:
    try: socket.socket(fam, kind, 1); print("RAW-OPENED")
    except OSError as e: print("raw-refused", e.errno)
try: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).sendto(b"\\x08\\0\\0\\0\\0\\0\\0\\0", ("203.0.113.10", 0)); print("ICMP-SENT")
except OSError as e: print("icmp-refused", e.errno)
try: socket.create_connection(("2001:db8::1", 80), timeout=2); print("V6-CONNECTED")
except OSError as e: print("v6-refused", e.errno)
`);
    assert.equal(u.exitCode, 0, u.stderr);
    assert.doesNotMatch(u.stdout, /UDP-ANSWERED|RAW-OPENED|V6-CONNECTED/, u.stdout);
    // A datagram ICMP socket may open (ping_group_range) but nothing may come back or get out.
    assert.deepEqual(await net.canaryHits(), []);
  });

  test('the host, link-local addresses and other sandboxes are unreachable', async () => {
    const gw = await sh(s.id, "awk '/nameserver/ {print $2}' /etc/resolv.conf");
    const gateway = gw.stdout.trim();
    const otherIp = (await sh(other.id, "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('203.0.113.1', 9)); print(s.getsockname()[0])\"")).stdout.trim();
    assert.match(otherIp, /^\d+\.\d+\.\d+\.\d+$/);
    // A listener in the other sandbox that reports any connection it gets.
    await engine.execBackground(admin, other.id, { cmd: ['python3', '-c', 'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8000)); s.listen()\nwhile True:\n  c,a=s.accept(); open("/work/hit","a").write(str(a)+"\\n"); c.close()'] });
    await new Promise((r) => setTimeout(r, 300));
    const r = await sh(s.id, [
      curl(`http://${gateway}:22/`), curl(`http://${gateway}/`), curl('http://203.0.113.254/'),
      curl(`http://${otherIp}:8000/`), curl('http://169.254.77.77/'), curl('http://10.254.254.1/'),
      curl(`-H "Host: a.test" http://${otherIp}:8000/`),
    ].join('; '));
    // The last one carries an allowed Host: the proxy dials a.test's own address (nothing listens
    // on 8000 there), never the other sandbox.
    assert.equal(r.stdout.match(/FAIL/g)?.length ?? 0, 7, r.stdout);
    const hit = await sh(other.id, 'cat /work/hit 2>/dev/null || true');
    assert.equal(hit.stdout, '', 'the other sandbox was reached');
    assert.deepEqual(await net.canaryHits(), []);
  });

  test('a root process cannot route, rewrite DNS or reconfigure its way out', async () => {
    const r = await sh(s.id, [
      'echo "nameserver 203.0.113.53" > /etc/resolv.conf 2>/dev/null && echo RESOLV-WRITTEN',
      curl('http://b.test/'),
      // A private resolver query straight to the fixture's DNS: dropped.
      `python3 -c "import socket; u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1); u.sendto(b'x'*20, ('203.0.113.53', 53)); print(u.recvfrom(100))" 2>&1 | tail -1`,
    ].join('; '));
    assert.doesNotMatch(r.stdout, /RESOLV-WRITTEN/);
    assert.doesNotMatch(r.stdout, /hello from/);
    // busybox's ip (tiny template) tries the kernel directly.
    const t = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 120, network: { allow: ['a.test'] } });
    ids.push(t.id);
    const k = await engine.exec(admin, t.id, {
      cmd: ['/bin/sh', '-c', [
        'ip route add 203.0.113.0/24 dev eth0 2>&1 && echo ROUTE-ADDED',
        'ip addr add 10.213.255.250/32 dev eth0 2>&1 && echo ADDR-ADDED',
        'ip link set eth0 down 2>&1 && echo LINK-DOWN',
        'ip link add x0 type dummy 2>&1 && echo LINK-ADDED',
        'unshare -n true 2>&1 && echo UNSHARED || true',
        'ls /sys/class/net',
      ].join('; ')],
    });
    assert.doesNotMatch(k.stdout, /ROUTE-ADDED|ADDR-ADDED|LINK-DOWN|LINK-ADDED/, k.stdout);
    assert.match(k.stdout, /eth0/);
    // The allowed name still works after all that, through the host only. (busybox's wget is
    // static glibc and cannot resolve; nc to any address with an allowed Host goes the same way.)
    const ok = await engine.exec(admin, t.id, { cmd: ['/bin/sh', '-c', 'printf "GET / HTTP/1.0\\r\\nHost: a.test\\r\\n\\r\\n" | nc -w 5 203.0.113.11 80 || echo FAIL'] });
    assert.match(ok.stdout, /hello from 203\.0\.113\.10/);
    await engine.killSandbox(admin, t.id);
  });

  test('SNI or Host spoofing reaches only the allowed name\'s own address', async () => {
    await engine.writeFile(admin, s.id, '/work/ca.pem', Buffer.from(net.caPem));
    const r = await sh(s.id, [
      // DNS pinned to b.test's address, SNI/Host say a.test: the proxy dials a.test's address.
      curl('--cacert /work/ca.pem --resolve a.test:443:203.0.113.11 https://a.test/'),
      curl('-H "Host: a.test" http://203.0.113.11/'),
    ].join('; '));
    assert.equal(r.stdout.match(/hello from 203\.0\.113\.10 host=a\.test/g)?.length, 2, r.stdout);
    const log = await net.serverLog();
    assert.ok(!log.some((l) => l.address === '203.0.113.11' && l.from.startsWith('10.213.')), 'b.test was reached');
  });

  test('every verdict is an event with its fields', async () => {
    await sh(s.id, `${curl('http://a.test/')}; ${curl('http://b.test/')}; ${curl('-H "Host: b.test" http://203.0.113.11/')}`);
    const dns = await waitFor(() => {
      const e = netEvents(s.id, 'net.dns');
      return e.some((x) => x.data.name === 'b.test') ? e : undefined;
    }, 'dns events');
    const a = dns.find((e) => e.data.name === 'a.test' && e.data.qtype === 'A')!;
    assert.equal(a.data.verdict, 'allow');
    assert.deepEqual(a.data.answers, ['203.0.113.10']);
    const b = dns.find((e) => e.data.name === 'b.test')!;
    assert.equal(b.data.verdict, 'not-allowed');
    assert.equal(b.data.rcode, 'NXDOMAIN');
    const conns = await waitFor(() => {
      const e = netEvents(s.id, 'net.connect');
      return e.some((x) => x.data.verdict === 'allow') && e.some((x) => x.data.name === 'b.test') ? e : undefined;
    }, 'connect events');
    const ok = conns.find((e) => e.data.verdict === 'allow' && e.data.name === 'a.test')!;
    assert.equal(ok.data.address, '203.0.113.10');
    assert.equal(ok.data.port, 80);
    assert.ok((ok.data.bytesIn as number) > 0 && (ok.data.bytesOut as number) > 0);
    assert.equal(typeof ok.data.durationMs, 'number');
    const no = conns.find((e) => e.data.name === 'b.test')!;
    assert.equal(no.data.verdict, 'not-allowed');
    assert.equal(no.data.port, 80);
  });
});

describe('gvisor tier', () => {
  test('the same policy holds: a.test over HTTP(S), nothing else, no escape by reconfiguring', async () => {
    const s = await engine.createSandbox(admin, { runtime: 'gvisor', template: 'base', timeoutSeconds: 120, network: { allow: ['a.test'] } });
    ids.push(s.id);
    await engine.writeFile(admin, s.id, '/work/ca.pem', Buffer.from(net.caPem));
    const r = await sh(s.id, [
      curl('http://a.test/'), curl('--cacert /work/ca.pem https://a.test/'),
      curl('http://b.test/'), curl('http://203.0.113.11/'), curl('-H "Host: a.test" http://203.0.113.11/'),
      curl('http://169.254.77.77/'), curl('http://10.254.254.1/'),
    ].join('; '));
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /hello from 203\.0\.113\.10 host=a\.test/, r.stdout + r.stderr);
    assert.match(lines[1]!, /hello from 203\.0\.113\.10 host=a\.test/);
    assert.match(lines[2]!, /FAIL/);
    assert.match(lines[3]!, /FAIL/);
    assert.match(lines[4]!, /hello from 203\.0\.113\.10/); // the proxy dials a.test's own address
    assert.match(lines[5]!, /FAIL/);
    assert.match(lines[6]!, /FAIL/);
    const u = await py(s.id, `
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1.5)
u.sendto(b"x" * 20, ("203.0.113.53", 53))
try: u.recvfrom(512); print("UDP-ANSWERED")
except OSError: print("udp-dropped")
try: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print("RAW-OPENED")
except OSError as e: print("raw-refused", e.errno)
`);
    assert.doesNotMatch(u.stdout, /UDP-ANSWERED|RAW-OPENED/, u.stdout);
    assert.deepEqual(await net.canaryHits(), []);
    assert.ok(netEvents(s.id, 'net.dns').some((e) => e.data.name === 'a.test' && e.data.verdict === 'allow'));
    await assert.rejects(engine.updateNetwork(admin, s.id, { allow: [] }).then(() => engine.updateNetwork(admin, s.id, { allow: ['a.test'] })), (e: { status?: number }) => e.status === 422);
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(networkLeftovers(dataDir, [s.id]), []);
  });
});

describe('rebinding and refused ranges', () => {
  test('allowed names that resolve to loopback, private, link-local or host addresses are refused', async () => {
    const s = await sandbox(['private.test', 'linklocal.test', 'metadata.test', 'loop.test', 'hostaddr.test']);
    const port = net.loopbackCanaryPort;
    const r = await sh(s.id, [
      curl('http://private.test/'), curl('http://linklocal.test/'), curl('http://metadata.test/'),
      curl('http://hostaddr.test/'),
      // 127.0.0.1 in the sandbox is its own loopback: this one never leaves it...
      curl(`http://loop.test:${port}/`),
      // ...so ask the proxy for it by name: it must refuse, not dial the host's loopback.
      curl(`-H "Host: loop.test:${port}" http://203.0.113.10:${port}/`),
    ].join('; '));
    assert.equal(r.stdout.match(/FAIL/g)?.length, 6, r.stdout);
    assert.deepEqual(await net.canaryHits(), [], 'a canary was reached');
    const events = await waitFor(() => {
      const e = netEvents(s.id, 'net.connect');
      return e.length >= 5 ? e : undefined;
    }, 'five refusals');
    const reasons = Object.fromEntries(events.map((e) => [e.data.name, e.data.reason]));
    assert.equal(reasons['private.test'], 'private');
    assert.equal(reasons['linklocal.test'], 'link-local');
    assert.equal(reasons['metadata.test'], 'link-local');
    assert.equal(reasons['loop.test'], 'loopback');
    assert.equal(reasons['hostaddr.test'], 'host-address');
    for (const e of events) assert.equal(e.data.verdict, 'refused');
    await engine.killSandbox(admin, s.id);
  });
});

describe('policy changes', () => {
  test('wildcards, ports, deny wins, CIDR rules for non-HTTP protocols', async () => {
    const s = await sandbox(['*.w.test', 'a.test:8080', '203.0.113.20/32:2222'], { deny: ['y.w.test'] });
    const r = await sh(s.id, [
      curl('http://x.w.test/'), curl('http://y.w.test/'), curl('http://w.test/'),
      curl('http://a.test:8080/'), curl('http://a.test/'),
      'python3 -c "import socket; c=socket.create_connection((\'203.0.113.20\', 2222), timeout=3); print(c.recv(64))"',
    ].join('; '));
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /hello from 203\.0\.113\.12 host=x\.w\.test/);
    assert.match(lines[1]!, /FAIL/);
    assert.match(lines[2]!, /FAIL/); // *.w.test does not include w.test itself
    assert.match(lines[3]!, /hello from 203\.0\.113\.10 host=a\.test:8080/);
    assert.match(lines[4]!, /FAIL/);
    assert.match(lines[5]!, /SSH-2\.0-airlock-fixture/);
    await engine.killSandbox(admin, s.id);
  });

  test('PATCH grants and revokes live; an open connection to a newly denied host is cut', async () => {
    const s = await sandbox(['a.test']);
    assert.match((await sh(s.id, curl('http://b.test/'))).stdout, /FAIL/);
    await engine.updateNetwork(admin, s.id, { allow: ['a.test', 'b.test'] });
    assert.match((await sh(s.id, curl('http://b.test/'))).stdout, /hello from 203\.0\.113\.11/);
    // A slow reader of a long download from a.test stays connected while a.test gets denied.
    // Its receive buffer is tiny, so the cut shows at once instead of after megabytes of backlog.
    const reader = [
      'import socket, time',
      's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)',
      's.connect((socket.gethostbyname("a.test"), 80))',
      's.sendall(b"GET /bytes/50000000 HTTP/1.1\\r\\nHost: a.test\\r\\n\\r\\n")',
      'n = 0',
      'try:',
      '    while True:',
      '        d = s.recv(2048)',
      '        if not d: r = "eof"; break',
      '        n += len(d); time.sleep(0.005)',
      'except OSError as e: r = "error %s" % e.errno',
      'open("/work/dl", "w").write("%s %d" % (r, n))',
    ].join('\n');
    await engine.execBackground(admin, s.id, { cmd: ['python3', '-c', reader] });
    await waitFor(() => (netEvents(s.id, 'net.dns').some((e) => e.data.name === 'a.test') ? true : undefined), 'the download to start');
    await new Promise((r) => setTimeout(r, 500));
    const res = await engine.updateNetwork(admin, s.id, { deny: ['a.test'] });
    assert.equal(res.cut, 1);
    assert.deepEqual(res.network.deny, ['a.test']);
    const dl = await (async () => {
      for (let i = 0; i < 100; i++) {
        const r = await sh(s.id, 'cat /work/dl 2>/dev/null || true');
        if (r.stdout.trim()) return r.stdout.trim();
        await new Promise((x) => setTimeout(x, 100));
      }
      return 'still running';
    })();
    const [how, got] = dl.split(' ');
    assert.ok((how === 'error' || how === 'eof') && Number(dl.split(' ').at(-1)) < 50_000_000, `the download must have been cut, got: ${dl} ${got}`);
    const cut = netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'cut');
    assert.ok(cut, 'a cut event');
    assert.equal(cut.data.name, 'a.test');
    assert.match((await sh(s.id, curl('http://a.test/'))).stdout, /FAIL/);
    // Taking the network away removes the link; giving it back plumbs a new one.
    await engine.updateNetwork(admin, s.id, { allow: [] });
    assert.equal((await sh(s.id, 'ls /sys/class/net')).stdout.trim(), 'lo');
    assert.deepEqual(networkLeftovers(dataDir, [s.id]), []);
    await engine.updateNetwork(admin, s.id, { allow: ['b.test'], deny: [] });
    assert.match((await sh(s.id, curl('http://b.test/'))).stdout, /hello from 203\.0\.113\.11/);
    const updates = engine.listEvents(admin, { sandbox: s.id, type: 'network.updated' });
    assert.equal(updates.length, 4);
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(networkLeftovers(dataDir, [s.id]), []);
  });

  test('a sandbox without network can be given one live', async () => {
    const s = await engine.createSandbox(admin, { template: 'base', timeoutSeconds: 120 });
    ids.push(s.id);
    await engine.updateNetwork(admin, s.id, { allow: ['a.test'] });
    assert.match((await sh(s.id, curl('http://a.test/'))).stdout, /hello from 203\.0\.113\.10/);
    await engine.killSandbox(admin, s.id);
  });

  test('bad policies are 400s and change nothing', async () => {
    const s = await sandbox(['a.test']);
    for (const bad of [{ allow: ['http://a.test/'] }, { allow: ['a.test:99999'] }, { deny: ['2001:db8::/32'] }, { allow: 'a.test' }, { bandwidthMbps: -1 }]) {
      await assert.rejects(engine.updateNetwork(admin, s.id, bad as never), (e: { status?: number }) => e.status === 400, JSON.stringify(bad));
    }
    await assert.rejects(engine.createSandbox(admin, { network: { allow: ['a..test'] } }), (e: { status?: number }) => e.status === 400);
    assert.deepEqual(engine.getSandbox(admin, s.id).network, { allow: ['a.test'], deny: [] });
    await assert.rejects(engine.updateNetwork(admin, 'nosuchsandbx', { allow: [] }), (e: { status?: number }) => e.status === 404);
    await engine.killSandbox(admin, s.id);
  });

  test('a bulk transfer (handed to the kernel relay) is intact and counted exactly', async () => {
    const s = await sandbox(['big.test']);
    const size = 8 * 1024 * 1024;
    const r = await sh(s.id, `curl -sS http://big.test/bytes/${size} | wc -c`);
    assert.equal(r.stdout.trim(), String(size), r.stderr);
    const ev = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'allow'), 'the connect event');
    const bytesIn = ev.data.bytesIn as number;
    assert.ok(bytesIn > size && bytesIn < size + 4096, `bytesIn ${bytesIn} for a ${size}-byte body`);
    assert.ok((ev.data.bytesOut as number) > 50 && (ev.data.bytesOut as number) < 1024);
    // The same through a CONNECT tunnel: HTTP inside is guarded, the download relayed one way.
    const proxy = "http://$(awk '/nameserver/ {print $2}' /etc/resolv.conf):3128";
    const t = await sh(s.id, `curl -sS -p -x ${proxy} http://big.test/bytes/${size} | wc -c`);
    assert.equal(t.stdout.trim(), String(size), t.stderr);
    const tev = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'allow' && e.data.mode === 'explicit'), 'the tunnel event');
    const tin = tev.data.bytesIn as number;
    assert.ok(tin > size && tin < size + 4096, `bytesIn ${tin} through the tunnel`);
    assert.ok((tev.data.bytesOut as number) > 50 && (tev.data.bytesOut as number) < 1024);
    await engine.killSandbox(admin, s.id);
  });

  test('keep-alive: each request must name the allowed host, also after the relay took the download', async () => {
    const s = await sandbox(['big.test']);
    const size = 4 * 1024 * 1024;
    const r = await py(s.id, [
      'import http.client',
      "c = http.client.HTTPConnection('big.test', 80, timeout=5)",
      `c.request('GET', '/bytes/${size}'); print(len(c.getresponse().read()))`,
      "c.request('GET', '/'); print(c.getresponse().read().decode().strip())",
      // The same connection, now for a host the policy never allowed: a virtual-hosting front would route it.
      'try:',
      "    c.request('GET', '/', headers={'Host': 'b.test'}); print(c.getresponse().read().decode().strip())",
      'except Exception as e:',
      "    print('cut', type(e).__name__)",
    ].join('\n'));
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[0], String(size), r.stderr);
    assert.match(lines[1]!, /^hello from 203\.0\.113\.\d+ host=big\.test$/);
    assert.match(lines[2]!, /^cut /, r.stdout);
    const ev = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'cut'), 'the cut event');
    assert.deepEqual({ reason: ev.data.reason, requestedName: ev.data.requestedName, name: ev.data.name }, { reason: 'host-changed', requestedName: 'b.test', name: 'big.test' });
    assert.ok((ev.data.bytesIn as number) > size, `bytesIn ${String(ev.data.bytesIn)}`);
    await engine.killSandbox(admin, s.id);
  });

  test('keep-alive uploads: a big body goes by the relay intact and counted; the next request is still checked', async () => {
    const s = await sandbox(['big.test']);
    const size = 3 * 1024 * 1024 + 7;
    const r = await py(s.id, [
      'import http.client, hashlib, os',
      `body = os.urandom(${size})`,
      "c = http.client.HTTPConnection('big.test', 80, timeout=10)",
      "c.request('POST', '/upload', body=body); print(c.getresponse().read().decode().strip())",
      'print(hashlib.sha256(body).hexdigest())',
      // A body is data, never requests: one full of requests for another host passes as a body.
      "inner = b'GET / HTTP/1.1\\r\\nHost: b.test\\r\\n\\r\\n' * 20000",
      "c.request('PUT', '/upload', body=inner); print(c.getresponse().read().decode().strip())",
      'print(len(inner), hashlib.sha256(inner).hexdigest())',
      "c.request('GET', '/'); print(c.getresponse().read().decode().strip())",
      'try:',
      "    c.request('GET', '/', headers={'Host': 'b.test'}); print(c.getresponse().read().decode().strip())",
      'except Exception as e:',
      "    print('cut', type(e).__name__)",
    ].join('\n'));
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 6, r.stdout + r.stderr);
    assert.equal(lines[0], `${size} ${lines[1]} host=big.test`);
    const [innerSize, innerSha] = lines[3]!.split(' ');
    assert.equal(lines[2], `${innerSize} ${innerSha} host=big.test`);
    assert.match(lines[4]!, /^hello from 203\.0\.113\.\d+ host=big\.test$/);
    assert.match(lines[5]!, /^cut /, r.stdout);
    const ev = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'cut'), 'the cut event');
    assert.deepEqual({ reason: ev.data.reason, requestedName: ev.data.requestedName }, { reason: 'host-changed', requestedName: 'b.test' });
    const out = ev.data.bytesOut as number;
    const bodies = size + Number(innerSize);
    assert.ok(out > bodies && out < bodies + 4096, `bytesOut ${out} for ${bodies} body bytes`);
    await engine.killSandbox(admin, s.id);
  });

  test('a lent body: an early EOF reaches the server after what was sent; a policy change cuts it mid-upload', async () => {
    const s = await sandbox(['big.test']);
    const partial = [
      'import socket, os, sys, time',
      "s = socket.create_connection(('big.test', 80))",
      "s.sendall(b'POST /upload HTTP/1.1\\r\\nHost: big.test\\r\\nContent-Length: 3145728\\r\\n\\r\\n')",
      's.sendall(os.urandom(1048576))',
    ];
    // Half of the body, then EOF: the server reads exactly that (and refuses the short body).
    const eof = await py(s.id, [
      ...partial,
      's.shutdown(socket.SHUT_WR)',
      's.settimeout(10)',
      "got = b''",
      'while True:',
      '    d = s.recv(65536)',
      '    if not d: break',
      '    got += d',
      'print(got.split(b"\\r\\n")[0].decode())',
    ].join('\n'));
    assert.equal(eof.stdout.trim(), 'HTTP/1.1 400 Bad Request', eof.stderr);
    const ended = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'allow'), 'the event');
    assert.equal(ended.data.bytesOut, 66 + 1048576);
    // Half of the body, a pause (the relay holds the loan), then big.test is denied.
    const upload = py(s.id, [
      ...partial,
      'time.sleep(3)',
      'try:',
      '    s.sendall(os.urandom(1048576)); s.settimeout(5); print(s.recv(100))',
      'except Exception as e:',
      "    print('cut', type(e).__name__)",
    ].join('\n'));
    // The python sends at once and then sleeps 3 s: 1.5 s in, the loan is surely under way.
    await new Promise((r) => setTimeout(r, 1500));
    await engine.updateNetwork(admin, s.id, { deny: ['big.test'] });
    const r = await upload;
    assert.match(r.stdout.trim(), /^cut /, r.stdout + r.stderr);
    const cut = await waitFor(() => netEvents(s.id, 'net.connect').find((e) => e.data.verdict === 'cut'), 'the cut event');
    assert.equal(cut.data.reason, 'policy-changed');
    assert.equal(cut.data.bytesOut, 66 + 1048576);
    await engine.killSandbox(admin, s.id);
  });

  test('bandwidth cap', async () => {
    const s = await sandbox(['big.test'], { bandwidthMbps: 16 });
    // 4 MiB at 16 Mbit/s takes about 2 s; without the cap it takes milliseconds.
    const r = await sh(s.id, 'curl -sS -o /dev/null -w "%{time_total} %{size_download}" http://big.test/bytes/4194304');
    assert.equal(r.exitCode, 0, r.stderr);
    const [seconds, size] = r.stdout.trim().split(' ').map(Number);
    // Whole: the shaper's bucket holds a full frame of the sandbox's large-MTU link.
    assert.equal(size, 4194304);
    assert.ok(seconds! > 1.2, `4 MiB took ${seconds}s under a 16 Mbit/s cap`);
    // And the other way: 3 MiB up takes about 1.6 s.
    const up = await sh(s.id, 'head -c 3145728 /dev/zero | tr "\\0" x | curl -sS -o /dev/null -w "%{time_total} %{size_upload}" --data-binary @- http://big.test/echo');
    assert.equal(up.exitCode, 0, up.stderr);
    const [upSeconds, upSize] = up.stdout.trim().split(' ').map(Number);
    assert.equal(upSize, 3145728);
    assert.ok(upSeconds! > 1.0, `3 MiB up took ${upSeconds}s under a 16 Mbit/s cap`);
    await engine.killSandbox(admin, s.id);
  });
});

describe('host cleanliness', () => {
  test('kill, crash of the owning engine, and reconcile leave nothing', async () => {
    const s = await sandbox(['a.test']);
    assert.ok(existsSync(`/run/netns/airlock-${s.id}`));
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(networkLeftovers(dataDir, [s.id]), []);

    // Another engine on its own data dir makes a networked sandbox, then its data dir vanishes
    // without a clean stop: the next engine to start removes the orphaned network objects.
    const otherDir = tempDataDir('net-orphan');
    const other = await Engine.open({ dataDir: otherDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
    const o = await other.createSandbox(admin, { template: 'tiny', timeoutSeconds: 60, network: { allow: ['a.test'] } });
    assert.ok(existsSync(`/sys/class/net/alk${o.id}`));
    await other.close();
    removeDataDir(otherDir); // kills its container, but its veth, namespace name and rules stay
    assert.ok(existsSync(`/run/netns/airlock-${o.id}`) || existsSync(`/sys/class/net/alk${o.id}`));
    const third = await Engine.open({ dataDir: tempDataDir('net-reconcile'), templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
    await third.close();
    removeDataDir(third.dataDir);
    assert.deepEqual(networkLeftovers(otherDir, [o.id]), []);
  });

  test('an engine restart adopts a networked sandbox and re-points its rules', async () => {
    const s = await sandbox(['a.test']);
    await engine.close();
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
    const r = await sh(s.id, curl('http://a.test/'));
    assert.match(r.stdout, /hello from 203\.0\.113\.10/);
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(networkLeftovers(dataDir, [s.id]), []);
  });

  test('the shared table goes when the last networked sandbox does', async () => {
    for (const s of engine.listSandboxes(admin)) if (s.state === 'running') await engine.killSandbox(admin, s.id);
    const tables = execFileSync('nft', ['list', 'tables']).toString();
    assert.doesNotMatch(tables, /inet airlock\b/);
    assert.equal(readdirSync('/sys/class/net').filter((n) => n.startsWith('alk')).length, 0);
  });
});
