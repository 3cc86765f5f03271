/**
 * A writer for the "newc" cpio format the Linux kernel unpacks as an initramfs. Linux unpacks
 * several archives concatenated one after another, so a per-sandbox archive (token, config) can
 * follow a shared one (init, agent, modules) in the same file.
 */

export type CpioEntry =
  | { type: 'dir'; name: string; mode: number }
  | { type: 'file'; name: string; mode: number; data: Buffer }
  | { type: 'char'; name: string; mode: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

function header(ino: number, mode: number, size: number, nameLen: number, rdevMajor = 0, rdevMinor = 0): string {
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  return '070701' + [ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, nameLen, 0].map(hex).join('');
}

const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);

/** One archive holding `entries` in order (parents before children), ending with TRAILER!!!. */
export function cpioArchive(entries: CpioEntry[], firstIno = 1): Buffer {
  const parts: Buffer[] = [];
  let ino = firstIno;
  const add = (name: string, mode: number, data: Buffer, major = 0, minor = 0) => {
    if (name.includes('\0') || name.startsWith('/')) throw new Error(`bad cpio name: ${name}`);
    const nameBuf = Buffer.from(name + '\0');
    const head = Buffer.from(header(ino++, mode, data.length, nameBuf.length, major, minor), 'ascii');
    parts.push(head, nameBuf, pad4(head.length + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) {
    if (e.type === 'dir') add(e.name, S_IFDIR | (e.mode & 0o7777), Buffer.alloc(0));
    else if (e.type === 'file') add(e.name, S_IFREG | (e.mode & 0o7777), e.data);
    else add(e.name, S_IFCHR | (e.mode & 0o7777), Buffer.alloc(0), e.major, e.minor);
  }
  add('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}
