// Sandbox create time with the `base` template (Debian + Python + Node, several layers)
// against the busybox `tiny` template, measured interleaved in one run. A sandbox's root is
// the template's layers stacked read-only under its own writable layer, so nothing is copied
// and the size of the template must not show in the create time.
// Target (issue 3): create with base ≤ 1.2× create with tiny.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { fmt, nowMs, stats, TEMPLATES_DIR } from './lib.mjs';

const N = Number(process.env.N ?? 30);
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-template-'));
const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
const admin = { tenant: null };

async function createOnce(template) {
  const t0 = nowMs();
  const s = await engine.createSandbox(admin, { template, timeoutSeconds: 60 });
  const ms = nowMs() - t0;
  await engine.killSandbox(admin, s.id);
  return ms;
}

try {
  const templates = Object.fromEntries(engine.listTemplates().map((t) => [t.name, t]));
  for (const name of ['tiny', 'base']) {
    const t = templates[name];
    if (!t) throw new Error(`template ${name} is missing: run node scripts/ensure-templates.mjs`);
    console.log(`${name.padEnd(5)} ${t.layers} layer(s), ${(t.sizeBytes / 2 ** 20).toFixed(0)} MiB, ${t.digest?.slice(0, 19) ?? 'old layout'}`);
  }
  for (let i = 0; i < 3; i++) { await createOnce('tiny'); await createOnce('base'); } // warm-up
  const rows = { tiny: [], base: [] };
  for (let i = 0; i < N; i++) {
    // Interleaved, so drift on a noisy machine hits both alike.
    rows.tiny.push(await createOnce('tiny'));
    rows.base.push(await createOnce('base'));
  }
  const tiny = stats(rows.tiny);
  const base = stats(rows.base);
  const ratio = base.p50 / tiny.p50;
  console.log(`create with tiny  p50 ${fmt(tiny.p50)}  (min ${fmt(tiny.min)}, p90 ${fmt(tiny.p90)})`);
  console.log(`create with base  p50 ${fmt(base.p50)}  (min ${fmt(base.min)}, p90 ${fmt(base.p90)})`);
  console.log(`ratio base/tiny ${ratio.toFixed(2)}x  target ≤ 1.2x: ${ratio <= 1.2 ? 'met' : 'MISSED'}`);
} finally {
  await engine.close();
  rmSync(dataDir, { recursive: true, force: true });
}
