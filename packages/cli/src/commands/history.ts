/** `airlock sandbox history ID`: the sandbox's timeline (docs/records.md). */
import type { HistoryEntry } from '@airlock/engine';
import type { BackendOptions } from '../backend.js';
import { EXIT, printJson } from '../output.js';
import { withBackend } from '../with-backend.js';

/** Longest recorded output shown per stream with --output (the blob may be up to 1 MiB). */
const SHOWN_OUTPUT = 4096;

function time(ts: string): string {
  return ts.replace('T', ' ').replace('Z', '');
}

/** Printable: control characters (escape sequences from a hostile sandbox) shown as \xNN. */
function printable(s: string): string {
  return s.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function describeEvent(e: Extract<HistoryEntry, { kind: 'event' }>): string {
  const d = e.data;
  const pick = (...keys: string[]) => keys.filter((k) => d[k] !== undefined && d[k] !== null).map((k) => `${k}=${typeof d[k] === 'object' ? JSON.stringify(d[k]) : String(d[k])}`).join(' ');
  if (e.type === 'net.connect' || e.type === 'net.dns') return pick('name', 'address', 'port', 'verdict', 'reason', 'flags');
  if (e.type.startsWith('alert.')) return pick('address', 'name', 'path', 'flags', 'count', 'limit', 'limitMiB');
  if (e.type.startsWith('file.')) return pick('path', 'size');
  if (e.type === 'process.snapshot') return `${Array.isArray(d.processes) ? d.processes.length : 0} processes`;
  if (e.type === 'policy.denied') return pick('action', 'rule', 'detail');
  if (e.type === 'exec.started' || e.type === 'exec.exited') return pick('execId', 'cmd', 'exitCode', 'reason', 'background', 'pty');
  return pick('reason', 'runtime', 'template');
}

export async function historyCommand(id: string, flags: BackendOptions & { json?: boolean; output?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const entries = await b.sandboxHistory(id);
    if (flags.json) {
      printJson(entries);
      return EXIT.ok;
    }
    const out: string[] = [];
    for (const e of entries) {
      if (e.kind === 'event') {
        out.push(printable(`${time(e.ts)}  ${e.type.padEnd(18)} ${describeEvent(e)}`));
        continue;
      }
      const r = e.exec;
      const size = (s: typeof r.stdout) => `${s.bytes}B${s.truncated ? ` (recorded ${s.stored})` : ''}`;
      out.push(printable(`${time(e.ts)}  ${'exec'.padEnd(18)} ${JSON.stringify(r.cmd)} → ${r.exitCode} (${r.reason}) ` +
        `${Date.parse(r.endedAt) - Date.parse(r.startedAt)}ms stdout ${size(r.stdout)} stderr ${size(r.stderr)}` +
        (r.envNames.length ? ` env ${r.envNames.join(',')}` : '')));
      if (flags.output) {
        for (const [name, s] of [['stdout', r.stdout], ['stderr', r.stderr]] as const) {
          if (!s.sha256 || s.stored === 0) continue;
          const data = Buffer.from(await b.readBlob(s.sha256));
          const text = data.subarray(0, SHOWN_OUTPUT).toString('utf8');
          for (const line of text.replace(/\n$/, '').split('\n')) out.push(printable(`    ${name} | ${line}`));
          if (data.length > SHOWN_OUTPUT) out.push(`    ${name} | … ${data.length - SHOWN_OUTPUT} more bytes (blob ${s.sha256})`);
        }
      }
    }
    process.stdout.write(out.length ? out.join('\n') + '\n' : '');
    return EXIT.ok;
  });
}
