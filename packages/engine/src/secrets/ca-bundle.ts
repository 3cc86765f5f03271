/**
 * The CA bundle a sandbox with secrets trusts: its template's own bundle plus the Airlock CA,
 * bound read-only over the template's path. Tools that bring their own trust store (Python's
 * requests, Node) are pointed at it through the usual variables.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';

/** Debian's (and most distributions') bundle path; the bind creates it where a template lacks it. */
export const SANDBOX_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
const MAX_BUNDLE = 4 * 1024 * 1024;

/** Variables that name a CA file for common tools; set unless the spec sets them. */
export const CA_BUNDLE_ENV = ['SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'NODE_EXTRA_CA_CERTS'] as const;

/**
 * The template's bundle, read from its layers (topmost first) without following any link: a
 * template (an imported image, say) could hold a link pointing anywhere on the host. A link,
 * a whiteout or anything but a regular file ends the search: the sandbox then trusts only
 * the Airlock CA.
 */
export function templateCaBundle(layers: readonly string[]): string {
  const parts = SANDBOX_CA_BUNDLE.split('/').filter(Boolean);
  for (const layer of layers) {
    let path = layer;
    let missing = false;
    for (let i = 0; i < parts.length; i++) {
      path = join(path, parts[i]!);
      let st;
      try {
        st = lstatSync(path);
      } catch {
        missing = true;
        break;
      }
      const last = i === parts.length - 1;
      if (last ? !st.isFile() : !st.isDirectory()) return '';
    }
    if (missing) continue;
    return readRegularFile(path);
  }
  return '';
}

function readRegularFile(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return '';
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > MAX_BUNDLE) return '';
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n <= 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

export function sandboxCaBundle(layers: readonly string[], airlockCaPem: string): string {
  const base = templateCaBundle(layers);
  const sep = base === '' || base.endsWith('\n') ? '' : '\n';
  return `${base}${sep}# Airlock sandbox CA: the secret broker terminates TLS for this sandbox's secret hosts\n${airlockCaPem}`;
}
