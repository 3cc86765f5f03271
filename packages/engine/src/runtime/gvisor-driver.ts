import { readdirSync } from 'node:fs';
import type { RuntimeName } from '../types.js';
import { run } from '../util/run.js';
import { ContainerDriver } from './container-driver.js';
import type { SandboxLaunch } from './driver.js';

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
export class GvisorDriver extends ContainerDriver {
  override readonly name: RuntimeName = 'gvisor';
  override readonly networkBeforeStart = true;
  /** runsc keeps more than one state file per sandbox; `runsc delete` removes them properly. */
  protected override readonly fastKill = false;

  constructor(dataDir: string, agentBinary: string, runtimeBinary = 'runsc', private readonly platform = 'systrap') {
    super(dataDir, agentBinary, runtimeBinary, 'runsc');
  }

  protected override runtimeArgs(launch?: SandboxLaunch): string[] {
    const args = ['--root', this.stateRoot, `--platform=${this.platform}`, '--host-uds=open'];
    if (launch) args.push(`--network=${launch.netnsPath ? 'host' : 'none'}`);
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
