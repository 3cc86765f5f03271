import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cgroupDir, cgroupMode } from '../runtime/cgroups.js';

/**
 * CPU time the cgroup's tasks have used, in seconds (v1 cpuacct.usage in ns; v2 cpu.stat
 * usage_usec). null when the cgroup is gone. Every runtime puts its sandbox (or QEMU) there.
 */
export function cgroupCpuSeconds(cgroupsPath: string): number | null {
  try {
    if (cgroupMode() === 'v2') {
      const m = /^usage_usec (\d+)$/m.exec(readFileSync(join(cgroupDir('', cgroupsPath), 'cpu.stat'), 'utf8'));
      return m ? Number(m[1]) / 1e6 : null;
    }
    return Number(readFileSync(join(cgroupDir('cpuacct', cgroupsPath), 'cpuacct.usage'), 'utf8').trim()) / 1e9;
  } catch {
    return null;
  }
}

/** Memory charged to the cgroup now, in bytes; null when it is gone. */
export function cgroupMemoryBytes(cgroupsPath: string): number | null {
  const file = cgroupMode() === 'v2' ? 'memory.current' : 'memory.usage_in_bytes';
  try {
    const n = Number(readFileSync(join(cgroupDir('memory', cgroupsPath), file), 'utf8').trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}
