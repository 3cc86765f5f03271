import { existsSync, realpathSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import { AirlockError } from '../errors.js';
import { cgroupMode, removeCgroup } from '../runtime/cgroups.js';
import { buildOciSpec } from '../runtime/oci-spec.js';
import { describeFailure, runProgram } from './run-program.js';

export interface BuildRunOptions {
  /** A mounted build overlay's merged directory. */
  rootfs: string;
  /** Where the bundle and the runtime's state go (a private work directory). */
  workDir: string;
  args: string[];
  env: string[];
  log: (line: string) => void;
  timeoutMs: number;
  memoryMiB?: number;
  /** OCI runtime binary; default as the engine picks it (AIRLOCK_OCI_RUNTIME, crun on pure v2, else runc). */
  runtime?: string;
}

export const DEFAULT_BUILD_MEMORY_MIB = 4096;
const BUILD_PIDS = 4096;

/**
 * Runs one recipe step inside the template being built, under the same hardened OCI config as
 * a sandbox (user namespace with the sandbox id range, seccomp allowlist, dropped
 * capabilities, no_new_privs, cgroup limits) except for one thing: it shares the host's
 * network namespace, because operators build templates and `apt-get` must reach the mirror
 * (and so has no /sys, which needs a network namespace of its own). The host's resolver
 * configuration is bound read-only over /etc/resolv.conf for the step.
 */
export async function runBuildStep(o: BuildRunOptions): Promise<void> {
  const id = `airlock-build-${randomBytes(6).toString('hex')}`;
  const bundle = join(o.workDir, 'bundle');
  const stateRoot = join(o.workDir, 'runtime-state');
  await mkdir(bundle, { recursive: true, mode: 0o700 });
  await mkdir(stateRoot, { recursive: true, mode: 0o700 });
  const cgroupsPath = `/airlock/${id}`;
  const binds = [];
  const resolv = hostResolvConf();
  if (resolv) binds.push({ source: resolv, target: '/etc/resolv.conf', readOnly: true });
  const spec = buildOciSpec({
    rootfsPath: o.rootfs,
    hostname: 'airlock-build',
    args: o.args,
    env: o.env,
    cwd: '/',
    uidMapBase: SANDBOX_ID_BASE,
    idMapSize: SANDBOX_ID_SIZE,
    resources: { cpus: Math.max(1, cpus().length), memoryMiB: o.memoryMiB ?? DEFAULT_BUILD_MEMORY_MIB, diskMiB: 1, pids: BUILD_PIDS },
    cgroupsPath,
    binds,
  });
  const linux = spec['linux'] as { namespaces: Array<{ type: string }> };
  linux.namespaces = linux.namespaces.filter((n) => n.type !== 'network');
  // The kernel lets a user namespace mount sysfs only with a network namespace of its own;
  // build steps (package installs, scripts) do without /sys rather than see the host's.
  const mounts = spec['mounts'] as Array<{ destination: string }>;
  spec['mounts'] = mounts.filter((m) => m.destination !== '/sys' && !m.destination.startsWith('/sys/'));
  await writeFile(join(bundle, 'config.json'), JSON.stringify(spec), { mode: 0o600 });

  const runtime = o.runtime ?? defaultRuntime();
  try {
    const r = await runProgram(runtime, ['--root', stateRoot, 'run', '--bundle', bundle, id], {
      timeoutMs: o.timeoutMs,
      onLine: (line) => o.log(line),
    });
    if (r.code !== 0) {
      throw new AirlockError('bad_request', r.code !== null && !r.timedOut && !r.spawnError
        ? `step failed with exit status ${r.code}: ${lastLines(r.stderr || r.stdout)}`
        : describeFailure(runtime, r));
    }
  } finally {
    // A killed `runc run` leaves its container behind: remove it, then whatever the cgroup still holds.
    await runProgram(runtime, ['--root', stateRoot, 'delete', '--force', id], { timeoutMs: 30_000 });
    removeCgroup(cgroupsPath);
  }
}

function lastLines(text: string): string {
  return text.trim().split('\n').slice(-3).join(' | ').slice(0, 1000);
}

function defaultRuntime(): string {
  const forced = process.env.AIRLOCK_OCI_RUNTIME;
  if (forced) return forced;
  return cgroupMode() === 'v2' && ['/usr/bin/crun', '/usr/local/bin/crun', '/usr/sbin/crun'].some((p) => existsSync(p)) ? 'crun' : 'runc';
}

/** The host's resolv.conf with links resolved (a bind of a dangling link would fail), or null. */
function hostResolvConf(): string | null {
  try {
    return realpathSync('/etc/resolv.conf');
  } catch {
    return null;
  }
}
