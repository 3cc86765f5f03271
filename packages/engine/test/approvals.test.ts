/**
 * Approvals on a real engine with real sandboxes: where a policy says ask, the action waits for
 * a decision. Unanswered it is denied after the timeout; denied or expired, it leaves nothing
 * behind; approved, it goes ahead (re-judged against the policy and quotas as they are then).
 * Egress runs against the test internet (net-fixture.ts) with the base template's curl.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ApprovalInfo, Caller } from '../src/engine-api.js';
import { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import type { ExecResult } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, loopDevicesUnder, networkLeftovers, removeDataDir, sandboxIdsIn, tempDataDir, TEMPLATES_DIR } from './support.js';

const ADMIN: Caller = { tenant: null, scope: 'admin', keyId: 'a0a0a0a0a0a0' };
const TENANT = 'apr';
const T: Caller = { tenant: TENANT, scope: 'tenant', keyId: 'b1b1b1b1b1b1' };

const isError = (status: number, code: string) => (e: AirlockError) => {
  assert.equal(e.status, status, e.message);
  assert.equal(e.code, code, e.message);
  return true;
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The first pending request matching `match`, once it appears. */
async function pending(engine: Engine, match: (a: ApprovalInfo) => boolean = () => true, ms = 10_000): Promise<ApprovalInfo> {
  const deadline = Date.now() + ms;
  for (;;) {
    const a = engine.listApprovals(ADMIN, { state: 'pending' }).find(match);
    if (a) return a;
    if (Date.now() > deadline) throw new Error('no pending approval appeared');
    await sleep(25);
  }
}

interface WebhookHit { headers: http.IncomingHttpHeaders; body: string }

describe('approvals: create and lifetime', () => {
  let engine: Engine;
  let dataDir: string;
  let hostDir: string;
  let hook: http.Server;
  const hits: WebhookHit[] = [];
  const secret = 'webhook-secret-for-tests';
  const ids: string[] = [];

  before(async () => {
    hook = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
    dataDir = tempDataDir('approvals');
    hostDir = mkdtempSync(join(tmpdir(), 'airlock-approvals-host-'));
    chmodSync(hostDir, 0o777); // the sandbox's root is an unprivileged user on the host
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, approvals: { webhookUrl: url, webhookSecret: secret } });
    engine.createTenant(ADMIN, TENANT);
    engine.setPolicy(ADMIN, TENANT, {
      approvals: { readWriteMount: 'ask', lifetimeAbove: { seconds: 600, action: 'ask' }, timeoutSeconds: 2 },
      quotas: { maxSandboxes: 1 },
    });
  });

  after(async () => {
    try {
      if (engine) await closeAndClean(engine, dataDir, ids);
    } finally {
      if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
      rmSync(hostDir, { recursive: true, force: true });
      await new Promise((r) => hook?.close(r));
    }
  });

  const rwSpec = () => ({ template: 'tiny', timeoutSeconds: 60, mounts: [{ source: hostDir, target: '/mnt/h', readOnly: false }] });
  const quotaUsed = () => engine.testPolicy(ADMIN, { tenant: TENANT, spec: { template: 'tiny' } }).rules.find((r) => r.rule === 'quotas.maxSandboxes')!.used;

  test('an approval nobody answers denies after the timeout, and the create leaves no state', async () => {
    const before = { sandboxes: engine.listSandboxes(ADMIN).length, dirs: sandboxIdsIn(dataDir).length, loops: loopDevicesUnder(dataDir).length, used: quotaUsed() };
    const t0 = Date.now();
    const err = await engine.createSandbox(T, rwSpec()).then(() => null, (e: AirlockError) => e);
    const waited = Date.now() - t0;
    assert.ok(err, 'the create must be refused');
    isError(422, 'approval_denied')(err);
    assert.match(err.message, /expired unanswered/);
    assert.ok(waited >= 1900 && waited < 6000, `waited ${waited} ms for a 2 s timeout`);
    const id = String(err.details?.approval);
    const a = engine.getApproval(ADMIN, id);
    assert.equal(a.state, 'expired');
    assert.equal(a.kind, 'mount_rw');
    assert.equal(a.action, 'create');
    assert.equal(a.sandbox, null);
    assert.equal(a.requestedBy, T.keyId);
    assert.deepEqual(a.subject.mounts, [{ source: hostDir, target: '/mnt/h' }]);
    const events = engine.listEvents(ADMIN, { type: 'approval.expired' }).filter((e) => e.data.id === id);
    assert.equal(events.length, 1);
    // No partial state: no record, no sandbox dir, no layer, no quota use.
    assert.equal(engine.listSandboxes(ADMIN).length, before.sandboxes);
    assert.equal(sandboxIdsIn(dataDir).length, before.dirs);
    assert.equal(loopDevicesUnder(dataDir).length, before.loops);
    assert.equal(quotaUsed(), before.used);
    // Too late to decide now.
    assert.throws(() => engine.approveApproval(ADMIN, id), isError(409, 'conflict'));
  });

  test('approved, the create goes ahead with its rw mount; the webhook got a signed request', async () => {
    const creating = engine.createSandbox(T, rwSpec());
    const a = await pending(engine, (x) => x.action === 'create');
    const decided = engine.approveApproval(ADMIN, a.id, { reason: 'looks fine' });
    assert.equal(decided.state, 'approved');
    assert.equal(decided.decidedBy, ADMIN.keyId);
    const s = await creating;
    ids.push(s.id);
    try {
      await checkApprovedSandbox(s.id, a);
    } finally {
      await engine.killSandbox(T, s.id).catch(() => {});
    }
  });

  async function checkApprovedSandbox(id: string, a: ApprovalInfo): Promise<void> {
    const s = engine.getSandbox(T, id);
    assert.equal(s.state, 'running');
    const w = await engine.exec(T, s.id, { cmd: ['/bin/sh', '-c', 'echo hi > /mnt/h/out && cat /mnt/h/out'] });
    assert.equal(w.stdout, 'hi\n', w.stderr);
    const ev = engine.listEvents(ADMIN, { type: 'approval.approved' }).find((e) => e.data.id === a.id)!;
    assert.equal(ev.data.by, ADMIN.keyId);
    assert.equal(ev.data.reason, 'looks fine');

    const hit = hits.find((h) => JSON.parse(h.body).id === a.id);
    assert.ok(hit, 'the webhook was called');
    const expected = `sha256=${createHmac('sha256', secret).update(hit.body).digest('hex')}`;
    assert.equal(hit.headers['x-airlock-signature'], expected);
    const body = JSON.parse(hit.body);
    assert.deepEqual(Object.keys(body).sort(), ['action', 'expiresAt', 'id', 'kind', 'requestedAt', 'sandbox', 'subject', 'tenant']);
    assert.equal(body.tenant, TENANT);
    assert.equal(body.kind, 'mount_rw');

    // Lifetime: above the threshold it waits. Denied: refused, the expiry unchanged.
    const expiresAt = engine.getSandbox(T, s.id).expiresAt;
    const extending = engine.setSandboxTimeout(T, s.id, 3600).then(() => null, (e: AirlockError) => e);
    const ask = await pending(engine, (x) => x.sandbox === s.id);
    assert.equal(ask.kind, 'lifetime');
    assert.ok(ask.subject.lifetimeSeconds! >= 3600);
    engine.denyApproval(T, ask.id, { reason: 'too long' }); // a tenant key may deny its own
    const refused = await extending;
    assert.ok(refused);
    isError(422, 'approval_denied')(refused);
    assert.match(refused.message, /too long/);
    assert.equal(engine.getSandbox(T, s.id).expiresAt, expiresAt, 'a denied extension changes nothing');

    // Approved: extended by exactly what was asked.
    const t0 = Date.now();
    const extended = engine.setSandboxTimeout(T, s.id, 3600);
    engine.approveApproval(ADMIN, (await pending(engine, (x) => x.sandbox === s.id)).id);
    const info = await extended;
    const remaining = Date.parse(info.expiresAt) - t0;
    assert.ok(remaining > 3_590_000 && remaining <= 3_601_000, `remaining ${remaining}`);
  }

  test('denied, nothing is created; approval re-checks the quotas as they are then', async () => {
    const creating = engine.createSandbox(T, rwSpec()).then(() => null, (e: AirlockError) => e);
    engine.denyApproval(ADMIN, (await pending(engine)).id);
    isError(422, 'approval_denied')((await creating)!);
    assert.equal(engine.listSandboxes(T).filter((x) => x.state === 'running').length, 0);

    // While a create waits it holds no quota: another create takes the only slot meanwhile,
    // and the approved one is then refused by the quota, still leaving nothing.
    const waiting = engine.createSandbox(T, rwSpec()).then(() => null, (e: AirlockError) => e);
    const a = await pending(engine);
    const other = await engine.createSandbox(T, { template: 'tiny', timeoutSeconds: 60 });
    ids.push(other.id);
    engine.approveApproval(ADMIN, a.id);
    isError(429, 'quota_exceeded')((await waiting)!);
    assert.equal(engine.listSandboxes(T).filter((x) => x.state === 'running').length, 1);
    await engine.killSandbox(T, other.id);
  });

  test('a live network change outside the ceiling waits; approved, it applies; what was approved is not asked again', async () => {
    const policy = engine.getPolicy(ADMIN, TENANT).document;
    engine.setPolicy(ADMIN, TENANT, { ...policy, network: { allowCeiling: ['a.example'] }, approvals: { ...policy.approvals, egressOutsideAllowlist: 'ask' } });
    const s = await engine.createSandbox(T, { template: 'tiny', timeoutSeconds: 60, network: { allow: ['a.example'] } });
    ids.push(s.id);
    try {
      const patching = engine.updateNetwork(T, s.id, { allow: ['a.example', 'b.example'] });
      const a = await pending(engine, (x) => x.sandbox === s.id);
      assert.equal(a.action, 'network');
      assert.equal(a.kind, 'egress');
      assert.deepEqual(a.subject.hosts, ['b.example']);
      engine.approveApproval(ADMIN, a.id);
      assert.deepEqual((await patching).network.allow, ['a.example', 'b.example']);
      const next = await engine.updateNetwork(T, s.id, { deny: ['c.example'] });
      assert.deepEqual(next.network.deny, ['c.example']);
      assert.equal(engine.listApprovals(ADMIN, { sandbox: s.id }).length, 1, 'b.example was not asked about again');
    } finally {
      await engine.killSandbox(T, s.id).catch(() => {});
      engine.setPolicy(ADMIN, TENANT, policy);
    }
  });

  test('scopes: read keys list, exec keys nothing, tenant keys deny but never approve, other tenants see nothing', async () => {
    engine.createTenant(ADMIN, 'apr-other');
    const read: Caller = { tenant: TENANT, scope: 'read' };
    const exec: Caller = { tenant: TENANT, scope: 'exec', sandbox: 'aaaaaaaaaaaa' };
    const other: Caller = { tenant: 'apr-other', scope: 'tenant' };
    const creating = engine.createSandbox(T, rwSpec()).then(() => null, (e: AirlockError) => e);
    const a = await pending(engine);
    assert.ok(engine.listApprovals(read).some((x) => x.id === a.id));
    assert.equal(engine.getApproval(read, a.id).id, a.id);
    assert.throws(() => engine.approveApproval(read, a.id), isError(403, 'forbidden'));
    assert.throws(() => engine.denyApproval(read, a.id), isError(403, 'forbidden'));
    assert.throws(() => engine.listApprovals(exec), isError(403, 'forbidden'));
    assert.throws(() => engine.getApproval(exec, a.id), isError(403, 'forbidden'));
    assert.throws(() => engine.approveApproval(exec, a.id), isError(403, 'forbidden'));
    assert.throws(() => engine.approveApproval(T, a.id), isError(403, 'forbidden'));
    assert.deepEqual(engine.listApprovals(other), []);
    assert.throws(() => engine.getApproval(other, a.id), isError(404, 'not_found'));
    assert.throws(() => engine.denyApproval(other, a.id), isError(404, 'not_found'));
    assert.throws(() => engine.getApproval(ADMIN, 'ffffffffffff'), isError(404, 'not_found'));
    assert.equal(engine.getApproval(ADMIN, a.id).state, 'pending', 'none of that decided anything');
    engine.denyApproval(ADMIN, a.id);
    assert.throws(() => engine.denyApproval(ADMIN, a.id), isError(409, 'conflict'));
    isError(422, 'approval_denied')((await creating)!);
  });
});

describe('approvals: egress outside the allowlist', () => {
  let net: TestInternet;
  let engine: Engine;
  let dataDir: string;
  const ids: string[] = [];

  before(async () => {
    net = await startTestInternet();
    dataDir = tempDataDir('approvals-net');
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
    engine.createTenant(ADMIN, TENANT);
    engine.setPolicy(ADMIN, TENANT, { approvals: { egressOutsideAllowlist: 'ask', timeoutSeconds: 3 } });
  });

  after(async () => {
    try {
      if (engine) await closeAndClean(engine, dataDir, ids);
    } finally {
      if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
      await net?.close();
    }
  });

  async function sandbox(): Promise<string> {
    const s = await engine.createSandbox(T, { template: 'base', timeoutSeconds: 300, network: { allow: ['a.test'] } });
    ids.push(s.id);
    return s.id;
  }

  const sh = (id: string, script: string, timeoutSeconds = 30): Promise<ExecResult> =>
    engine.exec(T, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds });

  test('approved: the waiting lookup goes through and the host is added to that sandbox only', async () => {
    const one = await sandbox();
    const two = await sandbox();
    const fetching = sh(one, 'curl -sS --max-time 20 http://b.test/ || echo "FAIL $?"');
    const a = await pending(engine, (x) => x.sandbox === one);
    assert.equal(a.kind, 'egress');
    assert.equal(a.action, 'egress');
    assert.deepEqual(a.subject.hosts, ['b.test']);
    assert.equal(a.requestedBy, null);
    engine.approveApproval(ADMIN, a.id);
    const r = await fetching;
    assert.match(r.stdout, /hello from 203\.0\.113\.11 host=b\.test/, r.stdout + r.stderr);
    assert.deepEqual(engine.getSandbox(T, one).network.allow, ['a.test', 'b.test']);
    const updated = engine.listEvents(ADMIN, { sandbox: one, type: 'network.updated' });
    assert.deepEqual(updated.at(-1)?.data.allow, ['a.test', 'b.test']);
    assert.equal(engine.listApprovals(ADMIN, { sandbox: one }).length, 1, 'DNS retries and A/AAAA questions shared one request');

    // The other sandbox of the same tenant is still refused: its own request, denied.
    const other = sh(two, 'curl -sS --max-time 20 http://b.test/ || echo "FAIL $?"');
    const b = await pending(engine, (x) => x.sandbox === two);
    engine.denyApproval(ADMIN, b.id);
    const o = await other;
    assert.match(o.stdout, /FAIL 6/, 'could not resolve: ' + o.stdout + o.stderr);
    assert.deepEqual(engine.getSandbox(T, two).network.allow, ['a.test'], 'a denied request changes nothing');
    await engine.killSandbox(T, one);
    await engine.killSandbox(T, two);
  });

  test('a proxied connection waits for the decision; unanswered, it is refused and nothing changes', async () => {
    const id = await sandbox();
    const proxy = 'http://$(awk \'/nameserver/{print $2}\' /etc/resolv.conf):3128';
    // Through the explicit proxy the sandbox never resolves the name: the connection itself waits.
    const waiting = sh(id, `curl -sS --max-time 20 -x ${proxy} http://y.w.test/ || echo "FAIL $?"`);
    const a = await pending(engine, (x) => x.sandbox === id);
    assert.equal(a.subject.port, 80);
    engine.approveApproval(ADMIN, a.id);
    const ok = await waiting;
    assert.match(ok.stdout, /hello from 203\.0\.113\.12 host=y\.w\.test/, ok.stdout + ok.stderr);

    const t0 = Date.now();
    const refused = await sh(id, `curl -sS --max-time 20 -x ${proxy} http://x.w.test/ || echo "FAIL $?"`);
    assert.ok(Date.now() - t0 >= 2500, 'it waited for the 3 s timeout');
    assert.doesNotMatch(refused.stdout, /hello from/);
    const expired = engine.listApprovals(ADMIN, { sandbox: id, state: 'expired' });
    assert.equal(expired.length, 1);
    assert.deepEqual(expired[0]!.subject.hosts, ['x.w.test']);
    assert.equal(engine.listEvents(ADMIN, { sandbox: id, type: 'approval.expired' }).length, 1);
    assert.deepEqual(engine.getSandbox(T, id).network.allow, ['a.test', 'y.w.test']);
    await engine.killSandbox(T, id);
  });

  test('a flood of lookups for unlisted names makes a bounded number of requests', async () => {
    const id = await sandbox();
    const r = await engine.exec(T, id, {
      cmd: ['python3', '-c', `
import socket, threading
def look(i):
    try: socket.gethostbyname("flood%d.example" % i)
    except OSError: pass
ts = [threading.Thread(target=look, args=(i,)) for i in range(60)]
[t.start() for t in ts]; [t.join() for t in ts]
print("done")
`], timeoutSeconds: 60,
    });
    assert.equal(r.stdout.trim(), 'done', r.stderr);
    const mine = engine.listApprovals(ADMIN, { sandbox: id, limit: 1000 });
    assert.ok(mine.length > 0 && mine.length <= 8, `${mine.length} requests for 60 names`);
    const limited = engine.listEvents(ADMIN, { sandbox: id, type: 'net.dns', limit: 10_000 }).filter((e) => e.data.approval === 'pending-limit');
    assert.ok(limited.length > 0, 'names past the limit are refused at once, and the event says why');
    await engine.killSandbox(T, id);
    assert.equal(engine.listApprovals(ADMIN, { sandbox: id, state: 'pending' }).length, 0, 'a sandbox that ends takes its requests with it');
    assert.deepEqual(networkLeftovers(dataDir, [id]), []);
  });
});
