/**
 * Run as a separate process by engine-recovery.test.ts: opens an engine, creates sandboxes,
 * prints their ids, then dies by SIGKILL as a crashed daemon would (no close, no cleanup).
 */
import { Engine } from '../src/engine.js';

const [dataDir, templatesDir, ...timeouts] = process.argv.slice(2);
const engine = await Engine.open({ dataDir: dataDir!, templatesDir: templatesDir! });
const ids: string[] = [];
for (const t of timeouts) {
  const s = await engine.createSandbox({ tenant: null }, { template: 'tiny', timeoutSeconds: Number(t) });
  ids.push(s.id);
}
process.stdout.write(JSON.stringify(ids) + '\n', () => process.kill(process.pid, 'SIGKILL'));
