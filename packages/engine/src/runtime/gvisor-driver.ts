import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { RuntimeName } from '../types.js';
import { run } from '../util/run.js';
import { cgroupsPathFor, ContainerDriver, killInitProcess } from './container-driver.js';
import type { SandboxLaunch } from './driver.js';
import { straceFlags } from '../telemetry/syscall-trace.js';

/**
 * The `gvisor` tier: the same OCI bundle as `container`, run by runsc, so every system call
 * of the sandbox meets gVisor's user-space kernel before (and instead of) the host's.
 *
 * - platform systrap (Debian 13's runsc; ~5x faster here than ptrace);
 * - the agent reaches the host socket bound at /run/airlock through `--host-uds=open`
 *   (connect only: the sandbox cannot create host sockets);
 * - network: `none` (only loopback, inside gVisor) unless the sandbox has an allowlist. Then
 *   the sandbox runs in the namespace the engine plumbed before start, with gVisor's host
 *   network mode: socket calls the sentry has vetted go to the kernel *in that namespace*, so
 *   the veth, nftables, the resolver and the proxy apply unchanged. (runsc's own netstack mode
 *   cannot be used here: this runsc decides it is in the root namespace whenever
 *   /proc/sys/net/core/rmem_default exists, which kernels >= 6.x show in every namespace.)
 */
/** Threads runsc's own processes may use on top of the sandbox's pids limit. */
const SENTRY_THREADS_HEADROOM = 128;

export class GvisorDriver extends ContainerDriver {
  override readonly name: RuntimeName = 'gvisor';
  override readonly networkBeforeStart = true;
  override readonly oomSeenAsExit = true;
  /**
   * `runsc delete --force` takes ~1.7 s here. The sandbox process (the sentry, pid file) holds
   * every sandbox task; killing it and its gofer ends the sandbox, and runsc's state is three
   * files this driver can name.
   */
  protected override async killFast(id: string): Promise<boolean> {
    const dir = this.sandboxDir(id);
    if (!(await killInitProcess(join(dir, 'init.pid'), cgroupsPathFor(id)))) return false;
    await killGofer(this.stateRoot, join(dir, 'bundle'));
    for (const f of [`${id}_sandbox:${id}.state`, `${id}_sandbox:${id}.lock`, `runsc-${id}.sock`]) {
      rmSync(join(this.stateRoot, f), { force: true });
    }
    return true;
  }

  constructor(dataDir: string, agentBinary: string, runtimeBinary = 'runsc', private readonly platform = 'systrap') {
    super(dataDir, agentBinary, runtimeBinary, 'runsc');
  }

  protected override runtimeArgs(launch?: SandboxLaunch): string[] {
    // --overlay2=none: rootfs writes go through to the sandbox's own writable layer on the host
    // (the same loop-mounted, quota-sized layer as the container tier) instead of runsc's opaque
    // filestore, so the file-change telemetry reads them at exec and sandbox end.
    const args = ['--root', this.stateRoot, `--platform=${this.platform}`, '--host-uds=open', '--overlay2=none'];
    if (launch) args.push(`--network=${launch.netnsPath ? 'host' : 'none'}`);
    if (launch?.syscallTrace) args.push(...straceFlags(launch.dir, launch.syscallTrace.syscalls));
    return args;
  }

  /**
   * runsc runs the sandbox in user namespaces of its own (the sentry as nobody); a spec user
   * namespace would make it start the sandbox where it cannot join the engine's network
   * namespace. Everything else of the hardened spec stays.
   */
  protected override adjustSpec(spec: Record<string, unknown>): Record<string, unknown> {
    const linux = { ...(spec['linux'] as Record<string, unknown>) };
    linux['namespaces'] = (linux['namespaces'] as Array<{ type: string }>).filter((n) => n.type !== 'user');
    delete linux['uidMappings'];
    delete linux['gidMappings'];
    // The host pids cgroup also holds the sentry's and gofer's own threads (dozens, growing with
    // load): without headroom a process flood inside would kill the sentry, not be refused.
    const resources = { ...(linux['resources'] as Record<string, unknown> | undefined) };
    const pids = resources['pids'] as { limit?: number } | undefined;
    if (pids?.limit !== undefined) resources['pids'] = { ...pids, limit: pids.limit + SENTRY_THREADS_HEADROOM };
    linux['resources'] = resources;
    return { ...spec, linux };
  }

  override async list(): Promise<string[]> {
    // runsc names its state files <sandbox>_sandbox:<container>.state; reading them spares a process.
    try {
      const ids = new Set<string>();
      for (const f of readdirSync(this.stateRoot)) {
        const m = /^([a-z0-9]+)_sandbox:\1\.state$/.exec(f);
        if (m) ids.add(m[1]!);
      }
      return [...ids];
    } catch {
      return [];
    }
  }

  /** `runsc state` needs no platform flags; keep the probe cheap and independent of them. */
  override async status(id: string): ReturnType<ContainerDriver['status']> {
    const r = await run(this.runtimeBinary, ['--root', this.stateRoot, 'state', id], { allowFailure: true, timeoutMs: 10_000 });
    if (r.code !== 0) return 'absent';
    try {
      const s = JSON.parse(r.stdout) as { status?: string };
      if (s.status === 'running') return 'running';
      if (s.status === 'paused') return 'paused';
      return 'stopped';
    } catch {
      return 'absent';
    }
  }
}

/**
 * The gofer serving this bundle's files exits once the sentry is gone; kill it anyway so the
 * rootfs can be unmounted at once. It is found by its command line, which names our state
 * root and the bundle.
 */
async function killGofer(stateRoot: string, bundle: string): Promise<void> {
  const wanted = [`--root=${stateRoot}`, `--bundle=${bundle}`];
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (argv[0] === 'runsc-gofer' && wanted.every((w) => argv.includes(w))) pids.push(Number(name));
  }
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  const deadline = Date.now() + 5000;
  while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}
