/**
 * The "test internet": network namespaces on this machine holding the project's own HTTP,
 * HTTPS, DNS and TCP servers on documentation-range addresses, plus canaries on addresses
 * that egress control must never reach. Nothing here sends a packet off this machine: the
 * host only gains on-link routes to the fixture's own /24 and /30 and two /32 canary routes.
 *
 *   host  alt-<id> 203.0.113.254/24  ──veth──  airlock-tnet-<id>  eth0 203.0.113.1/24
 *                                                 + .10 .11 .12 (HTTP 80/8080, HTTPS 443/8443)
 *                                                 + .20 (banner TCP 2222)  + .53 (DNS 53 UDP+TCP)
 *   host  alc-<id> 198.51.100.1/30   ──veth──  airlock-tcan-<id>  eth0 198.51.100.2/30
 *         routes 10.254.254.1/32, 169.254.77.77/32 via .2          + 10.254.254.1, 169.254.77.77
 *                                                 (canary servers + an nftables set of every packet)
 *   host  127.0.0.1:<ephemeral>  loopback canary, in this process
 *
 * One fixture at a time per host (the addresses are fixed): /run/airlock-tnet.lock.
 */
import { spawn, execFileSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { isIpv4, type ServerMessage, type ServersConfig, type ServiceSpec } from './net-fixture-servers.js';

export interface CanaryHit {
  address: string;
  port: number;
  from: string;
}

export interface ServerLogEntry {
  address: string;
  port: number;
  from: string;
  proto: 'http' | 'https' | 'tcp';
  host?: string;
}

export interface TestInternet {
  /** 'IP:PORT' of the fixture's DNS server, to give the engine as its DNS upstream. */
  dnsUpstream: string;
  /** name → IPv4 the fixture's DNS answers. */
  records: Record<string, string>;
  /** PEM of the self-signed CA that signed the HTTPS servers' certificate (SANs: every name in records and *.w.test). */
  caPem: string;
  /** Connections (and any packet: TCP/UDP to any port, ICMP as port 0) the canaries got; must stay empty in every test. */
  canaryHits(): Promise<CanaryHit[]>;
  /** Forgets the canary hits so far (after a test reached a canary on purpose). */
  clearCanaryHits(): Promise<void>;
  /** Connections the internet servers accepted, one entry per connection, with the Host (HTTP) or SNI (HTTPS) they saw. */
  serverLog(): Promise<ServerLogEntry[]>;
  /**
   * Sets the TCP congestion control the internet's servers use for new connections (a sysctl of
   * their namespace, which otherwise inherits the host's default). The throughput benchmark
   * measures both the kernel's default (cubic) and a pacing one (bbr).
   */
  setServerCongestion(name: string): Promise<void>;
  /** A loopback canary on the host (127.0.0.1:loopbackCanaryPort) for names that resolve to 127.0.0.1. */
  loopbackCanaryPort: number;
  /** Removes every namespace, veth, route, process and temp dir it made; idempotent. */
  close(): Promise<void>;
}

export const INTERNET_HOST_IP = '203.0.113.254';
export const INTERNET_NS_IP = '203.0.113.1';
export const WEB_IPS = ['203.0.113.10', '203.0.113.11', '203.0.113.12'];
export const BANNER_IP = '203.0.113.20';
export const DNS_IP = '203.0.113.53';
export const CANARY_HOST_IP = '198.51.100.1';
export const CANARY_NS_IP = '198.51.100.2';
export const CANARY_IPS = ['10.254.254.1', '169.254.77.77'];

export const DEFAULT_RECORDS: Readonly<Record<string, string>> = Object.freeze({
  'a.test': '203.0.113.10',
  'b.test': '203.0.113.11',
  'x.w.test': '203.0.113.12',
  'y.w.test': '203.0.113.12',
  'w.test': '203.0.113.12',
  'ssh.test': BANNER_IP,
  'big.test': '203.0.113.10',
  'private.test': '10.254.254.1',
  'linklocal.test': '169.254.77.77',
  'loop.test': '127.0.0.1',
  'hostaddr.test': INTERNET_HOST_IP,
  'metadata.test': '169.254.77.77',
});

const LOCK_PATH = '/run/airlock-tnet.lock';
const TMP_PREFIX = 'airlock-tnet-';
const NS_RE = /^airlock-t(net|can)-[0-9a-f]{6}$/;
const LINK_RE = /^al[tc]-[0-9a-f]{6}$/;
const SERVERS_JS = fileURLToPath(new URL('./net-fixture-servers.js', import.meta.url));
const CANARY_TCP_PORTS = [22, 53, 80, 443, 2222, 8080, 8443];
const CANARY_UDP_PORTS = [53];
const READY_TIMEOUT_MS = 15_000;
const SYNC_TIMEOUT_MS = 5_000;
const NAME_RE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

// ---- running programs ----------------------------------------------------------------------

/** Runs a program (argument array) and returns its stdout; a non-zero exit throws with stderr. */
function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? signal}): ${err.trim() || out.trim()}`));
    });
  });
}

const ip = (...args: string[]): Promise<string> => run('ip', args);
const linkExists = (name: string): boolean => existsSync(`/sys/class/net/${name}`);

/**
 * Deletes a veth end. Deleting the peer's namespace frees the pair in a kernel workqueue, so the
 * link may vanish between the check and the delete: a delete that fails while the link is gone
 * has nothing left to do.
 */
async function deleteLink(name: string): Promise<void> {
  if (!linkExists(name)) return;
  try {
    await ip('link', 'del', name);
  } catch (err) {
    if (linkExists(name)) throw err;
  }
}
const netnsExists = (name: string): boolean => existsSync(`/run/netns/${name}`);

// ---- the host-wide lock --------------------------------------------------------------------

interface LockOwner {
  pid: number;
  /** Start time of the pid (field 22 of /proc/<pid>/stat), so a reused pid is not mistaken for the owner. */
  start: string;
  token: string;
}

function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function readLock(): LockOwner | null {
  try {
    const v = JSON.parse(readFileSync(LOCK_PATH, 'utf8')) as Partial<LockOwner>;
    if (typeof v.pid === 'number' && typeof v.start === 'string' && typeof v.token === 'string') return v as LockOwner;
  } catch {
    /* missing or half-written: treated as stale */
  }
  return null;
}

function acquireLock(token: string): void {
  const me: LockOwner = { pid: process.pid, start: processStart(process.pid) ?? '', token };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(LOCK_PATH, 'wx', 0o644);
      try {
        writeSync(fd, JSON.stringify(me));
      } finally {
        closeSync(fd);
      }
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = readLock();
    if (owner && processStart(owner.pid) === owner.start) {
      const who = owner.pid === process.pid ? 'this process' : `pid ${owner.pid}`;
      throw new Error(`another test internet is running (${who} holds ${LOCK_PATH}); fixtures share 203.0.113.0/24 and cannot run at once`);
    }
    // Its owner is gone (or the file never got its content): take it over.
    rmSync(LOCK_PATH, { force: true });
  }
  throw new Error(`could not take ${LOCK_PATH}`);
}

function releaseLock(token: string): void {
  if (readLock()?.token === token) rmSync(LOCK_PATH, { force: true });
}

// ---- leftovers -----------------------------------------------------------------------------

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function fixtureServerPids(): number[] {
  const pids: number[] = [];
  for (const entry of safeReaddir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes('net-fixture-servers')) pids.push(Number(entry));
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

/** Every namespace, veth, route, server process, temp dir or lock of any fixture still on the host. */
export function testInternetLeftovers(): string[] {
  const left: string[] = [];
  for (const ns of safeReaddir('/run/netns')) if (/^airlock-t(net|can)-/.test(ns)) left.push(`netns ${ns}`);
  for (const link of safeReaddir('/sys/class/net')) if (/^al[tc]-/.test(link)) left.push(`link ${link}`);
  const routes = execFileSync('ip', ['-4', '-o', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  for (const line of routes.split('\n')) {
    if (/\bdev al[tc]-/.test(line) || CANARY_IPS.some((a) => line.startsWith(`${a} `) || line.includes(` ${a} `))) left.push(`route ${line.trim()}`);
  }
  for (const pid of fixtureServerPids()) left.push(`process ${pid}`);
  for (const d of safeReaddir(tmpdir())) if (d.startsWith(TMP_PREFIX)) left.push(`dir ${join(tmpdir(), d)}`);
  if (existsSync(LOCK_PATH)) left.push(`lock ${LOCK_PATH}`);
  return left;
}

/**
 * Removes what a fixture whose process died left behind. Only called while holding the lock,
 * so nothing of the names it matches belongs to a live fixture.
 */
async function removeStaleFixtures(): Promise<string[]> {
  const removed: string[] = [];
  for (const ns of safeReaddir('/run/netns').filter((n) => NS_RE.test(n))) {
    const pids = (await ip('netns', 'pids', ns)).split('\n').filter((p) => /^\d+$/.test(p));
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await ip('netns', 'del', ns);
    removed.push(`netns ${ns}`);
  }
  for (const link of safeReaddir('/sys/class/net').filter((n) => LINK_RE.test(n))) {
    await deleteLink(link);
    removed.push(`link ${link}`);
  }
  for (const d of safeReaddir(tmpdir()).filter((n) => n.startsWith(TMP_PREFIX))) {
    rmSync(join(tmpdir(), d), { recursive: true, force: true });
    removed.push(`dir ${d}`);
  }
  return removed;
}

// ---- certificates --------------------------------------------------------------------------

/** A fresh CA and a server certificate it signed for every name (P-256, 30 days). */
async function makeCertificates(dir: string, names: string[]): Promise<{ caPem: string; certFile: string; keyFile: string }> {
  const caKey = join(dir, 'ca.key');
  const caPem = join(dir, 'ca.pem');
  const keyFile = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const certFile = join(dir, 'server.pem');
  const ext = join(dir, 'server.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', caKey, '-out', caPem, '-days', '30', '-subj', '/CN=Airlock test internet CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await run('openssl', ['req', ...ec, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${names[0]}`]);
  writeFileSync(ext, [
    `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid,issuer',
    '',
  ].join('\n'));
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', caPem, '-CAkey', caKey, '-set_serial', `0x${randomBytes(8).toString('hex')}`,
    '-days', '30', '-extfile', ext, '-out', certFile]);
  return { caPem: readFileSync(caPem, 'utf8'), certFile, keyFile };
}

// ---- the servers inside a namespace --------------------------------------------------------

/** One net-fixture-servers process inside a namespace, and what it reported. */
class NamespaceServers {
  readonly conns: ServerLogEntry[] = [];
  readonly hits: CanaryHit[] = [];
  private stderr = '';
  private exitNote: string | null = null;
  private readonly exited: Promise<void>;
  private readonly syncs = new Map<number, () => void>();
  private nextSync = 0;
  private onReady: ((err?: Error) => void) | null = null;

  private constructor(readonly label: string, readonly child: ChildProcessWithoutNullStreams) {
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitNote = `exited (${code ?? signal})${this.stderr.trim() ? `: ${this.stderr.trim()}` : ''}`;
        this.onReady?.(new Error(`${label} servers ${this.exitNote}`));
        for (const done of this.syncs.values()) done();
        this.syncs.clear();
        resolve();
      });
    });
    child.on('error', (e) => {
      this.stderr += `spawn: ${e.message}\n`;
    });
    // A write to servers that just died fails with EPIPE; their exit is reported instead.
    child.stdin.on('error', () => {});
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (this.stderr.length < 65536) this.stderr += d;
    });
    createInterface({ input: child.stdout }).on('line', (line) => this.receive(line));
    // The test process may exit without close(): the exit hook cleans up, so these must not
    // keep it alive. Every wait below holds its own timer, which keeps the loop alive.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as net.Socket).unref?.();
  }

  /** Starts the servers in namespace ns; resolves once all listen. */
  static start(label: string, ns: string, config: ServersConfig): { servers: NamespaceServers; ready: Promise<void> } {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, SERVERS_JS, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const servers = new NamespaceServers(label, child);
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => servers.onReady?.(new Error(`${label} servers not ready after ${READY_TIMEOUT_MS} ms: ${servers.stderr.trim()}`)), READY_TIMEOUT_MS);
      servers.onReady = (err) => {
        clearTimeout(timer);
        servers.onReady = null;
        if (err) reject(err);
        else resolve();
      };
    });
    return { servers, ready };
  }

  private receive(line: string): void {
    let msg: ServerMessage;
    try {
      msg = JSON.parse(line) as ServerMessage;
    } catch {
      this.stderr += `bad line: ${line}\n`;
      return;
    }
    switch (msg.type) {
      case 'ready':
        this.onReady?.();
        break;
      case 'fatal':
        this.onReady?.(new Error(`${this.label} servers failed: ${msg.message}`));
        break;
      case 'conn': {
        const { proto, address, port, from, host } = msg;
        this.conns.push({ address, port, from, proto, ...(host !== undefined ? { host } : {}) });
        break;
      }
      case 'hit':
        this.hits.push({ address: msg.address, port: msg.port, from: msg.from });
        break;
      case 'synced':
        this.syncs.get(msg.id)?.();
        this.syncs.delete(msg.id);
        break;
    }
  }

  /** Resolves once every record the servers wrote before now has arrived. */
  sync(): Promise<void> {
    if (this.exitNote) return Promise.reject(new Error(`${this.label} servers ${this.exitNote}`));
    const id = ++this.nextSync;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.syncs.delete(id);
        reject(new Error(`${this.label} servers did not answer a sync within ${SYNC_TIMEOUT_MS} ms`));
      }, SYNC_TIMEOUT_MS);
      this.syncs.set(id, () => {
        clearTimeout(timer);
        if (this.exitNote) reject(new Error(`${this.label} servers ${this.exitNote}`));
        else resolve();
      });
      this.child.stdin.write(`${JSON.stringify({ op: 'sync', id })}\n`);
    });
  }

  /** Closes its stdin (it exits on that), kills it if it lingers, and waits for it. */
  async stop(): Promise<void> {
    if (this.exitNote === null) {
      this.child.stdin.end();
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(timer);
    }
  }

  killSync(): void {
    if (this.exitNote === null) this.child.kill('SIGKILL');
  }
}

// ---- undo stack ----------------------------------------------------------------------------

/** What was made, to be unmade in reverse order, by close() or by a failed start. */
class Undo {
  private readonly steps: Array<{ what: string; async: () => Promise<void>; sync: () => void }> = [];

  add(what: string, async: () => Promise<void>, sync: () => void = () => {}): void {
    this.steps.push({ what, async, sync });
  }

  async runAll(): Promise<void> {
    const errors: Error[] = [];
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      try {
        await step.async();
      } catch (e) {
        errors.push(new Error(`removing ${step.what}: ${(e as Error).message}`));
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
  }

  /** Best effort at process exit, where nothing can be awaited. */
  runAllSync(): void {
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      try {
        step.sync();
      } catch {
        /* keep going: the next start removes what is left */
      }
    }
  }
}

const live = new Set<Undo>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const undo of live) undo.runAllSync();
  });
}

function ipSync(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function deleteLinkSync(name: string): void {
  if (!linkExists(name)) return;
  try {
    ipSync('link', 'del', name);
  } catch (err) {
    if (linkExists(name)) throw err;
  }
}

// ---- the fixture ---------------------------------------------------------------------------

function checkRecords(records: Record<string, string>): void {
  for (const [name, addr] of Object.entries(records)) {
    if (!NAME_RE.test(name)) throw new Error(`record name ${JSON.stringify(name)} is not a lower-case DNS name`);
    if (!isIpv4(addr)) throw new Error(`record ${name} → ${JSON.stringify(addr)} is not an IPv4 address`);
  }
}

/** Web servers run on the fixed addresses and on any other record address in the fixture's /24. */
function webAddresses(records: Record<string, string>): string[] {
  const reserved = new Set(['203.0.113.0', INTERNET_NS_IP, BANNER_IP, DNS_IP, INTERNET_HOST_IP, '203.0.113.255']);
  const extra = Object.values(records).filter((a) => a.startsWith('203.0.113.') && !reserved.has(a));
  return [...new Set([...WEB_IPS, ...extra])];
}

const CANARY_NFT = `
table inet airlock_canary {
  set hits { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags dynamic; size 65535; }
  set pings { type ipv4_addr . ipv4_addr; flags dynamic; size 65535; }
  chain input {
    type filter hook input priority 0; policy accept;
    ip daddr { ${CANARY_IPS.join(', ')} } meta l4proto { tcp, udp } update @hits { ip daddr . ip saddr . meta l4proto . th dport }
    ip daddr { ${CANARY_IPS.join(', ')} } meta l4proto icmp update @pings { ip daddr . ip saddr }
  }
}
`;

/** Every packet that reached a canary address, from the canary namespace's nftables sets. */
async function nftCanaryHits(ns: string): Promise<CanaryHit[]> {
  const hits: CanaryHit[] = [];
  for (const set of ['hits', 'pings']) {
    const out = JSON.parse(await ip('netns', 'exec', ns, 'nft', '-j', 'list', 'set', 'inet', 'airlock_canary', set)) as { nftables: Array<{ set?: { elem?: unknown[] } }> };
    for (const item of out.nftables) {
      for (const e of item.set?.elem ?? []) {
        const el = e as { concat?: unknown[]; elem?: { val?: { concat?: unknown[] } } };
        const parts = el.concat ?? el.elem?.val?.concat ?? [];
        hits.push({ address: String(parts[0]), from: String(parts[1]), port: set === 'hits' ? Number(parts[3]) : 0 });
      }
    }
  }
  return hits;
}

/**
 * `waitForLockMs`: how long to wait while another live process holds the fixture (default
 * AIRLOCK_TNET_WAIT_MS, else 10 minutes), so test files that each need it queue instead of
 * failing; 0 fails at once.
 */
export async function startTestInternet(opts: { records?: Record<string, string>; waitForLockMs?: number } = {}): Promise<TestInternet> {
  const records = { ...DEFAULT_RECORDS, ...(opts.records ?? {}) };
  checkRecords(records);
  const id = randomBytes(3).toString('hex');
  const token = randomBytes(8).toString('hex');
  const waitMs = opts.waitForLockMs ?? Number(process.env['AIRLOCK_TNET_WAIT_MS'] ?? 600_000);
  for (const deadline = Date.now() + waitMs; ;) {
    try {
      acquireLock(token);
      break;
    } catch (e) {
      // Held by another live process: wait for it (its own process never waits on itself).
      if (!/another test internet is running \(pid/.test(String(e)) || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  const undo = new Undo();
  undo.add(LOCK_PATH, async () => releaseLock(token), () => releaseLock(token));
  live.add(undo);
  installExitHook();
  try {
    const stale = await removeStaleFixtures();
    if (stale.length > 0) console.warn(`net-fixture: removed what a dead fixture left: ${stale.join(', ')}`);

    const dir = mkdtempSync(join(tmpdir(), TMP_PREFIX));
    undo.add(dir, async () => rmSync(dir, { recursive: true, force: true }), () => rmSync(dir, { recursive: true, force: true }));
    const names = [...Object.keys(records), '*.w.test'];
    const tls = await makeCertificates(dir, [...new Set(names)]);

    // Loopback canary, in this process.
    const loopbackHits: CanaryHit[] = [];
    const loopback = net.createServer((s) => {
      loopbackHits.push({ address: '127.0.0.1', port: s.localPort ?? 0, from: s.remoteAddress ?? '' });
      s.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      loopback.once('error', reject);
      loopback.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
    });
    loopback.unref();
    undo.add('loopback canary', () => new Promise((resolve) => loopback.close(() => resolve())), () => loopback.close());
    const loopbackCanaryPort = (loopback.address() as net.AddressInfo).port;

    // Namespaces and links. Each is registered for removal right after it exists.
    const addNetns = async (ns: string): Promise<void> => {
      await ip('netns', 'add', ns);
      undo.add(`netns ${ns}`, async () => {
        if (netnsExists(ns)) await ip('netns', 'del', ns);
      }, () => {
        if (netnsExists(ns)) ipSync('netns', 'del', ns);
      });
    };
    const addVeth = async (hostSide: string, ns: string): Promise<void> => {
      await ip('link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      // Deleting one end deletes both, and every route through it.
      undo.add(`link ${hostSide}`, () => deleteLink(hostSide), () => deleteLinkSync(hostSide));
    };

    const inetNs = `airlock-tnet-${id}`;
    const inetLink = `alt-${id}`;
    const webIps = webAddresses(records);
    await addNetns(inetNs);
    await addVeth(inetLink, inetNs);
    await ip('addr', 'add', `${INTERNET_HOST_IP}/24`, 'dev', inetLink);
    await ip('link', 'set', inetLink, 'up');
    await ip('-n', inetNs, 'link', 'set', 'lo', 'up');
    await ip('-n', inetNs, 'addr', 'add', `${INTERNET_NS_IP}/24`, 'dev', 'eth0');
    for (const a of [...webIps, BANNER_IP, DNS_IP]) await ip('-n', inetNs, 'addr', 'add', `${a}/32`, 'dev', 'eth0');
    await ip('-n', inetNs, 'link', 'set', 'eth0', 'up');
    // Replies to any source go back to the host, like a real server's would; the host does
    // not forward, so they can only reach the host's own addresses.
    await ip('-n', inetNs, 'route', 'add', 'default', 'via', INTERNET_HOST_IP);

    const canNs = `airlock-tcan-${id}`;
    const canLink = `alc-${id}`;
    await addNetns(canNs);
    await addVeth(canLink, canNs);
    await ip('addr', 'add', `${CANARY_HOST_IP}/30`, 'dev', canLink);
    await ip('link', 'set', canLink, 'up');
    await ip('-n', canNs, 'link', 'set', 'lo', 'up');
    await ip('-n', canNs, 'addr', 'add', `${CANARY_NS_IP}/30`, 'dev', 'eth0');
    for (const a of CANARY_IPS) await ip('-n', canNs, 'addr', 'add', `${a}/32`, 'dev', 'eth0');
    await ip('-n', canNs, 'link', 'set', 'eth0', 'up');
    await ip('-n', canNs, 'route', 'add', 'default', 'via', CANARY_HOST_IP);
    const nftFile = join(dir, 'canary.nft');
    writeFileSync(nftFile, CANARY_NFT);
    await ip('netns', 'exec', canNs, 'nft', '-f', nftFile);
    // Exactly the canary /32s go to the canary namespace (they die with the link).
    for (const a of CANARY_IPS) await ip('route', 'add', `${a}/32`, 'via', CANARY_NS_IP, 'dev', canLink, 'src', CANARY_HOST_IP);

    // Servers.
    const inetServices: ServiceSpec[] = [
      ...webIps.flatMap((address): ServiceSpec[] => [
        { kind: 'http', address, port: 80 }, { kind: 'http', address, port: 8080 },
        { kind: 'https', address, port: 443 }, { kind: 'https', address, port: 8443 },
      ]),
      { kind: 'banner', address: BANNER_IP, port: 2222 },
      { kind: 'dns-udp', address: DNS_IP, port: 53 },
      { kind: 'dns-tcp', address: DNS_IP, port: 53 },
    ];
    const canaryServices: ServiceSpec[] = CANARY_IPS.flatMap((address): ServiceSpec[] => [
      ...CANARY_TCP_PORTS.map((port): ServiceSpec => ({ kind: 'canary-tcp', address, port })),
      ...CANARY_UDP_PORTS.map((port): ServiceSpec => ({ kind: 'canary-udp', address, port })),
    ]);
    const inet = NamespaceServers.start('internet', inetNs, { services: inetServices, records, tls: { certFile: tls.certFile, keyFile: tls.keyFile } });
    undo.add('internet servers', () => inet.servers.stop(), () => inet.servers.killSync());
    const canary = NamespaceServers.start('canary', canNs, { services: canaryServices, records: {} });
    undo.add('canary servers', () => canary.servers.stop(), () => canary.servers.killSync());
    await Promise.all([inet.ready, canary.ready]);

    let closing: Promise<void> | null = null;
    return {
      dnsUpstream: `${DNS_IP}:53`,
      records,
      caPem: tls.caPem,
      loopbackCanaryPort,
      async canaryHits() {
        await canary.servers.sync();
        const all = [...loopbackHits, ...canary.servers.hits, ...(await nftCanaryHits(canNs))];
        const seen = new Set<string>();
        return all.filter((h) => {
          const key = `${h.address}:${h.port}:${h.from}`;
          if (seen.has(key)) return false;
          seen.add(key);
          return true;
        });
      },
      async clearCanaryHits() {
        await canary.servers.sync();
        loopbackHits.length = 0;
        canary.servers.hits.length = 0;
        await ip('netns', 'exec', canNs, 'nft', 'flush', 'set', 'inet', 'airlock_canary', 'hits');
        await ip('netns', 'exec', canNs, 'nft', 'flush', 'set', 'inet', 'airlock_canary', 'pings');
      },
      async setServerCongestion(name: string) {
        if (!/^[a-z0-9_]{1,15}$/.test(name)) throw new Error(`not a congestion control name: ${name}`);
        await ip('netns', 'exec', inetNs, 'sysctl', '-q', '-w', `net.ipv4.tcp_congestion_control=${name}`);
      },
      async serverLog() {
        await inet.servers.sync();
        return inet.servers.conns.map((c) => ({ ...c }));
      },
      close() {
        closing ??= (async () => {
          try {
            await undo.runAll();
          } finally {
            live.delete(undo);
          }
        })();
        return closing;
      },
    };
  } catch (e) {
    try {
      await undo.runAll();
    } catch (cleanupError) {
      throw new AggregateError([e, cleanupError], `test internet failed to start (${(e as Error).message}) and to clean up (${(cleanupError as Error).message})`);
    } finally {
      live.delete(undo);
    }
    throw e;
  }
}
