import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentLink, type AgentExit } from './agent/agent-link.js';
import { EventLog } from './audit/event-log.js';
import { loadAuditSigner, type AuditSigner } from './audit/signing-key.js';
import type { VerifyResult } from './audit/chain-verifier.js';
import { buildEvidenceBundle, type ExportSelection } from './audit/evidence-bundle.js';
import { DEFAULT_DATA_DIR, HOST_SOCKET_NAME, SANDBOX_ID_BASE } from './constants.js';
import { findExecutable, runDoctor } from './doctor.js';
import type {
  AirlockEngine, Caller, DoctorCheck, EventFilter, FileStat, ListFilter, TemplateInfo,
} from './engine-api.js';
import { AirlockError, badRequest, conflict, notFound } from './errors.js';
import { cgroupMode, childCgroups, removeCgroup } from './runtime/cgroups.js';
import { cgroupsPathFor, ContainerDriver } from './runtime/container-driver.js';
import { GvisorDriver } from './runtime/gvisor-driver.js';
import { MicrovmDriver } from './runtime/microvm-driver.js';
import { rootfsHelper, rootfsPaths } from './runtime/rootfs.js';
import type { RuntimeDriver, SandboxLaunch } from './runtime/driver.js';
import { mapAgentError } from './sandbox/agent-errors.js';
import { parseExec } from './sandbox/exec-schema.js';
import { defaultShell, parsePtyOptions, startPtySession, type PtyOptions, type PtySession } from './sandbox/pty-session.js';
import { parseSpec, MAX_TIMEOUT_SECONDS } from './sandbox/spec.js';
import { DiskWatch } from './storage/disk-watch.js';
import { MountPolicyChecker, PolicyDeniedError, type MountPolicy } from './storage/mount-policy.js';
import { RuntimePolicyChecker, type RuntimePolicy } from './sandbox/runtime-policy.js';
import { StoragePool } from './storage/storage-pool.js';
import { VolumeStore } from './storage/volumes.js';
import { assertTransition, isLive, isTerminal } from './sandbox/state-machine.js';
import { openDb, type Db } from './store/db.js';
import { KeyRepository } from './store/key-repo.js';
import { Governance } from './tenants/governance.js';
import { ApprovalService, type EgressAnswer } from './approvals/approval-service.js';
import type { ApprovalDecisionInput, ApprovalFilter, ApprovalInfo, ApprovalOptions, ApprovalSubject } from './approvals/types.js';
import { outsideCeiling } from './policy/egress-cover.js';
import { egressRule } from './policy/evaluate.js';
import { parseEgressRule } from './network/egress-policy.js';
import { grantKey } from './policy/approval.js';
import { guardCallerMethods, isAdmin, requireAdmin } from './tenants/access.js';
import { BlobStore } from './records/blob-store.js';
import { ExecRecordRepository, type ExecRecord, type RecordedStream } from './records/exec-records.js';
import { buildHistory, type HistoryEntry } from './records/history.js';
import { DetectorEngine, detectorEnabled } from './detectors/detector-engine.js';
import { FileChangeTracker, type FileChanges } from './telemetry/file-changes.js';
import { guestLayerBaseline, guestLayerChanges } from './telemetry/guest-layer.js';
import { collectStrace } from './telemetry/syscall-trace.js';
import { CredentialReadWatch } from './telemetry/credential-reads.js';
import { EngineMetering } from './metering/engine-metering.js';
import type { PriceSheet, UsageQuery, UsageReport } from './metering/types.js';
import type { ApiKeyInfo, CreatedApiKey, CreateKeyInput, PolicyTestInput, PolicyTestResult, PolicyVersionInfo, TenantInfo } from './engine-api.js';
import { SqliteSandboxRepository, toSandboxInfo, type SandboxRecord, type SandboxRepository } from './store/sandbox-repo.js';
import { TemplateStore } from './template/template-store.js';
import { buildTemplate, importTemplate, removeTemplate } from './template/index.js';
import type { TemplateBuildOptions, TemplateImportOptions } from './engine-api.js';
import type { Readable } from 'node:stream';
import type {
  AuditEvent, ExecHandlers, ExecReason, ExecRequest, ExecResult, FileEntry, ProcessInfo,
  RuntimeName, SandboxInfo, SandboxSpec, SandboxSpecInput, SandboxState,
} from './types.js';
import type { CreateVolumeInput, VolumeInfo } from './types.js';
import { RUNTIME_ORDER } from './types.js';
import type { RequestOptions } from './engine-api.js';
import { newExecId, newSandboxId, newToken, SANDBOX_ID_RE } from './util/ids.js';
import { processAlive, processStartTime } from './util/proc.js';
import { listOutputs, tarOutputs } from './files/outputs.js';
import * as sandboxFiles from './files/sandbox-files.js';
import type { FileData, FileWatchEvent, FileWatchHandle, OutputsListing } from './files/types.js';
import { DEFAULT_OUTPUT_PATH, firstIssue, networkPolicySchema } from './sandbox/spec.js';
import type { NetworkLease } from './network/address-pool.js';
import { NetworkManager } from './network/network-manager.js';
import { AirlockCa } from './secrets/airlock-ca.js';
import { CA_BUNDLE_ENV, SANDBOX_CA_BUNDLE, sandboxCaBundle } from './secrets/ca-bundle.js';
import { newPlaceholder } from './secrets/placeholders.js';
import { SecretBroker, type SandboxSecret } from './secrets/secret-broker.js';
import { SecretStore, type SecretInfo, type SetSecretInput } from './secrets/secret-store.js';
import type { NetworkPolicy } from './types.js';

export interface EngineOptions {
  dataDir?: string;
  /** Defaults to $AIRLOCK_TEMPLATES_DIR, else <dataDir>/templates, else /var/lib/airlock/templates. */
  templatesDir?: string;
  agentBinary?: string;
  dnsUpstream?: string;
  /** How long a new sandbox's agent may take to dial in. */
  startTimeoutMs?: number;
  /**
   * Disk all sandbox layers and volumes of this data dir may claim together (default 64), never
   * more than half the host's free space when the data dir was made.
   */
  storageSizeGiB?: number;
  /** What host paths sandboxes may bind (default: anything outside Airlock's own dirs, rw allowed). */
  mountPolicy?: MountPolicy;
  /** Which isolation tiers sandboxes may use (default: any; a spec naming none gets container). */
  runtimePolicy?: RuntimePolicy;
  log?: (level: 'info' | 'warn' | 'error', msg: string, data?: Record<string, unknown>) => void;
  /** Metering price sheet (docs/metering.md); fields left out keep their defaults. */
  prices?: Partial<PriceSheet>;
  /** How often live sandboxes' cgroups are sampled for usage (default 5000 ms). */
  usageSampleMs?: number;
  /** Where a policy says `ask` (docs/approvals.md): timeout, webhook and its secret, pending limits. */
  approvals?: ApprovalOptions;
  /**
   * The key that encrypts secrets at rest (docs/secrets.md): default $AIRLOCK_SECRETS_KEY, else
   * <dataDir>/secrets.key; made 0600 on first use. Put it on another volume than the database.
   */
  secretsKeyFile?: string;
  /**
   * The ed25519 key that signs audit checkpoints (docs/audit.md): default $AIRLOCK_AUDIT_KEY, else
   * <dataDir>/audit-signing.key; made 0600 on first use. Keep it off the database's volume.
   */
  auditKeyFile?: string;
  /** Events between signed checkpoints (default 1000). */
  auditCheckpointEvery?: number;
  /** PEM of a CA that secret hosts' certificates may chain to, besides the public roots (a private API, tests). */
  secretsUpstreamCa?: string;
  /** Egress control settings (docs/network.md); every field has a default. */
  network?: {
    /** Sandbox link addresses, one /30 each (default 10.213.0.0/16). */
    addressPool?: string;
    /** Replaces the default refused destination ranges (loopback, link-local, RFC 1918, CGNAT, ULA, multicast...). */
    blockedRanges?: string[];
    /** Port on each sandbox's gateway where the HTTP(S)_PROXY-style proxy answers (default 3128). */
    explicitProxyPort?: number;
  };
}

/** A sandbox without network gets a resolver file that names none: lookups fail at once. */
const NO_NETWORK_RESOLV_CONF = '# Airlock: this sandbox has no network (no allowlist), so no resolver.\n';

/** Output kept per stream for a non-streaming exec answer. */
export const EXEC_CAPTURE_LIMIT = 16 * 1024 * 1024;
const MAX_FILE_READ = 256 * 1024 * 1024;
const DEFAULT_TENANT = 'default';
/** The agent redials every 250 ms once it has been disconnected for a second. */
const AGENT_REDIAL_WAIT_MS = 3000;

interface LiveSandbox {
  id: string;
  /** Never changes: events on a hot path (one per egress connection) take it from here, not the store. */
  tenant: string;
  link: AgentLink;
  /** Set once the engine decided to end the sandbox; in-flight execs report it. */
  ending: { state: SandboxState; reason: string; execReason: ExecReason; done: Promise<void> } | null;
  execIds: Map<number, string>;
  templateEnv: string[];
}

const END_EVENT: Partial<Record<SandboxState, string>> = {
  stopped: 'sandbox.stopped', killed: 'sandbox.killed', expired: 'sandbox.expired', failed: 'sandbox.failed',
};

/** <dataDir>/templates; a data dir without templates of its own uses the machine's (they are immutable). */
function defaultTemplatesDir(dataDir: string): string {
  const own = join(dataDir, 'templates');
  return existsSync(own) || dataDir === DEFAULT_DATA_DIR ? own : join(DEFAULT_DATA_DIR, 'templates');
}

/**
 * runc serves cgroup v1 and hybrid hosts (crun 1.8 refuses hybrid); on a pure v2 host crun is
 * used when installed (faster, native v2). AIRLOCK_OCI_RUNTIME overrides the choice.
 */
function ociRuntime(): string {
  const forced = process.env.AIRLOCK_OCI_RUNTIME;
  if (forced) return forced;
  return cgroupMode() === 'v2' && findExecutable('crun') ? 'crun' : 'runc';
}

function defaultAgentBinary(): string {
  // packages/engine/dist/src/engine.js → <repo>/agent/build/airlock-agent. realpath: Node may
  // load this module through the node_modules/@airlock/engine workspace link.
  const here = dirname(realpathSync(fileURLToPath(import.meta.url)));
  return resolve(here, '../../../../agent/build/airlock-agent');
}

/**
 * The engine: sandbox lifecycle, exec, files, reaper and reconcile, over a runtime driver and
 * a SQLite store. No HTTP here; airlockd and the CLI are thin shells over this class.
 */
export class Engine implements AirlockEngine {
  readonly dataDir: string;
  readonly templatesDir: string;
  private readonly db: Db;
  /** Runs a function in a BEGIN IMMEDIATE transaction; built once (better-sqlite3 builds a wrapper per transaction() call). */
  private readonly immediateTx: (fn: () => void) => void;
  private readonly sandboxes: SandboxRepository;
  private readonly keys: KeyRepository;
  readonly events: EventLog;
  private readonly auditSigner: AuditSigner;
  private readonly templates: TemplateStore;
  private readonly drivers: Map<RuntimeName, RuntimeDriver>;
  private readonly live = new Map<string, LiveSandbox>();
  private readonly storage: StoragePool;
  private readonly volumes: VolumeStore;
  private readonly mountPolicy: MountPolicyChecker;
  private readonly runtimePolicy: RuntimePolicyChecker;
  /** Tenants, keys, policies and quotas (tenants/governance.ts). */
  private readonly governance: Governance;
  /** Requests waiting for a person's decision (approvals/approval-service.ts). */
  private readonly approvals: ApprovalService;
  /** Exec records and their output blobs (docs/records.md); detectors raising alert.* events. */
  private readonly blobs: BlobStore;
  private readonly execRecords: ExecRecordRepository;
  private readonly detectors: DetectorEngine;
  private readonly fileChanges = new FileChangeTracker();
  /** Opens of credential-like files by container sandboxes' processes, seen from the host (fanotify). */
  private readonly credentialReads: CredentialReadWatch;
  private readonly diskWatch: DiskWatch;
  private readonly metering: EngineMetering;
  private readonly network: NetworkManager;
  /** Tenants' secrets (encrypted) and the broker that swaps them in at the egress proxy. */
  private readonly secretStore: SecretStore;
  private readonly secretBroker: SecretBroker;
  private airlockCa: Promise<AirlockCa> | null = null;
  /** Serializes network changes per sandbox (PATCH against PATCH, PATCH against end). */
  private readonly networkOps = new Map<string, Promise<unknown>>();
  /** The pause or resume in progress per sandbox. */
  private readonly pauseOps = new Map<string, Promise<void>>();
  private readonly agentBinary: string;
  private readonly startTimeoutMs: number;
  private readonly log: NonNullable<EngineOptions['log']>;
  private readonly ownerPid = process.pid;
  private readonly ownerStart = processStartTime(process.pid);
  private reaper: NodeJS.Timeout | null = null;
  private closed = false;
  private reaping = false;

  private constructor(opts: EngineOptions) {
    this.dataDir = resolve(opts.dataDir ?? DEFAULT_DATA_DIR);
    this.templatesDir = resolve(opts.templatesDir ?? process.env.AIRLOCK_TEMPLATES_DIR ?? defaultTemplatesDir(this.dataDir));
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    sandboxTraversable(this.dataDir);
    sandboxTraversable(join(this.dataDir, 'sandboxes'));
    this.db = openDb(join(this.dataDir, 'airlock.db'));
    this.immediateTx = this.db.transaction((fn: () => void) => fn()).immediate;
    this.sandboxes = new SqliteSandboxRepository(this.db);
    this.keys = new KeyRepository(this.db);
    this.auditSigner = loadAuditSigner(resolve(opts.auditKeyFile ?? (process.env.AIRLOCK_AUDIT_KEY || join(this.dataDir, 'audit-signing.key'))));
    this.events = new EventLog(this.db, { signer: this.auditSigner, checkpointEvery: opts.auditCheckpointEvery });
    this.templates = new TemplateStore(this.templatesDir);
    this.agentBinary = opts.agentBinary ?? process.env.AIRLOCK_AGENT_BINARY ?? defaultAgentBinary();
    this.startTimeoutMs = opts.startTimeoutMs ?? 15_000;
    this.log = opts.log ?? (process.env.AIRLOCK_DEBUG
      ? (level, msg, data) => process.stderr.write(`airlock engine ${level}: ${msg} ${data ? JSON.stringify(data) : ''}\n`)
      : () => {});
    this.drivers = new Map<RuntimeName, RuntimeDriver>([['container', new ContainerDriver(this.dataDir, this.agentBinary, ociRuntime())]]);
    // gVisor where runsc is installed (scripts/setup-host.sh puts Debian 13's there).
    const runsc = process.env.AIRLOCK_RUNSC ?? findExecutable('runsc', ['/usr/local/bin/runsc']);
    if (runsc) this.drivers.set('gvisor', new GvisorDriver(this.dataDir, this.agentBinary, runsc));
    // QEMU microvms where QEMU, the guest kernel and the VM helpers are installed (setup-host.sh).
    const microvm = MicrovmDriver.create(this.dataDir, this.agentBinary);
    if (microvm instanceof MicrovmDriver) this.drivers.set('microvm', microvm);
    this.storage = StoragePool.open(this.dataDir, { sizeGiB: opts.storageSizeGiB });
    this.volumes = new VolumeStore({
      db: this.db, pool: this.storage, helper: rootfsHelper(this.agentBinary), events: this.events,
      sandboxes: this.sandboxes, tx: (fn) => this.tx(fn), log: this.log,
    });
    // Never bindable: the data dir, the templates, and the agent and rootfs helper binaries.
    // After every driver is registered: the policy's floor must be met by an installed tier.
    this.runtimePolicy = new RuntimePolicyChecker(opts.runtimePolicy, RUNTIME_ORDER.filter((r) => this.drivers.has(r)));
    this.secretStore = new SecretStore(this.db, resolve(opts.secretsKeyFile ?? (process.env.AIRLOCK_SECRETS_KEY || join(this.dataDir, 'secrets.key'))));
    this.mountPolicy = new MountPolicyChecker(opts.mountPolicy, [this.dataDir, this.templatesDir, dirname(this.agentBinary), this.secretStore.keyFile]);
    this.secretBroker = new SecretBroker({
      store: this.secretStore,
      ca: () => this.sandboxCa(),
      ...(opts.secretsUpstreamCa ? { upstreamCaPem: opts.secretsUpstreamCa } : {}),
      onEvent: (sandbox, type, data) => {
        if (this.closed) return;
        this.events.append({ tenant: this.tenantOf(sandbox), sandbox, type, data });
      },
    });
    this.governance = new Governance({
      db: this.db, events: this.events, keys: this.keys, tx: (fn) => this.tx(fn),
      operatorFloor: (t) => this.runtimePolicy.floorFor(t),
      operatorChoice: (t, r) => this.runtimePolicy.choose(t, r),
      available: () => this.runtimes(),
    });
    this.approvals = new ApprovalService({
      db: this.db, events: this.events, tx: (fn) => this.tx(fn), options: opts.approvals ?? {},
      policyOf: (t) => this.governance.effective(t).approvals, log: (level, msg, data) => this.log(level, msg, data),
    });
    this.blobs = new BlobStore(join(this.dataDir, 'blobs'), this.db);
    this.execRecords = new ExecRecordRepository(this.db);
    this.detectors = new DetectorEngine({
      events: this.events, policyOf: (t) => this.governance.effective(t).detectors, log: (level, msg, data) => this.log(level, msg, data),
    });
    this.detectors.start();
    this.credentialReads = new CredentialReadWatch({
      binary: join(dirname(this.agentBinary), 'airlock-fawatch'), events: this.events,
      tenantOf: (id) => this.sandboxes.get(id)?.tenant ?? null,
      enabled: (t) => detectorEnabled(this.governance.effective(t).detectors, 'credential_read'),
      log: (level, msg, data) => this.log(level, msg, data),
    });
    // Key scopes are checked in front of every method that takes a Caller.
    guardCallerMethods(this);
    this.network = new NetworkManager({
      dataDir: this.dataDir,
      helperDir: dirname(this.agentBinary),
      dnsUpstream: opts.dnsUpstream,
      addressPool: opts.network?.addressPool,
      blockedRanges: opts.network?.blockedRanges,
      explicitProxyPort: opts.network?.explicitProxyPort,
      askEgress: (sandbox, host, port) => this.askEgress(sandbox, host, port),
      broker: this.secretBroker,
      onEvent: (sandbox, type, data) => {
        if (this.closed) return;
        const tenant = this.tenantOf(sandbox);
        if (type !== 'net.connect') {
          this.events.append({ tenant, sandbox, type, data });
          return;
        }
        // The event and its byte accounting in one commit: one per connection on the proxy's
        // path, and the usage never disagrees with the audit log.
        this.tx(() => {
          this.events.append({ tenant, sandbox, type, data });
          this.metering.connectionEnded(sandbox, tenant, data);
        });
      },
      log: (level, msg, data) => this.log(level, msg, data),
    });
    this.metering = new EngineMetering({
      db: this.db, prices: opts.prices, sampleMs: opts.usageSampleMs, log: this.log,
      live: () => [...this.live.keys()].flatMap((id) => {
        const rec = this.sandboxes.get(id);
        return rec && isLive(rec.state) ? [this.metered(rec)] : [];
      }),
    });
    this.diskWatch = new DiskWatch((sandbox, data) => {
      const rec = this.sandboxes.get(sandbox);
      if (rec) this.events.append({ tenant: rec.tenant, sandbox, type: 'limit.disk', data: { ...data } });
    });
  }

  static async open(opts: EngineOptions = {}): Promise<Engine> {
    const engine = new Engine(opts);
    await engine.volumes.reattach();
    await engine.reconcile();
    engine.startReaper();
    return engine;
  }

  // ---- sandboxes -------------------------------------------------------------------------

  async createSandbox(caller: Caller, input: SandboxSpecInput, opts: RequestOptions = {}): Promise<SandboxInfo> {
    this.assertOpen();
    const tenant = caller.tenant ?? DEFAULT_TENANT;
    // Where the policy asks, this waits for the decision before anything is allocated, then
    // judges a fresh spec again: the policy (and below, the quotas) as they are once approved.
    let asked = parseSpec(input);
    const spec = await this.approvals.admit({
      tenant, sandbox: null, action: 'create', requestedBy: caller.keyId ?? null, ...(opts.signal ? { signal: opts.signal } : {}),
      describe: (asks) => this.approvalFacts(tenant, asks, asked),
    }, (granted) => {
      asked = parseSpec(input);
      try {
        asked.runtime = this.runtimePolicy.choose(tenant, (input as SandboxSpecInput | undefined)?.runtime);
      } catch (e) {
        if (e instanceof PolicyDeniedError) this.events.append({ tenant, sandbox: null, type: 'policy.denied', data: { what: 'runtime', ...e.detail } });
        throw e;
      }
      // Secret hosts join the allowlist before the policy judges it: its egress ceiling applies to them.
      this.governance.admitSpec(tenant, this.secretHostsInto(tenant, input, asked), asked, granted);
      return asked;
    });
    this.assertOpen();
    const driver = this.drivers.get(spec.runtime);
    if (!driver) {
      throw badRequest(`runtime ${spec.runtime} is not available on this installation (available: ${[...this.drivers.keys()].join(', ')})`, 'runtime');
    }
    if (spec.runtime === 'microvm') MicrovmDriver.checkSpec(spec);
    const wantsNetwork = spec.network.allow.length > 0;
    const template = this.templates.require(spec.template);
    // The microvm driver hands engine files to its guest in a 64 KiB envelope: a CA bundle does not fit.
    const secrets = this.placeholdersInto(tenant, spec);
    const caBundle = secrets.length > 0 ? sandboxCaBundle(template.layers, (await this.sandboxCa()).certPem) : null;
    // The template's working directory unless the caller chose one.
    if ((input as SandboxSpecInput | undefined)?.workdir === undefined) spec.workdir = template.workdir;
    try {
      spec.mounts = this.mountPolicy.check(spec.mounts);
    } catch (e) {
      if (e instanceof PolicyDeniedError) this.events.append({ tenant, sandbox: null, type: 'policy.denied', data: { what: 'mount', ...e.detail } });
      throw e;
    }
    spec.volumes = await this.volumes.prepare(tenant, spec.volumes);
    const blankLayer = await this.storage.blankLayer(spec.resources.diskMiB);
    if (!existsSync(this.agentBinary)) {
      throw new AirlockError('unavailable', `the sandbox agent binary is missing (${this.agentBinary}); run npm run build`);
    }

    const now = Date.now();
    const rec: SandboxRecord = {
      id: newSandboxId(),
      tenant,
      state: 'creating',
      spec,
      createdAt: now,
      startedAt: null,
      endedAt: null,
      expiresAt: now + spec.timeoutSeconds * 1000,
      reason: null,
      ownerPid: this.ownerPid,
      ownerStart: this.ownerStart,
      agentToken: newToken(),
    };
    let volumeBinds: SandboxLaunch['volumeBinds'] = [];
    try {
      this.tx(() => {
        // Checked in the transaction that records the sandbox: a concurrent create or delete sees it.
        this.governance.checkQuotas(tenant, spec);
        this.volumes.admit(spec.resources.diskMiB, 'sandbox');
        volumeBinds = this.volumes.checkAttach(tenant, spec.volumes);
        this.sandboxes.insert(rec);
        this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'sandbox.created', data: { runtime: spec.runtime, template: spec.template, resources: spec.resources, timeoutSeconds: spec.timeoutSeconds, network: spec.network, metadata: spec.metadata } });
      });
    } catch (e) {
      this.governance.noteRefusal(tenant, e);
      throw e;
    }

    const dir = join(this.dataDir, 'sandboxes', rec.id);
    const controlDir = join(dir, 'ctl');
    let link: AgentLink | null = null;
    let lease: NetworkLease | null = null;
    try {
      sandboxTraversable(dir);
      mkdirSync(controlDir, { mode: 0o755 });
      if (wantsNetwork) lease = this.network.allocate(rec.id);
      const resolvConf = join(dir, 'resolv.conf');
      writeFileSync(resolvConf, lease ? NetworkManager.resolvConf(lease) : NO_NETWORK_RESOLV_CONF, { mode: 0o644 });
      link = await AgentLink.listen(join(controlDir, HOST_SOCKET_NAME), rec.agentToken, { helloTimeoutMs: driver.agentHelloTimeoutMs });
      this.attach(rec.id, rec.tenant, link, template.env);
      const ready = link.waitConnected(this.startTimeoutMs);
      ready.catch(() => {}); // observed below; a failed start must not also be an unhandled rejection
      const engineBinds = [{ source: resolvConf, target: '/etc/resolv.conf', readOnly: true }];
      if (caBundle !== null) {
        // The template's CAs plus the Airlock CA; the broker is live before anything runs inside.
        const bundle = join(dir, 'ca-bundle.crt');
        writeFileSync(bundle, caBundle, { mode: 0o644 });
        engineBinds.push({ source: bundle, target: SANDBOX_CA_BUNDLE, readOnly: true });
        this.secretBroker.register(rec.id, tenant, secrets);
      }
      let netnsPath: string | undefined;
      if (lease && driver.networkBeforeStart) {
        // This runtime reads its interfaces once, at start: plumb a fresh namespace first.
        await this.network.attach(rec.id, lease, undefined, spec.network, { mtu: driver.linkMtu });
        netnsPath = NetworkManager.netnsPath(rec.id);
      }
      await driver.start({
        id: rec.id, spec, template, dir, controlDir, agentBinary: this.agentBinary, agentToken: rec.agentToken, ready, blankLayer, volumeBinds, engineBinds,
        ...(netnsPath ? { netnsPath } : {}),
        ...this.syscallTraceOf(rec),
      });
      await ready;
      // Before create returns, so the caller's first command is already watched.
      if (spec.runtime !== 'microvm') await this.credentialReads.watch(rec.id, tenant, rootfsPaths(dir).rootfs, { sentry: spec.runtime === 'gvisor' });
      if (lease && !driver.networkBeforeStart) {
        // Plumbed before create returns: no command of the caller runs before the rules exist.
        const pid = await driver.networkPid(rec.id);
        if (pid === null) throw new Error('the sandbox exited before its network could be set up');
        await this.network.attach(rec.id, lease, pid, spec.network, { mtu: driver.linkMtu });
      }
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.log('error', 'sandbox failed to start', { sandbox: rec.id, error: message });
      this.live.delete(rec.id);
      await link?.close().catch(() => {});
      await this.credentialReads.unwatch(rec.id);
      await driver.destroy(rec.id).catch(() => {});
      if (wantsNetwork) await this.network.teardown(rec.id, lease).catch(() => {});
      this.secretBroker.unregister(rec.id);
      this.finish(rec.id, 'failed', `failed to start: ${message}`);
      throw new AirlockError('internal', `sandbox failed to start: ${message}`);
    }
    const started = Date.now();
    this.tx(() => {
      this.sandboxes.update(rec.id, { state: 'running', startedAt: started });
      this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'sandbox.started', data: { startMs: started - now } });
    });
    return toSandboxInfo(this.sandboxes.get(rec.id)!);
  }

  /**
   * Changes a running sandbox's egress policy live. Fields left out keep their value; deny wins;
   * connections the new policy refuses are cut. Giving a sandbox without network an allowlist
   * plumbs its network now; an empty allowlist removes it.
   */
  async updateNetwork(caller: Caller, id: string, input: Partial<NetworkPolicy>, opts: RequestOptions = {}): Promise<SandboxInfo & { cut: number }> {
    const parsed = networkPolicySchema.safeParse(input ?? {});
    if (!parsed.success) {
      const { field, message } = firstIssue(parsed.error);
      throw badRequest(message, field);
    }
    const tenant = this.owned(caller, id).tenant;
    // Entries the policy asks about wait for a decision outside the per-sandbox queue (other
    // changes go on meanwhile), then the change is judged again against the sandbox as it is.
    return this.approvals.admit({
      tenant, sandbox: id, action: 'network', requestedBy: caller.keyId ?? null, ...(opts.signal ? { signal: opts.signal } : {}),
      describe: (asks) => {
        const cur = this.sandboxes.get(id)?.spec.network.allow ?? [];
        return this.approvalFacts(tenant, asks, null, (parsed.data.allow ?? []).filter((e) => !cur.includes(e)));
      },
    }, (granted) => this.changeNetwork(caller, id, () => parsed.data, granted));
  }

  /** One live egress change, queued behind the sandbox's others; `change` sees the policy it replaces. */
  private async changeNetwork(
    caller: Caller, id: string, change: (cur: NetworkPolicy) => Partial<NetworkPolicy>, granted: ReadonlySet<string>,
  ): Promise<SandboxInfo & { cut: number }> {
    const prev = this.networkOps.get(id) ?? Promise.resolve();
    const op = prev.catch(() => {}).then(async () => {
      const { rec } = this.running(caller, id);
      const cur = rec.spec.network;
      const p = change(cur);
      // The tenant's policy applies to live changes too: its egress ceiling, and its defaultDeny stays.
      const next: NetworkPolicy = this.governance.admitNetworkChange(rec.tenant, id, {
        allow: p.allow ?? cur.allow,
        deny: p.deny ?? cur.deny,
        ...((p.bandwidthMbps ?? cur.bandwidthMbps) !== undefined ? { bandwidthMbps: p.bandwidthMbps ?? cur.bandwidthMbps } : {}),
      }, cur.allow, granted);
      const driver = this.drivers.get(rec.spec.runtime)!;
      const resolvConf = join(this.dataDir, 'sandboxes', id, 'resolv.conf');
      let cut = 0;
      if (this.network.has(id) && next.allow.length > 0) {
        cut = await this.network.update(id, next, next.bandwidthMbps !== cur.bandwidthMbps);
      } else if (next.allow.length > 0) {
        if (driver.networkBeforeStart) {
          throw new AirlockError('policy_denied', `a ${rec.spec.runtime} sandbox gets its network when it is created; create it with network.allow`);
        }
        const lease = this.network.allocate(id);
        try {
          const pid = await driver.networkPid(id);
          if (pid === null) throw conflict(`sandbox ${id} is not running`);
          await this.network.attach(id, lease, pid, next, { mtu: driver.linkMtu });
        } catch (e) {
          await this.network.teardown(id, lease).catch(() => {});
          throw e;
        }
        // Same inode, new content: the sandbox's read-only bind shows it at once.
        writeFileSync(resolvConf, NetworkManager.resolvConf(lease));
      } else if (this.network.has(id) || cur.allow.length > 0) {
        writeFileSync(resolvConf, NO_NETWORK_RESOLV_CONF);
        await this.network.teardown(id);
      }
      const spec = { ...rec.spec, network: next };
      this.tx(() => {
        this.sandboxes.updateSpec(id, spec);
        this.events.append({ tenant: rec.tenant, sandbox: id, type: 'network.updated', data: { allow: next.allow, deny: next.deny, bandwidthMbps: next.bandwidthMbps ?? null, cut } });
      });
      return { ...toSandboxInfo(this.sandboxes.get(id)!), cut };
    });
    this.networkOps.set(id, op);
    try {
      return await op;
    } finally {
      if (this.networkOps.get(id) === op) this.networkOps.delete(id);
    }
  }

  getSandbox(caller: Caller, id: string): SandboxInfo {
    return toSandboxInfo(this.owned(caller, id));
  }

  listSandboxes(caller: Caller, filter: ListFilter = {}): SandboxInfo[] {
    const recs = this.sandboxes.list({ tenant: caller.tenant, state: filter.state });
    const meta = Object.entries(filter.metadata ?? {});
    return recs.filter((r) => meta.every(([k, v]) => r.spec.metadata[k] === v)).map(toSandboxInfo);
  }

  async killSandbox(caller: Caller, id: string): Promise<SandboxInfo> {
    const rec = this.owned(caller, id);
    if (isTerminal(rec.state)) throw conflict(`sandbox ${id} already ended (${rec.state})`);
    await this.end(id, 'killed', 'killed by request', 'killed');
    return toSandboxInfo(this.sandboxes.get(id)!);
  }

  async setSandboxTimeout(caller: Caller, id: string, timeoutSeconds: number, opts: RequestOptions = {}): Promise<SandboxInfo> {
    const rec = this.owned(caller, id);
    if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1 || timeoutSeconds > MAX_TIMEOUT_SECONDS) {
      throw badRequest(`timeoutSeconds: must be an integer from 1 to ${MAX_TIMEOUT_SECONDS}`, 'timeoutSeconds');
    }
    if (!isLive(rec.state)) throw conflict(`sandbox ${id} is ${rec.state}`);
    // Policy and quota ceilings bound the whole lifetime, counted from creation. Counted from
    // the request, not the decision: an approved lifetime is exactly the one that was shown.
    const asked = Date.now();
    const lifetime = Math.floor((asked - rec.createdAt) / 1000) + timeoutSeconds;
    await this.approvals.admit({
      tenant: rec.tenant, sandbox: id, action: 'timeout', requestedBy: caller.keyId ?? null, ...(opts.signal ? { signal: opts.signal } : {}),
      describe: () => ({ lifetimeSeconds: lifetime }),
    }, (granted) => this.governance.admitTimeout(rec.tenant, id, lifetime, granted));
    const now = this.owned(caller, id);
    if (!isLive(now.state)) throw conflict(`sandbox ${id} is ${now.state}`);
    const expiresAt = asked + timeoutSeconds * 1000;
    this.tx(() => {
      this.sandboxes.update(id, { expiresAt });
      this.events.append({ tenant: rec.tenant, sandbox: id, type: 'sandbox.timeout_changed', data: { timeoutSeconds, expiresAt: new Date(expiresAt).toISOString() } });
    });
    return toSandboxInfo(this.sandboxes.get(id)!);
  }

  /** The runtimes (isolation tiers) this host can run, weakest first. */
  runtimes(): RuntimeName[] {
    return RUNTIME_ORDER.filter((r) => this.drivers.has(r));
  }

  // ---- pause / resume --------------------------------------------------------------------

  /**
   * Freezes every process of a running sandbox (its memory, files and network stay; it uses no
   * CPU). Exec and file calls answer 409 until resume; an exec already running just waits, and
   * its own timeout does not tick while frozen. The lifetime (expiresAt) keeps counting: a paused
   * sandbox still holds its memory. Pausing a paused sandbox returns it unchanged.
   */
  async pauseSandbox(caller: Caller, id: string): Promise<SandboxInfo> {
    return this.pauseOrResume(caller, id, 'pause');
  }

  /** Thaws a paused sandbox; resuming a running one returns it unchanged. */
  async resumeSandbox(caller: Caller, id: string): Promise<SandboxInfo> {
    return this.pauseOrResume(caller, id, 'resume');
  }

  private async pauseOrResume(caller: Caller, id: string, verb: 'pause' | 'resume'): Promise<SandboxInfo> {
    const rec = this.owned(caller, id);
    const from: SandboxState = verb === 'pause' ? 'running' : 'paused';
    const to: SandboxState = verb === 'pause' ? 'paused' : 'running';
    if (rec.state === to) return toSandboxInfo(rec);
    if (rec.state !== from) throw conflict(`sandbox ${id} is ${rec.state}, cannot ${verb} it`);
    const live = this.live.get(id);
    if (!live || live.ending) {
      if (!live && rec.ownerPid && rec.ownerPid !== this.ownerPid && processAlive(rec.ownerPid, rec.ownerStart)) {
        throw conflict(`sandbox ${id} is managed by another Airlock process (pid ${rec.ownerPid}); talk to it through AIRLOCK_URL`);
      }
      throw conflict(`sandbox ${id} is ending`);
    }
    // One pause/resume at a time per sandbox; a second caller waits for the first and re-checks.
    const pending = this.pauseOps.get(id);
    if (pending) {
      await pending.catch(() => {});
      return this.pauseOrResume(caller, id, verb);
    }
    const driver = this.drivers.get(rec.spec.runtime)!;
    const op = (async () => {
      const t0 = Date.now();
      if (verb === 'pause') await driver.pause(id);
      else await driver.resume(id);
      const cur = this.sandboxes.get(id);
      // The sandbox may have ended (kill, expiry) while the runtime worked: that state wins.
      if (!cur || cur.state !== from || live.ending) return;
      this.tx(() => {
        this.sandboxes.update(id, { state: to });
        this.events.append({ tenant: rec.tenant, sandbox: id, type: verb === 'pause' ? 'sandbox.paused' : 'sandbox.resumed', data: { runtime: rec.spec.runtime, ms: Date.now() - t0 } });
      });
    })();
    this.pauseOps.set(id, op);
    try {
      await op;
    } catch (e) {
      throw new AirlockError('internal', `could not ${verb} sandbox ${id}: ${(e as Error).message}`);
    } finally {
      if (this.pauseOps.get(id) === op) this.pauseOps.delete(id);
    }
    return toSandboxInfo(this.sandboxes.get(id)!);
  }

  // ---- exec ------------------------------------------------------------------------------

  async exec(caller: Caller, id: string, reqIn: ExecRequest, handlers: ExecHandlers = {}): Promise<ExecResult> {
    const req = parseExec(reqIn);
    if (req.background) throw badRequest('background: use execBackground', 'background');
    const { rec, live } = await this.ready(caller, id);
    const driver = this.drivers.get(rec.spec.runtime)!;
    const before = driver.limitCounters(id);
    if (this.fileChangesOn(rec)) await this.fileChangesBaseline(rec).catch(() => {});
    const started = Date.now();
    const out = new Capture(EXEC_CAPTURE_LIMIT);
    const err = new Capture(EXEC_CAPTURE_LIMIT);
    let handle;
    try {
      handle = live.link.exec(this.agentSpec(rec, live, req, false), {
        onStdout: (b) => { out.push(b); handlers.onStdout?.(b); },
        onStderr: (b) => { err.push(b); handlers.onStderr?.(b); },
      });
    } catch (e) {
      throw mapAgentError(e);
    }
    const execId = newExecId(id, handle.channel);
    live.execIds.set(handle.channel, execId);
    const onAbort = () => handle.signal(9);
    handlers.signal?.addEventListener('abort', onAbort, { once: true });
    if (handlers.signal?.aborted) onAbort();
    if (req.stdin !== undefined) {
      handle.writeStdin(Buffer.from(req.stdin));
      handle.closeStdin();
    }
    let exit: { exitCode: number; reason: ExecReason; signal?: number };
    try {
      await handle.started;
      this.events.append({ tenant: rec.tenant, sandbox: id, type: 'exec.started', data: { execId, cmd: req.cmd, cwd: req.cwd ?? rec.spec.workdir, envNames: Object.keys(req.env ?? {}) } });
      const res = await handle.done;
      exit = this.classifyExit(rec, res, before, handlers.signal?.aborted ?? false);
    } catch (e) {
      const ending = live.ending;
      if (ending) {
        // Answer only once the sandbox's end is recorded, so a caller that looks sees it.
        await ending.done;
        exit = { exitCode: ending.execReason === 'timeout' ? 124 : 137, reason: ending.execReason };
      } else if ((e as Error).name === 'AgentDisconnectedError') {
        exit = { exitCode: 137, reason: 'sandbox_ended' };
      } else {
        throw mapAgentError(e);
      }
    } finally {
      handlers.signal?.removeEventListener('abort', onAbort);
      live.execIds.delete(handle.channel);
    }
    const ended = Date.now();
    const durationMs = ended - started;
    this.diskWatch.observe(id, rec.spec.resources.diskMiB, driver.diskUsage(id));
    // The layer is looked at first, so that the exec record, its output blobs (capped per policy),
    // exec.exited and file.changes commit in one transaction: one commit per exec.
    const changes = this.closed ? null : await this.fileChangesNow(rec);
    this.recordExec(rec, { execId, req, started, ended, exit, out, err, changes });
    const result: ExecResult = { exitCode: exit.exitCode, stdout: out.text(), stderr: err.text(), durationMs, reason: exit.reason };
    if (out.truncated || err.truncated) result.truncated = true;
    return result;
  }

  async execBackground(caller: Caller, id: string, reqIn: ExecRequest): Promise<{ pid: number; execId: string }> {
    const req = parseExec(reqIn);
    const { rec, live } = await this.ready(caller, id);
    const before = this.drivers.get(rec.spec.runtime)!.limitCounters(id);
    const started = Date.now();
    try {
      const handle = live.link.exec(this.agentSpec(rec, live, req, true));
      const execId = newExecId(id, handle.channel);
      live.execIds.set(handle.channel, execId);
      handle.done.then(() => live.execIds.delete(handle.channel), () => live.execIds.delete(handle.channel));
      const pid = await handle.started;
      this.events.append({ tenant: rec.tenant, sandbox: id, type: 'exec.started', data: { execId, cmd: req.cmd, cwd: req.cwd ?? rec.spec.workdir, background: true, pid } });
      this.recordBackgroundExit(rec, live, handle.done, { execId, req, started, before })
        .catch((e) => this.log('warn', 'recording a background exec failed', { sandbox: id, execId, error: (e as Error).message }));
      return { pid, execId };
    } catch (e) {
      throw mapAgentError(e);
    }
  }

  async openPty(caller: Caller, id: string, opts: PtyOptions = {}): Promise<PtySession> {
    const req = parsePtyOptions(opts);
    const { rec, live } = await this.ready(caller, id);
    const driver = this.drivers.get(rec.spec.runtime)!;
    const before = driver.limitCounters(id);
    const cmd = req.cmd ?? await defaultShell(live.link);
    const { cols, rows, ...rest } = req;
    return startPtySession({
      link: live.link,
      spec: { ...this.agentSpec(rec, live, { ...rest, cmd }, false), pty: { cols, rows } },
      sandbox: id,
      envNames: Object.keys(req.env ?? {}),
      execIds: live.execIds,
      audit: (type, data) => { this.events.append({ tenant: rec.tenant, sandbox: id, type, data }); },
      outputCap: this.governance.outputRecordCap(rec.tenant),
      recordExit: (x) => {
        try {
          this.recordExec(rec, { execId: x.execId, req: { ...rest, cmd }, started: x.startedAt, ended: x.endedAt, exit: x.exit, out: x.output, err: null, kind: 'pty' });
        } catch (e) {
          this.log('warn', 'recording a terminal session failed', { sandbox: id, execId: x.execId, error: (e as Error).message });
        }
      },
      classify: (res, killed) => this.classifyExit(rec, res, before, killed),
      sandboxEnding: () => {
        const ending = live.ending;
        return ending ? ending.done.then(() => ({ exitCode: ending.execReason === 'timeout' ? 124 : 137, reason: ending.execReason })) : null;
      },
      afterExit: () => this.diskWatch.observe(id, rec.spec.resources.diskMiB, driver.diskUsage(id)),
    });
  }

  /** Stores the sandbox's process tree now as a process.snapshot event (evidence on demand). */
  async snapshotProcesses(caller: Caller, id: string): Promise<{ seq: number; processes: ProcessInfo[] }> {
    const processes = await this.listProcesses(caller, id);
    const rec = this.owned(caller, id);
    const ev = this.events.append({ tenant: rec.tenant, sandbox: id, type: 'process.snapshot', data: { processes } });
    return { seq: ev.seq, processes };
  }

  /** The sandbox's timeline: lifecycle, exec records, file activity, network refusals, alerts. */
  sandboxHistory(caller: Caller, id: string): HistoryEntry[] {
    this.owned(caller, id);
    return buildHistory(this.events.query({ sandbox: id, limit: 10_000 }), this.execRecords.forSandbox(id));
  }

  /** A recorded blob; only one the caller's tenant's records name (any, for an admin). */
  readBlob(caller: Caller, sha256: string): Buffer {
    this.assertOpen();
    const named = typeof sha256 === 'string' && (isAdmin(caller) || (caller.tenant !== null && this.execRecords.tenantReferences(caller.tenant, sha256)));
    const data = named ? this.blobs.get(sha256) : null;
    if (!data) throw new AirlockError('not_found', 'blob not found');
    return data;
  }

  /** The writable layer's overlay upper dir on the host (container tier). */
  private upperDir(rec: SandboxRecord): string {
    return join(this.dataDir, 'sandboxes', rec.id, 'layer', 'upper');
  }

  /** A file.changes event for what the writable layer gained and lost since the last look (docs/records.md). */
  private async recordFileChanges(rec: SandboxRecord, where: { at: 'exec' | 'end'; execId?: string }): Promise<void> {
    const changes = await this.fileChangesNow(rec);
    try {
      if (changes && !this.closed) this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'file.changes', data: { ...where, ...changes } });
    } catch (e) {
      this.log('warn', 'file telemetry failed', { sandbox: rec.id, error: (e as Error).message });
    }
  }

  /** What the writable layer gained and lost since the last look; null when nothing, or not looked at. */
  private async fileChangesNow(rec: SandboxRecord): Promise<FileChanges | null> {
    if (!this.fileChangesOn(rec)) return null;
    const guest = this.guestLayerLink(rec);
    if (!guest && !this.layerOnHost(rec)) return null;
    try {
      return guest ? await guestLayerChanges(this.fileChanges, rec.id, guest) : await this.fileChanges.changes(rec.id, this.upperDir(rec));
    } catch (e) {
      this.log('warn', 'file telemetry failed', { sandbox: rec.id, error: (e as Error).message });
      return null;
    }
  }

  /** The first look at the layer before an exec, not reported (so the exec reports only its own changes). */
  private async fileChangesBaseline(rec: SandboxRecord): Promise<void> {
    const guest = this.guestLayerLink(rec);
    if (guest) await guestLayerBaseline(this.fileChanges, rec.id, guest);
    else if (this.layerOnHost(rec)) await this.fileChanges.ensureBaseline(rec.id, this.upperDir(rec));
  }

  /**
   * A microvm's layer is walked by its agent (LWALK): the link, when connected and the guest runs
   * (a paused guest would not answer; a gone one is skipped silently).
   */
  private guestLayerLink(rec: SandboxRecord): AgentLink | null {
    if (rec.spec.runtime !== 'microvm' || rec.state === 'paused') return null;
    const link = this.live.get(rec.id)?.link;
    return link?.connected ? link : null;
  }

  /**
   * Whether the sandbox's rootfs writes land in the host overlay's upper dir: runc's do, and
   * runsc's (run with --overlay2=none); a microvm's layer is a disk image the guest's own kernel
   * writes, which the host does not read while the VM runs.
   */
  private layerOnHost(rec: SandboxRecord): boolean {
    return rec.spec.runtime === 'container' || rec.spec.runtime === 'gvisor';
  }

  /** The tenant policy's evidence.fileChanges (on unless turned off). */
  private fileChangesOn(rec: SandboxRecord): boolean {
    return this.governance.effective(rec.tenant).evidence?.fileChanges !== false;
  }

  /** The tenant policy's evidence.syscallTrace, for a gvisor sandbox's launch. */
  private syscallTraceOf(rec: SandboxRecord): { syscallTrace?: { syscalls?: string[] } } {
    const ev = this.governance.effective(rec.tenant).evidence;
    if (rec.spec.runtime !== 'gvisor' || !ev?.syscallTrace) return {};
    return { syscallTrace: ev.syscalls ? { syscalls: ev.syscalls } : {} };
  }

  /** A traced sandbox's syscall log (capped) into the blob store, named by an evidence.strace event. */
  private recordStrace(rec: SandboxRecord): void {
    if (rec.spec.runtime !== 'gvisor') return;
    try {
      const trace = collectStrace(join(this.dataDir, 'sandboxes', rec.id));
      if (!trace || this.closed) return;
      const blob = this.blobs.put(trace.data);
      this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'evidence.strace', data: { sha256: blob.sha256, stored: blob.size, bytes: trace.total, truncated: trace.total > blob.size } });
    } catch (e) {
      this.log('warn', 'syscall trace collection failed', { sandbox: rec.id, error: (e as Error).message });
    }
  }

  /**
   * Records a finished exec: its output blobs (capped per policy; small ones inline), the exec
   * record, exec.exited and (foreground) the file.changes it caused, in one transaction.
   * `out`/`err` null: not captured (a background exec's streams go to /dev/null); a terminal
   * session's one stream is its stdout.
   */
  private recordExec(rec: SandboxRecord, x: {
    execId: string; req: Pick<ExecRequest, 'cmd' | 'env' | 'cwd' | 'user'>; started: number; ended: number;
    exit: { exitCode: number; reason: ExecReason };
    out: RecordedOutput | null; err: RecordedOutput | null;
    kind?: 'pty' | 'background'; changes?: FileChanges | null;
  }): void {
    const cap = x.kind === 'background' ? 0 : this.governance.outputRecordCap(rec.tenant);
    const stream = (c: RecordedOutput | null): RecordedStream => {
      if (!c) return { bytes: 0, sha256: null, stored: 0, truncated: false };
      if (cap === 0) return { bytes: c.total, sha256: null, stored: 0, truncated: c.total > 0 };
      const kept = c.bytes().subarray(0, cap);
      const blob = this.blobs.put(kept);
      return { bytes: c.total, sha256: blob.sha256, stored: blob.size, truncated: c.total > blob.size };
    };
    const done = { execId: x.execId, exitCode: x.exit.exitCode, reason: x.exit.reason, durationMs: x.ended - x.started };
    this.tx(() => {
      // Inside the transaction: small blobs are rows that commit with the record naming them.
      const stdout = stream(x.out);
      const stderr = stream(x.err);
      this.execRecords.insert({
        execId: x.execId, sandbox: rec.id, tenant: rec.tenant, cmd: x.req.cmd, envNames: Object.keys(x.req.env ?? {}),
        cwd: x.req.cwd ?? rec.spec.workdir, user: x.req.user ? `${x.req.user.uid}:${x.req.user.gid}` : null,
        pty: x.kind === 'pty', background: x.kind === 'background',
        startedAt: new Date(x.started).toISOString(), endedAt: new Date(x.ended).toISOString(),
        exitCode: x.exit.exitCode, reason: x.exit.reason, stdout, stderr,
      });
      this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'exec.exited', data: x.kind === 'pty'
        ? { ...done, outputBytes: stdout.bytes, pty: true, stdoutSha256: stdout.sha256, stdoutStored: stdout.stored }
        : x.kind === 'background'
          ? { ...done, background: true }
          : { ...done, stdoutBytes: stdout.bytes, stderrBytes: stderr.bytes,
            stdoutSha256: stdout.sha256, stderrSha256: stderr.sha256, stdoutStored: stdout.stored, stderrStored: stderr.stored } });
      if (x.changes) this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'file.changes', data: { at: 'exec', execId: x.execId, ...x.changes } });
    });
  }

  /** A background exec's record once it ends (exit, reason, duration; its output was not captured). */
  private async recordBackgroundExit(rec: SandboxRecord, live: LiveSandbox, done: Promise<AgentExit>,
    x: { execId: string; req: ExecRequest; started: number; before: { oomKills: number; pidsMaxHits: number } }): Promise<void> {
    let exit: { exitCode: number; reason: ExecReason };
    try {
      exit = this.classifyExit(rec, await done, x.before, false);
    } catch (e) {
      // The daemon is closing, not the sandbox: the process may live on, its end is not known here.
      if (this.closed) return;
      const ending = live.ending;
      if (ending) {
        await ending.done;
        exit = { exitCode: ending.execReason === 'timeout' ? 124 : 137, reason: ending.execReason };
      } else if ((e as Error).name === 'AgentDisconnectedError') {
        exit = { exitCode: 137, reason: 'sandbox_ended' };
      } else {
        exit = { exitCode: 125, reason: 'error' };
      }
    }
    try {
      this.recordExec(rec, { execId: x.execId, req: x.req, started: x.started, ended: Date.now(), exit, out: null, err: null, kind: 'background' });
    } catch (e) {
      if (!this.closed) this.log('warn', 'recording a background exec failed', { sandbox: rec.id, execId: x.execId, error: (e as Error).message });
    }
  }

  async listProcesses(caller: Caller, id: string): Promise<ProcessInfo[]> {
    const { live } = await this.ready(caller, id);
    try {
      const ps = await live.link.ps();
      return ps.map((p) => ({ pid: p.pid, execId: p.channel ? live.execIds.get(p.channel) ?? null : null, cmdline: p.cmdline }));
    } catch (e) {
      throw mapAgentError(e);
    }
  }

  async killProcess(caller: Caller, id: string, pid: number, signal = 9): Promise<void> {
    const { rec, live } = await this.ready(caller, id);
    if (!Number.isInteger(pid) || pid < 2) throw badRequest('pid: must be a process of the sandbox (≥ 2)', 'pid');
    if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw badRequest('signal: must be 1..64', 'signal');
    try {
      await live.link.killPid(pid, signal);
    } catch (e) {
      throw mapAgentError(e, `pid ${pid}`);
    }
    this.events.append({ tenant: rec.tenant, sandbox: id, type: 'process.signaled', data: { pid, signal } });
  }

  private agentSpec(rec: SandboxRecord, live: LiveSandbox, req: ExecRequest, background: boolean) {
    const env = new Map<string, string>();
    for (const kv of live.templateEnv) {
      const i = kv.indexOf('=');
      if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
    }
    for (const [k, v] of Object.entries(rec.spec.env)) env.set(k, v);
    for (const [k, v] of Object.entries(req.env ?? {})) env.set(k, v);
    return {
      argv: req.cmd,
      env: [...env].map(([k, v]) => `${k}=${v}`),
      cwd: req.cwd ?? rec.spec.workdir,
      uid: req.user?.uid ?? 0,
      gid: req.user?.gid ?? 0,
      timeoutMs: Math.round((req.timeoutSeconds ?? 0) * 1000),
      keepStdinOpen: !background && req.stdin !== undefined,
      background,
    };
  }

  /** Why a process ended, with the exit code conventions of `timeout` (124) and the shell (128+n). */
  private classifyExit(rec: SandboxRecord, res: AgentExit, before: { oomKills: number; pidsMaxHits: number }, aborted: boolean) {
    const driver = this.drivers.get(rec.spec.runtime)!;
    const after = driver.limitCounters(rec.id);
    if (after.pidsMaxHits > before.pidsMaxHits) {
      this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'limit.pids', data: { limit: rec.spec.resources.pids, hits: after.pidsMaxHits - before.pidsMaxHits } });
    }
    if (res.timedOut) return { exitCode: 124, reason: 'timeout' as const, signal: res.signal };
    // The host's cgroup counter, or (microvm) the guest agent's word, which only trusts it about
    // its own sandbox's processes.
    const oomKilled = res.oomKilled === true || (after.oomKills > before.oomKills && (res.signal === 9 || (driver.oomSeenAsExit && res.code !== 0)));
    if (oomKilled) {
      this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: 'limit.oom', data: { limitMiB: rec.spec.resources.memoryMiB } });
      return { exitCode: 137, reason: 'oom' as const, signal: 9 };
    }
    if (res.signal) {
      return { exitCode: 128 + res.signal, reason: aborted ? 'killed' as const : 'signaled' as const, signal: res.signal };
    }
    return { exitCode: res.code, reason: 'exited' as const };
  }

  // ---- files -----------------------------------------------------------------------------

  async readFile(caller: Caller, id: string, path: string): Promise<Buffer> {
    const { rec, live } = await this.ready(caller, id);
    checkPath(path);
    try {
      const data = await live.link.readFile(path, MAX_FILE_READ);
      this.events.append({ tenant: rec.tenant, sandbox: id, type: 'file.read', data: { path, size: data.length } });
      return data;
    } catch (e) {
      throw mapAgentError(e, path);
    }
  }

  async readFileStream(caller: Caller, id: string, path: string): Promise<AsyncIterable<Buffer>> {
    return sandboxFiles.readFileStream(await this.fileContext(caller, id), path);
  }

  /** `data` may be a stream: it goes to the agent with backpressure, never gathered here. */
  async writeFile(caller: Caller, id: string, path: string, data: FileData, opts: { mode?: number } = {}): Promise<FileStat> {
    const { rec, live } = await this.ready(caller, id);
    checkPath(path);
    const mode = opts.mode ?? 0o644;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest('mode: must be an octal permission (0..07777)', 'mode');
    const chunks = sandboxFiles.toChunks(data);
    try {
      // The agent applies the permission bits (mode & 0777) exactly.
      const st = await live.link.writeFile(path, chunks, { mode: mode & 0o777, mkdirs: true });
      this.events.append({ tenant: rec.tenant, sandbox: id, type: 'file.written', data: { path, size: st.size } });
      return { type: st.type, size: st.size, mode: st.mode, mtime: new Date(st.mtimeSec * 1000).toISOString() };
    } catch (e) {
      const mapped = mapAgentError(e, path);
      if (e instanceof Error && (e as { errno?: number }).errno === 28) {
        this.diskWatch.observe(id, rec.spec.resources.diskMiB, this.drivers.get(rec.spec.runtime)!.diskUsage(id), true);
      }
      throw mapped;
    }
  }

  async listDir(caller: Caller, id: string, path: string): Promise<FileEntry[]> {
    const { live } = await this.ready(caller, id);
    checkPath(path);
    try {
      const entries = await live.link.list(path);
      return entries.map((e) => ({ name: e.name, type: e.type, size: e.size, mode: e.mode, mtime: new Date(e.mtimeSec * 1000).toISOString() }));
    } catch (e) {
      throw mapAgentError(e, path);
    }
  }

  async statPath(caller: Caller, id: string, path: string): Promise<FileStat> {
    const { live } = await this.ready(caller, id);
    checkPath(path);
    try {
      const st = await live.link.stat(path);
      return { type: st.type, size: st.size, mode: st.mode, mtime: new Date(st.mtimeSec * 1000).toISOString() };
    } catch (e) {
      throw mapAgentError(e, path);
    }
  }

  async deletePath(caller: Caller, id: string, path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    const { rec, live } = await this.ready(caller, id);
    checkPath(path);
    if (path.replace(/\/+$/, '') === '') throw badRequest('path: refusing to delete /', 'path');
    try {
      await live.link.remove(path, opts.recursive ?? false);
    } catch (e) {
      throw mapAgentError(e, path);
    }
    this.events.append({ tenant: rec.tenant, sandbox: id, type: 'file.deleted', data: { path, recursive: opts.recursive ?? false } });
  }

  async makeDir(caller: Caller, id: string, path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<FileStat> {
    return sandboxFiles.makeDir(await this.fileContext(caller, id), path, opts);
  }

  async renamePath(caller: Caller, id: string, from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<FileStat> {
    return sandboxFiles.renamePath(await this.fileContext(caller, id), from, to, opts);
  }

  async watchFiles(
    caller: Caller, id: string, path: string, opts: { recursive?: boolean },
    onEvent: (e: FileWatchEvent) => void, signal?: AbortSignal,
  ): Promise<FileWatchHandle> {
    return sandboxFiles.watchFiles(await this.fileContext(caller, id), path, opts, onEvent, signal);
  }

  async outputsTar(caller: Caller, id: string): Promise<import('node:stream').Readable> {
    return tarOutputs(await this.fileContext(caller, id));
  }

  async outputsList(caller: Caller, id: string): Promise<OutputsListing> {
    return listOutputs(await this.fileContext(caller, id));
  }

  // ---- volumes ---------------------------------------------------------------------------

  createVolume(caller: Caller, input: CreateVolumeInput): Promise<VolumeInfo> {
    this.assertOpen();
    return this.volumes.create(caller.tenant ?? DEFAULT_TENANT, input);
  }

  listVolumes(caller: Caller): VolumeInfo[] {
    this.assertOpen();
    return this.volumes.list(caller.tenant);
  }

  getVolume(caller: Caller, name: string): VolumeInfo {
    this.assertOpen();
    return this.volumes.get(caller.tenant ?? DEFAULT_TENANT, name);
  }

  deleteVolume(caller: Caller, name: string): Promise<void> {
    this.assertOpen();
    return this.volumes.delete(caller.tenant ?? DEFAULT_TENANT, name);
  }

  /**
   * Unmounts the volumes no live sandbox uses, so the data dir holds no mounts or loop devices
   * (tests, uninstall). Volumes keep their data and are mounted again when next needed.
   */
  shutdownStorage(): Promise<void> {
    return this.volumes.detachAll();
  }

  // ---- misc ------------------------------------------------------------------------------

  listTemplates(): TemplateInfo[] {
    const use = this.templateUse();
    return this.templates.list().map((t) => ({ ...t, inUse: use.get(t.name) ?? 0 }));
  }

  async buildTemplate(name: string, opts: TemplateBuildOptions = {}): Promise<TemplateInfo> {
    this.assertOpen();
    const t = await buildTemplate(this.templatesDir, name, opts);
    return { ...t, inUse: this.templateUse().get(name) ?? 0 };
  }

  async importTemplate(name: string, source: string | Readable, opts: TemplateImportOptions = {}): Promise<TemplateInfo> {
    this.assertOpen();
    const t = await importTemplate(this.templatesDir, name, source, opts);
    return { ...t, inUse: this.templateUse().get(name) ?? 0 };
  }

  async removeTemplate(name: string): Promise<void> {
    this.assertOpen();
    await removeTemplate(this.templatesDir, name, { inUse: this.templateUse().get(name) ?? 0 });
  }

  /** Live sandboxes per template name (this store's; other data dirs sharing the templates keep theirs mounted). */
  private templateUse(): Map<string, number> {
    const use = new Map<string, number>();
    for (const r of this.sandboxes.list({ states: ['creating', 'running', 'paused'] })) use.set(r.spec.template, (use.get(r.spec.template) ?? 0) + 1);
    return use;
  }

  listEvents(caller: Caller, filter: EventFilter = {}): AuditEvent[] {
    // Another tenant's sandbox is not found here either (not an empty list).
    if (filter.sandbox !== undefined && caller.tenant !== null) this.owned(caller, filter.sandbox);
    if (filter.tenant !== undefined && caller.tenant !== null && filter.tenant !== caller.tenant) return [];
    return this.events.query({ tenant: caller.tenant ?? filter.tenant, sandbox: filter.sandbox, type: filter.type, afterSeq: filter.afterSeq, limit: filter.limit });
  }

  subscribeEvents(caller: Caller, filter: EventFilter, listener: (e: AuditEvent) => void): () => void {
    if (filter.sandbox !== undefined && caller.tenant !== null) this.owned(caller, filter.sandbox);
    return this.events.subscribe((e) => {
      if (caller.tenant && e.tenant !== caller.tenant) return;
      if (filter.tenant !== undefined && e.tenant !== filter.tenant) return;
      if (filter.sandbox && e.sandbox !== filter.sandbox) return;
      if (filter.type && e.type !== filter.type) return;
      listener(e);
    });
  }

  verifyAudit(caller: Caller): VerifyResult {
    requireAdmin(caller, 'verify the audit log');
    this.assertOpen();
    return this.events.verify();
  }

  auditPublicKey(caller: Caller): string {
    requireAdmin(caller, 'read the audit public key');
    return this.auditSigner.publicKeyPem;
  }

  exportAudit(caller: Caller, selection: { sandbox?: string; since?: string }): Buffer {
    requireAdmin(caller, 'export audit evidence');
    this.assertOpen();
    const sel: ExportSelection = {};
    if (selection.sandbox !== undefined) {
      const known = this.sandboxes.get(selection.sandbox) ?? this.db.prepare('SELECT 1 FROM events WHERE sandbox = ? LIMIT 1').get(selection.sandbox);
      if (!known) throw notFound('sandbox', selection.sandbox);
      sel.sandbox = selection.sandbox;
    }
    if (selection.since !== undefined) {
      const t = Date.parse(selection.since);
      if (Number.isNaN(t)) throw badRequest('since: must be an ISO 8601 time', 'since');
      sel.since = new Date(t).toISOString();
    }
    if (sel.sandbox === undefined && sel.since === undefined) throw badRequest('name a sandbox or a since time', 'sandbox');
    // The bundle's range must end at a signed checkpoint.
    this.events.checkpointHead();
    try {
      return buildEvidenceBundle({
        db: this.db, publicKeyPem: this.auditSigner.publicKeyPem, logVerification: this.events.verify(), blob: (sha) => this.blobs.get(sha),
      }, sel);
    } catch (e) {
      if (e instanceof Error && e.message === 'no events match the selection') throw badRequest(e.message, 'since');
      throw e;
    }
  }

  doctor(): Promise<DoctorCheck[]> {
    return runDoctor({ dataDir: this.dataDir, templatesDir: this.templatesDir });
  }

  // ---- secrets (secrets/; docs/secrets.md) -------------------------------------------------

  setSecret(caller: Caller, name: string, input: SetSecretInput, opts: { tenant?: string } = {}): SecretInfo {
    this.assertOpen();
    const tenant = this.secretTenant(caller, opts.tenant);
    const info = this.secretStore.set(tenant, name, input);
    this.events.append({ tenant, sandbox: null, type: 'secret.set', data: { secret: info.name, hosts: info.hosts, header: info.header !== null, by: caller.keyId ?? null } });
    return info;
  }

  listSecrets(caller: Caller, opts: { tenant?: string } = {}): SecretInfo[] {
    this.assertOpen();
    if (caller.tenant === null && opts.tenant === undefined) return this.secretStore.list(null);
    return this.secretStore.list(this.secretTenant(caller, opts.tenant));
  }

  deleteSecret(caller: Caller, name: string, opts: { tenant?: string } = {}): void {
    this.assertOpen();
    const tenant = this.secretTenant(caller, opts.tenant);
    this.secretStore.delete(tenant, name);
    this.events.append({ tenant, sandbox: null, type: 'secret.deleted', data: { secret: name, by: caller.keyId ?? null } });
  }

  /** The tenant a secrets call acts on: the caller's own; an admin's choice (default "default"). */
  private secretTenant(caller: Caller, asked: string | undefined): string {
    if (caller.tenant !== null) {
      // Another tenant is "not found", as its sandboxes are.
      if (asked !== undefined && asked !== caller.tenant) throw notFound('tenant', String(asked));
      return caller.tenant;
    }
    const tenant = asked ?? DEFAULT_TENANT;
    if (!this.governance.listTenants().some((t) => t.name === tenant)) throw notFound('tenant', String(tenant));
    return tenant;
  }

  /**
   * A spec naming secrets: each must exist in the tenant; their hosts join the allowlist (after
   * the policy's defaultAllow would have applied). Returns the input the policy then judges.
   */
  private secretHostsInto(tenant: string, input: SandboxSpecInput, spec: SandboxSpec): SandboxSpecInput {
    const names = spec.secrets ?? [];
    if (names.length === 0) return input;
    const hosts: string[] = [];
    for (const name of names) {
      const s = this.secretStore.get(tenant, name);
      if (!s) throw notFound('secret', name);
      if (Object.hasOwn(spec.env, name)) throw badRequest(`env.${name}: is also a secret of this sandbox; its placeholder goes there`, `env.${name}`);
      hosts.push(...s.hosts);
    }
    const base = input?.network?.allow ?? this.governance.effective(tenant).network?.defaultAllow ?? [];
    spec.network.allow = [...new Set([...base, ...hosts])];
    return { ...input, network: { ...input?.network, allow: spec.network.allow } };
  }

  /** Puts a fresh placeholder in the env under each secret's name, and the CA variables. */
  private placeholdersInto(tenant: string, spec: SandboxSpec): SandboxSecret[] {
    const out: SandboxSecret[] = [];
    for (const name of spec.secrets ?? []) {
      const s = this.secretStore.reveal(tenant, name);
      if (!s) throw notFound('secret', name);
      const value = s.value.toString('latin1');
      let placeholder = newPlaceholder(name);
      // The placeholder is the sandbox's to see: it must never hold the value (a short hex value could).
      for (let i = 0; placeholder.includes(value); i++) {
        if (i === 8) throw badRequest(`secrets: the value of ${name} keeps appearing in its placeholder; choose another value`, 'secrets');
        placeholder = newPlaceholder(name);
      }
      spec.env[name] = placeholder;
      out.push({ name, placeholder });
    }
    if (out.length > 0) for (const v of CA_BUNDLE_ENV) if (!Object.hasOwn(spec.env, v)) spec.env[v] = SANDBOX_CA_BUNDLE;
    return out;
  }

  /** The data dir's Airlock CA, made on first use (its key never leaves <dataDir>/ca). */
  private sandboxCa(): Promise<AirlockCa> {
    this.airlockCa ??= AirlockCa.open(join(this.dataDir, 'ca'));
    this.airlockCa.catch(() => { this.airlockCa = null; });
    return this.airlockCa;
  }

  ensureAdminKey(): string | null {
    if (this.keys.hasAdminKey()) return null;
    return this.keys.create('admin', null);
  }

  authenticate(key: string | null, from: { address?: string } = {}): Caller | null {
    return this.governance.authenticate(key, from);
  }

  recordAuthDenied(reason: string, from: { address?: string } = {}): void {
    this.governance.recordAuthDenied({ reason, ...(from.address ? { address: from.address } : {}) });
  }

  // ---- approvals (approvals/approval-service.ts; docs/approvals.md) ----

  listApprovals(caller: Caller, filter: ApprovalFilter = {}): ApprovalInfo[] {
    return this.approvals.list(caller, filter);
  }

  getApproval(caller: Caller, id: string): ApprovalInfo {
    return this.approvals.get(caller, id);
  }

  approveApproval(caller: Caller, id: string, input: ApprovalDecisionInput = {}): ApprovalInfo {
    return this.approvals.decide(caller, id, 'approved', input);
  }

  denyApproval(caller: Caller, id: string, input: ApprovalDecisionInput = {}): ApprovalInfo {
    return this.approvals.decide(caller, id, 'denied', input);
  }

  /**
   * A sandbox's DNS question or proxied connection for a name its allowlist lacks: null (refuse
   * now) unless its tenant's policy says approvals.egressOutsideAllowlist: ask; else the answer
   * once decided, the host added to this sandbox's allowlist (only) when approved.
   */
  private askEgress(sandbox: string, host: string, port: number | null): Promise<EgressAnswer> | null {
    const rec = this.sandboxes.get(sandbox);
    if (this.closed || !rec || rec.state !== 'running') return null;
    if (this.governance.effective(rec.tenant).approvals?.egressOutsideAllowlist !== 'ask') return null;
    // Only a name that can become an allow entry is worth a person's time.
    try {
      if (parseEgressRule(host).kind !== 'name' || host.startsWith('*')) return null;
    } catch {
      return null;
    }
    return this.approvals.askEgress({
      tenant: rec.tenant, sandbox, host, port,
      apply: async () => {
        const admin: Caller = { tenant: null };
        // The person approved exactly this host for this sandbox: that is the grant the ceiling rule needs.
        const rule = egressRule(this.governance.effective(rec.tenant), [host]);
        await this.changeNetwork(admin, sandbox, (cur) => ({ allow: cur.allow.includes(host) ? cur.allow : [...cur.allow, host] }), new Set([grantKey(rule)]));
        return true;
      },
    });
  }

  /** What an approval request shows besides its rules: the hosts, mounts or lifetime asked for. */
  private approvalFacts(tenant: string, asks: Array<{ rule: string }>, spec: SandboxSpec | null, allow: string[] = []): Omit<ApprovalSubject, 'rules'> {
    const out: Omit<ApprovalSubject, 'rules'> = {};
    const rules = new Set(asks.map((a) => a.rule));
    if (rules.has('network.allowCeiling')) {
      const ceiling = this.governance.effective(tenant).network?.allowCeiling ?? [];
      out.hosts = outsideCeiling(spec ? spec.network.allow : allow, ceiling);
    }
    if (spec && rules.has('approvals.readWriteMount')) out.mounts = spec.mounts.filter((m) => !m.readOnly).map((m) => ({ source: m.source, target: m.target }));
    if (spec && rules.has('approvals.lifetimeAbove')) out.lifetimeSeconds = spec.timeoutSeconds;
    return out;
  }

  // ---- tenants, keys, policies (tenants/governance.ts; scopes checked by tenants/access.ts) ----

  createTenant(caller: Caller, name: string): TenantInfo {
    this.assertOpen();
    return this.governance.createTenant(caller, name);
  }

  listTenants(_caller: Caller): TenantInfo[] {
    this.assertOpen();
    return this.governance.listTenants();
  }

  deleteTenant(caller: Caller, name: string): void {
    this.assertOpen();
    this.governance.deleteTenant(caller, name);
  }

  createKey(caller: Caller, input: CreateKeyInput): CreatedApiKey {
    this.assertOpen();
    return this.governance.createKey(caller, input ?? {});
  }

  listKeys(_caller: Caller, filter: { tenant?: string } = {}): ApiKeyInfo[] {
    this.assertOpen();
    return this.governance.listKeys(filter);
  }

  revokeKey(caller: Caller, id: string): void {
    this.assertOpen();
    this.governance.revokeKey(caller, id);
  }

  getPolicy(caller: Caller, tenant: string, version?: number): PolicyVersionInfo {
    this.assertOpen();
    return this.governance.getPolicy(caller, tenant, version);
  }

  setPolicy(caller: Caller, tenant: string, document: unknown): PolicyVersionInfo {
    this.assertOpen();
    return this.governance.setPolicy(caller, tenant, document);
  }

  testPolicy(caller: Caller, input: PolicyTestInput): PolicyTestResult {
    this.assertOpen();
    return this.governance.testPolicy(caller, input ?? {});
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.reaper) clearInterval(this.reaper);
    this.metering.close();
    await this.approvals.close();
    await Promise.all([...this.live.values()].map((l) => l.link.close().catch(() => {})));
    this.live.clear();
    await Promise.all([...this.networkOps.values()].map((p) => p.catch(() => {})));
    await this.network.close();
    await this.credentialReads.close();
    this.detectors.stop();
    this.governance.close();
    // A signed head makes dropping events written since the last boundary detectable.
    try { this.events.checkpointHead(); } catch (e) { this.log('warn', 'audit checkpoint at close failed', { error: String(e) }); }
    this.db.close();
  }

  // ---- internals -------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new AirlockError('unavailable', 'engine is closed');
  }

  private tx(fn: () => void): void {
    try {
      this.immediateTx(fn);
    } catch (e) {
      this.events.discardPending();
      throw e;
    }
    this.events.flush();
  }

  /** The record if the caller may see it; another tenant's id is "not found", never "forbidden". */
  private owned(caller: Caller, id: string): SandboxRecord {
    this.assertOpen();
    const rec = typeof id === 'string' && SANDBOX_ID_RE.test(id) ? this.sandboxes.get(id) : null;
    if (!rec || (caller.tenant && rec.tenant !== caller.tenant)) throw notFound('sandbox', String(id));
    return rec;
  }

  private running(caller: Caller, id: string): { rec: SandboxRecord; live: LiveSandbox } {
    const rec = this.owned(caller, id);
    if (rec.state !== 'running') throw conflict(`sandbox ${id} is ${rec.state}, not running`);
    const live = this.live.get(id);
    if (!live || live.ending) {
      if (!live && rec.ownerPid && rec.ownerPid !== this.ownerPid && processAlive(rec.ownerPid, rec.ownerStart)) {
        throw conflict(`sandbox ${id} is managed by another Airlock process (pid ${rec.ownerPid}); talk to it through AIRLOCK_URL`);
      }
      throw conflict(`sandbox ${id} is ending`);
    }
    return { rec, live };
  }

  /** running(), and waits briefly for an agent that is redialling (after an adoption or a restart). */
  private async ready(caller: Caller, id: string): Promise<{ rec: SandboxRecord; live: LiveSandbox }> {
    const r = this.running(caller, id);
    if (!r.live.link.connected) {
      await r.live.link.waitConnected(AGENT_REDIAL_WAIT_MS).catch(() => {
        throw conflict(`sandbox ${id} is not reachable (its agent is not connected)`);
      });
    }
    return r;
  }

  /** What the file operations (files/) need of a running, reachable sandbox. */
  private async fileContext(caller: Caller, id: string): Promise<sandboxFiles.FileContext> {
    const { rec, live } = await this.ready(caller, id);
    return {
      link: live.link,
      sandbox: id,
      outputPath: rec.spec.outputPath ?? DEFAULT_OUTPUT_PATH,
      audit: (type, data) => { this.events.append({ tenant: rec.tenant, sandbox: id, type, data }); },
    };
  }

  /** A sandbox's tenant: from memory while it runs, else from the store. */
  private tenantOf(id: string): string {
    return this.live.get(id)?.tenant ?? this.sandboxes.get(id)?.tenant ?? DEFAULT_TENANT;
  }

  private attach(id: string, tenant: string, link: AgentLink, templateEnv: string[]): LiveSandbox {
    const live: LiveSandbox = { id, tenant, link, ending: null, execIds: new Map(), templateEnv };
    this.live.set(id, live);
    link.on('disconnected', () => { void this.onAgentLost(id); });
    return live;
  }

  /** The agent hung up: either the sandbox died (OOM of PID 1, killed from outside) or it is reconnecting. */
  private async onAgentLost(id: string): Promise<void> {
    const live = this.live.get(id);
    if (!live || live.ending || this.closed) return;
    const rec = this.sandboxes.get(id);
    if (!rec || !isLive(rec.state)) return;
    // A live agent redials within milliseconds; give it a moment before asking the runtime.
    await new Promise((r) => setTimeout(r, 1500).unref());
    if (live.ending || live.link.connected || this.closed) return;
    const driver = this.drivers.get(rec.spec.runtime)!;
    const status = await driver.status(id);
    if (status === 'running' || status === 'paused') return;
    const oom = driver.limitCounters(id).oomKills > 0;
    await this.end(id, 'failed', oom ? 'sandbox ran out of memory' : 'sandbox process exited unexpectedly', oom ? 'oom' : 'sandbox_ended');
  }

  /** Ends a sandbox: frees every host object, then records the terminal state and its event. */
  private async end(id: string, state: SandboxState, reason: string, execReason: ExecReason): Promise<void> {
    const rec = this.sandboxes.get(id);
    if (!rec || isTerminal(rec.state)) return;
    assertTransition(id, rec.state, state);
    const live = this.live.get(id);
    if (live?.ending) return live.ending.done;
    const driver = this.drivers.get(rec.spec.runtime);
    const done = (async () => {
      // The last CPU reading, before destroy removes the cgroup and its counters.
      this.metering.final(this.metered(rec));
      // The layer's last changes, before destroy drops it.
      await this.recordFileChanges(rec, { at: 'end' });
      this.fileChanges.forget(id);
      this.recordStrace(rec);
      // Before destroy: queued events hold the rootfs busy until the watch is gone.
      await this.credentialReads.unwatch(id);
      try {
        await driver?.destroy(id);
      } catch (e) {
        this.log('warn', 'sandbox cleanup failed; retrying', { sandbox: id, error: (e as Error).message });
        await new Promise((r) => setTimeout(r, 250));
        await driver?.destroy(id).catch((e2: Error) => {
          this.log('error', 'sandbox cleanup failed; reconcile will retry', { sandbox: id, error: e2.message });
        });
      }
      await this.networkOps.get(id)?.catch(() => {});
      if (this.network.has(id) || rec.spec.network.allow.length > 0) {
        await this.network.teardown(id).catch((e: Error) => {
          this.log('error', 'network cleanup failed; reconcile will retry', { sandbox: id, error: e.message });
        });
      }
      await live?.link.close().catch(() => {});
      this.live.delete(id);
      this.diskWatch.forget(id);
      this.secretBroker.unregister(id);
      this.finish(id, state, reason);
    })();
    if (live) live.ending = { state, reason, execReason, done };
    return done;
  }

  private finish(id: string, state: SandboxState, reason: string): void {
    const rec = this.sandboxes.get(id);
    if (!rec || isTerminal(rec.state)) return;
    this.metering.final(this.metered(rec));
    this.approvals.sandboxEnded(id);
    this.tx(() => {
      this.sandboxes.update(id, { state, reason, endedAt: Date.now() });
      this.events.append({ tenant: rec.tenant, sandbox: id, type: END_EVENT[state] ?? `sandbox.${state}`, data: { reason } });
      if (state === 'expired') {
        this.events.append({ tenant: rec.tenant, sandbox: id, type: 'limit.timeout', data: { timeoutSeconds: rec.spec.timeoutSeconds } });
      }
    });
  }

  private startReaper(): void {
    this.reaper = setInterval(() => { void this.reap(); }, 250);
    this.reaper.unref();
    this.metering.start();
  }

  private metered(rec: SandboxRecord): { id: string; tenant: string; cgroupsPath: string; diskMiB: number } {
    return { id: rec.id, tenant: rec.tenant, cgroupsPath: cgroupsPathFor(rec.id), diskMiB: rec.spec.resources.diskMiB };
  }

  /** Usage and cost (docs/metering.md); a tenant sees its own, another tenant's sandbox is not found. */
  usage(caller: Caller, query: UsageQuery = {}): UsageReport {
    this.assertOpen();
    if (query.sandbox !== undefined && caller.tenant !== null) this.owned(caller, query.sandbox);
    return this.metering.report(caller, query);
  }

  /** Expires sandboxes past their lifetime that this process owns or that nobody owns any more. */
  private async reap(): Promise<void> {
    if (this.reaping || this.closed) return;
    const next = this.sandboxes.nextExpiry();
    if (next === null || next > Date.now()) return;
    this.reaping = true;
    try {
      const now = Date.now();
      const due = this.sandboxes.list({ states: ['creating', 'running', 'paused'] }).filter((r) => r.expiresAt <= now && this.mayManage(r));
      await Promise.all(due.map((r) => this.end(r.id, 'expired', `timeout: lifetime of ${Math.round((r.expiresAt - r.createdAt) / 1000)}s reached`, 'timeout')
        .catch((e: Error) => this.log('error', 'reaper failed', { sandbox: r.id, error: e.message }))));
    } finally {
      this.reaping = false;
    }
  }

  private mayManage(r: SandboxRecord): boolean {
    if (this.live.has(r.id)) return true;
    if (r.ownerPid === this.ownerPid) return true;
    return !r.ownerPid || !processAlive(r.ownerPid, r.ownerStart);
  }

  /**
   * Makes the database and the host agree, after a clean stop or a crash: adopts sandboxes whose
   * owner is gone and that still run, ends the ones that died, and removes every host object
   * (runtime containers, mounts, cgroups, directories) that belongs to no live sandbox.
   */
  async reconcile(): Promise<{ adopted: string[]; ended: string[]; removed: string[] }> {
    const adopted: string[] = [];
    const ended: string[] = [];
    const removed: string[] = [];
    const now = Date.now();
    const keep = new Set<string>();
    for (const rec of this.sandboxes.list({ states: ['creating', 'running', 'paused'] })) {
      if (this.live.has(rec.id)) { keep.add(rec.id); continue; }
      if (!this.mayManage(rec)) {
        keep.add(rec.id); // another live Airlock process owns it
        continue;
      }
      const driver = this.drivers.get(rec.spec.runtime);
      const status = driver ? await driver.status(rec.id) : 'absent';
      const alive = status === 'running' || status === 'paused';
      if (alive && rec.state !== 'creating' && rec.expiresAt > now && this.claim(rec)) {
        const template = this.templates.get(rec.spec.template);
        const link = await AgentLink.listen(join(this.dataDir, 'sandboxes', rec.id, 'ctl', HOST_SOCKET_NAME), rec.agentToken, { helloTimeoutMs: driver?.agentHelloTimeoutMs });
        this.attach(rec.id, rec.tenant, link, template?.env ?? []);
        keep.add(rec.id);
        adopted.push(rec.id);
        if (rec.spec.runtime !== 'microvm') await this.credentialReads.watch(rec.id, rec.tenant, rootfsPaths(join(this.dataDir, 'sandboxes', rec.id)).rootfs, { sentry: rec.spec.runtime === 'gvisor' });
        // A crash between the runtime's pause/resume and the store's update: the runtime is right.
        const actual: SandboxState = status === 'paused' ? 'paused' : 'running';
        if (rec.state !== actual) {
          this.tx(() => {
            this.sandboxes.update(rec.id, { state: actual });
            this.events.append({ tenant: rec.tenant, sandbox: rec.id, type: actual === 'paused' ? 'sandbox.paused' : 'sandbox.resumed', data: { runtime: rec.spec.runtime, reconciled: true } });
          });
        }
        // Its placeholders are in its spec: the broker takes its secret hosts' connections again.
        this.secretBroker.register(rec.id, rec.tenant, (rec.spec.secrets ?? []).map((name) => ({ name, placeholder: rec.spec.env[name] ?? '' })).filter((s) => s.placeholder !== ''));
        if (rec.spec.network.allow.length > 0) {
          // Its rules point at the dead engine's proxy: until re-pointed it can reach nothing (fail closed).
          await this.network.adopt(rec.id, rec.spec.network).catch((e: Error) => {
            this.log('error', 'could not take over the sandbox network; it stays cut off', { sandbox: rec.id, error: e.message });
          });
        }
        continue;
      }
      if (!this.claim(rec)) { keep.add(rec.id); continue; }
      await driver?.destroy(rec.id).catch(() => {});
      if (rec.spec.network.allow.length > 0) await this.network.teardown(rec.id).catch(() => {});
      if (rec.expiresAt <= now) this.finish(rec.id, 'expired', 'timeout: lifetime reached while no Airlock process was running');
      else this.finish(rec.id, 'failed', rec.state === 'creating' ? 'interrupted while starting' : 'lost: the runtime no longer has it');
      ended.push(rec.id);
    }
    // Host objects with no live sandbox behind them.
    const container = this.drivers.get('container')!;
    const leftovers = new Map<string, RuntimeDriver>();
    for (const name of safeReaddir(join(this.dataDir, 'sandboxes'))) leftovers.set(name, container);
    // Each runtime's own state names the driver that can remove it.
    for (const d of this.drivers.values()) for (const id of await d.list()) leftovers.set(id, d);
    for (const [id, driver] of leftovers) {
      if (keep.has(id) || !SANDBOX_ID_RE.test(id)) continue;
      await driver.destroy(id).catch(() => {});
      removed.push(id);
    }
    // cgroups are shared by every data dir on the host: only remove the ones this store knows ended.
    for (const id of childCgroups('/airlock')) {
      if (keep.has(id) || !SANDBOX_ID_RE.test(id)) continue;
      const rec = this.sandboxes.get(id);
      if (rec && isTerminal(rec.state)) { removeCgroup(cgroupsPathFor(id)); removed.push(`cgroup:${id}`); }
    }
    // Network objects (veths, namespaces, rules, leases) of sandboxes that are not live, and of
    // data dirs that are gone (their engines can no longer clean up).
    try {
      for (const id of await this.network.reconcile((id) => keep.has(id), (dir) => existsSync(join(dir, 'airlock.db')))) removed.push(`network:${id}`);
    } catch (e) {
      this.log('error', 'network reconcile failed', { error: (e as Error).message });
    }
    if (adopted.length || ended.length || removed.length) this.log('info', 'reconciled', { adopted, ended, removed });
    return { adopted, ended, removed };
  }

  /** Takes ownership of a sandbox whose owner is gone; only one process can win the swap. */
  private claim(rec: SandboxRecord): boolean {
    if (rec.ownerPid === this.ownerPid) return true;
    const r = this.db.prepare('UPDATE sandboxes SET owner_pid = ?, owner_start = ? WHERE id = ? AND owner_pid IS ? AND owner_start IS ?')
      .run(this.ownerPid, this.ownerStart, rec.id, rec.ownerPid, rec.ownerStart);
    return r.changes === 1;
  }
}

/** Bounded capture of one output stream, decoded once at the end so multi-byte characters stay whole. */
/** What an exec record keeps of a stream: the bytes written, and the first of them (Capture). */
interface RecordedOutput {
  total: number;
  bytes(): Buffer;
}

class Capture {
  private chunks: Buffer[] = [];
  private kept = 0;
  total = 0;
  truncated = false;
  constructor(private readonly limit: number) {}
  push(b: Buffer): void {
    this.total += b.length;
    if (this.kept >= this.limit) { this.truncated = true; return; }
    const room = this.limit - this.kept;
    const part = b.length > room ? b.subarray(0, room) : b;
    if (part.length < b.length) this.truncated = true;
    this.chunks.push(part);
    this.kept += part.length;
  }
  text(): string {
    return this.bytes().toString('utf8');
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks, this.kept);
  }
}

function checkPath(path: string): void {
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0') || Buffer.byteLength(path) > 4096) {
    throw badRequest('path: must be an absolute path without NUL, at most 4096 bytes', 'path');
  }
}

/**
 * A directory on the path to a sandbox's rootfs and control socket: the runtime's init runs as
 * the sandbox's unprivileged host ids and must pass through it (group SANDBOX_ID_BASE, --x),
 * while other host users can neither list nor enter it (a sandbox's files are its own).
 */
function sandboxTraversable(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chownSync(dir, 0, SANDBOX_ID_BASE);
  chmodSync(dir, 0o710);
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
