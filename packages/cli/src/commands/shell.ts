/**
 * `airlock sandbox shell ID [-- CMD ARG...]`: an interactive terminal in a running sandbox.
 *
 * With a terminal here, ours goes raw (every key, ^C included, goes to the sandbox), window
 * size changes follow, and it is restored on every way out. Without one (pipes), input is
 * forwarded as typed lines and its end is sent as ^D. Exits with the remote process's status.
 */
import { spawnSync } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import type { BackendOptions, PtyConnection } from '../backend.js';
import { needsSandboxRecord, outcomeOf } from '../outcome.js';
import { EXIT, warn } from '../output.js';
import { withBackend } from '../with-backend.js';

export interface ShellFlags extends BackendOptions {
  cwd?: string;
  env?: Record<string, string>;
}

const MAX_SIZE = 1000;
const EOT = Buffer.from([4]);

function clampSize(n: number | undefined, fallback: number): number {
  return Number.isInteger(n) && (n as number) > 0 ? Math.min(n as number, MAX_SIZE) : fallback;
}

/** The size of whichever of our streams is a terminal; 80 × 24 when none is. */
function terminalSize(): { cols: number; rows: number } {
  const tty = process.stdout.isTTY ? process.stdout : process.stderr.isTTY ? process.stderr : null;
  return { cols: clampSize(tty?.columns, 80), rows: clampSize(tty?.rows, 24) };
}

/**
 * Raw mode for an interactive session; the returned function restores the terminal (idempotent).
 * Node's raw mode keeps output processing (a "\n" from the sandbox would also return the cursor
 * to column 0 here, which breaks full-screen programs), so `stty -opost` turns it off too, as
 * ssh does. Leaving raw mode restores the modes saved before it, output processing included.
 */
function rawTerminal(): () => void {
  const stdin = process.stdin;
  if (!stdin.isTTY) return () => {};
  stdin.setRawMode(true);
  const stty = spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'], timeout: 5000 });
  if (stty.status !== 0) {
    // No stty here: the session still works, a full-screen program may just draw askew.
    warn('stty -opost failed; output processing stays on');
  }
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    try {
      stdin.setRawMode(false);
    } catch {
      // stdin already closed: nothing to restore
    }
  };
  // The last resort: even an exit from elsewhere (an uncaught error) leaves a usable terminal.
  process.once('exit', restore);
  return () => {
    process.off('exit', restore);
    restore();
  };
}

export async function shellCommand(id: string, cmd: string[], flags: ShellFlags): Promise<number> {
  const interactive = process.stdin.isTTY === true;
  return withBackend(flags, async (b) => {
    const conn = await b.openPty(id, {
      ...terminalSize(),
      ...(cmd.length > 0 ? { cmd } : {}),
      ...(flags.cwd ? { cwd: flags.cwd } : {}),
      ...(flags.env ? { env: flags.env } : {}),
    });
    const restore = rawTerminal();
    const detach = attach(conn, interactive);
    let exit;
    try {
      exit = await conn.exited;
    } catch (e) {
      // Through a daemon, hanging up ourselves means the end is not reported to us.
      if (!detach.signalled()) throw e;
    } finally {
      detach.dispose();
      restore();
    }
    const sig = detach.signalled();
    if (sig) {
      warn(sig === 'SIGINT' ? 'interrupted: session hung up' : `received ${sig}: session hung up`);
      return sig === 'SIGINT' ? EXIT.interrupted : 128 + (osConstants.signals[sig] ?? 0);
    }
    if (!exit) return EXIT.failure;
    const outcome = outcomeOf(exit, { sandbox: needsSandboxRecord(exit.reason) ? await b.getSandbox(id).catch(() => null) : null });
    if (outcome.message) warn(outcome.message);
    return outcome.exitCode;
  });
}

/** Wires our stdin, stdout, window size and signals to the session. */
function attach(conn: PtyConnection, interactive: boolean): { dispose(): void; signalled(): NodeJS.Signals | null } {
  const { stdin, stdout } = process;
  let signalled: NodeJS.Signals | null = null;
  let lastByte = 0x0a;

  conn.onData((chunk) => {
    if (!stdout.write(chunk)) {
      conn.pause();
      stdout.once('drain', () => conn.resume());
    }
  });

  const onInput = (data: Buffer) => {
    if (data.length === 0) return;
    lastByte = data[data.length - 1]!;
    conn.write(data);
  };
  // Without a terminal here, the end of our input is the end of the remote one: ^D at the start
  // of a line (a second one ends a last line that had no newline).
  const onEnd = () => {
    if (interactive) return;
    conn.write(lastByte === 0x0a || lastByte === 0x0d ? EOT : Buffer.concat([EOT, EOT]));
  };
  stdin.on('data', onInput);
  stdin.on('end', onEnd);
  stdin.resume();

  const onResize = () => {
    const { cols, rows } = terminalSize();
    conn.resize(cols, rows);
  };
  if (stdout.isTTY) stdout.on('resize', onResize);

  // In raw mode ^C is a byte for the sandbox; these arrive only from elsewhere (or without a tty).
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return;
    signalled = sig;
    conn.close();
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);

  return {
    signalled: () => signalled,
    dispose() {
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      stdin.pause();
      if (stdout.isTTY) stdout.off('resize', onResize);
      for (const s of signals) process.off(s, onSignal);
    },
  };
}
