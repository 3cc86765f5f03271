/**
 * airlock-netsock: IP_TRANSPARENT and the congestion control on the proxy's listener, inherited
 * by the connections it accepts (read back with ss from the kernel, not from the helper's word).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const BINARY = fileURLToPath(new URL('../../../../agent/build/airlock-netsock', import.meta.url));

/** The congestion control `ss` reports for the accepted side of a fresh connection to `port`. */
function acceptedCongestion(port: number): string {
  const out = execFileSync('ss', ['-tniH', 'state', 'established', 'sport', `= :${port}`], { encoding: 'utf8' });
  const m = /^\s*(\w+)\s+wscale/m.exec(out) ?? /\b(cubic|reno|bbr)\b/.exec(out);
  assert.ok(m, `no congestion control in ss output: ${out}`);
  return m[1]!;
}

async function withListener(fn: (server: net.Server, fd: number, port: number) => Promise<void>): Promise<void> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    await fn(server, fd, (server.address() as net.AddressInfo).port);
  } finally {
    server.close();
  }
}

function runHelper(fd: number, ...args: string[]) {
  return spawnSync(BINARY, ['transparent', '3', ...args], { stdio: ['ignore', 'pipe', 'pipe', fd], encoding: 'utf8' });
}

async function connectAndRead(server: net.Server, port: number): Promise<string> {
  const accepted = once(server, 'connection');
  const client = net.connect(port, '127.0.0.1');
  const [sock] = (await accepted) as [net.Socket];
  try {
    return acceptedCongestion(port);
  } finally {
    client.destroy();
    sock.destroy();
  }
}

test('the first available congestion control is set on the listener and inherited by accepted connections', async () => {
  await withListener(async (server, fd, port) => {
    const r = runHelper(fd, '--congestion', 'no-such-cc,reno');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'reno');
    assert.match(r.stderr, /no-such-cc/);
    assert.equal(await connectAndRead(server, port), 'reno');
  });
});

test('none available: a warning, exit 0, the host default stays', async () => {
  await withListener(async (server, fd, port) => {
    const hostDefault = execFileSync('sysctl', ['-n', 'net.ipv4.tcp_congestion_control'], { encoding: 'utf8' }).trim();
    const r = runHelper(fd, '--congestion', 'no-such-cc');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /warning: none of the congestion controls/);
    assert.equal(await connectAndRead(server, port), hostDefault);
  });
});

test('bad arguments and descriptors are refused', async () => {
  await withListener(async (_server, fd) => {
    assert.equal(runHelper(fd, '--congestion').status, 2);
    assert.equal(runHelper(fd, '--bogus', 'cubic').status, 2);
    assert.equal(runHelper(fd, '--congestion', 'x'.repeat(300)).status, 0, 'an over-long list is a warning, not a crash');
  });
  const notSocket = spawnSync(BINARY, ['transparent', '0'], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  assert.equal(notSocket.status, 2);
});
