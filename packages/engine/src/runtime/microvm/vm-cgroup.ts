import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cgroupDir, cgroupMode } from '../cgroups.js';

/**
 * The host cgroup of a microvm (`airlock/<id>`, the name every tier uses), holding QEMU and
 * everything of its jail: memory = guest memory + QEMU's own overhead (never swapped), CPU
 * quota = the sandbox's cpus, pids bounded (QEMU's threads). Returns the cgroup.procs files
 * the jail joins before it starts QEMU.
 */
export interface VmCgroupLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

const CPU_PERIOD_US = 100_000;
const MIN_CPU_QUOTA_US = 1_000;

export function createVmCgroup(cgroupsPath: string, l: VmCgroupLimits): string[] {
  const quota = Math.max(MIN_CPU_QUOTA_US, Math.round(l.cpus * CPU_PERIOD_US));
  if (cgroupMode() === 'v2') {
    const dir = cgroupDir('memory', cgroupsPath);
    const parent = join(dir, '..');
    mkdirSync(dir, { recursive: true });
    try { writeFileSync(join(parent, 'cgroup.subtree_control'), '+memory +pids +cpu'); } catch { /* already enabled */ }
    writeFileSync(join(dir, 'memory.max'), String(l.memoryBytes));
    writeFileSync(join(dir, 'memory.swap.max'), '0');
    writeFileSync(join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
    writeFileSync(join(dir, 'pids.max'), String(l.pids));
    return [join(dir, 'cgroup.procs')];
  }
  const procs: string[] = [];
  const use = (controller: string, settings: Array<[string, string]>, optional: Array<[string, string]> = []) => {
    const dir = cgroupDir(controller, cgroupsPath);
    mkdirSync(dir, { recursive: true });
    for (const [k, v] of settings) writeFileSync(join(dir, k), v);
    for (const [k, v] of optional) { try { writeFileSync(join(dir, k), v); } catch { /* no swap accounting */ } }
    procs.push(join(dir, 'cgroup.procs'));
  };
  use('memory', [['memory.limit_in_bytes', String(l.memoryBytes)]], [['memory.memsw.limit_in_bytes', String(l.memoryBytes)]]);
  use('cpu', [['cpu.cfs_period_us', String(CPU_PERIOD_US)], ['cpu.cfs_quota_us', String(quota)]]);
  use('pids', [['pids.max', String(l.pids)]]);
  use('cpuacct', []);
  return [...new Set(procs)];
}
