import { badRequest, AirlockError } from '../errors.js';

/** Bounds on what an image import may make the host read, unpack and write. */
export interface ImportLimits {
  /** Bytes of the image tarball itself (default 8 GiB). */
  maxImageBytes: number;
  /** Bytes of all layers once decompressed, summed (default 8 GiB): a decompression bomb stops here. */
  maxUnpackedBytes: number;
  /** Entries of all layers, summed (default 1,000,000). */
  maxEntries: number;
}

export const DEFAULT_IMPORT_LIMITS: ImportLimits = {
  maxImageBytes: 8 * 1024 ** 3,
  maxUnpackedBytes: 8 * 1024 ** 3,
  maxEntries: 1_000_000,
};

/** An import refused for what the image holds: always a 400 naming the reason. */
export function invalidImage(message: string): AirlockError {
  return badRequest(`image rejected: ${message}`, 'image');
}

export function tooLarge(message: string): AirlockError {
  return new AirlockError('too_large', `image rejected: ${message}`, 'image');
}
