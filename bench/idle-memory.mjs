// Host memory per idle sandbox, over 100 of them: daemon RSS growth, the agent process (the only
// process an idle sandbox has), and the kernel side seen through MemAvailable. Target: ≤ 5 MiB each.
import { readFileSync } from 'node:fs';
import { startDaemon } from './daemon.mjs';

const COUNT = Number(process.env.COUNT ?? 100);
const memAvailable = () => Number(/MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))[1]) * 1024;
const MiB = (b) => (b / 1048576).toFixed(2);
function pss(pid) {
  const t = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+)/m.exec(t)[1]) * 1024;
}
function rss(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
}

const d = await startDaemon('idle');
const c = d.client(4);
try {
  for (let i = 0; i < 3; i++) { // warm the code paths so JIT and caches don't count as per-sandbox cost
    const s = await c.call('POST', '/v1/sandboxes', { template: 'tiny' });
    await c.call('POST', `/v1/sandboxes/${s.body.id}/exec`, { cmd: ['true'] });
    await c.call('DELETE', `/v1/sandboxes/${s.body.id}`);
  }
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  const avail0 = memAvailable();
  const ids = [];
  for (let i = 0; i < COUNT; i++) {
    // 256 MiB of disk each: 100 default (1 GiB) quotas would not fit a data dir's storage budget
    // (64 GiB, at most half the free disk), and a sandbox is admitted only with its whole quota.
    const s = await c.call('POST', '/v1/sandboxes', { template: 'tiny', timeoutSeconds: 600, resources: { diskMiB: 256 } });
    if (s.status !== 201) throw new Error(JSON.stringify(s.body));
    await c.call('POST', `/v1/sandboxes/${s.body.id}/exec`, { cmd: ['true'] });
    ids.push(s.body.id);
  }
  await new Promise((r) => setTimeout(r, 1000));
  global.gc?.();
  const rss1 = process.memoryUsage().rss;
  const avail1 = memAvailable();
  let agentPss = 0;
  let agentRss = 0;
  for (const id of ids) {
    const pid = Number(readFileSync(`${d.dataDir}/sandboxes/${id}/init.pid`, 'utf8'));
    agentPss += pss(pid);
    agentRss += rss(pid);
  }
  const daemonPer = (rss1 - rss0) / COUNT;
  const agentPer = agentPss / COUNT;
  const systemPer = (avail0 - avail1) / COUNT;
  console.log(`${COUNT} idle sandboxes`);
  console.log(`  daemon RSS growth per sandbox:      ${MiB(daemonPer)} MiB`);
  console.log(`  agent process per sandbox:          PSS ${MiB(agentPer)} MiB (RSS ${MiB(agentRss / COUNT)} MiB)`);
  console.log(`  daemon + agent:                     ${MiB(daemonPer + agentPer)} MiB  (target ≤ 5 MiB → ${daemonPer + agentPer <= 5 * 1048576 ? 'met' : 'MISSED'})`);
  console.log(`  whole host (MemAvailable drop, incl. kernel: page tables, namespaces, mounts): ${MiB(systemPer)} MiB per sandbox`);
  for (const id of ids) await c.call('DELETE', `/v1/sandboxes/${id}`);
} finally {
  c.close();
  await d.stop();
}
