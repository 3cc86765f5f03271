/** Shared by the templates-*.test.ts files: temporary template stores, tree snapshots, merged views. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/engine.js';
import { AirlockError } from '../src/errors.js';
import { unmountUnder } from '../src/template/mounts-under.js';
import { closeAndClean, sandboxIdsIn, tempDataDir } from './support.js';

type After = { after: (f: () => Promise<void> | void) => void };

/** A fresh templates directory, removed (mounts first) after the test whatever happens. */
export function tmpTemplates(t: After, tag: string): string {
  const dir = mkdtempSync(join(tmpdir(), `airlock-test-tpl-${tag}-`));
  t.after(async () => {
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** An engine on a fresh data dir and the given templates; every sandbox is killed and checked gone after the test. */
export async function engineOn(t: After, templatesDir: string, tag: string): Promise<Engine> {
  const dataDir = tempDataDir(tag);
  const engine = await Engine.open({ dataDir, templatesDir });
  t.after(() => closeAndClean(engine, dataDir, sandboxIdsIn(dataDir)));
  return engine;
}

export const ADMIN = { tenant: null };

export function errorCode(code: string) {
  return (e: unknown) => e instanceof AirlockError && e.code === code;
}

/**
 * Every entry under `root`, one line each: path, type, mode, owner, size, mtime, content hash
 * or link target (device numbers for whiteouts). Two equal snapshots mean nothing changed.
 */
export function treeSnapshot(root: string): string[] {
  const lines: string[] = [];
  const visit = (rel: string) => {
    const path = join(root, rel);
    const st = lstatSync(path, { bigint: true });
    let what = '';
    if (st.isFile()) what = createHash('sha256').update(readFileSync(path)).digest('hex');
    else if (st.isSymbolicLink()) what = `-> ${readlinkSync(path)}`;
    else if (st.isCharacterDevice() || st.isBlockDevice()) what = `dev ${st.rdev}`;
    lines.push(`${rel || '.'} mode=${st.mode.toString(8)} ${st.uid}:${st.gid} size=${st.size} mtime=${st.mtimeNs} nlink=${st.nlink} ${what}`);
    if (st.isDirectory()) for (const name of readdirSync(path).sort()) visit(rel ? `${rel}/${name}` : name);
  };
  visit('');
  return lines;
}

/** The layers stacked read-only (as a sandbox sees them, minus its writable layer); unmounted after the test. */
export function mergedView(t: After, layers: string[]): string {
  if (layers.length === 1) return layers[0]!;
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-merged-'));
  const merged = join(dir, 'm');
  mkdirSync(merged);
  execFileSync('mount', ['-t', 'overlay', '-o', `lowerdir=${layers.join(':')}`, 'airlock-test-merged', merged]);
  t.after(async () => {
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return merged;
}

/** Names of everything in a directory tree (for "nothing left behind"), lock and claim files included. */
export function listTree(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      out.push(r);
      if (lstatSync(join(root, r)).isDirectory() && !r.includes('/rootfs/')) walk(r);
    }
  };
  walk('');
  return out;
}
