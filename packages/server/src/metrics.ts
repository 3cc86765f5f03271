/**
 * Prometheus metrics (docs/metering.md): every name starts with `airlock_`. The engine knows
 * nothing of Prometheus; this reads its live state and its event stream.
 */
import type { FastifyInstance } from 'fastify';
import type { AirlockEngine, AuditEvent, Caller, SandboxState } from '@airlock/engine';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

const ADMIN: Caller = { tenant: null };
const LIVE_STATES: SandboxState[] = ['creating', 'running', 'paused'];
const LATENCY_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
/** Sandbox → runtime for latency labels; bounded, as sandboxes come and go. */
const RUNTIME_CACHE_MAX = 4096;

export class AirlockMetrics {
  readonly registry = new Registry();
  private readonly events = new Counter({ name: 'airlock_events_total', help: 'Audit events recorded, by type (rate = events/s)', labelNames: ['type'], registers: [this.registry] });
  private readonly egress = new Counter({ name: 'airlock_egress_connections_total', help: 'Egress proxy connections, by verdict', labelNames: ['verdict'], registers: [this.registry] });
  private readonly dns = new Counter({ name: 'airlock_dns_queries_total', help: 'Sandbox DNS queries, by verdict', labelNames: ['verdict'], registers: [this.registry] });
  private readonly reconcile = new Counter({ name: 'airlock_reconcile_actions_total', help: 'What reconcile did: adopted, ended, removed host objects, fixed states', labelNames: ['action'], registers: [this.registry] });
  private readonly createSeconds = new Histogram({ name: 'airlock_sandbox_create_seconds', help: 'Time from create to a running sandbox', labelNames: ['runtime'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  private readonly execSeconds = new Histogram({ name: 'airlock_exec_seconds', help: 'Exec duration, start to exit', labelNames: ['runtime'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  private readonly runtimes = new Map<string, string>();
  private unsubscribe: (() => void) | null = null;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'airlock_' });
  }

  /** Starts following `engine`: its live sandboxes (read at scrape time) and its events. */
  attach(engine: AirlockEngine): void {
    if (this.unsubscribe) return;
    const registry = this.registry;
    new Gauge({
      name: 'airlock_sandboxes', help: 'Live sandboxes, by state and runtime', labelNames: ['state', 'runtime'], registers: [registry],
      collect() {
        this.reset();
        for (const state of LIVE_STATES) {
          for (const s of engine.listSandboxes(ADMIN, { state })) this.inc({ state, runtime: s.runtime });
        }
      },
    });
    this.unsubscribe = engine.subscribeEvents(ADMIN, {}, (e) => this.onEvent(engine, e));
  }

  /** The engine's log callback passes through here: reconcile reports what it did in one line. */
  engineLog(msg: string, data?: Record<string, unknown>): void {
    if (msg !== 'reconciled' || !data) return;
    for (const action of ['adopted', 'ended', 'removed']) {
      const n = Array.isArray(data[action]) ? (data[action] as unknown[]).length : 0;
      if (n > 0) this.reconcile.inc({ action }, n);
    }
  }

  detach(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  private onEvent(engine: AirlockEngine, e: AuditEvent): void {
    this.events.inc({ type: e.type });
    const d = (e.data ?? {}) as Record<string, unknown>;
    if (e.type === 'sandbox.created' && e.sandbox && typeof d.runtime === 'string') this.remember(e.sandbox, d.runtime);
    else if (e.type === 'sandbox.started' && typeof d.startMs === 'number') this.createSeconds.observe({ runtime: this.runtimeOf(engine, e.sandbox) }, d.startMs / 1000);
    else if (e.type === 'exec.exited' && typeof d.durationMs === 'number') this.execSeconds.observe({ runtime: this.runtimeOf(engine, e.sandbox) }, d.durationMs / 1000);
    else if (e.type === 'net.connect' && typeof d.verdict === 'string') this.egress.inc({ verdict: d.verdict });
    else if (e.type === 'net.dns' && typeof d.verdict === 'string') this.dns.inc({ verdict: d.verdict });
    if (d.reconciled === true) this.reconcile.inc({ action: e.type.replace(/^sandbox\./, '') });
    if (e.sandbox && END_TYPES.has(e.type)) this.runtimes.delete(e.sandbox);
  }

  private remember(sandbox: string, runtime: string): void {
    if (this.runtimes.size >= RUNTIME_CACHE_MAX) this.runtimes.clear();
    this.runtimes.set(sandbox, runtime);
  }

  private runtimeOf(engine: AirlockEngine, sandbox: string | null | undefined): string {
    if (!sandbox) return 'unknown';
    const known = this.runtimes.get(sandbox);
    if (known) return known;
    try {
      const runtime = engine.getSandbox(ADMIN, sandbox).runtime;
      this.remember(sandbox, runtime);
      return runtime;
    } catch {
      return 'unknown';
    }
  }
}

const END_TYPES = new Set(['sandbox.stopped', 'sandbox.killed', 'sandbox.expired', 'sandbox.failed']);

/**
 * GET /metrics in the Prometheus text format. Admin keys only, unless `public` (a scraper on a
 * trusted network): the figures name no tenant, but load and egress verdicts are the operator's.
 */
export function metricsRoute(app: FastifyInstance, engine: AirlockEngine, metrics: AirlockMetrics, isPublic: boolean): void {
  metrics.attach(engine);
  app.addHook('onClose', async () => metrics.detach());
  app.get('/metrics', {
    config: { public: isPublic },
    schema: { tags: ['meta'], summary: 'Prometheus metrics (admin keys, or public with --metrics-public)', hide: false },
  }, async (req, reply) => {
    if (!isPublic && !(req.caller && req.caller.tenant === null && (req.caller.scope ?? 'admin') === 'admin')) {
      return reply.code(403).send({ error: { code: 'forbidden', message: 'only an admin key may read /metrics' } });
    }
    return reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics());
  });
}
