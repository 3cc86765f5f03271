/** REST schemas of named volumes (routes/volumes.ts); same conventions as schemas.ts. */
import { z } from 'zod';

export const volumeName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a volume name (lowercase letters, digits, . _ -; up to 63)')
  .describe('volume name, unique per tenant');

export const createVolumeBody = z.strictObject({
  name: volumeName,
  sizeMiB: z.number().int().min(16).max(1_048_576).describe('quota: the volume is a file system of this size'),
});

export const volumeParams = z.object({ name: volumeName });

/** How a sandbox create body names a volume to attach. */
export const volumeMountInput = z.strictObject({
  name: volumeName,
  target: z.string().min(1).refine((p) => p.startsWith('/'), 'must be an absolute path').describe('path inside the sandbox'),
  readOnly: z.boolean().optional().describe('default true; one read-write attachment excludes every other'),
});

export const volumeMountInfo = z.object({ name: z.string(), target: z.string(), readOnly: z.boolean() });

export const volumeInfo = z.object({
  name: z.string(),
  tenant: z.string(),
  sizeMiB: z.number(),
  usedMiB: z.number().nullable(),
  createdAt: z.string(),
  attachments: z.array(z.object({ sandbox: z.string(), target: z.string(), readOnly: z.boolean() })),
});

export const volumeList = z.object({ volumes: z.array(volumeInfo) });
