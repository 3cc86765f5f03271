// gVisor tier (issue 5 targets), side by side in one process run:
//   cold:  Engine create + exec /bin/true + kill of a `gvisor` sandbox (tiny template), in process,
//          vs `runsc do /bin/true` (runsc's own quickest path: host rootfs, no bundle).
//          Target: ≤ 1.3×.
//   exec:  exec round trip of /bin/true in a running gvisor sandbox through the agent, p50.
//          Target: ≤ 10 ms (runsc exec alone: ~41 ms here).
//
//   N=20 node bench/gvisor-tier.mjs
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { fmt, nowMs, stats, TEMPLATES_DIR } from './lib.mjs';

const N = Number(process.env.N ?? 20);
const runsc = process.env.AIRLOCK_RUNSC ?? '/usr/local/bin/runsc';
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-gvisor-'));
const runscRoot = mkdtempSync(join(tmpdir(), 'airlock-bench-runsc-do-'));
const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
const admin = { tenant: null };

function runscDo() {
  const t0 = nowMs();
  const r = spawnSync(runsc, ['--root', runscRoot, '--platform=systrap', '--network=none', 'do', '/bin/true'], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`runsc do failed (${r.status})`);
  return nowMs() - t0;
}

async function airlockCold() {
  const t0 = nowMs();
  const s = await engine.createSandbox(admin, { runtime: 'gvisor', template: 'tiny', timeoutSeconds: 60 });
  const r = await engine.exec(admin, s.id, { cmd: ['/bin/true'] });
  await engine.killSandbox(admin, s.id);
  if (r.exitCode !== 0) throw new Error('exec failed');
  return nowMs() - t0;
}

try {
  runscDo(); await airlockCold(); // warm caches
  const base = [];
  const cold = [];
  for (let i = 0; i < N; i++) {
    base.push(runscDo());
    cold.push(await airlockCold());
  }
  const s = await engine.createSandbox(admin, { runtime: 'gvisor', template: 'tiny', timeoutSeconds: 120 });
  const execs = [];
  for (let i = 0; i < 200; i++) {
    const t0 = nowMs();
    await engine.exec(admin, s.id, { cmd: ['/bin/true'] });
    execs.push(nowMs() - t0);
  }
  await engine.killSandbox(admin, s.id);
  const b = stats(base);
  const c = stats(cold);
  const e = stats(execs);
  console.log(`cold, ${N} runs each (median):`);
  console.log(`  runsc do /bin/true                      ${fmt(b.p50)}`);
  console.log(`  gvisor sandbox create+exec+kill (engine) ${fmt(c.p50)}   ratio ${(c.p50 / b.p50).toFixed(2)}x (target <= 1.3x)`);
  console.log(`exec /bin/true in a running gvisor sandbox, 200 runs: p50 ${fmt(e.p50)}  p90 ${fmt(e.p90)}  p99 ${fmt(e.p99)} (target p50 <= 10 ms)`);
} finally {
  await engine.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(runscRoot, { recursive: true, force: true });
}
