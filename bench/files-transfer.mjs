// 100 MiB upload + download through airlockd's HTTP API (PUT/GET /v1/sandboxes/:id/files),
// with the daemon in its own process so its RSS can be watched; the same bytes through a
// plain loopback HTTP server writing to / reading from a file on the same disk are the raw
// baseline. Targets (issue 3): ≥ 200 MiB/s each way, daemon RSS growth ≤ 32 MiB.
//
//   node bench/files-transfer.mjs [--mib 100] [--rounds 3] [--json]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { nowMs, REPO } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const MIB = opt('--mib', 100);
const ROUNDS = opt('--rounds', 3);
const JSON_OUT = args.includes('--json');
const TOTAL = MIB * 1024 * 1024;
const CHUNK = Buffer.alloc(1024 * 1024, 0x5a);

function rssKb(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(s)[1]);
}

/** Samples a process's RSS every 10 ms while `fn` runs; returns fn's result and the peak. */
async function withRss(pid, fn) {
  let peak = rssKb(pid);
  const t = setInterval(() => { peak = Math.max(peak, rssKb(pid)); }, 10);
  try {
    const r = await fn();
    peak = Math.max(peak, rssKb(pid));
    return { r, peak };
  } finally {
    clearInterval(t);
  }
}

/** Streams TOTAL bytes as the body of one request (Content-Length known, like curl -T). */
function upload(url, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'PUT', headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': TOTAL } }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`PUT ${res.statusCode}: ${Buffer.concat(parts)}`))));
    });
    req.on('error', reject);
    let sent = 0;
    const pump = () => {
      while (sent < TOTAL) {
        const n = Math.min(CHUNK.length, TOTAL - sent);
        sent += n;
        if (!req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return void req.once('drain', pump);
      }
      req.end();
    };
    pump();
  });
}

/** Reads a response to the end, counting bytes (nothing kept). */
function download(url, headers) {
  return new Promise((resolve, reject) => {
    http.get(url, { headers }, (res) => {
      let n = 0;
      res.on('data', (c) => { n += c.length; });
      res.on('end', () => (res.statusCode === 200 && n === TOTAL ? resolve() : reject(new Error(`GET ${res.statusCode}, ${n} bytes`))));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** A child process running `code` (an ES module); resolves with its pid and first stdout line (JSON). */
function child(code) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--input-type=module', '-e', code], { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (b) => {
      out += b;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve({ proc: p, info: JSON.parse(out.slice(0, nl)) });
    });
    p.on('exit', (c) => reject(new Error(`child exited ${c} before it was ready`)));
  });
}

async function stopChild(p) {
  const gone = new Promise((r) => p.once('exit', r));
  p.stdin.end(); // each child stops when its stdin closes
  await gone;
}

const DAEMON = `
import { startDaemon } from './bench/daemon.mjs';
const d = await startDaemon('files');
const c = d.client();
const r = await c.call('POST', '/v1/sandboxes', { template: 'tiny', timeoutSeconds: 600, resources: { diskMiB: 4096 } });
if (r.status !== 201) { console.error(JSON.stringify(r)); process.exit(1); }
c.close();
console.log(JSON.stringify({ url: 'http://' + d.host + ':' + d.port, key: d.key, id: r.body.id }));
process.stdin.resume();
process.stdin.on('end', async () => { await d.engine.killSandbox({ tenant: null }, r.body.id).catch(() => {}); await d.stop(); process.exit(0); });
`;

const RAW = `
import http from 'node:http';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-raw-files-'));
const file = join(dir, 'data');
const server = http.createServer(async (req, res) => {
  if (req.method === 'PUT') { await pipeline(req, createWriteStream(file)); res.end('{}'); }
  else { res.writeHead(200, { 'content-type': 'application/octet-stream' }); await pipeline(createReadStream(file), res); }
});
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ url: 'http://127.0.0.1:' + server.address().port })));
process.stdin.resume();
process.stdin.on('end', () => { server.close(); rmSync(dir, { recursive: true, force: true }); process.exit(0); });
`;

async function measure(label, pid, putUrl, getUrl, headers) {
  const up = [];
  const down = [];
  let growth = 0;
  // Warm-up: first requests pay for JIT and lazily grown buffers, not for the transfer size.
  await upload(putUrl, headers).then(() => download(getUrl, headers));
  for (let i = 0; i < ROUNDS; i++) {
    const base = rssKb(pid);
    const t0 = nowMs();
    const u = await withRss(pid, () => upload(putUrl, headers));
    const t1 = nowMs();
    const d = await withRss(pid, () => download(getUrl, headers));
    const t2 = nowMs();
    up.push(MIB / ((t1 - t0) / 1000));
    down.push(MIB / ((t2 - t1) / 1000));
    growth = Math.max(growth, u.peak - base, d.peak - base);
  }
  const best = (a) => Math.max(...a);
  const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  return { label, uploadMiBs: med(up), downloadMiBs: med(down), bestUploadMiBs: best(up), bestDownloadMiBs: best(down), rssGrowthMiB: growth / 1024 };
}

const raw = await child(RAW);
const daemon = await child(DAEMON);
try {
  const { url, key, id } = daemon.info;
  const headers = { authorization: `Bearer ${key}` };
  const path = encodeURIComponent('/work/bench.bin');
  const api = await measure('airlockd', daemon.proc.pid, `${url}/v1/sandboxes/${id}/files?path=${path}`, `${url}/v1/sandboxes/${id}/files?path=${path}`, headers);
  const base = await measure('raw loopback HTTP + file', raw.proc.pid, raw.info.url, raw.info.url, {});
  const result = {
    sizeMiB: MIB, rounds: ROUNDS, api, raw: base,
    ratio: { upload: api.uploadMiBs / base.uploadMiBs, download: api.downloadMiBs / base.downloadMiBs },
    targets: { uploadOk: api.uploadMiBs >= 200, downloadOk: api.downloadMiBs >= 200, rssOk: api.rssGrowthMiB <= 32 },
  };
  if (JSON_OUT) {
    console.log(JSON.stringify(result));
  } else {
    const f = (n) => n.toFixed(0).padStart(5);
    console.log(`files transfer, ${MIB} MiB, median of ${ROUNDS} (best in brackets)`);
    for (const r of [api, base]) {
      console.log(`  ${r.label.padEnd(26)} upload ${f(r.uploadMiBs)} MiB/s (${f(r.bestUploadMiBs)})   download ${f(r.downloadMiBs)} MiB/s (${f(r.bestDownloadMiBs)})   RSS growth ${r.rssGrowthMiB.toFixed(1)} MiB`);
    }
    console.log(`  targets: upload ≥ 200 MiB/s ${result.targets.uploadOk ? 'ok' : 'MISSED'}, download ≥ 200 MiB/s ${result.targets.downloadOk ? 'ok' : 'MISSED'}, daemon RSS growth ≤ 32 MiB ${result.targets.rssOk ? 'ok' : 'MISSED'}`);
  }
} finally {
  await stopChild(daemon.proc);
  await stopChild(raw.proc);
}
