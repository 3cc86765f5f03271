import { parseEgressRule } from '@airlock/engine';
/**
 * Parsers for flag values. Each returns the parsed value or throws UsageError with a message
 * that names the flag and shows a valid example; main turns it into one `airlock: …` line and exit 2.
 * Pure functions (no I/O besides reading the process environment for `--env K`).
 */
import { isAbsolute, resolve } from 'node:path';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';

/** A mistake in how the command was called: exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const SIZE_UNITS: Record<string, number> = { b: 1 / (1024 * 1024), k: 1 / 1024, m: 1, g: 1024, t: 1024 * 1024 };

/**
 * A size such as `256m`, `1.5g`, `512MiB`, `2GB` → whole MiB (rounded up). A plain number is MiB,
 * matching the API's `memoryMiB` / `diskMiB`. Units are binary (k = KiB).
 */
export function parseSizeMiB(value: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:([bkmgt])(?:i?b)?)?\s*$/i.exec(value);
  if (!m) throw new UsageError(`${flag}: '${value}' is not a size (examples: 256m, 1g, 512MiB)`);
  const unit = (m[2] ?? 'm').toLowerCase();
  const exact = Number(m[1]) * (SIZE_UNITS[unit] ?? 1);
  if (!Number.isFinite(exact) || exact < 1) throw new UsageError(`${flag}: '${value}' is less than 1 MiB`);
  if (exact > 16 * 1024 * 1024) throw new UsageError(`${flag}: '${value}' is more than 16 TiB`);
  return Math.ceil(exact);
}

const DURATION_UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600 };

/** A duration such as `30s`, `5m`, `1h`, `1.5s`, `500ms` → seconds. A plain number is seconds. */
export function parseDurationSeconds(value: string, flag: string, opts: { wholeSeconds?: boolean } = {}): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$/i.exec(value);
  if (!m) throw new UsageError(`${flag}: '${value}' is not a duration (examples: 30s, 5m, 1h)`);
  const seconds = Number(m[1]) * (DURATION_UNITS[(m[2] ?? 's').toLowerCase()] ?? 1);
  if (!(seconds > 0)) throw new UsageError(`${flag}: '${value}' must be more than zero`);
  if (seconds > 366 * 24 * 3600) throw new UsageError(`${flag}: '${value}' is more than a year`);
  if (opts.wholeSeconds && !Number.isInteger(seconds)) throw new UsageError(`${flag}: '${value}' must be whole seconds (examples: 30s, 5m)`);
  // Millisecond precision is all the engine keeps; avoids 0.1+0.2 style noise in messages.
  return Math.round(seconds * 1000) / 1000;
}

/** `30` → "30s", `90` → "90s", `300` → "5m", `5400` → "90m", `7200` → "2h". For messages. */
export function formatDuration(seconds: number): string {
  if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds >= 300 && seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

/** CPU share such as `0.5` or `2`. */
export function parseCpus(value: string, flag = '--cpus'): number {
  const n = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*$/.test(value) ? Number(value) : NaN;
  if (!(n > 0)) throw new UsageError(`${flag}: '${value}' must be a number of CPUs above zero (examples: 0.5, 2)`);
  if (n > 1024) throw new UsageError(`${flag}: '${value}' is more than 1024 CPUs`);
  return n;
}

/** A positive whole number (`--pids 128`, a PID). */
export function parsePositiveInt(value: string, flag: string): number {
  if (!/^\s*\d+\s*$/.test(value)) throw new UsageError(`${flag}: '${value}' must be a whole number above zero`);
  const n = Number(value);
  if (!(n >= 1) || !Number.isSafeInteger(n)) throw new UsageError(`${flag}: '${value}' must be a whole number above zero`);
  return n;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * `K=V` → [K, V]. A bare `K` takes the value K has in the CLI's own environment (as `docker run -e K`),
 * so secrets need not appear on the command line.
 */
export function parseEnvPair(value: string, flag = '--env', env: NodeJS.ProcessEnv = process.env): [string, string] {
  const eq = value.indexOf('=');
  const name = eq < 0 ? value : value.slice(0, eq);
  if (!ENV_NAME.test(name)) {
    throw new UsageError(`${flag}: '${value}' must be NAME=VALUE with NAME made of letters, digits and _ (example: ${flag} DEBUG=1)`);
  }
  if (eq >= 0) return [name, value.slice(eq + 1)];
  const inherited = env[name];
  if (inherited === undefined) throw new UsageError(`${flag}: '${name}' has no '=' and is not set in this environment`);
  return [name, inherited];
}

/** Commander collector for repeatable `--env`: accumulates into a plain object, later wins. */
export function collectEnv(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const [k, v] = parseEnvPair(value);
  return { ...(previous ?? {}), [k]: v };
}

export interface MountFlag {
  source: string;
  target: string;
  readOnly: boolean;
}

/**
 * `HOSTPATH:PATH[:ro|rw]` → a mount; read-only unless `:rw`. A relative HOSTPATH is taken from
 * the current directory (the engine needs absolute paths); PATH must be absolute inside the sandbox.
 */
export function parseMount(value: string, flag = '--mount', cwd = process.cwd()): MountFlag {
  const parts = value.split(':');
  let mode: string | undefined;
  if (parts.length === 3) mode = parts.pop();
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new UsageError(`${flag}: '${value}' must be HOSTPATH:PATH[:ro|rw] (example: ${flag} ./data:/data:ro)`);
  }
  if (mode !== undefined && mode !== 'ro' && mode !== 'rw') {
    throw new UsageError(`${flag}: '${value}' ends in ':${mode}'; the mode is ro or rw`);
  }
  const target = parts[1];
  if (!isAbsolute(target)) throw new UsageError(`${flag}: '${target}' must be an absolute path inside the sandbox`);
  return { source: resolve(cwd, parts[0]), target, readOnly: mode !== 'rw' };
}

export function collectMount(value: string, previous: MountFlag[] | undefined): MountFlag[] {
  return [...(previous ?? []), parseMount(value)];
}

/**
 * An egress policy entry: a host name, `*.suffix`, an IPv4 address or CIDR, each optionally
 * with :PORT (the engine's grammar). URLs are refused with a hint because a common mistake is
 * `--allow-host https://pypi.org/simple`.
 */
export function parseAllowHost(value: string, flag = '--allow-host'): string {
  const host = value.trim().toLowerCase();
  if (host.includes('://')) {
    throw new UsageError(`${flag}: '${value}' must be a host name, not a URL (example: ${flag} pypi.org)`);
  }
  try {
    parseEgressRule(host);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message} (examples: pypi.org, *.github.com, pypi.org:443, 203.0.113.0/24:5432)`);
  }
  return host;
}

export function collectDenyHost(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), parseAllowHost(value, '--deny-host')];
}

export function parseBandwidth(value: string, flag = '--bandwidth'): number {
  const m = /^(\d+(?:\.\d+)?)\s*(k|m|g)?(?:bit|bps|b)?(?:\/s)?$/i.exec(value.trim());
  const n = m ? Number(m[1]) * ({ k: 0.001, m: 1, g: 1000 }[(m[2] ?? 'm').toLowerCase() as 'k' | 'm' | 'g']) : NaN;
  if (!(n >= 0.1 && n <= 100_000)) throw new UsageError(`${flag}: '${value}' must be a rate between 100k and 100g bits per second (examples: 10m, 1g; plain number = Mbit/s)`);
  return n;
}

export function parseNetPool(value: string): string {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(value.trim());
  if (!m || isIP(m[1]!) !== 4 || Number(m[2]) < 8 || Number(m[2]) > 30) throw new UsageError(`--net-pool: '${value}' must be an IPv4 CIDR between /8 and /30 (example: 10.213.0.0/16)`);
  return value.trim();
}

export function collectBlockRange(value: string, previous: string[] | undefined): string[] {
  const m = /^([0-9a-fA-F:.]+)(?:\/(\d{1,3}))?$/.exec(value.trim());
  const family = m ? isIP(m[1]!) : 0;
  if (!m || family === 0 || Number(m[2] ?? 0) > (family === 4 ? 32 : 128)) throw new UsageError(`--block-range: '${value}' must be an IP range (examples: 10.0.0.0/8, fc00::/7)`);
  return [...(previous ?? []), value.trim()];
}

export function parseRuntime(value: string, flag: string): (typeof RUNTIMES)[number] {
  const v = value.trim();
  if (!(RUNTIMES as readonly string[]).includes(v)) throw new UsageError(`${flag}: '${value}' must be one of ${RUNTIMES.join(', ')}`);
  return v as (typeof RUNTIMES)[number];
}

/** --tenant-min-runtime TENANT=TIER, repeatable. */
export function collectTenantRuntime(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  const tenant = eq > 0 ? value.slice(0, eq).trim() : '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(tenant)) throw new UsageError(`--tenant-min-runtime: '${value}' must be TENANT=TIER (example: untrusted=gvisor)`);
  return { ...(previous ?? {}), [tenant]: parseRuntime(value.slice(eq + 1), '--tenant-min-runtime') };
}

export function collectAllowHost(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), parseAllowHost(value)];
}

/** An absolute path inside the sandbox (`--workdir`, `--cwd`). */
export function parseSandboxPath(value: string, flag: string): string {
  if (!isAbsolute(value)) throw new UsageError(`${flag}: '${value}' must be an absolute path (example: /work)`);
  return value;
}

function parsePort(text: string, value: string, flag: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 0 && port <= 65535)) throw new UsageError(`${flag}: '${value}' has no valid port (0-65535)`);
  return port;
}

/**
 * `HOST:PORT`, `[v6]:PORT`, `:PORT` (every interface, explicitly) or a bare `PORT` (loopback only:
 * exposing the API should never be the accident of a short flag) → the `host:port` string airlockd takes.
 */
export function parseListen(value: string, flag = '--listen'): string {
  if (/^\d+$/.test(value)) return `127.0.0.1:${parsePort(value, value, flag)}`;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(value);
  if (!m) throw new UsageError(`${flag}: '${value}' must be HOST:PORT (example: ${flag} 127.0.0.1:7070)`);
  const port = parsePort(m[3] as string, value, flag);
  if (m[1] !== undefined) {
    if (isIP(m[1]) !== 6) throw new UsageError(`${flag}: '${value}' has no valid IPv6 address in brackets`);
    return `[${m[1]}]:${port}`;
  }
  return `${m[2]}:${port}`;
}

/** `IP:PORT` (or a bare IP, port 53) of a DNS resolver. */
export function parseDnsUpstream(value: string, flag = '--dns-upstream'): string {
  let host = value;
  let port = 53;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(value);
  if (bracketed) {
    host = bracketed[1] as string;
    if (bracketed[2] !== undefined) port = parsePort(bracketed[2], value, flag);
  } else if (isIP(value) === 0) {
    const i = value.lastIndexOf(':');
    if (i > 0) {
      host = value.slice(0, i);
      port = parsePort(value.slice(i + 1), value, flag);
    }
  }
  if (isIP(host) === 0 || port === 0) {
    throw new UsageError(`${flag}: '${value}' must be IP:PORT of a DNS server (example: ${flag} 192.0.2.53:53)`);
  }
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A signal name (`SIGTERM`, `TERM`, `term`) or number → its number. */
export function parseSignal(value: string, flag = '--signal'): number {
  if (/^\d+$/.test(value)) {
    const n = Number(value);
    if (n >= 1 && n <= 64) return n;
  } else {
    const name = value.toUpperCase().startsWith('SIG') ? value.toUpperCase() : `SIG${value.toUpperCase()}`;
    const n = (osConstants.signals as Record<string, number | undefined>)[name];
    if (n !== undefined) return n;
  }
  throw new UsageError(`${flag}: '${value}' is not a signal (examples: SIGTERM, KILL, 9)`);
}

export const RUNTIMES = ['container', 'gvisor', 'microvm'] as const;
export const SANDBOX_STATES = ['creating', 'running', 'paused', 'stopped', 'killed', 'expired', 'failed'] as const;

/** `--label K=V` → sandbox metadata (filterable with `sandbox ls --label`). */
export function collectLabel(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new UsageError(`--label: '${value}' must be KEY=VALUE (example: --label team=research)`);
  return { ...(previous ?? {}), [value.slice(0, eq)]: value.slice(eq + 1) };
}

/** An octal permission mode such as `644` or `0755`. */
export function parseFileMode(value: string, flag = '--mode'): number {
  if (!/^0?[0-7]{3,4}$/.test(value)) throw new UsageError(`${flag}: '${value}' must be an octal mode (examples: 644, 0755)`);
  return parseInt(value, 8);
}
