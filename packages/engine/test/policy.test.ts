/**
 * Policy as code: the document schema (errors name the path), the merge of the server default
 * with a tenant's document, each rule's verdict in testPolicy, and the engine refusing creates
 * and live changes per rule with policy.denied events. Real engine, real SQLite, real sandboxes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Caller, PolicyTestResult } from '../src/engine-api.js';
import type { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import { outsideCeiling } from '../src/policy/egress-cover.js';
import { mergePolicies } from '../src/policy/merge.js';
import { parsePolicyText, validatePolicy } from '../src/policy/schema.js';
import { closeAndClean, openTestEngine, sandboxIdsIn } from './support.js';

const ADMIN: Caller = { tenant: null };
const isError = (status: number, code: string, field?: string) => (e: AirlockError) => {
  assert.equal(e.status, status, e.message);
  assert.equal(e.code, code, e.message);
  if (field !== undefined) assert.equal(e.field, field, e.message);
  return true;
};
const verdictOf = (r: PolicyTestResult, rule: string) => {
  const found = r.rules.find((x) => x.rule === rule);
  assert.ok(found, `rule ${rule} is reported`);
  return found.verdict;
};

describe('policy documents', () => {
  test('YAML and JSON parse to the same document; typos and bad values name their path', () => {
    const yaml = parsePolicyText('runtimes:\n  minimum: gvisor\nquotas:\n  maxSandboxes: 3\n');
    const json = parsePolicyText('{"runtimes": {"minimum": "gvisor"}, "quotas": {"maxSandboxes": 3}}');
    assert.deepEqual(yaml, json);
    assert.deepEqual(parsePolicyText(''), {}, 'an empty file is the empty policy');
    const cases: Array<[unknown, string, RegExp]> = [
      [{ resources: { maxMemoryMib: 256 } }, 'policy.resources.maxMemoryMib', /unknown field maxMemoryMib/],
      [{ quota: {} }, 'policy.quota', /unknown field quota/],
      [{ runtimes: { minimum: 'vm' } }, 'policy.runtimes.minimum', /runtimes\.minimum/],
      [{ network: { allowCeiling: ['ok.example', 'bad host!'] } }, 'policy.network.allowCeiling.1', /allowCeiling\.1/],
      [{ network: { allowAny: true, allowCeiling: [] } }, 'policy.network.allowAny', /not both/],
      [{ mounts: { allowedHostPrefixes: ['relative/path'] } }, 'policy.mounts.allowedHostPrefixes.0', /absolute/],
      [{ approvals: { lifetimeAbove: { seconds: 60, action: 'maybe' } } }, 'policy.approvals.lifetimeAbove.action', /action/],
      [{ quotas: { maxSandboxes: -1 } }, 'policy.quotas.maxSandboxes', /maxSandboxes/],
    ];
    for (const [doc, field, message] of cases) {
      assert.throws(() => validatePolicy(doc), (e: AirlockError) => {
        assert.equal(e.status, 400);
        assert.equal(e.field, field, e.message);
        assert.match(e.message, message);
        return true;
      }, JSON.stringify(doc));
    }
    assert.throws(() => parsePolicyText('runtimes: [unclosed'), /not valid YAML or JSON/);
  });

  test('merge: tenant fields replace the default\'s, the stronger floor wins, ceiling and allowAny exclude each other', () => {
    const base = validatePolicy({
      runtimes: { minimum: 'gvisor', default: 'gvisor' },
      resources: { maxCpus: 2, maxMemoryMiB: 1024 },
      network: { allowCeiling: ['*.example.com'], defaultDeny: ['evil.example.com'] },
      quotas: { maxSandboxes: 10 },
    });
    const tenant = validatePolicy({ runtimes: { minimum: 'container' }, resources: { maxMemoryMiB: 4096 }, network: { allowAny: true } });
    assert.deepEqual(mergePolicies(base, tenant), {
      runtimes: { minimum: 'gvisor', default: 'gvisor' },
      resources: { maxCpus: 2, maxMemoryMiB: 4096 },
      network: { allowAny: true, defaultDeny: ['evil.example.com'] },
      quotas: { maxSandboxes: 10 },
    });
    assert.deepEqual(mergePolicies(base, validatePolicy({ network: { allowCeiling: ['pypi.org'] } })).network,
      { allowCeiling: ['pypi.org'], defaultDeny: ['evil.example.com'] });
    assert.deepEqual(mergePolicies(null, null), {});
  });

  test('egress ceiling coverage: names, wildcards, ports, CIDRs', () => {
    const ceiling = ['*.example.com', 'pypi.org:443', '203.0.113.0/24'];
    assert.deepEqual(outsideCeiling(['a.example.com', '*.b.example.com', 'pypi.org:443', '203.0.113.7', '203.0.113.0/25:80'], ceiling), []);
    assert.deepEqual(outsideCeiling(['example.com', 'pypi.org', 'pypi.org:80', '203.0.112.0/23', 'other.org'], ceiling),
      ['example.com', 'pypi.org', 'pypi.org:80', '203.0.112.0/23', 'other.org']);
  });
});

describe('the engine applies policies', () => {
  let engine: Engine;
  let dataDir: string;
  let hostDir: string;
  const t: Caller = { tenant: 'pol' };

  before(async () => {
    ({ engine, dataDir } = await openTestEngine('policy'));
    hostDir = mkdtempSync(join(tmpdir(), 'airlock-test-policy-mount-'));
    engine.createTenant(ADMIN, 'pol');
  });
  after(async () => {
    if (engine) await closeAndClean(engine, dataDir, sandboxIdsIn(dataDir));
    rmSync(hostDir, { recursive: true, force: true });
  });

  test('versions: every set is a new version; old ones stay readable; only admins set', () => {
    assert.equal(engine.getPolicy(ADMIN, 'pol').version, 0);
    const v1 = engine.setPolicy(ADMIN, 'pol', { resources: { maxCpus: 1 } });
    const v2 = engine.setPolicy(ADMIN, 'pol', { resources: { maxCpus: 2 } });
    assert.deepEqual([v1.version, v2.version], [1, 2]);
    assert.deepEqual(engine.getPolicy(ADMIN, 'pol').document, { resources: { maxCpus: 2 } });
    assert.deepEqual(engine.getPolicy(ADMIN, 'pol', 1).document, { resources: { maxCpus: 1 } });
    assert.throws(() => engine.getPolicy(ADMIN, 'pol', 9), isError(404, 'not_found'));
    assert.throws(() => engine.setPolicy(t, 'pol', {}), isError(403, 'forbidden'));
    assert.throws(() => engine.setPolicy(ADMIN, 'nobody', {}), isError(404, 'not_found'));
    assert.throws(() => engine.getPolicy(ADMIN, 'nobody'), isError(404, 'not_found'));
    assert.throws(() => engine.testPolicy(ADMIN, { tenant: 'nobody' }), isError(404, 'not_found'));
    assert.throws(() => engine.setPolicy(ADMIN, 'pol', { resources: { cpus: 1 } }), isError(400, 'bad_request', 'policy.resources.cpus'));
    assert.equal(engine.getPolicy(t, 'pol').version, 2, 'a tenant reads its own policy');
    assert.throws(() => engine.getPolicy(t, 'default'), isError(404, 'not_found'));
    const set = engine.listEvents(ADMIN, { type: 'policy.set' });
    assert.deepEqual(set.map((e) => e.data.version), [1, 2]);
  });

  test('testPolicy reports every rule with its verdict, and the defaults create would fill in', () => {
    engine.setPolicy(ADMIN, 'default', { network: { defaultDeny: ['ads.example.com'] }, quotas: { maxSandboxes: 50 } });
    engine.setPolicy(ADMIN, 'pol', {
      runtimes: { allowed: ['container', 'gvisor'] },
      resources: { maxCpus: 1, maxMemoryMiB: 256, maxDiskMiB: 512, maxPids: 64 },
      templates: { allowed: ['tiny'] },
      network: { allowCeiling: ['*.example.com'], defaultAllow: ['api.example.com'] },
      mounts: { allowedHostPrefixes: [hostDir], allowReadWrite: false },
      lifetime: { maxSeconds: 600 },
      approvals: { lifetimeAbove: { seconds: 300, action: 'ask' }, egressOutsideAllowlist: 'ask' },
      quotas: { maxSandboxes: 2 },
    });
    const fine = engine.testPolicy(ADMIN, { tenant: 'pol', spec: { template: 'tiny' } });
    assert.equal(fine.allowed, true, JSON.stringify(fine.rules.filter((r) => r.verdict !== 'pass')));
    assert.ok(fine.rules.length >= 19, 'every rule is listed, not just failures');
    assert.ok(fine.rules.every((r) => r.verdict === 'pass'));
    assert.deepEqual(fine.versions, { default: 1, tenant: 3 });

    const bad = engine.testPolicy(ADMIN, {
      tenant: 'pol',
      spec: {
        template: 'base', runtime: 'microvm', resources: { cpus: 2, memoryMiB: 512, diskMiB: 1024, pids: 128 },
        network: { allow: ['pypi.org'] }, mounts: [{ source: '/etc', target: '/mnt/etc', readOnly: false }], timeoutSeconds: 900,
      },
    });
    assert.equal(bad.allowed, false);
    assert.equal(bad.approvalRequired, false, 'denies outrank asks');
    const expect: Record<string, string> = {
      'runtimes.allowed': 'deny', 'runtimes.minimum': 'pass',
      'resources.maxCpus': 'deny', 'resources.maxMemoryMiB': 'deny', 'resources.maxDiskMiB': 'deny', 'resources.maxPids': 'deny',
      'templates.allowed': 'deny', 'network.allowCeiling': 'ask', 'mounts.allowedHostPrefixes': 'deny', 'mounts.allowReadWrite': 'deny',
      'lifetime.maxSeconds': 'deny', 'approvals.lifetimeAbove': 'ask', 'quotas.maxSandboxes': 'pass',
    };
    for (const [rule, verdict] of Object.entries(expect)) assert.equal(verdictOf(bad, rule), verdict, rule);
    assert.match(bad.rules.find((r) => r.rule === 'resources.maxMemoryMiB')!.detail, /512 MiB of memory asked, at most 256/);

    const asks = engine.testPolicy(ADMIN, { tenant: 'pol', spec: { template: 'tiny', timeoutSeconds: 400 } });
    assert.deepEqual([asks.allowed, asks.approvalRequired], [false, true]);

    // A draft is judged without being stored.
    const draft = engine.testPolicy(ADMIN, { tenant: 'pol', spec: { template: 'base' }, policy: { templates: { allowed: ['base'] } } });
    assert.equal(verdictOf(draft, 'templates.allowed'), 'pass');
    assert.equal(engine.getPolicy(ADMIN, 'pol').version, 3, 'a draft is not stored');
  });

  test('create is refused per rule (422, the field, a policy.denied event naming the rule)', async () => {
    const before = engine.listEvents(ADMIN, { type: 'policy.denied' }).length;
    const cases: Array<[Record<string, unknown>, string, string]> = [
      [{ template: 'base' }, 'templates.allowed', 'template'],
      [{ template: 'tiny', resources: { memoryMiB: 512 } }, 'resources.maxMemoryMiB', 'resources.memoryMiB'],
      [{ template: 'tiny', runtime: 'microvm' }, 'runtimes.allowed', 'runtime'],
      [{ template: 'tiny', mounts: [{ source: '/etc', target: '/mnt/etc' }] }, 'mounts.allowedHostPrefixes', 'mounts.0.source'],
      [{ template: 'tiny', mounts: [{ source: hostDir, target: '/mnt/h', readOnly: false }] }, 'mounts.allowReadWrite', 'mounts.0.readOnly'],
      [{ template: 'tiny', timeoutSeconds: 700 }, 'lifetime.maxSeconds', 'timeoutSeconds'],
    ];
    for (const [spec, rule, field] of cases) {
      await assert.rejects(engine.createSandbox(t, spec), (e: AirlockError) => {
        isError(422, 'policy_denied', field)(e);
        assert.match(e.message, new RegExp(rule.replace('.', '\\.')));
        return true;
      }, rule);
    }
    const denied = engine.listEvents(ADMIN, { type: 'policy.denied' }).slice(before);
    assert.deepEqual(denied.map((e) => e.data.rule), cases.map((c) => c[1]));
    assert.ok(denied.every((e) => e.tenant === 'pol' && e.data.action === 'create'));
    // Where the policy says ask, create waits for a decision (approvals.test.ts); denied, it is refused.
    const denyNext = async () => {
      for (;;) {
        const p = engine.listApprovals(ADMIN, { state: 'pending', tenant: 'pol' })[0];
        if (p) return engine.denyApproval(ADMIN, p.id, { reason: 'no' });
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await Promise.all([assert.rejects(engine.createSandbox(t, { template: 'tiny', timeoutSeconds: 400 }), isError(422, 'approval_denied', 'timeoutSeconds')), denyNext()]);
    await Promise.all([assert.rejects(engine.createSandbox(t, { template: 'tiny', network: { allow: ['pypi.org'] } }), isError(422, 'approval_denied', 'network.allow')), denyNext()]);
    assert.equal(engine.listEvents(ADMIN, { type: 'approval.requested' }).length, 2);
    assert.equal(engine.listEvents(ADMIN, { type: 'approval.denied' }).length, 2);
    assert.deepEqual(engine.listSandboxes(t), [], 'nothing was created');
  });

  test('an allowed create gets the policy\'s defaults; live changes are checked; exec output is recorded', async () => {
    engine.setPolicy(ADMIN, 'pol', {
      templates: { allowed: ['tiny'] },
      resources: { maxMemoryMiB: 128 },
      lifetime: { maxSeconds: 120 },
      network: { allowCeiling: ['*.example.com'] },
      exec: { recordOutput: true, outputCapBytes: 5 },
    });
    const s = await engine.createSandbox(t, { template: 'tiny' });
    try {
      assert.equal(s.resources.memoryMiB, 128, 'an unasked memory size is clamped to the ceiling');
      assert.equal((Date.parse(s.expiresAt) - Date.parse(s.createdAt)) / 1000, 120, 'an unasked lifetime is clamped');
      assert.deepEqual(s.network.deny, ['ads.example.com'], 'the server default\'s defaultDeny is added');

      await assert.rejects(engine.updateNetwork(t, s.id, { allow: ['pypi.org'] }), isError(422, 'policy_denied', 'network.allow'));
      await assert.rejects(engine.setSandboxTimeout(t, s.id, 600), isError(422, 'policy_denied', 'timeoutSeconds'));
      assert.equal((await engine.setSandboxTimeout(t, s.id, 60)).state, 'running');
      const live = engine.listEvents(ADMIN, { type: 'policy.denied', sandbox: s.id });
      assert.deepEqual(live.map((e) => [e.data.action, e.data.rule]), [['network', 'network.allowCeiling'], ['timeout', 'lifetime.maxSeconds']]);

      const r = await engine.exec(t, s.id, { cmd: ['echo', 'hello world'] });
      assert.equal(r.stdout, 'hello world\n');
      const exited = engine.listEvents(ADMIN, { sandbox: s.id, type: 'exec.exited' });
      assert.equal(engine.readBlob(t, exited.at(-1)!.data.stdoutSha256 as string).toString(), 'hello', 'output recorded, capped at outputCapBytes');
    } finally {
      await engine.killSandbox(t, s.id);
    }
  });

  test('scopes: read keys read, exec keys use one sandbox, both refused the rest', async () => {
    engine.setPolicy(ADMIN, 'pol', {});
    const s = await engine.createSandbox(t, { template: 'tiny', timeoutSeconds: 60 });
    const other = await engine.createSandbox(t, { template: 'tiny', timeoutSeconds: 60 });
    try {
      const read: Caller = { tenant: 'pol', scope: 'read' };
      const exec: Caller = { tenant: 'pol', scope: 'exec', sandbox: s.id };
      assert.equal(engine.getSandbox(read, s.id).id, s.id);
      assert.equal(engine.listSandboxes(read).length >= 2, true);
      await assert.rejects(engine.exec(read, s.id, { cmd: ['true'] }), isError(403, 'forbidden'));
      await assert.rejects(engine.killSandbox(read, s.id), isError(403, 'forbidden'));
      await assert.rejects(engine.setSandboxTimeout(read, s.id, 30), isError(403, 'forbidden'));
      assert.equal((await engine.exec(exec, s.id, { cmd: ['echo', 'x'] })).stdout, 'x\n');
      await assert.rejects(engine.exec(exec, other.id, { cmd: ['true'] }), isError(404, 'not_found'));
      assert.throws(() => engine.getSandbox(exec, other.id), isError(404, 'not_found'));
      assert.throws(() => engine.listSandboxes(exec), isError(403, 'forbidden'));
      await assert.rejects(engine.createSandbox(exec, { template: 'tiny' }), isError(403, 'forbidden'));
      assert.throws(() => engine.createTenant(t, 'x'), isError(403, 'forbidden'));
      // Another tenant's events of this sandbox: not found, not an empty list.
      assert.throws(() => engine.listEvents({ tenant: 'someone-else' }, { sandbox: s.id }), isError(404, 'not_found'));
    } finally {
      await engine.killSandbox(t, s.id);
      await engine.killSandbox(t, other.id);
    }
  });
});
