/**
 * The test internet itself, from the host (which is on-link with the fixture's /24): its
 * servers answer, its DNS answers, its canaries notice, a second fixture is refused, and
 * nothing is left behind, whether it closes, fails halfway, or its process dies.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import dnsPacket from 'dns-packet';
import { startTestInternet, testInternetLeftovers, type TestInternet } from './net-fixture.js';

const FIXTURE_JS = fileURLToPath(new URL('./net-fixture.js', import.meta.url));

interface Reply {
  status: number;
  body: Buffer;
}

function get(url: string, opts: { host?: string; servername?: string; ca?: string } = {}): Promise<Reply> {
  const u = new URL(url);
  const lib = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request({
      host: u.hostname, port: u.port || undefined, path: u.pathname, agent: false, timeout: 5000,
      headers: opts.host ? { host: opts.host } : {},
      ...(opts.servername ? { servername: opts.servername } : {}),
      ...(opts.ca ? { ca: opts.ca } : {}),
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

/** Counts the bytes of a response without keeping them. */
function getLength(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get(url, { agent: false }, (res) => {
      let n = 0;
      res.on('data', (c: Buffer) => (n += c.length));
      res.on('end', () => resolve(n));
      res.on('error', reject);
    }).on('error', reject);
  });
}

function query(name: string, type: 'A' | 'AAAA'): Buffer {
  return dnsPacket.encode({ type: 'query', id: Math.floor(Math.random() * 65535), flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
}

function dnsUdp(upstream: string, name: string, type: 'A' | 'AAAA'): Promise<dnsPacket.DecodedPacket> {
  const [host, port] = upstream.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const sock = createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error('no UDP DNS answer'));
    }, 3000);
    sock.on('message', (msg) => {
      clearTimeout(timer);
      sock.close();
      resolve(dnsPacket.decode(msg));
    });
    sock.send(query(name, type), Number(port), host);
  });
}

function dnsTcp(upstream: string, name: string, type: 'A' | 'AAAA'): Promise<dnsPacket.DecodedPacket> {
  const [host, port] = upstream.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const q = query(name, type);
    const frame = Buffer.alloc(2 + q.length);
    frame.writeUInt16BE(q.length, 0);
    q.copy(frame, 2);
    const s = net.connect({ host, port: Number(port), timeout: 3000 });
    let got = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) {
        s.destroy();
        resolve(dnsPacket.decode(got.subarray(2, 2 + got.readUInt16BE(0))));
      }
    });
    s.on('timeout', () => s.destroy(new Error('no TCP DNS answer')));
    s.on('error', reject);
    s.write(frame);
  });
}

const rcode = (p: dnsPacket.DecodedPacket): string => (p as unknown as { rcode: string }).rcode;
const aData = (p: dnsPacket.DecodedPacket): unknown[] => (p.answers ?? []).map((x) => (x as dnsPacket.StringAnswer).data);

/** Connects and reports what happened: 'accepted' (then closed by the peer), or the error code. */
function knock(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 2000 });
    s.on('connect', () => {
      s.destroy();
      resolve('accepted');
    });
    s.on('timeout', () => {
      s.destroy();
      resolve('timeout');
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

function ipOut(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function assertHostClean(): void {
  assert.deepEqual(testInternetLeftovers(), []);
  assert.doesNotMatch(ipOut('netns', 'ls'), /airlock-t/);
  assert.doesNotMatch(ipOut('-4', 'route', 'show', 'table', 'all'), /10\.254\.254\.1|169\.254\.77\.77|203\.0\.113\.|198\.51\.100\./);
  assert.doesNotMatch(ipOut('link'), /\bal[tc]-/);
}

describe('a running test internet', () => {
  let tnet: TestInternet;

  before(async () => {
    assertHostClean();
    tnet = await startTestInternet({ records: { 'extra.test': '203.0.113.30' } });
  });

  after(async () => {
    await tnet?.close();
    assertHostClean();
  });

  test('HTTP on 80 and 8080 at every web address says who it is and what Host it saw', async () => {
    assert.equal((await get('http://203.0.113.10/', { host: 'a.test' })).body.toString(), 'hello from 203.0.113.10 host=a.test\n');
    assert.equal((await get('http://203.0.113.11:8080/', { host: 'b.test:8080' })).body.toString(), 'hello from 203.0.113.11 host=b.test:8080\n');
    assert.equal((await get('http://203.0.113.12/')).body.toString(), 'hello from 203.0.113.12 host=203.0.113.12\n');
    // A record in the fixture's /24 outside the fixed addresses gets servers too.
    assert.equal((await get('http://203.0.113.30/', { host: 'extra.test' })).body.toString(), 'hello from 203.0.113.30 host=extra.test\n');
    assert.equal((await get('http://203.0.113.10/nope')).status, 404);
    const echoed = JSON.parse((await get('http://203.0.113.10/echo-headers', { host: 'a.test' })).body.toString()) as Record<string, string>;
    assert.equal(echoed.host, 'a.test');
  });

  test('HTTPS verifies with the fixture CA for every record name and *.w.test, and only those', async () => {
    const ca = tnet.caPem;
    assert.equal((await get('https://203.0.113.10/', { host: 'a.test', servername: 'a.test', ca })).body.toString(), 'hello from 203.0.113.10 host=a.test\n');
    assert.equal((await get('https://203.0.113.12:8443/', { host: 'x.w.test', servername: 'x.w.test', ca })).body.toString(), 'hello from 203.0.113.12 host=x.w.test\n');
    assert.equal((await get('https://203.0.113.12/', { servername: 'anything.w.test', ca })).status, 200);
    assert.equal((await get('https://203.0.113.30/', { servername: 'extra.test', ca })).status, 200);
    await assert.rejects(get('https://203.0.113.10/', { servername: 'not-a-record.example', ca }), /altnames|ERR_TLS_CERT_ALTNAME_INVALID/);
    await assert.rejects(get('https://203.0.113.10/', { servername: 'untrusted.a.test' }), /self[- ]signed|unable to (get|verify)/i);
    // A handshake the client gave up on is still logged, with its SNI.
    const log = await tnet.serverLog();
    assert.ok(log.some((l) => l.proto === 'https' && l.host === 'untrusted.a.test'), JSON.stringify(log));
  });

  test('the server log has one entry per connection with its Host or SNI', async () => {
    await get('http://203.0.113.11/', { host: 'log-http.b.test' });
    await get('https://203.0.113.11/', { servername: 'b.test', ca: tnet.caPem });
    const log = await tnet.serverLog();
    assert.ok(log.some((l) => l.proto === 'http' && l.address === '203.0.113.11' && l.port === 80 && l.host === 'log-http.b.test' && l.from === '203.0.113.254'), JSON.stringify(log));
    assert.ok(log.some((l) => l.proto === 'https' && l.address === '203.0.113.11' && l.port === 443 && l.host === 'b.test'), JSON.stringify(log));
  });

  test('/bytes/N sends exactly N bytes', async () => {
    for (const n of [0, 1, 65536, 65537, 3_000_001]) assert.equal(await getLength(`http://203.0.113.10/bytes/${n}`), n, `/bytes/${n}`);
    assert.equal((await get(`http://203.0.113.10/bytes/${1024 ** 3 + 1}`)).status, 400);
  });

  test('DNS over UDP and TCP answers the records, NXDOMAIN otherwise, empty AAAA', async () => {
    assert.equal(tnet.dnsUpstream, '203.0.113.53:53');
    for (const ask of [dnsUdp, dnsTcp]) {
      for (const [name, addr] of Object.entries(tnet.records)) {
        const a = await ask(tnet.dnsUpstream, name, 'A');
        assert.equal(rcode(a), 'NOERROR', name);
        assert.deepEqual(aData(a), [addr], name);
      }
      assert.deepEqual(aData(await ask(tnet.dnsUpstream, 'A.TEST.', 'A')), ['203.0.113.10']);
      const nx = await ask(tnet.dnsUpstream, 'nope.test', 'A');
      assert.equal(rcode(nx), 'NXDOMAIN');
      const v6 = await ask(tnet.dnsUpstream, 'a.test', 'AAAA');
      assert.equal(rcode(v6), 'NOERROR');
      assert.equal(v6.answers?.length, 0);
    }
    assert.equal(tnet.records['hostaddr.test'], '203.0.113.254');
    assert.equal(tnet.records['extra.test'], '203.0.113.30');
  });

  test('the TCP service speaks first, then echoes', async () => {
    const s = net.connect({ host: '203.0.113.20', port: 2222 });
    let got = '';
    await new Promise<void>((resolve, reject) => {
      s.on('data', (d: Buffer) => {
        got += d.toString();
        if (got === 'SSH-2.0-airlock-fixture\r\n') s.write('ping\n');
        if (got.endsWith('ping\n')) resolve();
      });
      s.on('error', reject);
    });
    s.destroy();
    assert.equal(got, 'SSH-2.0-airlock-fixture\r\nping\n');
    assert.ok((await tnet.serverLog()).some((l) => l.proto === 'tcp' && l.address === '203.0.113.20' && l.port === 2222));
  });

  test('canaries record every connection and packet, on any port; clearCanaryHits forgets them', async () => {
    assert.deepEqual(await tnet.canaryHits(), []);
    assert.equal(await knock('10.254.254.1', 80), 'accepted');
    assert.equal(await knock('169.254.77.77', 443), 'accepted');
    assert.equal(await knock('10.254.254.1', 9999), 'ECONNREFUSED'); // no server there: still a hit
    assert.equal(await knock('127.0.0.1', tnet.loopbackCanaryPort), 'accepted');
    const u = createSocket('udp4');
    await new Promise<void>((resolve, reject) => u.send(Buffer.from('x'), 53, '169.254.77.77', (e) => (e ? reject(e) : resolve())));
    u.close();
    const hits = await tnet.canaryHits();
    for (const h of [
      { address: '10.254.254.1', port: 80, from: '198.51.100.1' },
      { address: '169.254.77.77', port: 443, from: '198.51.100.1' },
      { address: '10.254.254.1', port: 9999, from: '198.51.100.1' },
      { address: '169.254.77.77', port: 53, from: '198.51.100.1' },
      { address: '127.0.0.1', port: tnet.loopbackCanaryPort, from: '127.0.0.1' },
    ]) assert.ok(hits.some((x) => x.address === h.address && x.port === h.port && x.from === h.from), `${JSON.stringify(h)} in ${JSON.stringify(hits)}`);
    await tnet.clearCanaryHits();
    assert.deepEqual(await tnet.canaryHits(), []);
  });

  test('a second fixture is refused while one runs', async () => {
    await assert.rejects(startTestInternet(), /another test internet is running \(this process holds/);
  });

  test('bad records are refused before anything is made', async () => {
    await assert.rejects(startTestInternet({ records: { 'Bad Name': '203.0.113.10' } }), /not a lower-case DNS name/);
    await assert.rejects(startTestInternet({ records: { 'ok.test': '203.0.113.300' } }), /not an IPv4 address/);
  });

  test('throughput host → 203.0.113.10, 200 MiB with curl (measured, not asserted)', () => {
    const bytes = 209_715_200;
    const out = execFileSync('curl', ['-sS', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', '--max-time', '120', `http://203.0.113.10/bytes/${bytes}`], { encoding: 'utf8' });
    const [size, seconds] = out.trim().split(' ').map(Number) as [number, number];
    assert.equal(size, bytes);
    console.log(`net-fixture throughput: ${(bytes / 1048576 / seconds).toFixed(0)} MiB/s (200 MiB in ${seconds.toFixed(3)} s, host → 203.0.113.10 over one veth)`);
  });
});

describe('leaving nothing behind', () => {
  test('close() is idempotent', async () => {
    const t = await startTestInternet();
    await Promise.all([t.close(), t.close()]);
    await t.close();
    assertHostClean();
  });

  test('a start that fails halfway removes what it made', async () => {
    // A local blackhole route makes the fixture's canary route collide, after its namespaces,
    // links and servers' temp dir exist. A blackhole sends nothing anywhere.
    execFileSync('ip', ['route', 'add', 'blackhole', '10.254.254.1/32']);
    try {
      await assert.rejects(startTestInternet(), /ip route add 10\.254\.254\.1\/32 .*failed.*File exists/s);
    } finally {
      execFileSync('ip', ['route', 'del', 'blackhole', '10.254.254.1/32']);
    }
    assertHostClean();
  });

  test('a process that exits without close() cleans up at exit', async () => {
    const code = `const m = await import(${JSON.stringify(FIXTURE_JS)}); await m.startTestInternet(); console.log('up');`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 30_000 });
    assert.match(out, /up/);
    // Its servers exit when their stdin closes; give them a moment.
    for (let i = 0; i < 50 && testInternetLeftovers().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    assertHostClean();
  });

  test('after a killed owner: its servers die, the next start takes the stale lock and clears its leftovers', async () => {
    const code = `const m = await import(${JSON.stringify(FIXTURE_JS)}); await m.startTestInternet(); console.log('up'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('up') && resolve());
      child.on('exit', (c) => reject(new Error(`fixture process exited early (${c})`)));
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    for (let i = 0; i < 50 && testInternetLeftovers().some((l) => l.startsWith('process')); i++) await new Promise((r) => setTimeout(r, 100));
    const left = testInternetLeftovers();
    assert.ok(!left.some((l) => l.startsWith('process')), `servers outlived their owner: ${left.join(', ')}`);
    assert.ok(left.some((l) => l.startsWith('netns airlock-tnet-')) && left.some((l) => l.startsWith('lock')), left.join(', '));
    const t = await startTestInternet();
    try {
      assert.equal((await get('http://203.0.113.10/', { host: 'a.test' })).status, 200);
      assert.equal(testInternetLeftovers().filter((l) => l.startsWith('netns')).length, 2, 'only the new fixture\'s namespaces');
    } finally {
      await t.close();
    }
    assertHostClean();
  });

  test('a lock held by a live process is respected', async () => {
    const stat = readFileSync('/proc/1/stat', 'utf8');
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    writeFileSync('/run/airlock-tnet.lock', JSON.stringify({ pid: 1, start, token: 'held-by-pid-1' }), { flag: 'wx' });
    try {
      await assert.rejects(startTestInternet({ waitForLockMs: 0 }), /another test internet is running \(pid 1 holds/);
      // With a wait, it queues behind the holder and takes over once it is gone.
      setTimeout(() => rmSync('/run/airlock-tnet.lock', { force: true }), 500);
      const queued = await startTestInternet({ waitForLockMs: 10_000 });
      await queued.close();
    } finally {
      rmSync('/run/airlock-tnet.lock', { force: true });
    }
    assertHostClean();
  });
});
