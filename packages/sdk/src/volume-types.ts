/** Shapes of named volumes in the REST API (docs/rest-api.md, "Volumes"). */

/** A volume attached to a sandbox; read-only unless readOnly is false. */
export interface VolumeMount {
  name: string;
  /** Path inside the sandbox. */
  target: string;
  readOnly: boolean;
}

export interface CreateVolumeBody {
  /** Lowercase letters, digits, . _ -; unique within the tenant. */
  name: string;
  /** Quota: the volume is a file system of this size (16 MiB to 1 TiB). */
  sizeMiB: number;
}

export interface VolumeInfo {
  name: string;
  tenant: string;
  sizeMiB: number;
  /** In use now; null when the volume is not attached on the server's host. */
  usedMiB: number | null;
  createdAt: string;
  /** Live sandboxes it is attached to. */
  attachments: Array<{ sandbox: string; target: string; readOnly: boolean }>;
}
