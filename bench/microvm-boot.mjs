// microvm tier (issue 5): boot to agent-ready, and QEMU's host memory besides the guest's.
//   boot:     Engine.createSandbox of a `microvm` sandbox (tiny template) until it returns, i.e.
//             QEMU started in its jail, the guest kernel booted, airlock-vminit mounted the disks
//             and the agent said HELLO over virtio-serial; then one exec of /bin/true.
//   overhead: QEMU's resident memory minus what the guest's RAM region holds (from smaps), after
//             boot and one exec: what a sandbox costs the host on top of the memory it was given.
// The accelerator is the probed one (`airlock doctor`: KVM where guests boot, else TCG).
//
//   N=5 node bench/microvm-boot.mjs
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { findMicrovmAssets, microvmHome } from '../packages/engine/dist/src/runtime/microvm/assets.js';
import { probeAccelerator } from '../packages/engine/dist/src/runtime/microvm/accel.js';
import { fmt, nowMs, REPO, stats, TEMPLATES_DIR } from './lib.mjs';

const N = Number(process.env.N ?? 5);
const MEMORY_MIB = Number(process.env.MEMORY_MIB ?? 256);
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-microvm-'));
const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, startTimeoutMs: 120_000 });
const admin = { tenant: null };

/** kB of QEMU's RSS in total and in its guest-RAM mapping (the anonymous region of the guest's size). */
function qemuMemory(id) {
  const pid = Number(readFileSync(join(dataDir, 'qemu', id, 'qemu.pid'), 'utf8'));
  const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let total = 0;
  let guest = 0;
  let size = 0;
  for (const line of smaps) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    if (m[1] === 'Size') size = Number(m[2]);
    if (m[1] === 'Rss') {
      total += Number(m[2]);
      if (size === MEMORY_MIB * 1024) guest += Number(m[2]);
    }
  }
  return { totalKiB: total, guestKiB: guest };
}

try {
  const assets = findMicrovmAssets(join(REPO, 'agent/build/airlock-agent'));
  if ('missing' in assets) throw new Error(assets.missing);
  const accel = await probeAccelerator(assets, join(microvmHome(), 'cache'));
  const boots = [];
  const overheads = [];
  const totals = [];
  for (let i = 0; i <= N; i++) {
    const t0 = nowMs();
    const s = await engine.createSandbox(admin, { runtime: 'microvm', template: 'tiny', timeoutSeconds: 300, resources: { memoryMiB: MEMORY_MIB, cpus: 1 } });
    const ms = nowMs() - t0;
    const r = await engine.exec(admin, s.id, { cmd: ['/bin/true'] });
    if (r.exitCode !== 0) throw new Error('exec failed');
    const mem = qemuMemory(s.id);
    await engine.killSandbox(admin, s.id);
    if (i === 0) continue; // first run builds the template image and initramfs caches
    boots.push(ms);
    overheads.push((mem.totalKiB - mem.guestKiB) / 1024);
    totals.push(mem.totalKiB / 1024);
  }
  const b = stats(boots);
  const o = stats(overheads);
  const t = stats(totals);
  console.log(`microvm boot to agent-ready (${accel.accel.toUpperCase()}${accel.kvmProblem ? `; KVM: ${accel.kvmProblem}` : ''}), guest ${MEMORY_MIB} MiB, N=${N}`);
  console.log(`  create (boot → agent HELLO):  p50 ${fmt(b.p50)}  min ${fmt(b.min)}  max ${fmt(b.max)}`);
  console.log(`  QEMU RSS total:                p50 ${t.p50.toFixed(1)} MiB`);
  console.log(`  QEMU RSS besides guest RAM:    p50 ${o.p50.toFixed(1)} MiB  (min ${o.min.toFixed(1)}, max ${o.max.toFixed(1)})`);
} finally {
  await engine.close();
  rmSync(dataDir, { recursive: true, force: true });
}
