/** `airlock sandbox …`: sandboxes that outlive one command. */
import type { BackendOptions, ExecRequest, SandboxInfo, SandboxState } from '../backend.js';
import { watchInterrupts } from '../interrupt.js';
import { needsSandboxRecord, outcomeOf } from '../outcome.js';
import { EXIT, formatTable, printJson, shortTime, warn } from '../output.js';
import { withBackend } from '../with-backend.js';
import { specFromFlags, type SandboxFlags } from '../spec.js';
import { readStdinIfPiped } from '../stdin.js';

export async function createCommand(flags: SandboxFlags): Promise<number> {
  return withBackend(flags, async (b) => {
    const info = await b.createSandbox(specFromFlags(flags));
    if (flags.json) printJson(info);
    else process.stdout.write(`${info.id}\n`);
    return EXIT.ok;
  });
}

export interface ListFlags extends BackendOptions {
  state?: SandboxState;
  label?: Record<string, string>;
  json?: boolean;
}

export async function listCommand(flags: ListFlags): Promise<number> {
  return withBackend(flags, async (b) => {
    const filter: { state?: SandboxState; metadata?: Record<string, string> } = {};
    if (flags.state) filter.state = flags.state;
    if (flags.label) filter.metadata = flags.label;
    const list = await b.listSandboxes(filter);
    if (flags.json) printJson(list);
    else process.stdout.write(sandboxTable(list));
    return EXIT.ok;
  });
}

export function sandboxTable(list: SandboxInfo[]): string {
  return formatTable(
    ['ID', 'STATE', 'RUNTIME', 'TEMPLATE', 'CREATED', 'EXPIRES'],
    list.map((s) => [s.id, s.state, s.runtime, s.template, shortTime(s.createdAt), s.endedAt ? '-' : shortTime(s.expiresAt)]),
  );
}

export async function getCommand(id: string, flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    printJson(await b.getSandbox(id));
    return EXIT.ok;
  });
}

export async function killCommand(id: string, flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const info = await b.killSandbox(id);
    if (flags.json) printJson(info);
    else process.stdout.write(`${info.id}\n`);
    return EXIT.ok;
  });
}

/** `sandbox pause|resume ID`: prints the id and its new state. */
export async function pauseCommand(id: string, verb: 'pause' | 'resume', flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const info = verb === 'pause' ? await b.pauseSandbox(id) : await b.resumeSandbox(id);
    if (flags.json) printJson(info);
    else process.stdout.write(`${info.id} ${info.state}\n`);
    return EXIT.ok;
  });
}

export interface NetworkFlags extends BackendOptions {
  allowHost?: string[];
  denyHost?: string[];
  /** commander's --no-network: false when given. */
  network?: boolean;
  bandwidth?: number;
  json?: boolean;
}

export async function networkCommand(id: string, flags: NetworkFlags): Promise<number> {
  const policy: { allow?: string[]; deny?: string[]; bandwidthMbps?: number } = {};
  if (flags.network === false) {
    if (flags.allowHost?.length) {
      warn('--no-network and --allow-host contradict each other');
      return EXIT.usage;
    }
    policy.allow = [];
  }
  if (flags.allowHost?.length) policy.allow = [...new Set(flags.allowHost)];
  if (flags.denyHost?.length) policy.deny = [...new Set(flags.denyHost)];
  if (flags.bandwidth !== undefined) policy.bandwidthMbps = flags.bandwidth;
  if (Object.keys(policy).length === 0) {
    warn('nothing to change: give --allow-host, --deny-host, --no-network or --bandwidth');
    return EXIT.usage;
  }
  return withBackend(flags, async (b) => {
    const info = await b.updateNetwork(id, policy);
    if (flags.json) printJson(info);
    else process.stdout.write(`${info.id}: allow ${info.network.allow.join(',') || '(none: no network)'}; deny ${info.network.deny.join(',') || '(none)'}; ${info.cut} connection(s) cut\n`);
    return EXIT.ok;
  });
}

export interface ExecFlags extends BackendOptions {
  env?: Record<string, string>;
  cwd?: string;
  timeout?: number;
  json?: boolean;
  background?: boolean;
  stdin?: boolean;
}

export async function execCommand(id: string, cmd: string[], flags: ExecFlags): Promise<number> {
  const req: ExecRequest = { cmd };
  if (flags.env) req.env = flags.env;
  if (flags.cwd) req.cwd = flags.cwd;
  if (flags.timeout !== undefined) req.timeoutSeconds = flags.timeout;
  if (flags.background) {
    return withBackend(flags, async (b) => {
      const r = await b.execBackground(id, req);
      if (flags.json) printJson(r);
      else process.stdout.write(`${r.pid}\n`);
      return EXIT.ok;
    });
  }
  const stdin = flags.stdin === false ? undefined : await readStdinIfPiped();
  if (stdin && stdin.length > 0) req.stdin = stdin;
  return withBackend(flags, async (b) => {
    const ctx = flags.timeout !== undefined ? { execTimeoutSeconds: flags.timeout } : {};
    const ended = async () => b.getSandbox(id).catch(() => null);
    if (flags.json) {
      const r = await b.exec(id, req);
      const outcome = outcomeOf(r, { ...ctx, sandbox: needsSandboxRecord(r.reason) ? await ended() : null });
      printJson(r);
      if (outcome.message) warn(outcome.message);
      return outcome.exitCode;
    }
    // Ctrl-C kills the command (not the sandbox).
    const interrupt = watchInterrupts();
    try {
      const r = await b.execStream(id, req, {
        onStdout: (chunk) => process.stdout.write(chunk),
        onStderr: (chunk) => process.stderr.write(chunk),
        signal: interrupt.signal,
      });
      if (interrupt.received()) {
        warn('interrupted: command killed');
        return EXIT.interrupted;
      }
      const outcome = outcomeOf(r, { ...ctx, sandbox: needsSandboxRecord(r.reason) ? await ended() : null });
      if (outcome.message) warn(outcome.message);
      return outcome.exitCode;
    } catch (e) {
      if (interrupt.received()) {
        warn('interrupted: command killed');
        return EXIT.interrupted;
      }
      throw e;
    } finally {
      interrupt.dispose();
    }
  });
}

export async function psCommand(id: string, flags: BackendOptions & { json?: boolean; snapshot?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const list = flags.snapshot ? (await b.snapshotProcesses(id)).processes : await b.listProcesses(id);
    if (flags.json) printJson(list);
    else process.stdout.write(formatTable(['PID', 'EXEC', 'COMMAND'], list.map((p) => [String(p.pid), p.execId ?? '-', p.cmdline.join(' ')])));
    return EXIT.ok;
  });
}

export async function killProcessCommand(id: string, pid: number, flags: BackendOptions & { signal: number }): Promise<number> {
  return withBackend(flags, async (b) => {
    await b.killProcess(id, pid, flags.signal);
    return EXIT.ok;
  });
}
