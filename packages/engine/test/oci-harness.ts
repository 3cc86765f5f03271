/**
 * Test harness for the container-tier OCI spec: a busybox root in a tmp dir, run by real runc.
 * Every host object it makes (tmp dir, runc state, containers, cgroups) is named with
 * "airlock" and removed by cleanup(), which tests call from t.after/after.
 */
import { randomBytes } from 'node:crypto';
import {
  chmodSync, closeSync, copyFileSync, lchownSync, mkdirSync, mkdtempSync, openSync, readdirSync,
  readFileSync, rmdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../src/constants.js';
import { buildOciSpec, cgroupV1Path, detectCgroupMode, type OciSpecOptions } from '../src/runtime/oci-spec.js';
import { run } from '../src/util/run.js';

const PROBE_SOURCE = fileURLToPath(new URL('../../test/oci-probe.c', import.meta.url));
const ROOTFS_DIRS = ['bin', 'dev', 'etc', 'mnt', 'proc', 'run', 'sys', 'tmp', 'usr'];
/** lib and lib64 point into /usr, so a test may bind the host's /usr to run its programs. */
const ROOTFS_LINKS: Array<[string, string]> = [['lib', 'usr/lib'], ['lib64', 'usr/lib64']];
/** What `ls /` shows inside the sandbox. */
export const ROOTFS_ENTRIES = [...ROOTFS_DIRS, ...ROOTFS_LINKS.map(([n]) => n)].sort();

export interface Bundle {
  /** The bundle directory (config.json lives here); the rootfs is its child. */
  dir: string;
  rootfs: string;
  runcRoot: string;
}

/**
 * A busybox root owned by sandbox root (host uid SANDBOX_ID_BASE), with the syscall probe.
 * Every directory above the rootfs must be searchable by that uid: runc mounts the rootfs from
 * inside the user namespace.
 */
export async function makeBusyboxBundle(): Promise<Bundle> {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-oci-'));
  chmodSync(dir, 0o711);
  const rootfs = join(dir, 'rootfs');
  for (const d of ROOTFS_DIRS) mkdirSync(join(rootfs, d), { recursive: true, mode: 0o755 });
  chmodSync(join(rootfs, 'tmp'), 0o1777);
  for (const [name, target] of ROOTFS_LINKS) symlinkSync(target, join(rootfs, name));
  copyFileSync('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  const applets = (await run('/bin/busybox', ['--list'])).stdout.split('\n').filter((a) => /^[\w.[-]+$/.test(a));
  for (const a of applets) if (a !== 'busybox') symlinkSync('busybox', join(rootfs, 'bin', a));
  writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\ntty:x:5:\n');
  await run('gcc', ['-static', '-O1', '-o', join(rootfs, 'bin', 'airlock-probe'), PROBE_SOURCE, '-lpthread'], { timeoutMs: 120_000 });
  lchownTree(rootfs, SANDBOX_ID_BASE);
  const runcRoot = join(dir, 'runc');
  mkdirSync(runcRoot, { mode: 0o700 });
  return { dir, rootfs, runcRoot };
}

function lchownTree(path: string, id: number): void {
  lchownSync(path, id, id);
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) lchownTree(p, id);
    else lchownSync(p, id, id);
  }
}

export interface SandboxRun {
  id: string;
  cgroupsPath: string;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  overrides?: Partial<OciSpecOptions>;
  /** Called once the container runs, before it is waited for (e.g. to sample cgroup counters). */
  whileRunning?: (c: { id: string; cgroupsPath: string }) => Promise<void>;
  /** Called after PID 1 exited and before `runc delete` removes the cgroup. */
  afterExit?: (c: { id: string; cgroupsPath: string }) => void;
  timeoutMs?: number;
}

export const DEFAULT_RESOURCES = { cpus: 1, memoryMiB: 256, diskMiB: 64, pids: 128 };

export function specOptions(b: Bundle, id: string, args: string[], overrides: Partial<OciSpecOptions> = {}): OciSpecOptions {
  return {
    rootfsPath: b.rootfs,
    hostname: `airlock-${id.slice(-8)}`,
    args,
    env: ['PATH=/bin', 'HOME=/'],
    cwd: '/',
    uidMapBase: SANDBOX_ID_BASE,
    idMapSize: SANDBOX_ID_SIZE,
    resources: DEFAULT_RESOURCES,
    cgroupsPath: `/airlock/${id}`,
    binds: [],
    ...overrides,
  };
}

/**
 * Runs args as PID 1 with `runc run --detach` (so the cgroup outlives PID 1 until delete and
 * its counters can be read), waits for it to stop, and always deletes it.
 */
export async function runInSandbox(b: Bundle, args: string[], opts: RunOptions = {}): Promise<SandboxRun> {
  const id = `airlock-test-${randomBytes(4).toString('hex')}`;
  const spec = specOptions(b, id, args, opts.overrides);
  writeFileSync(join(b.dir, 'config.json'), JSON.stringify(buildOciSpec(spec)));
  const outPath = join(b.dir, `${id}.out`);
  const errPath = join(b.dir, `${id}.err`);
  const out = openSync(outPath, 'w', 0o600);
  const err = openSync(errPath, 'w', 0o600);
  const c = { id, cgroupsPath: spec.cgroupsPath };
  try {
    const r = await run('runc', ['--root', b.runcRoot, 'run', '--detach', '--bundle', b.dir, id], {
      stdio: ['ignore', out, err], allowFailure: true, timeoutMs: 30_000,
    });
    if (r.code !== 0) throw new Error(`runc run failed (${r.code}): ${readFileSync(errPath, 'utf8')}`);
    if (opts.whileRunning) await opts.whileRunning(c);
    await waitStopped(b, id, opts.timeoutMs ?? 30_000);
    opts.afterExit?.(c);
    return { id, cgroupsPath: spec.cgroupsPath, stdout: readFileSync(outPath, 'utf8'), stderr: readFileSync(errPath, 'utf8') };
  } finally {
    closeSync(out);
    closeSync(err);
    await run('runc', ['--root', b.runcRoot, 'delete', '--force', id], { allowFailure: true, timeoutMs: 30_000 });
  }
}

async function waitStopped(b: Bundle, id: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await run('runc', ['--root', b.runcRoot, 'state', id], { allowFailure: true, timeoutMs: 10_000 });
    if (r.code !== 0) throw new Error(`runc state ${id}: ${r.stderr}`);
    if ((JSON.parse(r.stdout) as { status: string }).status === 'stopped') return;
    if (Date.now() > deadline) throw new Error(`sandbox ${id} still running after ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Convenience: `sh -c script` in a fresh sandbox. */
export function sh(b: Bundle, script: string, opts: RunOptions = {}): Promise<SandboxRun> {
  return runInSandbox(b, ['/bin/sh', '-c', script], opts);
}

/** Runs the syscall probe and returns NAME → result ("ok", "EPERM", "signal31", …). */
export async function probe(b: Bundle, names: string[] = [], opts: RunOptions = {}): Promise<Map<string, string>> {
  const r = await runInSandbox(b, ['/bin/airlock-probe', ...names], opts);
  const results = new Map<string, string>();
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const eq = line.indexOf('=');
    results.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return results;
}

/** A host-side cgroup file of a sandbox, v1 (per controller) or v2 (unified). */
export function cgroupFile(controller: string, cgroupsPath: string, v1File: string, v2File: string): string {
  return detectCgroupMode() === 'v2'
    ? join('/sys/fs/cgroup', cgroupsPath, v2File)
    : join(cgroupV1Path(controller, cgroupsPath), v1File);
}

/** "key value" lines (memory.oom_control, pids.events, cpu.stat) → one value. */
export function readKeyed(file: string, key: string): number {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key) return Number(v);
  }
  throw new Error(`${key} not in ${file}`);
}

/** CPU time a sandbox's cgroup has used, in seconds. */
export function cpuSeconds(cgroupsPath: string): number {
  if (detectCgroupMode() === 'v2') return readKeyed(cgroupFile('cpu', cgroupsPath, '', 'cpu.stat'), 'usage_usec') / 1e6;
  return Number(readFileSync(cgroupFile('cpuacct', cgroupsPath, 'cpuacct.usage', ''), 'utf8')) / 1e9;
}

/** Removes the tmp dir and the shared /airlock parent cgroups when nothing else uses them. */
export async function cleanup(b: Bundle | undefined): Promise<void> {
  if (b) {
    const r = await run('runc', ['--root', b.runcRoot, 'list', '--quiet'], { allowFailure: true });
    for (const id of r.stdout.split('\n').filter(Boolean)) {
      await run('runc', ['--root', b.runcRoot, 'delete', '--force', id], { allowFailure: true });
    }
    rmSync(b.dir, { recursive: true, force: true });
  }
  const parents = detectCgroupMode() === 'v2'
    ? ['/sys/fs/cgroup/airlock']
    : readdirSync('/sys/fs/cgroup').map((c) => join('/sys/fs/cgroup', c, 'airlock'));
  for (const p of parents) {
    try { rmdirSync(p); } catch { /* absent, or another sandbox still lives there */ }
  }
}
