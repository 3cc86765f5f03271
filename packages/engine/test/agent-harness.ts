/** Test helpers for the agent: build it, run it as a plain child process, inspect /proc. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentExecSpec, AgentExit, AgentLink } from '../src/agent/agent-link.js';

// dist/test/agent-harness.js → repo root is four levels up.
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const AGENT_BIN = join(REPO_ROOT, 'agent/build/airlock-agent');

/** `make` is idempotent: this rebuilds only when the C source changed. */
export function ensureAgentBuilt(): void {
  const r = spawnSync('make', ['-s', '-C', join(REPO_ROOT, 'agent')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the agent failed (${r.status}): ${r.stderr}${r.stdout}`);
}

export function makeTmpDir(): string {
  return mkdtempSync(join(tmpdir(), 'airlock-agent-test-'));
}

export function removeTmpDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface RunningAgent {
  proc: ChildProcess;
  pid: number;
  stderr: () => string;
}

export function startAgent(socketPath: string, token: string): RunningAgent {
  const proc = spawn(AGENT_BIN, ['--connect', socketPath], {
    env: { AIRLOCK_AGENT_TOKEN: token },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => {
    if (err.length < 64 * 1024) err += b.toString();
  });
  if (proc.pid === undefined) throw new Error('agent did not start');
  return { proc, pid: proc.pid, stderr: () => err };
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
}

export function procStat(pid: number): ProcStat | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { pid, state: rest[0]!, ppid: Number(rest[1]) };
  } catch {
    return null;
  }
}

function allProcs(): ProcStat[] {
  const out: ProcStat[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (st) out.push(st);
  }
  return out;
}

export function descendantsOf(root: number): ProcStat[] {
  const procs = allProcs();
  const found = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const p of procs) {
      if (!found.has(p.pid) && found.has(p.ppid)) {
        found.add(p.pid);
        grew = true;
      }
    }
  }
  return procs.filter((p) => p.pid !== root && found.has(p.pid));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** SIGTERM (the agent then kills everything it started), then SIGKILL for anything left. */
export async function stopAgent(agent: RunningAgent): Promise<void> {
  const before = descendantsOf(agent.pid).map((p) => p.pid);
  if (agent.proc.exitCode === null && agent.proc.signalCode === null) {
    const exited = new Promise<void>((r) => agent.proc.once('exit', () => r()));
    agent.proc.kill('SIGTERM');
    await Promise.race([exited, sleep(2000)]);
    if (agent.proc.exitCode === null && agent.proc.signalCode === null) {
      agent.proc.kill('SIGKILL');
      await Promise.race([exited, sleep(2000)]);
    }
  }
  for (const pid of before) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** VmRSS, its private (anonymous) part, and the peak (VmHWM), in kB. */
export function memoryKb(pid: number): { rss: number; anon: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  return { rss: field('VmRSS'), anon: field('RssAnon'), hwm: field('VmHWM') };
}

/** Whether this host lets us run the agent as PID 1 of a new pid namespace. */
export function canUnshare(): boolean {
  if (process.getuid?.() !== 0) return false;
  const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'true'], { stdio: 'ignore' });
  return r.status === 0;
}

/** The agent as PID 1: `unshare` forks it into a fresh pid namespace (and SIGKILLs it if unshare dies). */
export function startAgentAsInit(socketPath: string, token: string): RunningAgent {
  const proc = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', AGENT_BIN, '--connect', socketPath], {
    env: { AIRLOCK_AGENT_TOKEN: token, PATH: process.env.PATH ?? '/usr/bin:/bin' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => {
    if (err.length < 64 * 1024) err += b.toString();
  });
  if (proc.pid === undefined) throw new Error('unshare did not start');
  return { proc, pid: proc.pid, stderr: () => err };
}

export function execSpec(argv: string[], over: Partial<AgentExecSpec> = {}): AgentExecSpec {
  return {
    argv,
    env: ['PATH=/usr/local/bin:/usr/bin:/bin'],
    cwd: '/',
    uid: 0,
    gid: 0,
    timeoutMs: 0,
    keepStdinOpen: false,
    background: false,
    ...over,
  };
}

export interface RunResult {
  pid: number;
  exit: AgentExit;
  stdout: string;
  stderr: string;
}

export async function run(link: AgentLink, argv: string[], over: Partial<AgentExecSpec> = {}, stdin?: Buffer): Promise<RunResult> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const h = link.exec(execSpec(argv, { keepStdinOpen: stdin !== undefined, ...over }), {
    onStdout: (b) => out.push(Buffer.from(b)),
    onStderr: (b) => err.push(Buffer.from(b)),
  });
  if (stdin !== undefined) {
    h.writeStdin(stdin);
    h.closeStdin();
  }
  const pid = await h.started;
  const exit = await h.done;
  return { pid, exit, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

/** A raw unix-socket client, for playing a misbehaving "agent"; `gone` resolves when the peer drops it. */
export async function rawConnect(socketPath: string): Promise<net.Socket & { gone: Promise<void> }> {
  const s = net.connect(socketPath) as net.Socket & { gone: Promise<void> };
  s.on('error', () => {});
  s.on('data', () => {}); // consume what the link sends, or 'end' (and 'close') never fire
  s.gone = new Promise((r) => s.once('close', () => r()));
  await new Promise<void>((res, rej) => {
    s.once('connect', res);
    s.once('error', rej);
  });
  return s;
}

export async function waitFor(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}
