import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, statfsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import type { EventLog } from '../audit/event-log.js';
import { SANDBOX_ID_BASE } from '../constants.js';
import { AirlockError, badRequest, conflict, notFound } from '../errors.js';
import { firstIssue, volumeNameSchema } from '../sandbox/spec.js';
import type { SandboxRepository } from '../store/sandbox-repo.js';
import type { Db } from '../store/db.js';
import type { CreateVolumeInput, MountSpec, SandboxState, VolumeInfo, VolumeMount } from '../types.js';
import { newSandboxId } from '../util/ids.js';
import { mountsUnder } from '../util/mounts.js';
import { run } from '../util/run.js';
import { formatImage } from './ext4-image.js';
import { checkTarget } from './mount-policy.js';
import type { StoragePool } from './storage-pool.js';
import { VolumeRepository, type VolumeRecord } from './volume-repo.js';

const LIVE: SandboxState[] = ['creating', 'running', 'paused'];
const MiB = 1024 * 1024;
const VOLUME_ID_RE = /^[a-z0-9]{12}$/;

export const createVolumeSchema = z.object({
  name: volumeNameSchema,
  sizeMiB: z.number().int().min(16).max(1_048_576),
}).strict();

export interface VolumeDeps {
  db: Db;
  pool: StoragePool;
  /** agent/build/airlock-rootfs */
  helper: string;
  events: EventLog;
  sandboxes: SandboxRepository;
  /** The engine's write transaction (events flushed after commit). */
  tx: (fn: () => void) => void;
  log: (level: 'info' | 'warn' | 'error', msg: string, data?: Record<string, unknown>) => void;
}

interface Holder { sandbox: string; target: string; readOnly: boolean }

/**
 * Named volumes: an ext4 image per volume (its size is the quota), mounted on the host at
 * <dataDir>/storage/volumes/<id> for as long as it exists, and bound into sandboxes from there.
 * Attach rule: any number of read-only attachments, or exactly one read-write and nothing else.
 */
export class VolumeStore {
  readonly repo: VolumeRepository;

  constructor(private readonly d: VolumeDeps) {
    this.repo = new VolumeRepository(d.db);
  }

  async create(tenant: string, input: CreateVolumeInput): Promise<VolumeInfo> {
    const r = createVolumeSchema.safeParse(input ?? {});
    if (!r.success) {
      const { field, message } = firstIssue(r.error);
      throw badRequest(message, field);
    }
    const { name, sizeMiB } = r.data;
    if (this.repo.get(tenant, name)) throw conflict(`volume ${name} already exists`);
    this.admit(sizeMiB, 'volume');
    const id = newSandboxId();
    const image = this.d.pool.volumeImage(id);
    const mnt = this.d.pool.volumeMount(id);
    await this.d.pool.locked(async () => {
      try {
        // Root of the volume = root inside the sandbox, so a read-write user can write at once.
        await formatImage(image, { sizeMiB, rootUid: SANDBOX_ID_BASE, journal: true, label: 'airlock-vol' });
        mkdirSync(mnt, { mode: 0o700 });
        await run(this.d.helper, ['attach', image, mnt]);
        rmdirSync(join(mnt, 'lost+found'));
        // The row appears only once the volume is usable; name and space are checked again
        // inside the transaction, against whatever was created meanwhile.
        this.d.tx(() => {
          if (this.repo.get(tenant, name)) throw conflict(`volume ${name} already exists`);
          this.admit(sizeMiB, 'volume');
          this.repo.insert({ id, tenant, name, sizeMiB, createdAt: Date.now() });
          this.d.events.append({ tenant, sandbox: null, type: 'volume.created', data: { name, sizeMiB } });
        });
      } catch (e) {
        await this.removeHostSide(id).catch(() => {});
        throw e;
      }
    });
    return this.info(this.repo.get(tenant, name)!);
  }

  /** Admin (null) sees every tenant's. */
  list(tenant: string | null): VolumeInfo[] {
    return this.repo.list(tenant).map((v) => this.info(v));
  }

  get(tenant: string, name: string): VolumeInfo {
    return this.info(this.require(tenant, name));
  }

  /** 409 while a live sandbox has it attached. The data is gone afterwards. */
  async delete(tenant: string, name: string): Promise<void> {
    const vol = this.require(tenant, name);
    await this.d.pool.locked(async () => {
      this.d.tx(() => {
        const now = this.repo.get(tenant, name);
        if (!now || now.id !== vol.id) throw notFound('volume', name);
        const holders = this.holders(tenant, name);
        if (holders.length) {
          throw conflict(`volume ${name} is attached to sandbox ${holders.map((h) => h.sandbox).join(', ')}; kill it first`);
        }
        this.repo.delete(vol.id);
        this.d.events.append({ tenant, sandbox: null, type: 'volume.deleted', data: { name, sizeMiB: vol.sizeMiB } });
      });
      await this.removeHostSide(vol.id);
    });
  }

  /**
   * Before a sandbox is created: validates the requested attachments and makes sure each volume
   * is mounted on the host (it is, unless shutdownStorage ran). The attach rule is checked
   * again by checkAttach inside the transaction that records the sandbox.
   */
  async prepare(tenant: string, volumes: VolumeMount[]): Promise<VolumeMount[]> {
    const names = new Set<string>();
    const out = volumes.map((v, i) => {
      const field = `volumes.${i}`;
      if (names.has(v.name)) throw badRequest(`${field}.name: volume ${v.name} is attached twice`, `${field}.name`);
      names.add(v.name);
      this.require(tenant, v.name);
      return { name: v.name, target: checkTarget(v.target, `${field}.target`), readOnly: v.readOnly };
    });
    const unmounted = out.map((v) => this.require(tenant, v.name)).filter((rec) => !this.mounted(rec.id));
    if (unmounted.length) await this.d.pool.locked(async () => { for (const rec of unmounted) await this.mount(rec); });
    return out;
  }

  /** Inside the create transaction: the attach rule, then the host binds. Throws 404 / 409. */
  checkAttach(tenant: string, volumes: VolumeMount[]): MountSpec[] {
    return volumes.map((v) => {
      const rec = this.require(tenant, v.name);
      const holders = this.holders(tenant, v.name);
      const rw = holders.find((h) => !h.readOnly);
      if (rw) throw conflict(`volume ${v.name} is attached read-write to sandbox ${rw.sandbox}`);
      if (!v.readOnly && holders.length) {
        throw conflict(`volume ${v.name} is attached read-only to sandbox ${holders.map((h) => h.sandbox).join(', ')}; a read-write attachment must be the only one`);
      }
      return { source: this.d.pool.volumeMount(rec.id), target: v.target, readOnly: v.readOnly };
    });
  }

  /** MiB promised to live sandboxes' layers and to volumes. */
  committedMiB(): { total: number; sandboxes: number; volumes: number } {
    const live = this.d.sandboxes.list({ states: LIVE });
    const layers = live.reduce((sum, r) => sum + r.spec.resources.diskMiB, 0);
    const vols = this.repo.totals();
    return { total: layers + vols.sizeMiB, sandboxes: live.length, volumes: vols.count };
  }

  /** 429 unless `sizeMiB` more still fits the data dir's storage capacity. */
  admit(sizeMiB: number, what: 'sandbox' | 'volume'): void {
    const c = this.committedMiB();
    const cap = this.d.pool.capacityMiB;
    if (c.total + sizeMiB > cap) {
      throw new AirlockError('quota_exceeded',
        `storage: a ${what} of ${sizeMiB} MiB does not fit: ${c.total} of ${cap} MiB are promised to ${c.sandboxes} live sandboxes and ${c.volumes} volumes (the limit is storageSizeGiB, at most half the disk space that was free when this data dir was made)`);
    }
  }

  /**
   * Engine open: mounts every volume that is not (after a reboot) and removes images and
   * mount points no volume owns (a crash between formatting and recording). Cheap when all is in order.
   */
  async reattach(): Promise<void> {
    if (!this.needsRepair()) return;
    await this.d.pool.locked(async () => {
      const known = new Set(this.repo.list(null).map((v) => v.id));
      for (const rec of this.repo.list(null)) {
        if (this.mounted(rec.id)) continue;
        if (!existsSync(this.d.pool.volumeImage(rec.id))) {
          this.d.log('error', 'volume image is missing', { volume: rec.name, tenant: rec.tenant, id: rec.id });
          continue;
        }
        await this.mount(rec).catch((e: Error) => this.d.log('error', 'could not mount volume', { volume: rec.name, error: e.message }));
      }
      for (const id of this.hostIds()) if (!known.has(id)) await this.removeHostSide(id);
    });
  }

  /** Unmounts every volume no live sandbox uses (tests, uninstall). Data stays in the images. */
  async detachAll(): Promise<void> {
    await this.d.pool.locked(async () => {
      const inUse = new Set<string>();
      for (const r of this.d.sandboxes.list({ states: LIVE })) {
        for (const v of r.spec.volumes ?? []) {
          const rec = this.repo.get(r.tenant, v.name);
          if (rec) inUse.add(rec.id);
        }
      }
      const points = this.hostIds().filter((id) => !inUse.has(id) && this.mounted(id)).map((id) => this.d.pool.volumeMount(id));
      if (points.length) await run(this.d.helper, ['umount', ...points]);
    });
  }

  private needsRepair(): boolean {
    const mounted = new Set(mountsUnder(dirname(this.d.pool.volumeMount('x'))));
    const known = new Set<string>();
    for (const rec of this.repo.list(null)) {
      known.add(rec.id);
      if (!mounted.has(this.d.pool.volumeMount(rec.id))) return true;
    }
    return this.hostIds().some((id) => !known.has(id));
  }

  /** Volume ids with an image or a mount point under storage/volumes. */
  private hostIds(): string[] {
    const ids = new Set<string>();
    let names: string[] = [];
    try { names = readdirSync(dirname(this.d.pool.volumeImage('x'))); } catch { /* none yet */ }
    for (const n of names) {
      const id = n.endsWith('.img') ? n.slice(0, -4) : n;
      if (VOLUME_ID_RE.test(id)) ids.add(id);
    }
    return [...ids];
  }

  private mounted(id: string): boolean {
    return mountsUnder(this.d.pool.volumeMount(id)).length > 0;
  }

  private async mount(rec: VolumeRecord): Promise<void> {
    const mnt = this.d.pool.volumeMount(rec.id);
    mkdirSync(mnt, { recursive: true, mode: 0o700 });
    await run(this.d.helper, ['attach', this.d.pool.volumeImage(rec.id), mnt]);
  }

  /** Unmounts (discarding unwritten data: the volume is being deleted) and removes image and mount point. */
  private async removeHostSide(id: string): Promise<void> {
    const mnt = this.d.pool.volumeMount(id);
    const points = mountsUnder(mnt);
    if (points.length) await run(this.d.helper, ['umount', '--drop', ...points]);
    rmSync(this.d.pool.volumeImage(id), { force: true });
    try { rmdirSync(mnt); } catch { /* absent */ }
  }

  private require(tenant: string, name: string): VolumeRecord {
    const rec = typeof name === 'string' && volumeNameSchema.safeParse(name).success ? this.repo.get(tenant, name) : null;
    if (!rec) throw notFound('volume', String(name));
    return rec;
  }

  private holders(tenant: string, name: string): Holder[] {
    const out: Holder[] = [];
    for (const r of this.d.sandboxes.list({ tenant, states: LIVE })) {
      for (const v of r.spec.volumes ?? []) if (v.name === name) out.push({ sandbox: r.id, target: v.target, readOnly: v.readOnly });
    }
    return out;
  }

  private info(v: VolumeRecord): VolumeInfo {
    let usedMiB: number | null = null;
    const mnt = this.d.pool.volumeMount(v.id);
    if (this.mounted(v.id)) {
      try {
        const st = statfsSync(mnt);
        usedMiB = Math.round(((st.blocks - st.bfree) * st.bsize) / MiB);
      } catch { /* unmounted meanwhile */ }
    }
    return {
      name: v.name,
      tenant: v.tenant,
      sizeMiB: v.sizeMiB,
      usedMiB,
      createdAt: new Date(v.createdAt).toISOString(),
      attachments: this.holders(v.tenant, v.name),
    };
  }
}
