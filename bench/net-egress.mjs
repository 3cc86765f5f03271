// Egress proxy cost (issue 4 targets), against the test internet (the fixture's own servers on
// 203.0.113.0/24 inside a namespace of their own; nothing leaves this machine):
//   throughput: a 200 MiB download by a sandbox through Airlock (veth → TPROXY → proxy → veth)
//               vs the same download straight over one veth pair without Airlock (host → server
//               namespace), same curl command line (both pin the name with --resolve, so neither
//               times a DNS lookup; the proxy still resolves and checks the name itself), same
//               server, alternating, in this one run.
//               Target: ≥ 0.7×. Measured once per congestion control of the test internet's
//               servers (--server-cc, default "cubic,bbr"): cubic is the kernel's default; bbr
//               (this kind of host's configured default) paces every burst with a timer, which
//               on a local veth costs the server CPU that the proxied path, doing more work per
//               byte, has less of to spare on a small machine.
//   upload:     the same 200 MiB sent up (curl -T, plain HTTP, Content-Length) to the same server,
//               direct vs sandbox; no target, reported because the request guard reads plaintext
//               requests in Node and lends their bodies to the kernel relay. --no-upload skips it.
//   connect:    time from connect() to the first response byte of a tiny HTTP request on a new
//               connection, python in the sandbox through the proxy vs python on the host
//               direct. Target: p50 added ≤ 1 ms.
//
//   node bench/net-egress.mjs [--mib 200] [--rounds 9] [--connects 300] [--server-cc cubic,bbr] [--no-upload] [--json]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../packages/engine/dist/src/engine.js';
import { startTestInternet } from '../packages/engine/dist/test/net-fixture.js';
import { tempDataDir } from '../packages/engine/dist/test/support.js';
import { stats, TEMPLATES_DIR } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const MIB = opt('--mib', 200);
const ROUNDS = opt('--rounds', 9);
const CONNECTS = opt('--connects', 300);
const JSON_OUT = args.includes('--json');
const UPLOAD = !args.includes('--no-upload');
const SERVER_CCS = (() => {
  const i = args.indexOf('--server-cc');
  return (i >= 0 ? args[i + 1] : 'cubic,bbr').split(',').filter(Boolean);
})();
const admin = { tenant: null };

const CONNECT_PROBE = `
import socket, sys, time, json
ip, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
req = ("GET / HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % host).encode()
out = []
for i in range(n + 10):
    t0 = time.perf_counter()
    s = socket.create_connection((ip, 80))
    s.sendall(req)
    s.recv(1)
    dt = (time.perf_counter() - t0) * 1000
    s.close()
    if i >= 10: out.append(dt)
print(json.dumps(out))
`;

function curlSeconds(argv) {
  const out = execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  return Number(out.trim());
}

async function main() {
  const net = await startTestInternet();
  const dataDir = tempDataDir('bench-net');
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
  let sbx;
  try {
    sbx = await engine.createSandbox(admin, {
      template: 'base', timeoutSeconds: 900, resources: { cpus: 2, memoryMiB: 1024 }, network: { allow: ['big.test', 'a.test'] },
    });
    const url = `http://big.test/bytes/${MIB * 1024 * 1024}`;
    const mibps = (s) => MIB / s;
    // Medians: a 200 MiB transfer takes ~0.1 s here, so single runs swing with the machine.
    const median = (xs) => stats(xs).p50;
    const throughput = {};
    for (const cc of SERVER_CCS) {
      await net.setServerCongestion(cc);
      const direct = [];
      const proxied = [];
      for (let i = 0; i < ROUNDS; i++) {
        direct.push(curlSeconds(['curl', '-sS', '-o', '/dev/null', '-w', '%{time_total}', '--resolve', `big.test:80:${net.records['big.test']}`, url]));
        const r = await engine.exec(admin, sbx.id, { cmd: ['curl', '-sS', '-o', '/dev/null', '-w', '%{time_total}', '--resolve', `big.test:80:${net.records['big.test']}`, url], timeoutSeconds: 300 });
        if (r.exitCode !== 0) throw new Error(`sandbox curl failed: ${r.stderr}`);
        proxied.push(Number(r.stdout.trim()));
      }
      throughput[cc] = {
        directMiBps: mibps(median(direct)),
        proxiedMiBps: mibps(median(proxied)),
        ratio: median(direct) / median(proxied),
        directRuns: direct.map(mibps),
        proxiedRuns: proxied.map(mibps),
      };
    }

    // Upload: the same file both ways, from a file so curl sends a Content-Length.
    let upload = null;
    if (UPLOAD) {
      const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-up-'));
      try {
        const hostFile = join(dir, 'up.bin');
        writeFileSync(hostFile, Buffer.alloc(MIB * 1024 * 1024, 0x61));
        const mk = await engine.exec(admin, sbx.id, { cmd: ['sh', '-c', `head -c ${MIB * 1024 * 1024} /dev/zero > /tmp/up.bin`], timeoutSeconds: 120 });
        if (mk.exitCode !== 0) throw new Error(`sandbox file: ${mk.stderr}`);
        const up = (file) => ['curl', '-sS', '-o', '/dev/null', '-w', '%{time_total}', '--resolve', `big.test:80:${net.records['big.test']}`, '-T', file, '-X', 'POST', 'http://big.test/upload'];
        const direct = [];
        const proxied = [];
        for (let i = 0; i < ROUNDS; i++) {
          direct.push(curlSeconds(up(hostFile)));
          const r = await engine.exec(admin, sbx.id, { cmd: up('/tmp/up.bin'), timeoutSeconds: 300 });
          if (r.exitCode !== 0) throw new Error(`sandbox upload failed: ${r.stderr}`);
          proxied.push(Number(r.stdout.trim()));
        }
        upload = { directMiBps: mibps(median(direct)), proxiedMiBps: mibps(median(proxied)), ratio: median(direct) / median(proxied) };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }

    // Connect latency: same probe, host direct vs sandbox through the proxy.
    const hostRun = JSON.parse(execFileSync('python3', ['-c', CONNECT_PROBE, net.records['a.test'], 'a.test', String(CONNECTS)], { encoding: 'utf8' }));
    const r = await engine.exec(admin, sbx.id, { cmd: ['python3', '-c', CONNECT_PROBE, net.records['a.test'], 'a.test', String(CONNECTS)], timeoutSeconds: 300 });
    if (r.exitCode !== 0) throw new Error(`sandbox probe failed: ${r.stderr}`);
    const sbxRun = JSON.parse(r.stdout);
    const d = stats(hostRun);
    const p = stats(sbxRun);
    const connect = { directP50Ms: d.p50, proxiedP50Ms: p.p50, addedP50Ms: p.p50 - d.p50, directP90Ms: d.p90, proxiedP90Ms: p.p90 };

    const result = { mib: MIB, rounds: ROUNDS, connects: CONNECTS, throughput, upload, connect };
    if (JSON_OUT) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      for (const [cc, t] of Object.entries(throughput)) {
        console.log(`download ${MIB} MiB, median of ${ROUNDS} alternating runs, the servers using ${cc}:`);
        console.log(`  direct veth (no Airlock)  ${t.directMiBps.toFixed(0)} MiB/s   runs: ${t.directRuns.map((x) => x.toFixed(0)).join(', ')}`);
        console.log(`  sandbox via egress proxy  ${t.proxiedMiBps.toFixed(0)} MiB/s   runs: ${t.proxiedRuns.map((x) => x.toFixed(0)).join(', ')}`);
        console.log(`  ratio proxied/direct      ${t.ratio.toFixed(2)}x   (target >= 0.70x)`);
      }
      if (upload) {
        console.log(`upload ${MIB} MiB (plain HTTP, Content-Length), median of ${ROUNDS} alternating runs, no target:`);
        console.log(`  direct veth (no Airlock)  ${upload.directMiBps.toFixed(0)} MiB/s`);
        console.log(`  sandbox via egress proxy  ${upload.proxiedMiBps.toFixed(0)} MiB/s`);
        console.log(`  ratio proxied/direct      ${upload.ratio.toFixed(2)}x`);
      }
      console.log(`connect → first byte, ${CONNECTS} new connections each:`);
      console.log(`  direct   p50 ${d.p50.toFixed(3)} ms  p90 ${d.p90.toFixed(3)} ms`);
      console.log(`  proxied  p50 ${p.p50.toFixed(3)} ms  p90 ${p.p90.toFixed(3)} ms`);
      console.log(`  added p50 ${connect.addedP50Ms.toFixed(3)} ms   (target <= 1 ms)`);
    }
  } finally {
    if (sbx) await engine.killSandbox(admin, sbx.id).catch(() => {});
    await engine.close();
    rmSync(dataDir, { recursive: true, force: true });
    await net.close();
  }
}

await main();
