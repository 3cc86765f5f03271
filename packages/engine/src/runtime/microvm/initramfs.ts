import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpioArchive, type CpioEntry } from './cpio.js';
import { GUEST_MODULES, type MicrovmAssets } from './assets.js';

/**
 * The guest's initramfs, in two concatenated cpio archives: a shared one (airlock-vminit as
 * /init, the agent, the kernel modules; cached by the hash of its inputs) and a small one per
 * sandbox (the agent token, the config vminit reads, engine-provided files). The token is never
 * on the kernel command line (/proc/cmdline would show it to the sandbox); vminit deletes its
 * file before anything of the sandbox runs.
 */

export interface GuestConfig {
  token: string;
  hostname: string;
  pids: number;
  /** Template files' host owner of uid 0 inside, and the range size (vminit idmaps the template). */
  idmap: { base: number; size: number };
  env: string[];
  net?: { address: string; prefix: number; gateway: string };
  /** Host directories served by virtiofs (tag → target), mounted in this order. */
  shares: Array<{ tag: string; target: string; readOnly: boolean }>;
  /** Small engine-provided files (e.g. /etc/resolv.conf), bound read-only at their targets. */
  files: Array<{ target: string; data: Buffer }>;
}

const SAFE_VALUE = /^[^\n\0 ]+$/;

function sharedEntries(a: MicrovmAssets): CpioEntry[] {
  const entries: CpioEntry[] = [
    { type: 'dir', name: 'dev', mode: 0o755 },
    { type: 'char', name: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { type: 'dir', name: 'proc', mode: 0o555 },
    { type: 'dir', name: 'sys', mode: 0o555 },
    { type: 'dir', name: 'mnt', mode: 0o755 },
    { type: 'dir', name: 'airlock', mode: 0o700 },
    { type: 'dir', name: 'airlock/modules.d', mode: 0o700 },
    { type: 'file', name: 'init', mode: 0o700, data: readFileSync(a.vminit) },
    { type: 'file', name: 'airlock/airlock-agent', mode: 0o700, data: readFileSync(a.agent) },
    { type: 'file', name: 'airlock/modules', mode: 0o600, data: Buffer.from(GUEST_MODULES.join('\n') + '\n') },
  ];
  for (const m of GUEST_MODULES) {
    entries.push({ type: 'file', name: `airlock/modules.d/${m}.ko`, mode: 0o600, data: readFileSync(join(a.modulesDir, `${m}.ko`)) });
  }
  return entries;
}

/** The shared archive's cache key: every input's path, size and mtime. */
function sharedKey(a: MicrovmAssets): string {
  const h = createHash('sha256');
  for (const p of [a.vminit, a.agent, ...GUEST_MODULES.map((m) => join(a.modulesDir, `${m}.ko`))]) {
    const st = statSync(p);
    h.update(`${p}\0${st.size}\0${st.mtimeMs}\0`);
  }
  return h.digest('hex').slice(0, 24);
}

/** The shared archive (built once per set of inputs, in cacheDir). */
export function sharedInitramfs(a: MicrovmAssets, cacheDir: string): Buffer {
  const path = join(cacheDir, `initramfs-${sharedKey(a)}.cpio`);
  try {
    return readFileSync(path);
  } catch { /* build it */ }
  const archive = cpioArchive(sharedEntries(a));
  mkdirSync(cacheDir, { recursive: true, mode: 0o755 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, archive, { mode: 0o644 });
  renameSync(tmp, path);
  // Archives of older inputs (a rebuilt agent, another guest kernel) are never used again.
  for (const f of readdirSync(cacheDir)) {
    if (/^initramfs-[0-9a-f]+\.cpio$/.test(f) && join(cacheDir, f) !== path) rmSync(join(cacheDir, f), { force: true });
  }
  return archive;
}

export function configArchive(c: GuestConfig): Buffer {
  const lines: string[] = [`hostname ${c.hostname}`, `pids ${c.pids}`, `idmap ${c.idmap.base} ${c.idmap.size}`];
  for (const e of c.env) lines.push(`env ${e}`);
  if (c.net) lines.push(`net ${c.net.address} ${c.net.prefix} ${c.net.gateway}`);
  for (const s of c.shares) lines.push(`virtiofs ${s.tag} ${s.target} ${s.readOnly ? 'ro' : 'rw'}`);
  const entries: CpioEntry[] = [{ type: 'dir', name: 'airlock/files', mode: 0o755 }];
  c.files.forEach((f, i) => {
    entries.push({ type: 'file', name: `airlock/files/${i}`, mode: 0o644, data: f.data });
    lines.push(`bind /airlock/files/${i} ${f.target}`);
  });
  for (const l of lines) {
    const value = l.slice(l.indexOf(' ') + 1);
    if (!value.split(' ').every((v) => SAFE_VALUE.test(v)) && !l.startsWith('env ')) throw new Error(`bad guest config: ${l}`);
    if (/[\n\0]/.test(value)) throw new Error('guest config values must not hold newlines or NUL');
  }
  if (!/^[\x21-\x7e]{1,1024}$/.test(c.token)) throw new Error('agent token must be 1..1024 printable bytes');
  entries.push(
    { type: 'file', name: 'airlock/config', mode: 0o600, data: Buffer.from(lines.join('\n') + '\n') },
    { type: 'file', name: 'airlock/token', mode: 0o600, data: Buffer.from(c.token) },
  );
  return cpioArchive(entries, 100_000);
}

/** Writes the sandbox's initramfs (shared + config archive) to `path`, readable by `uid` only. */
export function writeSandboxInitramfs(path: string, shared: Buffer, c: GuestConfig): void {
  writeFileSync(path, Buffer.concat([shared, configArchive(c)]), { mode: 0o600 });
}
