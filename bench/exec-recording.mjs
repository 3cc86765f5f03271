// Cost of full exec recording (issue 7 target: exec round trip p50 grows by <= 10%), in one run:
// two tenants on one engine, one whose policy turns recording off (exec.recordOutput: false,
// evidence.fileChanges: false),
// one with full recording (exec record + output blobs + the file-change walk of the writable
// layer after each exec), alternating execs of a command that prints a line and writes a file.
//
//   N=400 node bench/exec-recording.mjs
//   REC=0 / FC=0: the "full" side without output recording / without the file-change walk (diagnosis).
import { rmSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { fmt, nowMs, stats, TEMPLATES_DIR } from './lib.mjs';

const N = Number(process.env.N ?? 400);
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-recording-'));
const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
const admin = { tenant: null };
const cmd = ['/bin/sh', '-c', 'echo "hello $$"; echo x > /work/f'];

try {
  engine.createTenant(admin, 'bench-off');
  engine.createTenant(admin, 'bench-on');
  engine.setPolicy(admin, 'bench-off', { exec: { recordOutput: false }, evidence: { fileChanges: false } });
  engine.setPolicy(admin, 'bench-on', { exec: { recordOutput: process.env.REC !== '0', outputCapBytes: 65536 }, evidence: { fileChanges: process.env.FC !== '0' } });
  const off = { tenant: 'bench-off' };
  const on = { tenant: 'bench-on' };
  const a = await engine.createSandbox(off, { template: 'tiny', timeoutSeconds: 600 });
  const b = await engine.createSandbox(on, { template: 'tiny', timeoutSeconds: 600 });
  const time = async (caller, id) => {
    const t0 = nowMs();
    const r = await engine.exec(caller, id, { cmd });
    if (r.exitCode !== 0) throw new Error(`exec failed: ${r.stderr}`);
    return nowMs() - t0;
  };
  for (let i = 0; i < 20; i++) { await time(off, a.id); await time(on, b.id); } // warm up
  const base = [];
  const rec = [];
  for (let i = 0; i < N; i++) {
    base.push(await time(off, a.id));
    rec.push(await time(on, b.id));
  }
  await engine.killSandbox(off, a.id);
  await engine.killSandbox(on, b.id);
  const s0 = stats(base);
  const s1 = stats(rec);
  console.log(`exec round trip (engine, container, tiny), ${N} alternating runs each:`);
  console.log(`  recording off  p50 ${fmt(s0.p50)}  p90 ${fmt(s0.p90)}`);
  console.log(`  full recording p50 ${fmt(s1.p50)}  p90 ${fmt(s1.p90)}   p50 growth ${(((s1.p50 / s0.p50) - 1) * 100).toFixed(1)}% (target <= 10%)`);
} finally {
  await engine.close();
  rmSync(dataDir, { recursive: true, force: true });
}
