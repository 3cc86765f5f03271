/** `airlock doctor`: what this host can and cannot do, one ✓/✗ line per check. */
import { join, resolve } from 'node:path';
import { EXIT, printJson } from '../output.js';

export interface DoctorFlags {
  dataDir: string;
  json?: boolean;
}

export async function doctorCommand(flags: DoctorFlags): Promise<number> {
  // runDoctor, not Engine.open: the checks must work where the engine cannot open (no data dir, not root).
  const { runDoctor } = await import('@airlock/engine');
  const dataDir = resolve(flags.dataDir);
  const templatesDir = resolve(process.env.AIRLOCK_TEMPLATES_DIR ?? join(dataDir, 'templates'));
  const checks = await runDoctor({ dataDir, templatesDir });
  const failed = checks.filter((c) => !c.ok).length;
  if (flags.json) {
    printJson({ ok: failed === 0, checks });
  } else {
    const width = Math.max(...checks.map((c) => c.name.length));
    for (const c of checks) process.stdout.write(`${c.ok ? '✓' : '✗'} ${c.name.padEnd(width)}  ${c.detail}\n`);
    process.stdout.write(failed === 0 ? 'all checks passed\n' : `${failed} check${failed === 1 ? '' : 's'} failed\n`);
  }
  return failed === 0 ? EXIT.ok : EXIT.failure;
}
