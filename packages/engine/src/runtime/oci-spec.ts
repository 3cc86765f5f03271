import { existsSync, readFileSync, statfsSync } from 'node:fs';
import { isAbsolute, join, posix } from 'node:path';
import { badRequest } from '../errors.js';
import type { Resources } from '../types.js';
import { seccompProfile } from './seccomp-profile.js';

/**
 * The OCI runtime config (config.json) of a `container`-tier sandbox, hardened as
 * docs/security.md describes. Pure: builds an object, touches nothing.
 */

export interface BindMount {
  source: string;
  target: string;
  readOnly: boolean;
}

export interface OciSpecOptions {
  /** An already-mounted writable root (overlay) on the host, owned by uidMapBase. */
  rootfsPath: string;
  hostname: string;
  args: string[];
  env: string[];
  cwd: string;
  /** Container uid/gid 0..idMapSize-1 map to host uidMapBase..uidMapBase+idMapSize-1. */
  uidMapBase: number;
  idMapSize: number;
  resources: Resources;
  /** Absolute cgroup path, e.g. '/airlock/<id>'. */
  cgroupsPath: string;
  /** Applied in order, so a later bind may land inside an earlier one. */
  binds: BindMount[];
  /** Written for PID 1 only; children inherit it unless they reset it. */
  oomScoreAdj?: number;
  shmSizeMiB?: number;
  /** Accept 32-bit (i386) system calls; see SeccompOptions.compat32 for what that costs. */
  compat32?: boolean;
  /** Join this network namespace instead of a new one (a runtime that cannot be given a veth later). */
  netnsPath?: string;
}

/** Kept capabilities; each one's reason is in docs/security.md. All others are dropped. */
export const KEPT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
];

export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/interrupts',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/sys/devices/virtual/powercap',
  '/sys/firmware',
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

const MiB = 1024 * 1024;
const CPU_PERIOD_US = 100_000;
/** The kernel refuses a CFS quota under 1 ms. */
const MIN_CPU_QUOTA_US = 1_000;
const DEFAULT_SHM_MIB = 64;
const NOFILE_LIMIT = 4096;

/** Character devices a program may open: null, zero, full, tty, random, urandom, ptmx and ptys. */
const ALLOWED_CHAR_DEVICES: ReadonlyArray<[number, number | null]> = [
  [1, 3], [1, 5], [1, 7], [5, 0], [1, 8], [1, 9], [5, 2], [136, null],
];

export function buildOciSpec(o: OciSpecOptions): Record<string, unknown> {
  validate(o);
  const shmMiB = o.shmSizeMiB ?? DEFAULT_SHM_MIB;
  // All new. The network one holds only lo; the host may move a veth into it later, and the
  // sandbox cannot reconfigure it because CAP_NET_ADMIN is not in its capability set.
  const namespaces = ['user', 'pid', 'mount', 'ipc', 'uts', 'network', 'cgroup']
    .map((type) => (type === 'network' && o.netnsPath ? { type, path: o.netnsPath } : { type }));
  const caps = [...KEPT_CAPABILITIES];
  const process: Record<string, unknown> = {
    terminal: false,
    user: { uid: 0, gid: 0, additionalGids: [] },
    args: [...o.args],
    env: [...o.env],
    cwd: o.cwd,
    // Inheritable and ambient stay empty: a file's inheritable bits must not grant anything.
    capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
    rlimits: [
      { type: 'RLIMIT_NOFILE', hard: NOFILE_LIMIT, soft: NOFILE_LIMIT },
      { type: 'RLIMIT_CORE', hard: 0, soft: 0 },
    ],
    noNewPrivileges: true,
  };
  if (o.oomScoreAdj !== undefined) process['oomScoreAdj'] = o.oomScoreAdj;

  return {
    ociVersion: '1.0.2',
    process,
    root: { path: o.rootfsPath, readonly: false },
    hostname: o.hostname,
    mounts: [...systemMounts(shmMiB), ...o.binds.map(bindMount)],
    linux: {
      uidMappings: [{ containerID: 0, hostID: o.uidMapBase, size: o.idMapSize }],
      gidMappings: [{ containerID: 0, hostID: o.uidMapBase, size: o.idMapSize }],
      namespaces,
      cgroupsPath: o.cgroupsPath,
      resources: linuxResources(o.resources),
      seccomp: seccompProfile({ compat32: o.compat32 === true }),
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
      // Host mount events must not reach into the sandbox, nor its mounts out.
      rootfsPropagation: 'rprivate',
    },
  };
}

function systemMounts(shmMiB: number): Array<Record<string, unknown>> {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev', type: 'tmpfs', source: 'tmpfs',
      options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k', 'nr_inodes=4096'],
    },
    {
      // newinstance: the sandbox's own pty namespace, never the host's ptys.
      destination: '/dev/pts', type: 'devpts', source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    {
      destination: '/dev/shm', type: 'tmpfs', source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${shmMiB}m`],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    {
      destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup',
      options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'],
    },
  ];
}

/**
 * A non-recursive bind: submounts under a host path are not exposed by accident. nosuid and
 * nodev always, which also keeps the remount legal when the source mount has them locked.
 */
function bindMount(b: BindMount): Record<string, unknown> {
  return {
    destination: b.target,
    type: 'bind',
    source: b.source,
    options: ['bind', b.readOnly ? 'ro' : 'rw', 'nosuid', 'nodev'],
  };
}

function linuxResources(r: Resources): Record<string, unknown> {
  const memory = r.memoryMiB * MiB;
  const quota = Math.max(MIN_CPU_QUOTA_US, Math.round(r.cpus * CPU_PERIOD_US));
  const devices: Array<Record<string, unknown>> = [{ allow: false, access: 'rwm' }];
  for (const [major, minor] of ALLOWED_CHAR_DEVICES) {
    devices.push(minor === null ? { allow: true, type: 'c', major, access: 'rwm' } : { allow: true, type: 'c', major, minor, access: 'rwm' });
  }
  return {
    devices,
    // swap = limit: memory+swap may not exceed memory, so the sandbox never swaps.
    memory: { limit: memory, swap: memory },
    cpu: { quota, period: CPU_PERIOD_US },
    pids: { limit: r.pids },
  };
}

const KERNEL_FS_ROOTS = ['/proc', '/sys', '/dev'];
const HOSTNAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
const ENV_RE = /^[^=\0]+=[^\0]*$/;

function checkAbsPath(p: string, field: string): void {
  if (typeof p !== 'string' || !isAbsolute(p) || p.includes('\0')) throw badRequest(`${field} must be an absolute path`, field);
  if (p.split('/').includes('..')) throw badRequest(`${field} must not contain '..'`, field);
}

function checkInt(v: number, min: number, max: number, field: string): void {
  if (!Number.isInteger(v) || v < min || v > max) throw badRequest(`${field} must be an integer in [${min}, ${max}]`, field);
}

function validate(o: OciSpecOptions): void {
  checkAbsPath(o.rootfsPath, 'rootfsPath');
  if (!HOSTNAME_RE.test(o.hostname)) throw badRequest('hostname must be one DNS label', 'hostname');
  if (!Array.isArray(o.args) || o.args.length === 0) throw badRequest('args must not be empty', 'args');
  for (const a of o.args) if (typeof a !== 'string' || a.includes('\0')) throw badRequest('args must be strings without NUL', 'args');
  for (const e of o.env) if (typeof e !== 'string' || !ENV_RE.test(e)) throw badRequest(`env entry must be K=V: ${String(e).slice(0, 40)}`, 'env');
  checkAbsPath(o.cwd, 'cwd');
  // Base 0 would make sandbox root the host's root.
  checkInt(o.uidMapBase, 1, 0xfffffffe, 'uidMapBase');
  checkInt(o.idMapSize, 1, 0xffffffff - o.uidMapBase, 'idMapSize');
  const r = o.resources;
  if (typeof r.cpus !== 'number' || !Number.isFinite(r.cpus) || r.cpus < 0.01 || r.cpus > 1024) {
    throw badRequest('resources.cpus must be between 0.01 and 1024', 'resources.cpus');
  }
  checkInt(r.memoryMiB, 8, 16 * 1024 * 1024, 'resources.memoryMiB');
  checkInt(r.pids, 1, 4_194_304, 'resources.pids');
  checkAbsPath(o.cgroupsPath, 'cgroupsPath');
  if (posix.normalize(o.cgroupsPath) !== o.cgroupsPath || o.cgroupsPath === '/') {
    throw badRequest('cgroupsPath must be a normalized path below /', 'cgroupsPath');
  }
  o.binds.forEach((b, i) => {
    checkAbsPath(b.source, `binds[${i}].source`);
    checkAbsPath(b.target, `binds[${i}].target`);
    // A bind over the kernel's file systems would undo the masked and read-only paths.
    const t = posix.normalize(b.target);
    if (t === '/' || KERNEL_FS_ROOTS.some((k) => t === k || t.startsWith(k + '/'))) {
      throw badRequest(`binds[${i}].target must not be / or under ${KERNEL_FS_ROOTS.join(', ')}`, `binds[${i}].target`);
    }
    if (typeof b.readOnly !== 'boolean') throw badRequest('readOnly must be a boolean', `binds[${i}].readOnly`);
  });
  if (o.oomScoreAdj !== undefined) checkInt(o.oomScoreAdj, -1000, 1000, 'oomScoreAdj');
  if (o.shmSizeMiB !== undefined) checkInt(o.shmSizeMiB, 1, 1024 * 1024, 'shmSizeMiB');
}

const CAP_SYS_RESOURCE = 24;

/**
 * Whether this process may give the sandbox's PID 1 a negative oom_score_adj: lowering it below
 * the caller's own minimum needs CAP_SYS_RESOURCE, which some hosts (e.g. a runner that is
 * itself a container) do not grant even to root. runc fails to start the container otherwise.
 */
export function hostCanLowerOomScoreAdj(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m !== null && (BigInt('0x' + m[1]) & (1n << BigInt(CAP_SYS_RESOURCE))) !== 0n;
}

// ---------------------------------------------------------------------------------------------
// Host cgroup layout, for reading a sandbox's counters (OOM kills, CPU time) from the host side.

const CGROUP_ROOT = '/sys/fs/cgroup';
const CGROUP2_SUPER_MAGIC = 0x63677270;

/**
 * 'v2': /sys/fs/cgroup is itself cgroup2. 'hybrid': v1 controllers plus a cgroup2 mount at
 * /sys/fs/cgroup/unified. 'v1': v1 controllers only.
 */
export function detectCgroupMode(): 'v1' | 'hybrid' | 'v2' {
  if (statfsSync(CGROUP_ROOT).type === CGROUP2_SUPER_MAGIC) return 'v2';
  const unified = join(CGROUP_ROOT, 'unified');
  if (existsSync(unified) && statfsSync(unified).type === CGROUP2_SUPER_MAGIC) return 'hybrid';
  return 'v1';
}

/**
 * The host directory of a v1 controller's cgroup for an absolute cgroupsPath, found the way
 * runc finds it: the controller's mount point (which may be a joint one such as
 * /sys/fs/cgroup/cpu,cpuacct) joined with the path.
 */
export function cgroupV1Path(controller: string, cgroupsPath: string): string {
  if (!/^[a-z_]+$/.test(controller)) throw badRequest('controller must be a cgroup v1 controller name', 'controller');
  checkAbsPath(cgroupsPath, 'cgroupsPath');
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    // mountinfo: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [fstype, , superOptions = ''] = line.slice(sep + 3).split(' ');
    if (fstype !== 'cgroup') continue;
    if (!superOptions.split(',').includes(controller)) continue;
    const mountPoint = unescapeMountPath(line.slice(0, sep).split(' ')[4] ?? '');
    return join(mountPoint, cgroupsPath);
  }
  throw badRequest(`cgroup v1 controller ${controller} is not mounted`, 'controller');
}

function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}
