import { accessSync, constants as fsConstants, existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from './constants.js';
import type { DoctorCheck } from './engine-api.js';
import { describeFailure, runProgram } from './template/run-program.js';
import { run } from './util/run.js';
import { TemplateStore } from './template/template-store.js';

export interface DoctorOptions {
  dataDir: string;
  templatesDir: string;
}

/** Version probes print a line or two; anything slower than this is itself a finding. */
const PROBE_TIMEOUT_MS = 10_000;
const RUNSC_PROBE_TIMEOUT_MS = 20_000;
const MIN_KERNEL: readonly [number, number] = [5, 10];
/** gVisor's systrap platform shipped in 2023; runsc builds are versioned by date. */
const SYSTRAP_MIN_DATE = 20230000;
/** Controllers the runtimes set limits with or read usage from. */
const REQUIRED_CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids', 'freezer'] as const;
const V1_CONTROLLERS = new Set([
  'cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'net_cls', 'net_prio',
  'blkio', 'perf_event', 'hugetlb', 'pids', 'rdma', 'misc',
]);
export const REQUIRED_TEMPLATES = ['base', 'tiny'] as const;

/**
 * Checks the host for everything the runtimes need. Never throws: a probe that fails or
 * blows up is reported as a check with ok:false and the reason in `detail`.
 */
export async function runDoctor(opts: DoctorOptions): Promise<DoctorCheck[]> {
  const cgroups = safe(detectCgroups);
  const checks: Array<[string, () => DoctorCheck | Promise<DoctorCheck>]> = [
    ['root', checkRoot],
    ['kernel', checkKernel],
    ['cgroups', () => checkCgroups(cgroups)],
    ['runc', checkRunc],
    ['crun', () => checkCrun(cgroups)],
    ['runsc', checkRunsc],
    ['uid-range', checkUidRange],
    ['userns', checkUserNamespaces],
    ['overlayfs', checkOverlayfs],
    ['disk-images', checkDiskImages],
    ['nftables', checkNftables],
    ['egress', checkEgress],
    ['kvm', checkKvm],
    ['microvm', checkMicrovm],
    ['templates', () => checkTemplates(opts.templatesDir)],
    ['data-dir', () => checkDataDir(opts.dataDir)],
  ];
  return Promise.all(checks.map(async ([name, run]) => {
    try {
      return await run();
    } catch (e) {
      return { name, ok: false, detail: `probe failed: ${(e as Error).message}` };
    }
  }));
}

function safe<T>(f: () => T): T | Error {
  try {
    return f();
  } catch (e) {
    return e as Error;
  }
}

const check = (name: string, ok: boolean, detail: string): DoctorCheck => ({ name, ok, detail });

/** PATH plus the sbin directories (runc and nft live there; a user's PATH may lack them). */
export function findExecutable(name: string, preferred: string[] = []): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const candidate of [...preferred, ...dirs.filter(Boolean).map((d) => join(d, name))]) {
    try {
      accessSync(candidate, fsConstants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

function checkRoot(): DoctorCheck {
  const uid = process.getuid?.() ?? -1;
  return uid === 0
    ? check('root', true, 'running as uid 0')
    : check('root', false, `running as uid ${uid}: namespaces, cgroups, mounts and nftables need root`);
}

function checkKernel(): DoctorCheck {
  const rel = release();
  const m = /^(\d+)\.(\d+)/.exec(rel);
  const [maj, min] = [Number(m?.[1] ?? 0), Number(m?.[2] ?? 0)];
  const ok = maj > MIN_KERNEL[0] || (maj === MIN_KERNEL[0] && min >= MIN_KERNEL[1]);
  return check('kernel', ok, `${rel} (${ok ? 'ok' : 'too old'}: needs ${MIN_KERNEL.join('.')} or newer for openat2, pidfd and user-namespace mounts)`);
}

export interface CgroupLayout {
  mode: 'v1' | 'hybrid' | 'v2' | 'none';
  /** Controllers a runtime can use: v1 hierarchies, or the v2 root's (plus freezer and cpuacct, built into v2). */
  controllers: string[];
  /** Where the cgroup2 hierarchy is mounted, if anywhere. */
  v2Mount: string | null;
  /** Controllers enabled in the cgroup2 hierarchy (in hybrid mode usually few or none). */
  v2Controllers: string[];
}

export function detectCgroups(): CgroupLayout {
  const v1 = new Set<string>();
  let v2Mount: string | null = null;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const mountPoint = left.split(' ')[4] ?? '';
    const [fstype, , superOpts = ''] = right.split(' ');
    if (fstype === 'cgroup2') {
      if (v2Mount === null || mountPoint === '/sys/fs/cgroup') v2Mount = mountPoint;
    } else if (fstype === 'cgroup') {
      for (const opt of superOpts.split(',')) if (V1_CONTROLLERS.has(opt)) v1.add(opt);
    }
  }
  let v2Controllers: string[] = [];
  if (v2Mount) {
    try {
      v2Controllers = readFileSync(join(v2Mount, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      v2Controllers = [];
    }
  }
  const mode = v2Mount === '/sys/fs/cgroup' ? 'v2' : v1.size > 0 ? (v2Mount ? 'hybrid' : 'v1') : v2Mount ? 'v2' : 'none';
  const controllers = mode === 'v2'
    ? [...new Set([...v2Controllers, 'freezer', 'cpuacct'])]
    : [...v1];
  return { mode, controllers: controllers.sort(), v2Mount, v2Controllers };
}

function checkCgroups(layout: CgroupLayout | Error): DoctorCheck {
  if (layout instanceof Error) return check('cgroups', false, `cannot read mounts: ${layout.message}`);
  if (layout.mode === 'none') return check('cgroups', false, 'no cgroup filesystem is mounted');
  const missing = REQUIRED_CONTROLLERS.filter((c) => !layout.controllers.includes(c));
  const where = layout.mode === 'hybrid'
    ? `v1 controllers: ${layout.controllers.join(', ')}; cgroup2 at ${layout.v2Mount} holds ${layout.v2Controllers.join(', ') || 'no controllers'}`
    : `${layout.mode === 'v2' ? `cgroup2 at ${layout.v2Mount}` : 'v1'} controllers: ${layout.controllers.join(', ')}`;
  return missing.length === 0
    ? check('cgroups', true, `${layout.mode}; ${where}`)
    : check('cgroups', false, `${layout.mode}; missing ${missing.join(', ')}; ${where}`);
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}

async function checkRunc(): Promise<DoctorCheck> {
  const path = findExecutable('runc');
  if (!path) return check('runc', false, 'not installed (apt-get install runc, or run scripts/setup-host.sh)');
  const r = await runProgram(path, ['--version'], { timeoutMs: PROBE_TIMEOUT_MS });
  if (r.code !== 0) return check('runc', false, describeFailure(`${path} --version`, r));
  const version = /runc version (\S+)/.exec(r.stdout)?.[1] ?? firstLine(r.stdout);
  const seccomp = /libseccomp:\s*(\S+)/.exec(r.stdout)?.[1];
  return seccomp
    ? check('runc', true, `${version} at ${path}, libseccomp ${seccomp}`)
    : check('runc', false, `${version} at ${path} is built without libseccomp: sandboxes need its syscall filter`);
}

async function checkCrun(layout: CgroupLayout | Error): Promise<DoctorCheck> {
  const path = findExecutable('crun');
  const pureV2 = !(layout instanceof Error) && layout.mode === 'v2';
  if (!path) {
    return check('crun', true, pureV2
      ? 'not installed (optional: runc also drives pure cgroup v2)'
      : 'not installed (optional: only usable on pure cgroup v2 hosts; runc serves this one)');
  }
  const r = await runProgram(path, ['--version'], { timeoutMs: PROBE_TIMEOUT_MS });
  if (r.code !== 0) return check('crun', false, describeFailure(`${path} --version`, r));
  const version = /crun version (\S+)/.exec(r.stdout)?.[1] ?? firstLine(r.stdout);
  const mode = layout instanceof Error ? 'unknown' : layout.mode;
  return check('crun', true, pureV2
    ? `${version} at ${path}: usable (cgroups are pure v2)`
    : `${version} at ${path}: not used here (cgroups are ${mode}; crun needs pure v2, runc is used)`);
}

async function checkRunsc(): Promise<DoctorCheck> {
  const path = findExecutable('runsc', ['/usr/local/bin/runsc']);
  if (!path) return check('runsc', false, 'not installed: run scripts/setup-host.sh (installs Debian 13\'s runsc to /usr/local/bin)');
  const v = await runProgram(path, ['--version'], { timeoutMs: PROBE_TIMEOUT_MS });
  if (v.code !== 0) return check('runsc', false, describeFailure(`${path} --version`, v));
  const version = /runsc version (\S+)/.exec(v.stdout)?.[1] ?? firstLine(v.stdout);
  const date = Number(/(\d{8})/.exec(version)?.[1] ?? 0);
  if (date < SYSTRAP_MIN_DATE) {
    return check('runsc', false, `${version} at ${path} predates the systrap platform (only the slow ptrace one): run scripts/setup-host.sh`);
  }
  const probe = await probeRunsc(path);
  return probe.ok
    ? check('runsc', true, `${version} at ${path}, platform systrap (probe ran /bin/true in ${probe.ms} ms)`)
    : check('runsc', false, `${version} at ${path}: systrap probe failed: ${probe.why}`);
}

/** Runs /bin/true under runsc with systrap, in a throwaway state dir that is removed afterwards. */
async function probeRunsc(path: string): Promise<{ ok: true; ms: number } | { ok: false; why: string }> {
  const root = await mkdtemp(join(tmpdir(), 'airlock-doctor-runsc-'));
  const started = Date.now();
  try {
    const r = await runProgram(path, ['--root', root, '--platform=systrap', '--network=none', 'do', '/bin/true'],
      { timeoutMs: RUNSC_PROBE_TIMEOUT_MS });
    if (r.code === 0) return { ok: true, ms: Date.now() - started };
    if (r.timedOut) await forceDeleteRunscContainers(path, root);
    return { ok: false, why: describeFailure('runsc do', r) };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** A timed-out `runsc do` can leave its sandbox running: delete whatever that state dir knows. */
async function forceDeleteRunscContainers(path: string, root: string): Promise<void> {
  const list = await runProgram(path, ['--root', root, 'list', '-quiet'], { timeoutMs: PROBE_TIMEOUT_MS });
  for (const id of list.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
    await runProgram(path, ['--root', root, 'delete', '-force', id], { timeoutMs: PROBE_TIMEOUT_MS });
  }
}

interface IdClaim {
  file: string;
  who: string;
  start: number;
  count: number;
}

/** Entries of the host's account and subordinate-id files that fall inside the sandbox id range. */
export function idRangeConflicts(base = SANDBOX_ID_BASE, size = SANDBOX_ID_SIZE): IdClaim[] {
  const claims: IdClaim[] = [];
  const read = (file: string) => {
    try {
      return readFileSync(file, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
    } catch {
      return [];
    }
  };
  for (const file of ['/etc/passwd', '/etc/group']) {
    for (const line of read(file)) {
      const f = line.split(':');
      claims.push({ file, who: f[0] ?? '', start: Number(f[2]), count: 1 });
    }
  }
  for (const file of ['/etc/subuid', '/etc/subgid']) {
    for (const line of read(file)) {
      const f = line.split(':');
      claims.push({ file, who: f[0] ?? '', start: Number(f[1]), count: Number(f[2]) });
    }
  }
  return claims.filter((c) => Number.isFinite(c.start) && Number.isFinite(c.count)
    && c.start < base + size && c.start + c.count > base);
}

function checkUidRange(): DoctorCheck {
  const range = `${SANDBOX_ID_BASE}..${SANDBOX_ID_BASE + SANDBOX_ID_SIZE - 1}`;
  const conflicts = idRangeConflicts();
  if (conflicts.length === 0) return check('uid-range', true, `host ids ${range} are unused by /etc/passwd, /etc/group, /etc/subuid, /etc/subgid`);
  const list = conflicts.slice(0, 5).map((c) => `${c.file}: ${c.who} ${c.start}${c.count > 1 ? `+${c.count}` : ''}`);
  return check('uid-range', false, `sandbox ids ${range} overlap ${list.join('; ')}`);
}

function checkUserNamespaces(): DoctorCheck {
  const max = Number(readFileSync('/proc/sys/user/max_user_namespaces', 'utf8').trim());
  return max > 0
    ? check('userns', true, `user namespaces enabled (max_user_namespaces = ${max})`)
    : check('userns', false, 'user namespaces disabled: set the sysctl user.max_user_namespaces above 0');
}

function checkOverlayfs(): DoctorCheck {
  if (/\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'))) {
    return check('overlayfs', true, 'overlay is registered in /proc/filesystems');
  }
  const moduleDir = `/lib/modules/${release()}/kernel/fs/overlayfs`;
  return existsSync(moduleDir)
    ? check('overlayfs', true, `overlay module present in ${moduleDir} (the kernel loads it at the first mount)`)
    : check('overlayfs', false, 'overlay is neither in /proc/filesystems nor available as a module');
}

/** Sandbox layers and volumes are ext4 images on loop devices (storage/ext4-image.ts). */
function checkDiskImages(): DoctorCheck {
  const mkfs = findExecutable('mkfs.ext4');
  if (!mkfs) return check('disk-images', false, 'mkfs.ext4 not installed (apt-get install e2fsprogs): sandboxes need it for their disks');
  if (!existsSync('/dev/loop-control')) return check('disk-images', false, '/dev/loop-control is missing: no loop devices (modprobe loop)');
  if (!/\text4$/m.test(readFileSync('/proc/filesystems', 'utf8'))) return check('disk-images', false, 'ext4 is not in /proc/filesystems');
  return check('disk-images', true, `${mkfs}, /dev/loop-control and ext4 present: disk quotas are real file systems`);
}

async function checkNftables(): Promise<DoctorCheck> {
  const path = findExecutable('nft');
  if (!path) return check('nftables', false, 'nft not installed (apt-get install nftables)');
  const v = await runProgram(path, ['--version'], { timeoutMs: PROBE_TIMEOUT_MS });
  if (v.code !== 0) return check('nftables', false, describeFailure(`${path} --version`, v));
  // A read-only listing proves the kernel side (nf_tables) answers, not just the tool.
  const l = await runProgram(path, ['list', 'tables'], { timeoutMs: PROBE_TIMEOUT_MS });
  const version = firstLine(v.stdout);
  return l.code === 0
    ? check('nftables', true, `${version} at ${path}; kernel nf_tables answers`)
    : check('nftables', false, `${version} at ${path}; ${describeFailure('nft list tables', l)}`);
}

/**
 * What network egress control needs from the kernel: nf_tables with TPROXY, veth pairs,
 * tbf for bandwidth caps. `nft --check` has the kernel validate a ruleset without applying it.
 */
async function checkEgress(): Promise<DoctorCheck> {
  const nft = findExecutable('nft');
  const ip = findExecutable('ip');
  const tc = findExecutable('tc');
  if (!nft || !ip || !tc) return check('egress', false, `missing ${[!nft && 'nft', !ip && 'ip', !tc && 'tc'].filter(Boolean).join(', ')} (apt-get install nftables iproute2)`);
  const probe = 'table inet airlock_doctor { chain p { type filter hook prerouting priority mangle; policy accept; meta l4proto tcp tproxy ip to 127.0.0.1:9 meta mark set 1 accept; }; }';
  const r = await run(nft, ['--check', '-f', '-'], { timeoutMs: PROBE_TIMEOUT_MS, input: probe, allowFailure: true });
  if (r.code !== 0) return check('egress', false, `the kernel refuses TPROXY in nf_tables (${r.stderr.trim().split('\n')[0] ?? r.code}): sandboxes with an allowlist cannot start`);
  return check('egress', true, 'nf_tables TPROXY accepted; sandboxes with an allowlist get a veth, a resolver and the egress proxy');
}

function checkKvm(): DoctorCheck {
  try {
    const st = statSync('/dev/kvm');
    if (!st.isCharacterDevice()) return check('kvm', false, '/dev/kvm exists but is not a character device');
    const major = Math.floor(st.rdev / 256) & 0xfff;
    return check('kvm', true, `/dev/kvm present (char ${major}:${st.rdev & 0xff}); whether guests boot is probed by the microvm tier (it falls back to TCG)`);
  } catch {
    return check('kvm', false, '/dev/kvm absent: the microvm tier runs under TCG emulation (slow)');
  }
}

/**
 * The microvm tier: QEMU, the guest kernel and the VM helpers present, and a guest that actually
 * boots, KVM first, TCG otherwise (the probe is cached per host kernel, QEMU and guest kernel).
 */
async function checkMicrovm(): Promise<DoctorCheck> {
  const { findMicrovmAssets, microvmHome } = await import('./runtime/microvm/assets.js');
  const { probeAccelerator } = await import('./runtime/microvm/accel.js');
  const agent = process.env.AIRLOCK_AGENT_BINARY
    ?? join(dirname(realpathSync(fileURLToPath(import.meta.url))), '../../../../agent/build/airlock-agent');
  const assets = findMicrovmAssets(agent);
  if ('missing' in assets) return check('microvm', false, `unavailable: ${assets.missing}`);
  const p = await probeAccelerator(assets, join(microvmHome(), 'cache'));
  const how = p.accel === 'kvm' ? 'KVM' : `TCG emulation (${p.kvmProblem ?? 'no KVM'})`;
  return check('microvm', true, `guest kernel ${assets.kernelRelease} boots under ${how} in ${(p.bootMs / 1000).toFixed(1)} s (probed ${p.probedAt}, cached)`);
}

function checkTemplates(templatesDir: string): DoctorCheck {
  const store = new TemplateStore(templatesDir);
  const found: string[] = [];
  const missing: string[] = [];
  for (const name of REQUIRED_TEMPLATES) {
    const info = store.info(name);
    if (info) found.push(`${name} (${Math.round((info.sizeBytes ?? 0) / 2 ** 20)} MiB, ${info.createdAt})`);
    else missing.push(name);
  }
  const present = found.length ? `present: ${found.join(', ')}` : 'none present';
  return missing.length === 0
    ? check('templates', true, `${store.dir}: ${present}`)
    : check('templates', false, `${store.dir}: missing ${missing.join(', ')} (run \`airlock template build NAME\` or npm run quickstart); ${present}`);
}

async function checkDataDir(dataDir: string): Promise<DoctorCheck> {
  let st;
  try {
    st = statSync(dataDir);
  } catch {
    // Not created yet: fine if the nearest existing ancestor is writable.
    let parent = dirname(dataDir);
    while (!existsSync(parent) && parent !== dirname(parent)) parent = dirname(parent);
    try {
      accessSync(parent, fsConstants.W_OK);
      return check('data-dir', true, `${dataDir} does not exist yet; it will be created under ${parent}`);
    } catch {
      return check('data-dir', false, `${dataDir} does not exist and ${parent} is not writable`);
    }
  }
  if (!st.isDirectory()) return check('data-dir', false, `${dataDir} is not a directory`);
  if ((st.mode & 0o022) !== 0) {
    return check('data-dir', false, `${dataDir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): it holds keys and sandbox roots`);
  }
  const probe = join(dataDir, `.airlock-doctor-${process.pid}`);
  try {
    await writeFile(probe, 'probe');
    await unlink(probe);
  } catch (e) {
    return check('data-dir', false, `${dataDir} is not writable: ${(e as Error).message}`);
  }
  return check('data-dir', true, `${dataDir} is writable (mode ${(st.mode & 0o777).toString(8)})`);
}
