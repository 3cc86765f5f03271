// 50 sandboxes, each created, exec'd once and killed, by 10 concurrent HTTP clients against one
// daemon. Reports creations per second and checks that every call succeeded and nothing leaked.
// Baseline in the same run: 50 raw `runc run /bin/true`, 10 at a time.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon } from './daemon.mjs';
import { fmt, makeRawRuncBundle, nowMs, stats } from './lib.mjs';

const TOTAL = Number(process.env.TOTAL ?? 50);
const CLIENTS = Number(process.env.CLIENTS ?? 10);
const d = await startDaemon('concurrency');
const raw = makeRawRuncBundle();
const failures = [];
const lat = [];
const ids = [];
try {
  let next = 0;
  const t0 = nowMs();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    const c = d.client();
    while (next < TOTAL) {
      next++;
      const s0 = nowMs();
      const created = await c.call('POST', '/v1/sandboxes', { template: 'tiny', timeoutSeconds: 120, resources: { memoryMiB: 64 } });
      if (created.status !== 201) { failures.push(`create ${created.status} ${JSON.stringify(created.body)}`); continue; }
      ids.push(created.body.id);
      const r = await c.call('POST', `/v1/sandboxes/${created.body.id}/exec`, { cmd: ['/bin/echo', 'hi'] });
      if (r.status !== 200 || r.body.stdout !== 'hi\n') failures.push(`exec ${r.status} ${JSON.stringify(r.body)}`);
      const k = await c.call('DELETE', `/v1/sandboxes/${created.body.id}`);
      if (k.status !== 200 || k.body.state !== 'killed') failures.push(`kill ${k.status} ${JSON.stringify(k.body)}`);
      lat.push(nowMs() - s0);
    }
    c.close();
  }));
  const wall = nowMs() - t0;

  // Raw baseline with the same concurrency.
  let rnext = 0;
  const r0 = nowMs();
  await Promise.all(Array.from({ length: CLIENTS }, async (_, w) => {
    while (rnext < TOTAL) {
      const i = rnext++;
      await new Promise((resolve, reject) => {
        const p = spawn('runc', ['--root', join(raw.dir, 'state'), 'run', '--bundle', raw.dir, `airlock-bench-c-${process.pid}-${w}-${i}`], { stdio: 'ignore' });
        p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`raw runc ${code}`))));
      });
    }
  }));
  const rawWall = nowMs() - r0;

  const leftovers = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(d.dataDir));
  const live = d.engine.listSandboxes({ tenant: null }).filter((s) => s.state === 'running');
  const st = stats(lat);
  console.log(`${TOTAL} sandboxes (create + exec + kill) by ${CLIENTS} clients: ${(wall / 1000).toFixed(2)} s → ${(TOTAL / (wall / 1000)).toFixed(1)} sandboxes/s; per-sandbox p50 ${fmt(st.p50)} p99 ${fmt(st.p99)}`);
  console.log(`raw runc run /bin/true, same concurrency: ${(rawWall / 1000).toFixed(2)} s → ${(TOTAL / (rawWall / 1000)).toFixed(1)} runs/s`);
  console.log(`ratio airlock/raw throughput: ${((TOTAL / wall) / (TOTAL / rawWall)).toFixed(2)}`);
  console.log(`failures: ${failures.length}${failures.length ? ' — ' + failures.slice(0, 3).join('; ') : ''}; leaked mounts: ${leftovers.length}; still running: ${live.length}`);
  if (failures.length || leftovers.length || live.length) process.exitCode = 1;
} finally {
  raw.cleanup();
  await d.stop();
}
