import { existsSync, readdirSync, readFileSync, rmdirSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = '/sys/fs/cgroup';
const CGROUP2_MAGIC = 0x63677270;
const V1_CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids', 'freezer', 'devices', 'blkio', 'cpuset', 'systemd', 'net_cls', 'net_prio', 'perf_event', 'hugetlb', 'rdma', 'misc'];

export type CgroupMode = 'v1' | 'hybrid' | 'v2';

let cachedMode: CgroupMode | undefined;

/** Pure v2 when /sys/fs/cgroup itself is cgroup2; hybrid when v1 controllers sit beside a v2 mount. */
export function cgroupMode(): CgroupMode {
  if (cachedMode) return cachedMode;
  try {
    if (statfsSync(ROOT).type === CGROUP2_MAGIC) return (cachedMode = 'v2');
  } catch { /* fall through */ }
  cachedMode = existsSync(join(ROOT, 'unified')) ? 'hybrid' : 'v1';
  return cachedMode;
}

/** The sandbox's cgroup directory for one controller ("memory", "pids", …). */
export function cgroupDir(controller: string, cgroupsPath: string): string {
  const rel = cgroupsPath.replace(/^\/+/, '');
  return cgroupMode() === 'v2' ? join(ROOT, rel) : join(ROOT, controller, rel);
}

function readCounter(file: string, key: string): number {
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const [k, v] = line.split(/\s+/);
      if (k === key) return Number(v) || 0;
    }
  } catch { /* cgroup gone: no counts */ }
  return 0;
}

export function oomKills(cgroupsPath: string): number {
  return cgroupMode() === 'v2'
    ? readCounter(join(cgroupDir('memory', cgroupsPath), 'memory.events'), 'oom_kill')
    : readCounter(join(cgroupDir('memory', cgroupsPath), 'memory.oom_control'), 'oom_kill');
}

export function pidsMaxHits(cgroupsPath: string): number {
  return readCounter(join(cgroupDir('pids', cgroupsPath), 'pids.events'), 'max');
}

/** Every directory of this cgroup path across hierarchies (v1: one per controller). */
export function cgroupDirs(cgroupsPath: string): string[] {
  const rel = cgroupsPath.replace(/^\/+/, '');
  if (cgroupMode() === 'v2') return [join(ROOT, rel)];
  const dirs = V1_CONTROLLERS.map((c) => join(ROOT, c, rel));
  if (cgroupMode() === 'hybrid') dirs.push(join(ROOT, 'unified', rel));
  return dirs.filter((d) => existsSync(d));
}

/** Child cgroup names under a parent path in any hierarchy (for reconcile). */
export function childCgroups(parentPath: string): string[] {
  const names = new Set<string>();
  const rel = parentPath.replace(/^\/+/, '');
  const parents = cgroupMode() === 'v2' ? [join(ROOT, rel)] : [...V1_CONTROLLERS.map((c) => join(ROOT, c, rel)), join(ROOT, 'unified', rel)];
  for (const p of parents) {
    try {
      for (const e of readdirSync(p, { withFileTypes: true })) if (e.isDirectory()) names.add(e.name);
    } catch { /* absent */ }
  }
  return [...names];
}

/**
 * Kills what is left in a cgroup and removes its directories. runc normally does this; this is
 * the fallback for a crash between start and delete. Sub-cgroups are removed depth-first.
 */
export function removeCgroup(cgroupsPath: string): void {
  for (const dir of cgroupDirs(cgroupsPath)) {
    killAndRemove(dir);
  }
}

function killAndRemove(dir: string): void {
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) killAndRemove(join(dir, e.name));
  } catch { return; }
  try { writeFileSync(join(dir, 'cgroup.kill'), '1'); } catch { /* v1 has no cgroup.kill */ }
  for (let i = 0; i < 50; i++) {
    let pids: number[] = [];
    try {
      pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch { /* gone */ }
    for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch { /* raced */ } }
    // A v1 freezer holds a SIGKILLed task frozen until thawed (a paused sandbox).
    if (pids.length > 0) thawDir(dir);
    try { rmdirSync(dir); return; } catch { /* busy: processes still dying */ }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
  }
}

function thawDir(dir: string): void {
  try { writeFileSync(join(dir, 'cgroup.freeze'), '0'); } catch { /* not a v2 directory */ }
  try { writeFileSync(join(dir, 'freezer.state'), 'THAWED'); } catch { /* not the v1 freezer */ }
}

/**
 * Thaws a frozen (paused) sandbox's cgroup, so a SIGKILL already sent takes effect: cgroup v1's
 * freezer keeps killed tasks frozen. Harmless on a cgroup that is not frozen or is gone.
 */
export function thawCgroup(cgroupsPath: string): void {
  if (cgroupMode() === 'v2') thawDir(cgroupDir('', cgroupsPath));
  else thawDir(cgroupDir('freezer', cgroupsPath));
}

/** Whether the sandbox's cgroup is frozen (or freezing). */
export function cgroupFrozen(cgroupsPath: string): boolean {
  try {
    if (cgroupMode() === 'v2') return readFileSync(join(cgroupDir('', cgroupsPath), 'cgroup.freeze'), 'utf8').trim() === '1';
    return readFileSync(join(cgroupDir('freezer', cgroupsPath), 'freezer.state'), 'utf8').trim() !== 'THAWED';
  } catch {
    return false;
  }
}
