import { connect } from 'node:net';

/**
 * One QEMU Machine Protocol exchange: connect to the VM's QMP socket, leave capabilities
 * negotiation, run one command, close. A connection per command keeps no state between
 * engine calls (and works for an engine that adopted the VM after a restart).
 */
export async function qmp(socketPath: string, command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buf = '';
    let stage = 0; // 0: greeting, 1: capabilities answer, 2: command answer
    const timer = setTimeout(() => fail(new Error(`QMP ${command}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const fail = (e: Error) => { clearTimeout(timer); sock.destroy(); reject(e); };
    sock.on('error', fail);
    sock.on('close', () => fail(new Error(`QMP ${command}: connection closed`)));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      if (buf.length > 4 * 1024 * 1024) return fail(new Error('QMP: answer too large'));
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return fail(new Error('QMP: bad JSON'));
        }
        if ('event' in msg) continue;
        if (stage === 0 && 'QMP' in msg) {
          stage = 1;
          sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if (stage === 1) {
          if ('error' in msg) return fail(new Error(`QMP capabilities: ${JSON.stringify(msg['error'])}`));
          stage = 2;
          sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
        } else if (stage === 2) {
          clearTimeout(timer);
          sock.removeAllListeners('close');
          sock.end();
          if ('error' in msg) return reject(new Error(`QMP ${command}: ${JSON.stringify(msg['error'])}`));
          return resolve(msg['return']);
        }
      }
    });
  });
}
