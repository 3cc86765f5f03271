/**
 * Everyday workloads that must keep working under the seccomp allowlist and dropped
 * capabilities: threads, processes, sockets on lo, shared-memory semaphores, a compiler.
 * Each prints fixed lines, so the test compares output exactly.
 */

export const PYTHON_WORKLOAD = `
import asyncio, multiprocessing, os, socket, subprocess, tempfile, threading
t = threading.Thread(target=lambda: None); t.start(); t.join(); print('thread ok')
assert subprocess.run(['/bin/true']).returncode == 0; print('subprocess ok')
a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'; print('socketpair ok')
with multiprocessing.Pool(2) as pool:
    assert pool.map(abs, [-1, -2]) == [1, 2]
print('multiprocessing ok')
async def echo():
    srv = await asyncio.start_server(lambda r, w: (w.write(b'hi'), w.close()), '127.0.0.1', 0)
    r, w = await asyncio.open_connection('127.0.0.1', srv.sockets[0].getsockname()[1])
    data = await r.read(2); w.close(); srv.close(); return data
assert asyncio.run(echo()) == b'hi'; print('tcp on lo ok')
with tempfile.NamedTemporaryFile() as f:
    f.write(b'x'); f.flush(); os.fsync(f.fileno())
print('fsync ok')
`;

export const NODE_WORKLOAD = `
const { Worker } = require('node:worker_threads');
const cp = require('node:child_process');
const net = require('node:net');
(async () => {
  const m = await new Promise((r) => new Worker('require("node:worker_threads").parentPort.postMessage(42)', { eval: true }).once('message', r));
  console.log('worker ' + m);
  console.log('spawn ' + cp.spawnSync('/bin/true').status);
  const srv = net.createServer((s) => s.end('hi'));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const data = await new Promise((r) => net.connect(srv.address().port, '127.0.0.1').on('data', r));
  srv.close();
  console.log('tcp on lo ' + data);
  await require('node:fs/promises').writeFile('/tmp/airlock-node', 'x');
  console.log('fs ' + require('node:fs').readFileSync('/tmp/airlock-node', 'utf8'));
  console.log('random ' + require('node:crypto').randomBytes(4).length);
})();
`;

export const C_WORKLOAD = `
#include <pthread.h>
#include <stdio.h>
static void *run(void *arg) { return arg; }
int main(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, run, NULL) != 0) return 1;
  pthread_join(t, NULL);
  puts("compiled program ok");
  return 0;
}
`;
