import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { run } from '../../util/run.js';
import type { MicrovmAssets } from './assets.js';
import { cpioArchive } from './cpio.js';
import { sharedInitramfs } from './initramfs.js';

/**
 * Which accelerator runs guests here, found by booting one: KVM when /dev/kvm exists and a
 * guest actually boots under it (on hosts that are themselves guests, /dev/kvm may exist while
 * a stock kernel cannot run: the boot then hangs), else TCG (emulation: slow, but the same
 * isolation boundary). Cached per host kernel, QEMU and guest kernel, since a probe costs
 * seconds.
 */
export type Accelerator = 'kvm' | 'tcg';

export interface AccelProbe {
  accel: Accelerator;
  /** Boot to the guest's init and power-off, wall time, with that accelerator. */
  bootMs: number;
  /** Why KVM was not chosen (absent when it was). */
  kvmProblem?: string;
  probedAt: string;
  key: string;
}

const PROBE_MARK = 'AIRLOCK-VMINIT-OK';
const KVM_BOOT_TIMEOUT_MS = 5_000;
const TCG_BOOT_TIMEOUT_MS = 60_000;

function probeKey(a: MicrovmAssets): string {
  const q = statSync(a.qemu);
  return [release(), a.qemu, q.size, q.mtimeMs, a.kernelRelease, existsSync('/dev/kvm') ? 'kvm' : 'nokvm'].join('|');
}

/** Boots the shared initramfs in probe mode; resolves with the boot time or the failure. */
export async function bootOnce(a: MicrovmAssets, cacheDir: string, accel: Accelerator, timeoutMs: number): Promise<{ ok: boolean; ms: number; detail: string }> {
  const initrd = join(cacheDir, `probe-initramfs.${process.pid}.cpio`);
  writeFileSync(initrd, Buffer.concat([sharedInitramfs(a, cacheDir), cpioArchive([{ type: 'file', name: 'airlock/probe', mode: 0o600, data: Buffer.alloc(0) }], 200_000)]));
  const args = [
    '-M', 'microvm', ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,tb-size=64']),
    '-m', '128M', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', a.kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1', '-serial', 'stdio',
  ];
  const t0 = Date.now();
  const r = await run(a.qemu, args, { allowFailure: true, timeoutMs }).finally(() => rmSync(initrd, { force: true }));
  const ms = Date.now() - t0;
  if (r.stdout.includes(PROBE_MARK)) return { ok: true, ms, detail: r.stdout.slice(r.stdout.indexOf(PROBE_MARK)).split('\n')[0]!.trim() };
  const why = r.signal ? `no boot within ${timeoutMs} ms` : `qemu exited ${r.code}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join('; ')}`;
  return { ok: false, ms, detail: why.slice(0, 500) };
}

/** The cached probe result, or a fresh probe (written to the cache). */
export async function probeAccelerator(a: MicrovmAssets, cacheDir: string, opts: { force?: boolean } = {}): Promise<AccelProbe> {
  const file = join(cacheDir, 'accel.json');
  const key = probeKey(a);
  if (!opts.force) {
    try {
      const cached = JSON.parse(readFileSync(file, 'utf8')) as AccelProbe;
      if (cached.key === key && (cached.accel === 'kvm' || cached.accel === 'tcg')) return cached;
    } catch { /* probe */ }
  }
  mkdirSync(cacheDir, { recursive: true, mode: 0o755 });
  let kvmProblem: string | undefined = '/dev/kvm does not exist';
  if (existsSync('/dev/kvm')) {
    const k = await bootOnce(a, cacheDir, 'kvm', KVM_BOOT_TIMEOUT_MS);
    if (k.ok) return save(file, { accel: 'kvm', bootMs: k.ms, probedAt: new Date().toISOString(), key });
    kvmProblem = `/dev/kvm exists but a guest does not boot under KVM (${k.detail})`;
  }
  const t = await bootOnce(a, cacheDir, 'tcg', TCG_BOOT_TIMEOUT_MS);
  if (!t.ok) throw new Error(`no accelerator boots the guest: ${kvmProblem}; TCG: ${t.detail}`);
  return save(file, { accel: 'tcg', bootMs: t.ms, kvmProblem, probedAt: new Date().toISOString(), key });
}

function save(file: string, p: AccelProbe): AccelProbe {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(p, null, 2) + '\n');
  renameSync(tmp, file);
  return p;
}
