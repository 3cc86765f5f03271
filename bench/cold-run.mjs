// Cold start: a sandbox made, /bin/true run in it, the sandbox destroyed — against a raw
// `runc run` of a plain bundle running /bin/true, measured side by side in this process run.
// (1) in-process: Engine create + exec + kill; (2) whole process: `airlock run` in embedded mode.
// Target (issue 2): airlock run -- /bin/true ≤ 1.5× raw runc run.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { fmt, makeRawRuncBundle, nowMs, REPO, stats, TEMPLATES_DIR } from './lib.mjs';

const N = Number(process.env.N ?? 30);
const raw = makeRawRuncBundle();
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-cold-'));
const cliDataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-cold-cli-'));
const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
const admin = { tenant: null };
const cli = join(REPO, 'packages/cli/dist/src/main.js');
const phases = { create: [], exec: [], kill: [] };

async function inProcess() {
  const t0 = nowMs();
  const s = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 60 });
  const t1 = nowMs();
  const r = await engine.exec(admin, s.id, { cmd: ['/bin/true'] });
  const t2 = nowMs();
  await engine.killSandbox(admin, s.id);
  const t3 = nowMs();
  if (r.exitCode !== 0) throw new Error('exec failed');
  phases.create.push(t1 - t0); phases.exec.push(t2 - t1); phases.kill.push(t3 - t2);
  return t3 - t0;
}

function wholeProcess() {
  const t0 = nowMs();
  const r = spawnSync(process.execPath, [cli, 'run', '--data-dir', cliDataDir, '--template', 'tiny', '--', '/bin/true'], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR },
  });
  if (r.status !== 0) throw new Error(`airlock run failed (${r.status}): ${r.stderr}`);
  return nowMs() - t0;
}

function nodeBaseline() {
  const t0 = nowMs();
  spawnSync(process.execPath, ['-e', '0'], { stdio: 'ignore' });
  return nowMs() - t0;
}

try {
  const rows = { raw: [], inproc: [], cli: [], node: [] };
  for (let i = 0; i < 3; i++) { raw.run(); await inProcess(); wholeProcess(); } // warm-up
  for (const k of Object.keys(phases)) phases[k] = [];
  for (let i = 0; i < N; i++) {
    // Interleaved, so drift on a noisy machine hits every column alike.
    rows.raw.push(raw.run());
    rows.inproc.push(await inProcess());
    rows.cli.push(wholeProcess());
    rows.node.push(nodeBaseline());
  }
  const s = Object.fromEntries(Object.entries(rows).map(([k, v]) => [k, stats(v)]));
  console.log(`raw runc run /bin/true          p50 ${fmt(s.raw.p50)}  (min ${fmt(s.raw.min)}, max ${fmt(s.raw.max)})`);
  console.log(`engine create+exec+kill (in-process) p50 ${fmt(s.inproc.p50)}  ratio ${(s.inproc.p50 / s.raw.p50).toFixed(2)}x`);
  for (const [k, v] of Object.entries(phases)) console.log(`   ${k.padEnd(6)} p50 ${fmt(stats(v).p50)}`);
  console.log(`airlock run -- /bin/true (whole process, embedded) p50 ${fmt(s.cli.p50)}  ratio ${(s.cli.p50 / s.raw.p50).toFixed(2)}x`);
  console.log(`   of which a bare \`node -e 0\` start costs p50 ${fmt(s.node.p50)}`);
  console.log(`target ≤ 1.5x raw: in-process ${s.inproc.p50 / s.raw.p50 <= 1.5 ? 'met' : 'MISSED'}, whole process ${s.cli.p50 / s.raw.p50 <= 1.5 ? 'met' : 'MISSED'}`);
} finally {
  await engine.close();
  raw.cleanup();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(cliDataDir, { recursive: true, force: true });
}
