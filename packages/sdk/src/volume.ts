/**
 * Named volumes: storage with its own quota that outlives sandboxes. Attach one when creating a
 * sandbox (`Sandbox.create({ volumes: [{ name, target, readOnly: false }] })`): any number of
 * read-only attachments at once, or exactly one read-write.
 */
import { ApiClient, type ClientOptions } from './client.js';
import { ApiError } from './errors.js';
import type { VolumeInfo } from './volume-types.js';

export class Volume {
  private constructor(private readonly api: ApiClient, private current: VolumeInfo) {}

  get name(): string { return this.current.name; }
  get sizeMiB(): number { return this.current.sizeMiB; }
  /** As of the last create, get or refresh. */
  get info(): VolumeInfo { return this.current; }

  static async create(name: string, opts: ClientOptions & { sizeMiB: number }): Promise<Volume> {
    const { sizeMiB, ...clientOpts } = opts;
    const api = new ApiClient(clientOpts);
    return new Volume(api, await api.createVolume({ name, sizeMiB }));
  }

  static async get(name: string, opts: ClientOptions = {}): Promise<Volume> {
    const api = new ApiClient(opts);
    return new Volume(api, await api.getVolume(name));
  }

  static list(opts: ClientOptions = {}): Promise<VolumeInfo[]> {
    return new ApiClient(opts).listVolumes();
  }

  /** Deletes a volume by name; false when it did not exist. Throws (409) while it is attached. */
  static async delete(name: string, opts: ClientOptions = {}): Promise<boolean> {
    try {
      await new ApiClient(opts).deleteVolume(name);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return false;
      throw e;
    }
  }

  async refresh(): Promise<VolumeInfo> {
    this.current = await this.api.getVolume(this.current.name);
    return this.current;
  }

  /** Deletes the volume and its data (409 while a live sandbox has it attached). */
  async delete(): Promise<void> {
    await this.api.deleteVolume(this.current.name);
  }
}
