// Shared helpers for the benchmarks: percentiles, a raw runc bundle as the baseline, timing.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TemplateStore } from '../packages/engine/dist/src/template/template-store.js';

export const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
export const REPO = new URL('..', import.meta.url).pathname;

export function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function stats(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, min: s[0], p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1] };
}

export const fmt = (ms) => `${ms.toFixed(2)} ms`;

export function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

/**
 * The raw baseline: a plain runc bundle (busybox rootfs of the `tiny` template, host
 * namespaces minus what runc always creates, no user namespace, no seccomp) running /bin/true.
 */
export function makeRawRuncBundle() {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-raw-'));
  execFileSync('runc', ['spec', '--bundle', dir]);
  const spec = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  // The bottom layer of `tiny` holds busybox; a plain bundle takes one directory, not a stack.
  spec.root = { path: new TemplateStore(TEMPLATES_DIR).require('tiny').layers.at(-1), readonly: true };
  spec.process.terminal = false;
  spec.process.args = ['/bin/true'];
  writeFileSync(join(dir, 'config.json'), JSON.stringify(spec));
  const root = join(dir, 'state');
  let n = 0;
  return {
    dir,
    run() {
      const id = `airlock-bench-raw-${process.pid}-${n++}`;
      const t0 = nowMs();
      const r = spawnSync('runc', ['--root', root, 'run', '--bundle', dir, id], { stdio: 'ignore' });
      const ms = nowMs() - t0;
      if (r.status !== 0) throw new Error(`raw runc run failed (${r.status})`);
      return ms;
    },
    cleanup() { rmSync(dir, { recursive: true, force: true }); },
  };
}
