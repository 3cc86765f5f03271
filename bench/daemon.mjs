// An in-process airlockd (engine + HTTP server) on a fresh data dir, and a keep-alive JSON client.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/index.js';
import { startServer } from '../packages/server/dist/src/index.js';
import { TEMPLATES_DIR } from './lib.mjs';

export async function startDaemon(tag) {
  const dataDir = mkdtempSync(join(tmpdir(), `airlock-bench-${tag}-`));
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  const key = engine.ensureAdminKey();
  const server = await startServer({ engine, listen: '127.0.0.1:0', logger: false });
  const [host, port] = server.address.split(':');
  return {
    dataDir, engine, key, host, port,
    client(maxSockets = 1) {
      const agent = new http.Agent({ keepAlive: true, maxSockets });
      const call = (method, path, body) => new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : JSON.stringify(body);
        const headers = { authorization: `Bearer ${key}` };
        if (data !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
        const req = http.request({ host, port, path, method, agent, headers }, (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null });
          });
        });
        req.on('error', reject);
        req.end(data);
      });
      return { call, close: () => agent.destroy() };
    },
    async stop() {
      await server.close();
      await engine.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
