/** `airlock serve`'s price sheet and engine logging (docs/metering.md). */
import { readFileSync } from 'node:fs';
import { parsePriceSheet, type PriceSheet } from '@airlock/engine';
import { UsageError } from '../flags.js';

/** --prices FILE: a JSON object, e.g. {"vcpuHour": 0.04, "memoryGiBHour": 0.005}; unknown fields refused. */
export function loadPriceSheet(file: string): PriceSheet {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--prices: ${(e as Error).message}`);
  }
  try {
    return parsePriceSheet(JSON.parse(text));
  } catch (e) {
    throw new UsageError(`--prices ${file}: ${(e as Error).message}`);
  }
}

type Level = 'info' | 'warn' | 'error';
type LogSink = Record<Level, (obj: Record<string, unknown>, msg: string) => void>;
const PINO_LEVEL: Record<Level, number> = { info: 30, warn: 40, error: 50 };

/**
 * The engine's log callback: to the server's pino logger once it exists, before that (reconcile
 * at open) as the same JSON lines on stderr; `also` sees every line (metrics count reconciles).
 */
export function engineLog(also: (msg: string, data?: Record<string, unknown>) => void): {
  log: (level: Level, msg: string, data?: Record<string, unknown>) => void;
  useLogger: (sink: LogSink) => void;
} {
  let sink: LogSink | null = null;
  return {
    log(level, msg, data) {
      also(msg, data);
      const obj = { component: 'engine', ...(data ?? {}) };
      if (sink) sink[level](obj, msg);
      else process.stderr.write(`${JSON.stringify({ level: PINO_LEVEL[level], time: Date.now(), pid: process.pid, ...obj, msg })}\n`);
    },
    useLogger(s) { sink = s; },
  };
}
