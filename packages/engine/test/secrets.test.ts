/**
 * Secret brokering end to end: real sandboxes (base template: curl, python3), the test
 * internet's HTTPS servers, real TLS both ways. The real value must reach a.test (its only
 * host) in requests, and never be found inside a sandbox: not in its env, files, process
 * memory or responses, and never at any other host, however the code inside tries.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import { PLACEHOLDER_RE } from '../src/secrets/placeholders.js';
import type { AuditEvent, ExecResult, SandboxInfo } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import type { EchoRecord } from './net-fixture-servers.js';
import { closeAndClean, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };
const alpha = { tenant: 'alpha' };
const beta = { tenant: 'beta' };
const SECRET = `sk-test-${'4f9c2a71b3e8d605'}-REAL`;
const HDR_SECRET = 'hdr-value-9d8c7b6a5f4e';

let net: TestInternet;
let engine: Engine;
let dataDir: string;
let keyDir: string;
const ids: string[] = [];

async function sandbox(caller: { tenant: string }, spec: Record<string, unknown>): Promise<SandboxInfo> {
  const info = await engine.createSandbox(caller, { template: 'base', timeoutSeconds: 300, ...spec });
  ids.push(info.id);
  return info;
}

function sh(caller: { tenant: string }, id: string, script: string, timeoutSeconds = 60): Promise<ExecResult> {
  return engine.exec(caller, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds });
}

/** What the fixture's /echo received (read from the host, straight from the server). */
function echoLog(): Promise<EchoRecord[]> {
  return new Promise((resolve, reject) => {
    http.get('http://203.0.113.10/echo-log', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString('latin1')) as EchoRecord[]));
    }).on('error', reject);
  });
}

/** The records whose URL carries `mark` (each test tags its requests). */
async function received(mark: string): Promise<EchoRecord[]> {
  return (await echoLog()).filter((r) => r.url.includes(mark));
}

function events(id: string, type: string): AuditEvent[] {
  return engine.listEvents(admin, { sandbox: id, type, limit: 1000 });
}

before(async () => {
  net = await startTestInternet();
  dataDir = tempDataDir('secrets');
  // "Outside the database": the key lives in a directory of its own.
  keyDir = mkdtempSync(join(tmpdir(), 'airlock-test-secrets-key-'));
  engine = await Engine.open({
    dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream,
    secretsKeyFile: join(keyDir, 'secrets.key'), secretsUpstreamCa: net.caPem,
  });
  engine.createTenant(admin, 'alpha');
  engine.createTenant(admin, 'beta');
  engine.setSecret(alpha, 'API_TOKEN', { value: SECRET, hosts: ['a.test'] });
  engine.setSecret(alpha, 'HDR_TOKEN', { value: HDR_SECRET, hosts: ['a.test'], header: 'X-Api-Key: {value}' });
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, ids);
  } finally {
    if (dataDir) removeDataDir(dataDir);
    if (keyDir) rmSync(keyDir, { recursive: true, force: true });
    await net?.close();
  }
});

describe('storing secrets', () => {
  test('encrypted at rest with a 0600 key file outside the database; no API returns a value', () => {
    const key = statSync(join(keyDir, 'secrets.key'));
    assert.equal(key.mode & 0o777, 0o600);
    assert.equal(key.size, 32);
    for (const f of readdirSync(dataDir).filter((n) => n.startsWith('airlock.db'))) {
      const bytes = readFileSync(join(dataDir, f));
      assert.equal(bytes.indexOf(SECRET), -1, `${f} holds the value in clear`);
    }
    const listed = engine.listSecrets(alpha);
    assert.deepEqual(listed.map((s) => [s.name, s.hosts, s.header]), [['API_TOKEN', ['a.test'], null], ['HDR_TOKEN', ['a.test'], 'X-Api-Key: {value}']]);
    assert.ok(!JSON.stringify(listed).includes(SECRET) && !JSON.stringify(listed).includes(HDR_SECRET));
    assert.ok(!JSON.stringify(engine.listEvents(admin, { limit: 1000 })).includes(SECRET));
  });

  test('bad input is refused', () => {
    const bad = (name: string, input: unknown) => assert.throws(() => engine.setSecret(alpha, name, input as never), (e: Error & { code?: string }) => e.code === 'bad_request', JSON.stringify(input));
    bad('X', { value: 'short', hosts: ['a.test'] });
    bad('X', { value: 'line\nbreak-value', hosts: ['a.test'] });
    bad('X', { value: 'long-enough-value', hosts: [] });
    bad('X', { value: 'long-enough-value', hosts: ['203.0.113.10'] });
    bad('X', { value: 'long-enough-value', hosts: ['a.test'], header: 'Host: {value}' });
    bad('X', { value: 'long-enough-value', hosts: ['a.test'], header: 'Authorization: Bearer' });
    bad('1X', { value: 'long-enough-value', hosts: ['a.test'] });
  });

  test('tenants are isolated', async () => {
    assert.deepEqual(engine.listSecrets(beta), []);
    assert.throws(() => engine.deleteSecret(beta, 'API_TOKEN'), (e: Error & { code?: string }) => e.code === 'not_found');
    assert.throws(() => engine.setSecret(beta, 'X_TOKEN', { value: 'long-enough-value', hosts: ['a.test'] }, { tenant: 'alpha' }), (e: Error & { code?: string }) => e.code === 'not_found');
    await assert.rejects(engine.createSandbox(beta, { template: 'base', secrets: ['API_TOKEN'] }), (e: Error & { code?: string }) => e.code === 'not_found' && /secret API_TOKEN/.test(e.message));
    // The admin sees both tenants' (names only).
    assert.deepEqual(engine.listSecrets(admin).map((s) => `${s.tenant}/${s.name}`), ['alpha/API_TOKEN', 'alpha/HDR_TOKEN']);
  });
});

describe('a sandbox with secrets', () => {
  let s: SandboxInfo;
  let placeholder: string;

  before(async () => {
    s = await sandbox(alpha, { network: { allow: ['b.test'] }, secrets: ['API_TOKEN', 'HDR_TOKEN'] });
    placeholder = (await sh(alpha, s.id, 'printf %s "$API_TOKEN"')).stdout;
  });

  test('sees a placeholder in its env, and its secret hosts are allowed', () => {
    assert.match(placeholder, PLACEHOLDER_RE);
    assert.ok(placeholder.startsWith('airlock-secret-API_TOKEN-'));
    assert.deepEqual(s.network.allow.sort(), ['a.test', 'b.test']);
  });

  test('HTTPS to the secret host: the host gets the value, the sandbox sees only the placeholder', async () => {
    const r = await sh(alpha, s.id, `curl -sS -i --max-time 10 -H "Authorization: Bearer $API_TOKEN" 'https://a.test/echo?t=https1&k='"$API_TOKEN"`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.ok(!r.stdout.includes(SECRET) && !r.stdout.includes(HDR_SECRET), r.stdout);
    // The reflected request comes back with the placeholder, in the body and the x-echo-* headers.
    assert.match(r.stdout, new RegExp(`x-echo-authorization: Bearer ${placeholder}`, 'i'));
    assert.ok(r.stdout.split(placeholder).length - 1 >= 3, r.stdout);
    assert.match(r.stdout, /x-echo-x-api-key: airlock-secret-HDR_TOKEN-[0-9a-f]{32}/i, 'the template header came back as its placeholder');
    const [got] = await received('t=https1');
    assert.ok(got, 'the request reached a.test');
    const headers = Object.fromEntries(got.headers.reduce<Array<[string, string]>>((acc, v, i, a) => (i % 2 ? acc : [...acc, [v.toLowerCase(), a[i + 1]!]]), []));
    assert.equal(headers.authorization, `Bearer ${SECRET}`);
    assert.equal(headers['x-api-key'], HDR_SECRET, 'the header template was applied');
    assert.equal(headers['accept-encoding'], 'identity');
    assert.ok(got.url.endsWith(`k=${encodeURIComponent(SECRET)}`), got.url);
    const used = events(s.id, 'secret.used').map((e) => `${e.data.secret}@${e.data.host}`);
    assert.ok(used.includes('API_TOKEN@a.test') && used.includes('HDR_TOKEN@a.test'), used.join());
  });

  test('python over keep-alive, chunked upload, and reflection of the value itself', async () => {
    const r = await engine.exec(alpha, s.id, { cmd: ['python3', '-c', `
import http.client, os, ssl
t = os.environ["API_TOKEN"]
c = http.client.HTTPSConnection("a.test", context=ssl.create_default_context(), timeout=10)
for i in range(3):
    c.request("POST", "/echo?t=py%d" % i, body=iter([b"part-one-", b"part-two"]), headers={"Authorization": "Bearer " + t, "X-Reflect": t})
    body = c.getresponse().read().decode()
    print(body)
`], timeoutSeconds: 60 });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.ok(!r.stdout.includes(SECRET), r.stdout);
    const answers = r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as EchoRecord);
    assert.equal(answers.length, 3, r.stdout);
    for (const a of answers) assert.ok(a.headers.includes(`Bearer ${placeholder}`) && a.body === 'part-one-part-two', JSON.stringify(a));
    for (let i = 0; i < 3; i++) {
      const [got] = await received(`t=py${i}`);
      assert.ok(got, `request ${i} arrived`);
      assert.ok(got.headers.includes(`Bearer ${SECRET}`) && got.headers.includes(SECRET));
      assert.equal(got.body, 'part-one-part-two');
    }
  });

  test('through the HTTP proxy port (CONNECT), and a large download stays whole', async () => {
    const r = await sh(alpha, s.id, `GW=$(awk '/^nameserver/{print $2}' /etc/resolv.conf); curl -sS --max-time 10 -x "http://$GW:3128" -H "Authorization: Bearer $API_TOKEN" 'https://a.test/echo?t=connect' && curl -sS --max-time 30 https://a.test/bytes/3000000 | wc -c`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.ok(!r.stdout.includes(SECRET));
    assert.match(r.stdout, /\n3000000\n$/);
    const [got] = await received('t=connect');
    assert.ok(got?.headers.includes(`Bearer ${SECRET}`), JSON.stringify(got));
  });

  test('HTTPS to another allowed host: only the placeholder goes there', async () => {
    // Not terminated: b.test shows its own certificate (the fixture's CA).
    await engine.writeFile(alpha, s.id, '/work/fixture-ca.pem', Buffer.from(net.caPem));
    const r = await sh(alpha, s.id, `curl -sS --max-time 10 --cacert /work/fixture-ca.pem -H "Authorization: Bearer $API_TOKEN" 'https://b.test/echo?t=other-tls'`);
    assert.equal(r.exitCode, 0, r.stderr);
    const got = await received('t=other-tls');
    assert.equal(got.length, 1);
    assert.ok(got[0]!.headers.includes(`Bearer ${placeholder}`));
    assert.ok(!JSON.stringify(got).includes(SECRET));
  });

  test('plain HTTP to another host: the placeholder stays, policy.denied is raised', async () => {
    const r = await sh(alpha, s.id, `curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" 'http://b.test/echo?t=other-http'`);
    assert.equal(r.exitCode, 0, r.stderr);
    const got = await received('t=other-http');
    assert.ok(got[0]!.headers.includes(`Bearer ${placeholder}`));
    const denied = events(s.id, 'policy.denied').map((e) => e.data);
    assert.ok(denied.some((d) => d.what === 'secret' && d.secret === 'API_TOKEN' && d.host === 'b.test'), JSON.stringify(denied));
  });

  test('plain HTTP to the secret host: not swapped (values only travel over TLS), policy.denied', async () => {
    const r = await sh(alpha, s.id, `curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" 'http://a.test/echo?t=plain-secret-host'`);
    assert.equal(r.exitCode, 0, r.stderr);
    const got = await received('t=plain-secret-host');
    assert.ok(got[0]!.headers.includes(`Bearer ${placeholder}`));
    assert.ok(!JSON.stringify(got).includes(SECRET));
    const denied = events(s.id, 'policy.denied').map((e) => e.data);
    assert.ok(denied.some((d) => d.secret === 'API_TOKEN' && d.host === 'a.test' && d.reason === 'plaintext-http'), JSON.stringify(denied));
  });

  test('a request for another Host on the secret host\'s connection is refused (421)', async () => {
    const r = await sh(alpha, s.id, `curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H 'Host: b.test' -H "Authorization: Bearer $API_TOKEN" 'https://a.test/echo?t=fronted'`);
    assert.equal(r.stdout, '421', r.stderr);
    assert.equal((await received('t=fronted')).length, 0);
  });

  test('the value is nowhere inside: env, files, process memory, DNS, events', async () => {
    // A process that used the secret and still holds the response scans its own memory.
    const r = await engine.exec(alpha, s.id, { cmd: ['python3', '-c', `
import os, re, ssl, urllib.request
t = os.environ["API_TOKEN"]
req = urllib.request.Request("https://a.test/echo?t=memscan", headers={"Authorization": "Bearer " + t})
kept = urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=10).read()
# The needle in two halves: the whole value must never exist in this process unless it leaked.
def scan(h1, h2):
    found = 0
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
            if not m or "[vvar]" in line: continue
            a, b = int(m.group(1), 16), int(m.group(2), 16)
            try:
                mem.seek(a); data = mem.read(b - a)
            except OSError: continue
            i = data.find(h1)
            while i != -1:
                if data[i + len(h1):i + len(h1) + len(h2)] == h2: found += 1
                i = data.find(h1, i + 1)
    return found
print("placeholder", scan(t[:20].encode(), t[20:].encode()) > 0)
print("secret", scan(b"${SECRET.slice(0, 12)}", b"${SECRET.slice(12)}"))
`], timeoutSeconds: 60 });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /placeholder True/, 'the scanner sees what is there');
    assert.match(r.stdout, /secret 0\b/, r.stdout);
    // Files and every process's environment; the pattern matches the value without being it.
    const pattern = SECRET.replace(/L$/, '[L]');
    const g = await sh(alpha, s.id, `grep -rlE '${pattern}' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -cE '${pattern}'; grep -rl 'PRIVATE KEY' /etc /work /run /tmp /root 2>/dev/null; echo done`, 120);
    assert.equal(g.stdout.trim(), '0\ndone', g.stdout + g.stderr);
    assert.ok(!JSON.stringify(engine.listEvents(admin, { limit: 10_000 })).includes(SECRET), 'no event (net.dns included) carries it');
  });

  test('the CA the sandbox trusts is there, its key is not', async () => {
    const bundle = await sh(alpha, s.id, 'grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt; echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE');
    assert.ok(Number(bundle.stdout.split('\n')[0]) > 100, 'the template\'s own CAs are kept');
    assert.match(bundle.stdout, /\/etc\/ssl\/certs\/ca-certificates.crt \/etc\/ssl\/certs\/ca-certificates.crt/);
    const caKey = statSync(join(dataDir, 'ca', 'airlock-ca.key'));
    assert.equal(caKey.mode & 0o777, 0o600);
    assert.equal(statSync(join(dataDir, 'ca')).mode & 0o777, 0o700);
    // Neither the key file nor the CA directory can be bound into a sandbox.
    for (const source of [keyDir, join(dataDir, 'ca')]) {
      await assert.rejects(engine.createSandbox(alpha, { template: 'base', mounts: [{ source, target: '/x', readOnly: true }] }), (e: Error & { code?: string }) => e.code === 'policy_denied', source);
    }
  });

  test('another sandbox cannot use this sandbox\'s placeholder', async () => {
    // It has a secret for a.test too (so its a.test traffic is brokered), but not API_TOKEN.
    const other = await sandbox(alpha, { secrets: ['HDR_TOKEN'] });
    const r = await sh(alpha, other.id, `curl -sS --max-time 10 -H "Authorization: Bearer ${placeholder}" 'https://a.test/echo?t=stolen'`);
    assert.equal(r.exitCode, 0, r.stderr);
    const [got] = await received('t=stolen');
    assert.ok(got!.headers.includes(`Bearer ${placeholder}`), 'sent as the string it is');
    assert.ok(!JSON.stringify(got).includes(SECRET));
    await engine.killSandbox(alpha, other.id);
  });

  test('a secret host whose TLS cannot be verified gets nothing; the sandbox gets a 502', async () => {
    // ssh.test:2222 speaks SSH, not TLS: the broker's handshake with it fails before any request goes out.
    engine.setSecret(alpha, 'SSH_TOKEN', { value: 'ssh-secret-value-42', hosts: ['ssh.test'] });
    const t = await sandbox(alpha, { secrets: ['SSH_TOKEN'] });
    const r = await sh(alpha, t.id, `curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $SSH_TOKEN" https://ssh.test:2222/`);
    assert.equal(r.stdout, '502', r.stderr);
    const errors = events(t.id, 'secret.error').map((e) => e.data);
    assert.ok(errors.some((d) => d.host === 'ssh.test' && d.reason === 'upstream-tls'), JSON.stringify(errors));
    await engine.killSandbox(alpha, t.id);
    engine.deleteSecret(alpha, 'SSH_TOKEN');
  });

  for (const runtime of ['gvisor', 'microvm'] as const) {
    test(`${runtime}: the same brokering`, async (t) => {
      if (!engine.runtimes().includes(runtime)) return t.skip(`no ${runtime} here`);
      const g = await sandbox(alpha, { runtime, secrets: ['API_TOKEN'] });
      const r = await sh(alpha, g.id, `curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" 'https://a.test/echo?t=${runtime}'`);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.ok(!r.stdout.includes(SECRET));
      assert.ok(r.stdout.includes('airlock-secret-'), 'the sandbox sees its placeholder reflected');
      const [got] = await received(`t=${runtime}`);
      assert.ok(got?.headers.includes(`Bearer ${SECRET}`));
      await engine.killSandbox(alpha, g.id);
    });
  }

  test('a removed secret is not swapped any more', async () => {
    engine.setSecret(alpha, 'GONE_TOKEN', { value: 'gone-secret-value-123', hosts: ['a.test'] });
    const t = await sandbox(alpha, { secrets: ['GONE_TOKEN'] });
    engine.deleteSecret(alpha, 'GONE_TOKEN');
    // Not brokered any more: a.test shows its own certificate.
    await engine.writeFile(alpha, t.id, '/work/fixture-ca.pem', Buffer.from(net.caPem));
    const r = await sh(alpha, t.id, `curl -sS --max-time 10 --cacert /work/fixture-ca.pem -H "Authorization: Bearer $GONE_TOKEN" 'https://a.test/echo?t=gone'`);
    assert.equal(r.exitCode, 0, r.stderr);
    const [got] = await received('t=gone');
    assert.ok(!JSON.stringify(got).includes('gone-secret-value-123'));
    await engine.killSandbox(alpha, t.id);
  });
});
