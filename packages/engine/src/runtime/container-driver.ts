import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_PATH_IN_SANDBOX, CONTROL_DIR_IN_SANDBOX, HOST_SOCKET_NAME, SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import { fsUsage, type DiskUsage } from '../storage/disk-watch.js';
import { run } from '../util/run.js';
import { oomKills, pidsMaxHits, removeCgroup, thawCgroup } from './cgroups.js';
import type { RuntimeName } from '../types.js';
import type { DriverStatus, LimitCounters, RuntimeDriver, SandboxLaunch } from './driver.js';
import { buildOciSpec } from './oci-spec.js';
import { mountRootfs, rootfsHelper, rootfsPaths, unmountRootfs } from './rootfs.js';

export const cgroupsPathFor = (id: string) => `/airlock/${id}`;

/**
 * The `container` tier: an OCI bundle run by runc (user, pid, mount, ipc, uts, net and cgroup
 * namespaces, seccomp allowlist, dropped capabilities). runc runs detached and exits, so an
 * idle sandbox costs the host only its agent process.
 */
export class ContainerDriver implements RuntimeDriver {
  readonly name: RuntimeName = 'container';
  readonly networkBeforeStart: boolean = false;
  protected readonly stateRoot: string;

  private readonly rootfsHelper: string;
  /** runc processes still finishing a start, by sandbox id. */
  protected readonly starting = new Map<string, Promise<void>>();
  readonly oomSeenAsExit: boolean = false;

  constructor(protected readonly dataDir: string, agentBinary: string, protected readonly runtimeBinary = 'runc', stateDirName = 'runc') {
    this.stateRoot = join(dataDir, stateDirName);
    this.rootfsHelper = rootfsHelper(agentBinary);
    mkdirSync(this.stateRoot, { recursive: true, mode: 0o700 });
  }

  /** Global flags before the runtime's command (runsc adds its platform and network mode). */
  protected runtimeArgs(_launch?: SandboxLaunch): string[] {
    return ['--root', this.stateRoot];
  }

  /** A runtime's own changes to the shared hardened spec. */
  protected adjustSpec(spec: Record<string, unknown>): Record<string, unknown> {
    return spec;
  }

  protected sandboxDir(id: string): string {
    return join(this.dataDir, 'sandboxes', id);
  }

  async start(l: SandboxLaunch): Promise<void> {
    const bundle = join(l.dir, 'bundle');
    mkdirSync(bundle, { recursive: true, mode: 0o700 });
    mkdirSync(join(l.controlDir, 'bin'), { recursive: true, mode: 0o755 });
    // The agent binary is bound onto this placeholder; it must exist because /run/airlock is read-only inside.
    closeSync(openSync(join(l.controlDir, 'bin', 'airlock-agent'), 'a', 0o755));
    try {
      const { rootfs } = await mountRootfs(this.rootfsHelper, l.dir, l.template.layers, l.blankLayer);
      const spec = buildOciSpec({
        rootfsPath: rootfs,
        hostname: `airlock-${l.id.slice(0, 8)}`,
        args: [AGENT_PATH_IN_SANDBOX, '--connect', `${CONTROL_DIR_IN_SANDBOX}/${HOST_SOCKET_NAME}`],
        env: [`AIRLOCK_AGENT_TOKEN=${l.agentToken}`, 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        cwd: '/',
        uidMapBase: SANDBOX_ID_BASE,
        idMapSize: SANDBOX_ID_SIZE,
        resources: l.spec.resources,
        cgroupsPath: cgroupsPathFor(l.id),
        ...(l.netnsPath ? { netnsPath: l.netnsPath } : {}),
        binds: [
          { source: l.controlDir, target: CONTROL_DIR_IN_SANDBOX, readOnly: true },
          { source: l.agentBinary, target: AGENT_PATH_IN_SANDBOX, readOnly: true },
          ...l.spec.mounts.map((m) => ({ source: m.source, target: m.target, readOnly: m.readOnly })),
          ...l.volumeBinds.map((m) => ({ source: m.source, target: m.target, readOnly: m.readOnly })),
          ...(l.engineBinds ?? []).map((m) => ({ source: m.source, target: m.target, readOnly: true })),
        ],
      });
      writeFileSync(join(bundle, 'config.json'), JSON.stringify(this.adjustSpec(spec)));
      // runc's own errors and the agent's fatal messages land here; read back on failure.
      const logPath = join(l.dir, 'runtime.log');
      const logFd = openSync(logPath, 'w', 0o600);
      const runtime = run(this.runtimeBinary, [...this.runtimeArgs(l), 'run', '--detach', '--pid-file', join(l.dir, 'init.pid'), '--bundle', bundle, l.id], {
        stdio: ['ignore', 'ignore', logFd],
        allowFailure: true,
        timeoutMs: 30_000,
      }).then((r) => {
        if (r.code !== 0) throw new Error(`${this.runtimeBinary} could not start the sandbox: ${readTail(logPath)}`);
      }).finally(() => closeSync(logFd));
      const settled = runtime.then(() => {}, () => {});
      this.starting.set(l.id, settled);
      void settled.then(() => { if (this.starting.get(l.id) === settled) this.starting.delete(l.id); });
      // The agent dialling in proves the container runs; runc's remaining bookkeeping (state
      // file, exit) finishes in the background, and destroy() waits for it.
      await (l.ready ? Promise.race([runtime, l.ready]) : runtime);
    } catch (e) {
      await this.destroy(l.id);
      throw e;
    }
  }

  /** Whether destroy may try killFast before the runtime's own (slower) delete. */
  protected readonly fastKill: boolean = true;

  /**
   * Kills the sandbox without the runtime's help and removes its state; false when that was not
   * possible (then `delete --force` runs). runc keeps one state directory per container.
   */
  protected async killFast(id: string): Promise<boolean> {
    if (!(await killInitProcess(join(this.sandboxDir(id), 'init.pid'), cgroupsPathFor(id)))) return false;
    rmSync(join(this.stateRoot, id), { recursive: true, force: true });
    return true;
  }

  async destroy(id: string): Promise<void> {
    await this.starting.get(id);
    const dir = this.sandboxDir(id);
    // Fast path: SIGKILL the sandbox's PID 1 (the kernel then kills everything else in its pid
    // namespace) and remove the runtime's state ourselves. `runc delete --force` does the same
    // but sleeps 100 ms before its first check, and `runc delete` costs a process start.
    const killed = this.fastKill && await this.killFast(id);
    if (!killed) {
      const r = await run(this.runtimeBinary, [...this.runtimeArgs(), 'delete', '--force', id], { allowFailure: true, timeoutMs: 30_000 });
      if (r.code !== 0 && (await this.status(id)) !== 'absent') {
        throw new Error(`${this.runtimeBinary} delete ${id} failed: ${r.stderr.trim().slice(0, 500)}`);
      }
    }
    // Every process is dead by now: the mounts can go while the cgroup (synchronously) does.
    const unmounted = unmountRootfs(this.rootfsHelper, dir);
    unmounted.catch(() => {}); // awaited below; must not be an unhandled rejection meanwhile
    removeCgroup(cgroupsPathFor(id));
    try {
      await unmounted;
    } catch {
      // A mount still pinned by a namespace the kernel is tearing down: once more, a moment later.
      await new Promise((r) => setTimeout(r, 100));
      await unmountRootfs(this.rootfsHelper, dir);
    }
    rmSync(dir, { recursive: true, force: true });
  }

  async networkPid(id: string): Promise<number | null> {
    const pidFile = join(this.sandboxDir(id), 'init.pid');
    // The agent can dial in before runc has written the pid file: let runc finish first.
    if (!existsSync(pidFile)) await this.starting.get(id);
    try {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      if (!Number.isInteger(pid) || pid < 2) return null;
      // The pid must still be this sandbox's init (pids are reused).
      return readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(cgroupsPathFor(id)) ? pid : null;
    } catch {
      return null;
    }
  }

  async status(id: string): Promise<DriverStatus> {
    const r = await run(this.runtimeBinary, [...this.runtimeArgs(), 'state', id], { allowFailure: true, timeoutMs: 10_000 });
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

  async pause(id: string): Promise<void> {
    await this.starting.get(id);
    await this.pauseOrResume('pause', id);
  }

  async resume(id: string): Promise<void> {
    await this.starting.get(id);
    await this.pauseOrResume('resume', id);
  }

  /** `runc pause|resume` (runsc takes the same verbs): idempotent, so a repeat is not an error. */
  protected async pauseOrResume(verb: 'pause' | 'resume', id: string): Promise<void> {
    const r = await run(this.runtimeBinary, [...this.runtimeArgs(), verb, id], { allowFailure: true, timeoutMs: 30_000 });
    if (r.code === 0) return;
    const status = await this.status(id);
    if (status === (verb === 'pause' ? 'paused' : 'running')) return;
    throw new Error(`${this.runtimeBinary} ${verb} ${id} failed: ${r.stderr.trim().slice(0, 500) || `exit ${r.code}`}`);
  }

  async list(): Promise<string[]> {
    // runc keeps one directory per container under --root; reading it spares a process start
    // on every engine open (the CLI's embedded mode opens an engine per command).
    try {
      return readdirSync(this.stateRoot, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    } catch {
      return [];
    }
  }

  limitCounters(id: string): LimitCounters {
    const path = cgroupsPathFor(id);
    return { oomKills: oomKills(path), pidsMaxHits: pidsMaxHits(path) };
  }

  diskUsage(id: string): DiskUsage | null {
    return fsUsage(rootfsPaths(this.sandboxDir(id)).layer);
  }
}

/**
 * Kills the container's init by the pid runc recorded, after checking that the pid still names a
 * process in this sandbox's cgroup (pids are reused). Resolves true once it is dead (a zombie or
 * gone: by then every other process of its pid namespace is gone too).
 */
export async function killInitProcess(pidFile: string, cgroupsPath: string): Promise<boolean> {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid < 2) return false;
  try {
    if (!readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(cgroupsPath)) return false;
    process.kill(pid, 'SIGKILL');
  } catch {
    return true; // already gone
  }
  thawCgroup(cgroupsPath); // a paused sandbox: the kill lands once thawed

  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return true;
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  return false;
}

function readTail(path: string): string {
  try {
    const text = readFileSync(path, 'utf8').trim();
    const lines = text.split('\n').slice(-5).map((l) => {
      try { return (JSON.parse(l) as { msg?: string }).msg ?? l; } catch { return l; }
    });
    return lines.join('; ').slice(-2000) || 'no output';
  } catch {
    return 'no output';
  }
}
