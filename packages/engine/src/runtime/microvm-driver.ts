import { createHash } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import type { DiskUsage } from '../storage/disk-watch.js';
import { badRequest } from '../errors.js';
import type { RuntimeName, SandboxSpec } from '../types.js';
import { SANDBOX_ID_RE } from '../util/ids.js';
import { run } from '../util/run.js';
import { oomKills, pidsMaxHits, removeCgroup } from './cgroups.js';
import { cgroupsPathFor } from './container-driver.js';
import type { DriverStatus, LimitCounters, RuntimeDriver, SandboxLaunch } from './driver.js';
import { probeAccelerator, type AccelProbe } from './microvm/accel.js';
import { findMicrovmAssets, findVirtiofsd, microvmHome, type MicrovmAssets } from './microvm/assets.js';
import { sharedInitramfs, writeSandboxInitramfs } from './microvm/initramfs.js';
import { qmp } from './microvm/qmp.js';
import { templateImage } from './microvm/template-image.js';
import { createVmCgroup } from './microvm/vm-cgroup.js';
import { readGuestNic, removeTap, spliceTap, TAP_NAME } from './microvm/vm-network.js';
import { ETHERNET_MTU } from '../network/host-network.js';

/**
 * The `microvm` tier: each sandbox is a QEMU `-M microvm` guest with its own kernel (Debian's
 * cloud kernel), KVM where the host can run guests, TCG otherwise. docs/microvm.md.
 *
 * - disks: the template as a read-only ext4 image (built once per template, mke2fs -d), and a
 *   copy of the engine's blank layer (ext4 of exactly the disk quota) as the writable layer;
 *   the guest overlays them (agent/airlock-vminit.c);
 * - agent link: a virtio-serial port whose host end is a QEMU chardev *dialling* the engine's
 *   <controlDir>/host.sock (reconnecting every second), so the host side and its protocol are
 *   the container tier's;
 * - network: a TAP in the sandbox's netns spliced onto eth0 with tc redirects; no NIC at all
 *   without network;
 * - mounts and volumes: one virtiofsd each (airlock-vmjail --fsd: the sandbox's cgroup and
 *   host ids, read-only locked on the host when the mount is read-only), virtio-fs in the guest;
 * - jail: QEMU runs through agent/airlock-vmjail.c: the sandbox's cgroup, its own mount, pid,
 *   ipc and uts namespaces with a root holding only /usr and its own files, an unprivileged uid
 *   of its own, no_new_privs, and QEMU's seccomp sandbox.
 * - state for reconcile: <dataDir>/qemu/<id> (pid file, QMP socket, disks, launch record).
 */

/** Memory QEMU itself may use on top of the guest's (TCG keeps its translated code there). */
const OVERHEAD_MIB = { kvm: 96, tcg: 192 } as const;
/** QEMU's own threads: main, RCU, vCPUs, block I/O workers. */
const QEMU_PIDS = 128;
/** Host uids for QEMU processes: a range of their own, after the container tier's mapped range. */
const VMM_ID_BASE = SANDBOX_ID_BASE + SANDBOX_ID_SIZE;
const VMM_ID_COUNT = 65_536;
const GUEST_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Engine files travel in the per-sandbox initramfs (a CA bundle with the Airlock CA is ~220 KiB). */
const MAX_ENGINE_FILE = 1024 * 1024;
/** What each virtiofsd (one per host mount or volume) may add to the sandbox's cgroup. */
const VIRTIOFSD_MIB = 32;
const VIRTIOFSD_PIDS = 16;
/** Below this the guest kernel cannot unpack itself and its initramfs and boot. */
const MIN_GUEST_MIB = 96;

interface LaunchRecord {
  uid: number;
  network: boolean;
}

export interface MicrovmDriverOptions {
  /** Force an accelerator instead of the probed one. */
  accelerator?: 'kvm' | 'tcg';
}

export class MicrovmDriver implements RuntimeDriver {
  readonly name: RuntimeName = 'microvm';
  readonly networkBeforeStart = true;
  /** The guest's virtio NIC keeps Ethernet's 1500; the TAP and veth match it, so no frame is too big for it. */
  readonly linkMtu = ETHERNET_MTU;
  /** The guest's own OOM killer ends a process with SIGKILL, which the agent reports as such. */
  readonly oomSeenAsExit = false;
  /** QEMU's chardev connects at launch; the guest's agent says HELLO only after the boot. */
  readonly agentHelloTimeoutMs = 60_000;
  private readonly stateRoot: string;
  private readonly starting = new Map<string, Promise<void>>();
  private accel: Promise<AccelProbe> | null = null;

  constructor(private readonly dataDir: string, private readonly assets: MicrovmAssets, private readonly opts: MicrovmDriverOptions = {}) {
    this.stateRoot = join(dataDir, 'qemu');
    mkdirSync(this.stateRoot, { recursive: true, mode: 0o700 });
  }

  /**
   * What this tier cannot do, refused before anything is made (400): host mounts and volumes
   * (the guest kernel has no 9p and there is no virtiofsd to serve them), and guests too small
   * for the kernel to boot in.
   */
  static checkSpec(spec: SandboxSpec): void {
    if ((spec.mounts.length > 0 || spec.volumes.length > 0) && !findVirtiofsd()) {
      throw badRequest('mounts and volumes need virtiofsd on the microvm runtime, and this host has none', spec.mounts.length > 0 ? 'mounts' : 'volumes');
    }
    for (const [i, m] of [...spec.mounts, ...spec.volumes].entries()) {
      if (/\s/.test(m.target)) throw badRequest('microvm mount targets must not contain whitespace', `mounts[${i}].target`);
    }
    if (spec.resources.memoryMiB < MIN_GUEST_MIB) {
      throw badRequest(`a microvm sandbox needs resources.memoryMiB >= ${MIN_GUEST_MIB} (its own kernel lives in it)`, 'resources.memoryMiB');
    }
  }

  /** A driver when QEMU, the guest kernel and the helpers are installed; else why not. */
  static create(dataDir: string, agentBinary: string, opts: MicrovmDriverOptions = {}): MicrovmDriver | { missing: string } {
    const a = findMicrovmAssets(agentBinary);
    return 'missing' in a ? a : new MicrovmDriver(dataDir, a, opts);
  }

  private vmDir(id: string): string {
    return join(this.stateRoot, id);
  }

  /** The accelerator sandboxes use (probed by booting once per host, then cached). */
  accelerator(): Promise<AccelProbe> {
    if (this.opts.accelerator) {
      return Promise.resolve({ accel: this.opts.accelerator, bootMs: 0, probedAt: '', key: 'forced' });
    }
    this.accel ??= probeAccelerator(this.assets, join(microvmHome(), 'cache'));
    this.accel.catch(() => { this.accel = null; });
    return this.accel;
  }

  async start(l: SandboxLaunch): Promise<void> {
    const started = this.launch(l);
    const settled = started.then(() => {}, () => {});
    this.starting.set(l.id, settled);
    void settled.then(() => { if (this.starting.get(l.id) === settled) this.starting.delete(l.id); });
    try {
      await started;
    } catch (e) {
      this.starting.delete(l.id);
      await this.destroy(l.id).catch(() => {});
      throw e;
    }
  }

  private async launch(l: SandboxLaunch): Promise<void> {
    MicrovmDriver.checkSpec(l.spec);
    if (!SANDBOX_ID_RE.test(l.id)) throw new Error(`bad sandbox id ${l.id}`);
    const { accel } = await this.accelerator();
    const dir = this.vmDir(l.id);
    const runDir = join(dir, 'run');
    const jailRoot = join(dir, 'root');
    const uid = vmmUid(l.id);
    // The kvm group opens /dev/kvm; otherwise a group as private as the uid.
    const gid = accel === 'kvm' ? kvmGid() : uid;
    mkdirSync(dir, { mode: 0o700 });
    mkdirSync(runDir, { mode: 0o700 });
    mkdirSync(jailRoot, { mode: 0o755 });
    chownSync(runDir, uid, gid);
    const record: LaunchRecord = { uid, network: l.netnsPath !== undefined };
    writeFileSync(join(dir, 'launch.json'), JSON.stringify(record));

    const image = await templateImage(join(microvmHome(), 'images'), l.template);
    const nic = l.netnsPath ? await readGuestNic(l.netnsPath) : undefined;
    if (l.netnsPath && nic) await spliceTap(l.netnsPath, nic.mtu);

    const layer = join(dir, 'layer.img');
    await run('cp', ['--sparse=always', l.blankLayer, layer], { timeoutMs: 60_000 });
    chownSync(layer, uid, gid);

    // Host mounts, then volumes (the container tier's order), each served by a virtiofsd. Its
    // socket lives in the sandbox dir, which the sandbox's host ids (virtiofsd's) may traverse.
    const fsDir = join(l.dir, 'fs');
    const shares = [...l.spec.mounts, ...l.volumeBinds].map((m, i) => ({
      ...m, tag: `m${i}`, socket: join(fsDir, `m${i}.sock`), log: join(fsDir, `m${i}.log`),
    }));

    const initrd = join(dir, 'initramfs.cpio');
    writeSandboxInitramfs(initrd, sharedInitramfs(this.assets, join(microvmHome(), 'cache')), {
      token: l.agentToken,
      hostname: `airlock-${l.id.slice(0, 8)}`,
      pids: l.spec.resources.pids,
      idmap: { base: SANDBOX_ID_BASE, size: SANDBOX_ID_SIZE },
      env: [GUEST_PATH],
      ...(nic ? { net: { address: nic.address, prefix: nic.prefix, gateway: nic.gateway } } : {}),
      shares: shares.map((m) => ({ tag: m.tag, target: m.target, readOnly: m.readOnly })),
      files: (l.engineBinds ?? []).map((b) => ({ target: b.target, data: readSmallFile(b.source) })),
    });
    chownSync(initrd, uid, gid);

    const r = l.spec.resources;
    const vcpus = Math.max(1, Math.ceil(r.cpus));
    const procs = createVmCgroup(cgroupsPathFor(l.id), {
      memoryBytes: (r.memoryMiB + OVERHEAD_MIB[accel] + shares.length * VIRTIOFSD_MIB) * 1024 * 1024,
      cpus: r.cpus,
      pids: QEMU_PIDS + vcpus + shares.length * VIRTIOFSD_PIDS,
    });
    if (shares.length) {
      // Written by each virtiofsd (the sandbox's host root id), reached by QEMU's uid.
      mkdirSync(fsDir, { mode: 0o711 });
      chownSync(fsDir, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
      await Promise.all(shares.map((m) => this.startVirtiofsd(m, procs, uid, gid)));
    }
    const hostSock = join(l.controlDir, 'host.sock');
    const qemuArgs = [
      this.assets.qemu,
      '-M', `microvm,x-option-roms=off${shares.length ? ',memory-backend=mem' : ''}`,
      ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,tb-size=64']),
      '-m', `${r.memoryMiB}M`, '-smp', String(vcpus),
      // vhost-user (virtiofsd) needs the guest's RAM in shared memory it can map.
      ...(shares.length ? ['-object', `memory-backend-memfd,id=mem,size=${r.memoryMiB}M,share=on`] : []),
      ...shares.flatMap((m, i) => ['-chardev', `socket,id=fs${i},path=${qemuPath(m.socket)}`, '-device', `vhost-user-fs-device,chardev=fs${i},tag=${m.tag}`]),
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      // Modern (virtio 1.x) MMIO transport: vhost-user devices (virtiofsd) refuse the legacy one.
      '-global', 'virtio-mmio.force-legacy=false',
      '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
      '-kernel', this.assets.kernel, '-initrd', initrd,
      // AIRLOCK_MICROVM_DEBUG=1 keeps the guest kernel's boot messages on the console log.
      '-append', guestCmdline(accel),
      '-drive', `id=tpl,file=${qemuPath(image)},format=raw,if=none,readonly=on`,
      '-device', 'virtio-blk-device,drive=tpl,serial=airlock-tpl',
      '-drive', `id=layer,file=${qemuPath(layer)},format=raw,if=none,discard=unmap`,
      '-device', 'virtio-blk-device,drive=layer,serial=airlock-layer',
      '-device', 'virtio-serial-device,max_ports=2',
      '-chardev', `socket,id=agent,path=${qemuPath(hostSock)},reconnect=1`,
      '-device', 'virtserialport,chardev=agent,name=airlock',
      // The console only carries vminit's and the agent's few lines (loglevel=1, and the
      // sandbox has no console device), so the file stays small.
      '-chardev', `file,id=con,path=${qemuPath(join(runDir, 'console.log'))}`, '-serial', 'chardev:con',
      '-qmp', `unix:${qemuPath(join(runDir, 'qmp.sock'))},server=on,wait=off`,
      ...(nic ? ['-netdev', 'tap,id=net0,fd=3,vhost=off', '-device', `virtio-net-device,netdev=net0,mac=${nic.mac}`] : []),
    ];
    const jailArgs = [
      '--root', jailRoot, '--uid', String(uid), '--gid', String(gid), '--pidfile', join(dir, 'qemu.pid'),
      '--log', join(dir, 'qemu.log'),
      ...procs.flatMap((p) => ['--cgroup', p]),
      ...(l.netnsPath ? ['--netns', l.netnsPath, ...(nic ? ['--tap', TAP_NAME] : [])] : []),
      '--ro', this.assets.kernel, '--ro', image, '--ro', initrd, '--ro', l.controlDir,
      ...(shares.length ? ['--ro', fsDir] : []),
      '--rw', layer, '--rw', runDir,
      '--dev', 'null', '--dev', 'zero', '--dev', 'urandom',
      ...(accel === 'kvm' ? ['--dev', 'kvm'] : []),
      '--', ...qemuArgs,
    ];
    const jail = await run(this.assets.vmjail, jailArgs, { allowFailure: true, timeoutMs: 30_000 });
    if (jail.code !== 0) throw new Error(`could not start QEMU: ${jail.stderr.trim().slice(0, 1000) || `exit ${jail.code}`}`);
    const pid = readPid(join(dir, 'qemu.pid'));
    if (pid === null) throw new Error('QEMU started but left no pid');
    if (!l.ready) return;
    // The agent dialling in proves the guest booted; QEMU exiting first means it did not.
    const stop = new AbortController();
    try {
      await Promise.race([l.ready, exited(pid, 0, stop.signal).then(() => {
        if (!stop.signal.aborted) throw new Error(`the VM exited while booting: ${logTail(join(dir, 'qemu.log'))}; console: ${logTail(join(runDir, 'console.log'))}`);
      })]);
    } finally {
      stop.abort();
    }
  }

  /**
   * One virtiofsd serving one host directory, jailed by airlock-vmjail --fsd (the sandbox's
   * cgroup, the container tier's id mapping, a read-only bind when the mount is read-only);
   * resolves once its socket listens. It exits when QEMU hangs up.
   */
  private async startVirtiofsd(m: { source: string; readOnly: boolean; socket: string; log: string }, procs: string[], qemuUid: number, qemuGid: number): Promise<void> {
    const virtiofsd = findVirtiofsd();
    if (!virtiofsd) throw new Error('virtiofsd is not installed');
    const r = await run(this.assets.vmjail, [
      '--fsd', '--source', m.source, '--readonly', m.readOnly ? '1' : '0', '--idmap', `${SANDBOX_ID_BASE}:${SANDBOX_ID_SIZE}`,
      '--log', m.log, ...procs.flatMap((p) => ['--cgroup', p]),
      '--', virtiofsd, `--socket-path=${m.socket}`, '-o', `source=${m.source}`, '-o', 'cache=auto', '-o', 'sandbox=namespace',
      '--rlimit-nofile=0',
    ], { allowFailure: true, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`could not start virtiofsd for ${m.source}: ${r.stderr.trim().slice(0, 500)}`);
    const deadline = Date.now() + 10_000;
    while (!existsSync(m.socket)) {
      if (Date.now() > deadline) throw new Error(`virtiofsd for ${m.source} did not listen: ${logTail(m.log)}`);
      await new Promise((res) => setTimeout(res, 10));
    }
    // virtiofsd makes its socket 0600: hand it to QEMU's uid, the only client it may have.
    chownSync(m.socket, qemuUid, qemuGid);
  }

  async destroy(id: string): Promise<void> {
    await this.starting.get(id);
    const dir = this.vmDir(id);
    const record = readRecord(dir);
    const pid = readPid(join(dir, 'qemu.pid'));
    if (pid !== null && ownsPid(id, pid)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await exited(pid, 10_000);
    }
    // The cgroup kill covers a jail that died between fork and writing its pid file.
    removeCgroup(cgroupsPathFor(id));
    if (record?.network !== false) await removeTap(id);
    rmSync(dir, { recursive: true, force: true });
    rmSync(join(this.dataDir, 'sandboxes', id), { recursive: true, force: true });
  }

  async status(id: string): Promise<DriverStatus> {
    const pid = readPid(join(this.vmDir(id), 'qemu.pid'));
    if (pid === null || !ownsPid(id, pid) || !alive(pid)) return 'absent';
    try {
      const s = await qmp(join(this.vmDir(id), 'run', 'qmp.sock'), 'query-status') as { status?: string; running?: boolean };
      if (s.running) return 'running';
      if (s.status === 'paused') return 'paused';
      return s.status === 'shutdown' || s.status === 'guest-panicked' ? 'stopped' : 'running';
    } catch {
      return alive(pid) ? 'running' : 'absent';
    }
  }

  async pause(id: string): Promise<void> {
    await qmp(join(this.vmDir(id), 'run', 'qmp.sock'), 'stop');
  }

  async resume(id: string): Promise<void> {
    await qmp(join(this.vmDir(id), 'run', 'qmp.sock'), 'cont');
  }

  async networkPid(id: string): Promise<number | null> {
    await this.starting.get(id);
    const pid = readPid(join(this.vmDir(id), 'qemu.pid'));
    return pid !== null && ownsPid(id, pid) && alive(pid) ? pid : null;
  }

  async list(): Promise<string[]> {
    try {
      return readdirSync(this.stateRoot).filter((n) => SANDBOX_ID_RE.test(n));
    } catch {
      return [];
    }
  }

  limitCounters(id: string): LimitCounters {
    const path = cgroupsPathFor(id);
    return { oomKills: oomKills(path), pidsMaxHits: pidsMaxHits(path) };
  }

  /** The layer is a file system inside the guest; the host does not mount it to look. */
  diskUsage(_id: string): DiskUsage | null {
    return null;
  }
}

/** A uid of the VMM range for this sandbox (same id, same uid: reconcile needs no record). */
export function vmmUid(id: string): number {
  return VMM_ID_BASE + (createHash('sha256').update(id).digest().readUInt32BE(0) % VMM_ID_COUNT);
}

function kvmGid(): number {
  try {
    const line = readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('kvm:'));
    const gid = Number(line?.split(':')[2]);
    if (Number.isInteger(gid) && gid > 0) return gid;
  } catch { /* fall through */ }
  return statSync('/dev/kvm').gid;
}

/**
 * The guest kernel's command line. Under TCG the guest's TSC is the host's, but the guest
 * calibrates it against an emulated PIT, which fails on a busy host (the vCPU thread is
 * preempted mid-measurement) and then stalls the boot: when the host's TSC has a known constant
 * rate, the guest is told it. AIRLOCK_MICROVM_DEBUG=1 keeps the kernel's messages on the
 * console log.
 */
export function guestCmdline(accel: 'kvm' | 'tcg'): string {
  const args = ['console=ttyS0', 'panic=-1'];
  if (!process.env.AIRLOCK_MICROVM_DEBUG) args.push('quiet', 'loglevel=1');
  const khz = accel === 'tcg' ? hostTscKhz() : null;
  if (khz) args.push(`tsc_early_khz=${khz}`, 'tsc=reliable', 'no_timer_check');
  return args.join(' ');
}

let tscKhz: number | null | undefined;

function hostTscKhz(): number | null {
  if (tscKhz !== undefined) return tscKhz;
  tscKhz = null;
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const flags = /^flags\s*:(.*)$/m.exec(info)?.[1]?.split(/\s+/) ?? [];
    const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)$/m.exec(info)?.[1]);
    if (flags.includes('constant_tsc') && flags.includes('tsc_known_freq') && mhz > 0) tscKhz = Math.round(mhz * 1000);
  } catch { /* calibrate in the guest */ }
  return tscKhz;
}

/** QEMU splits option values at commas; the engine's paths never hold one. */
function qemuPath(p: string): string {
  if (p.includes(',')) throw new Error(`path not usable by QEMU (comma): ${p}`);
  return p;
}

function readSmallFile(path: string): Buffer {
  const data = readFileSync(path);
  if (data.length > MAX_ENGINE_FILE) throw new Error(`engine file too large for the guest: ${path}`);
  return data;
}

function readRecord(dir: string): LaunchRecord | null {
  try {
    return JSON.parse(readFileSync(join(dir, 'launch.json'), 'utf8')) as LaunchRecord;
  } catch {
    return null;
  }
}

function readPid(file: string): number | null {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 1 ? pid : null;
  } catch {
    return null;
  }
}

/** The pid is this sandbox's QEMU (pids are reused): it sits in the sandbox's cgroup. */
function ownsPid(id: string, pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(cgroupsPathFor(id));
  } catch {
    return false;
  }
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/** Resolves once the process is gone or a zombie (or after timeoutMs, or when aborted). */
function exited(pid: number, timeoutMs = 0, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const deadline = timeoutMs ? Date.now() + timeoutMs : Infinity;
    const check = () => {
      if (signal?.aborted || !alive(pid) || Date.now() > deadline) return resolve();
      setTimeout(check, 20).unref();
    };
    check();
  });
}

function logTail(path: string): string {
  try {
    const text = readFileSync(path, 'utf8').trim();
    return text.split('\n').slice(-5).join('; ').slice(-1500) || 'nothing';
  } catch {
    return 'nothing';
  }
}
