/** Schemas of the files, watch and outputs routes (the rest of the API's are in schemas.ts). */
import { z } from 'zod';
import { absolutePath } from './schemas.js';

/** "1"/"true" and "0"/"false", as curl users type them. */
const queryBool = z.enum(['1', '0', 'true', 'false']).transform((v) => v === '1' || v === 'true');
const octalMode = z.string().regex(/^0?[0-7]{1,4}$/, 'must be an octal mode like 0755');

export const mkdirQuery = z.strictObject({
  path: absolutePath,
  parents: queryBool.optional().describe('1: create missing parents; an existing directory is then success'),
  mode: octalMode.optional().describe('default 0755'),
});

export const renameBody = z.strictObject({
  from: absolutePath,
  to: absolutePath,
  overwrite: z.boolean().optional().describe('replace an existing `to` (default: 409 if it exists)'),
});

export const watchQuery = z.strictObject({
  path: absolutePath.describe('a directory'),
  recursive: queryBool.optional().describe('1: also every directory below it, including ones created later'),
});

export const outputsQuery = z.strictObject({
  format: z.enum(['tar', 'list']).optional().describe('tar (default): application/x-tar; list: JSON with sha256 per file'),
});

const fileType = z.enum(['file', 'dir', 'symlink', 'other']);

export const pathStat = z.object({ path: z.string(), type: fileType, size: z.number(), mode: z.number(), mtime: z.string() });

export const watchEvent = z.object({
  type: z.enum(['created', 'modified', 'deleted', 'moved', 'overflow']),
  path: z.string(),
  isDir: z.boolean(),
  from: z.string().optional(),
});

export const outputsList = z.object({
  root: z.string(),
  entries: z.array(z.object({
    path: z.string().describe('relative to the output directory'),
    type: z.enum(['file', 'dir', 'symlink']),
    size: z.number(),
    mode: z.number(),
    mtime: z.string(),
    sha256: z.string().optional(),
    linkTarget: z.string().optional(),
  })),
});
