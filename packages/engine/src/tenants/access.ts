/**
 * Key scopes, enforced in the engine (the library is the boundary; airlockd is a thin shell).
 * Every engine method that takes a Caller has one entry in METHOD_ACCESS; the type makes a new
 * such method fail to compile until it is classified, so nothing is reachable by accident.
 *
 * Order of checks, so that nothing leaks: an exec key naming any sandbox but its own gets 404
 * (exactly what an unknown id gets); then a scope that may not call the method gets 403; then the
 * method's own ownership check answers 404 for another tenant's resources.
 */
import type { AirlockEngine, Caller, CallerScope } from '../engine-api.js';
import { forbidden, notFound } from '../errors.js';

/** The scope a caller acts with; callers built without one keep their old meaning. */
export function scopeOf(caller: Caller): CallerScope {
  if (caller.scope) return caller.scope === 'admin' && caller.tenant !== null ? 'tenant' : caller.scope;
  return caller.tenant === null ? 'admin' : 'tenant';
}

export function isAdmin(caller: Caller): boolean {
  return scopeOf(caller) === 'admin' && caller.tenant === null;
}

export function requireAdmin(caller: Caller, what: string): void {
  if (!isAdmin(caller)) throw forbidden(`only an admin key may ${what}`);
}

type CallerMethod = {
  [K in keyof AirlockEngine]: AirlockEngine[K] extends (...a: never[]) => unknown
    ? (Parameters<AirlockEngine[K]>[0] extends Caller ? K : never)
    : never;
}[keyof AirlockEngine];

interface Rule {
  /** Scopes that may call it. */
  scopes: readonly CallerScope[];
  /** Its second argument is a sandbox id (an exec key is bound to one). */
  sandboxArg: boolean;
  /** It returns a promise: a refusal is a rejection, not a throw. */
  async: boolean;
}

const EVERYONE_IN_TENANT: readonly CallerScope[] = ['admin', 'tenant', 'read'];
const WRITERS: readonly CallerScope[] = ['admin', 'tenant'];
/** Use of one sandbox: exec, writing files. */
const SANDBOX_USERS: readonly CallerScope[] = ['admin', 'tenant', 'exec'];
/** Looking at one sandbox: get, read files, processes, outputs. */
const SANDBOX_READERS: readonly CallerScope[] = ['admin', 'tenant', 'read', 'exec'];
const ADMIN: readonly CallerScope[] = ['admin'];

const r = (scopes: readonly CallerScope[], sandboxArg: boolean, async: boolean): Rule => ({ scopes, sandboxArg, async });

export const METHOD_ACCESS: Record<CallerMethod, Rule> = {
  createSandbox: r(WRITERS, false, true),
  getSandbox: r(SANDBOX_READERS, true, false),
  listSandboxes: r(EVERYONE_IN_TENANT, false, false),
  killSandbox: r(WRITERS, true, true),
  setSandboxTimeout: r(WRITERS, true, true),
  pauseSandbox: r(WRITERS, true, true),
  resumeSandbox: r(WRITERS, true, true),
  updateNetwork: r(WRITERS, true, true),
  exec: r(SANDBOX_USERS, true, true),
  execBackground: r(SANDBOX_USERS, true, true),
  openPty: r(SANDBOX_USERS, true, true),
  listProcesses: r(SANDBOX_READERS, true, true),
  snapshotProcesses: r(SANDBOX_READERS, true, true),
  sandboxHistory: r(SANDBOX_READERS, true, false),
  // Blobs are named by content, not sandbox: an exec key (bound to one sandbox) may not read them.
  readBlob: r(EVERYONE_IN_TENANT, false, false),
  killProcess: r(SANDBOX_USERS, true, true),
  readFile: r(SANDBOX_READERS, true, true),
  readFileStream: r(SANDBOX_READERS, true, true),
  writeFile: r(SANDBOX_USERS, true, true),
  listDir: r(SANDBOX_READERS, true, true),
  statPath: r(SANDBOX_READERS, true, true),
  deletePath: r(SANDBOX_USERS, true, true),
  makeDir: r(SANDBOX_USERS, true, true),
  renamePath: r(SANDBOX_USERS, true, true),
  watchFiles: r(SANDBOX_READERS, true, true),
  outputsTar: r(SANDBOX_READERS, true, true),
  outputsList: r(SANDBOX_READERS, true, true),
  createVolume: r(WRITERS, false, true),
  listVolumes: r(EVERYONE_IN_TENANT, false, false),
  getVolume: r(EVERYONE_IN_TENANT, false, false),
  deleteVolume: r(WRITERS, false, true),
  listEvents: r(EVERYONE_IN_TENANT, false, false),
  subscribeEvents: r(EVERYONE_IN_TENANT, false, false),
  // Usage: a tenant's own figures (the method confines a tenant key to its tenant).
  usage: r(EVERYONE_IN_TENANT, false, false),
  // The whole log spans every tenant: verifying it is the operator's.
  verifyAudit: r(ADMIN, false, false),
  auditPublicKey: r(ADMIN, false, false),
  exportAudit: r(ADMIN, false, false),
  createTenant: r(ADMIN, false, false),
  listTenants: r(ADMIN, false, false),
  deleteTenant: r(ADMIN, false, false),
  createKey: r(ADMIN, false, false),
  listKeys: r(ADMIN, false, false),
  revokeKey: r(ADMIN, false, false),
  setPolicy: r(ADMIN, false, false),
  // A tenant may read and dry-run its own policy (the methods refuse any other tenant's).
  getPolicy: r(EVERYONE_IN_TENANT, false, false),
  testPolicy: r(EVERYONE_IN_TENANT, false, false),
  // Secrets: writing needs a tenant (or admin) key; listing shows no value, so readers may list.
  setSecret: r(WRITERS, false, false),
  listSecrets: r(EVERYONE_IN_TENANT, false, false),
  deleteSecret: r(WRITERS, false, false),
  // Approvals (docs/approvals.md): the methods show a tenant only its own requests. Approving
  // is the operator's: a tenant key is what the gated agent itself holds, so letting it approve
  // would undo the gate. Denying only takes power away, so a tenant may refuse its own requests.
  listApprovals: r(EVERYONE_IN_TENANT, false, false),
  getApproval: r(EVERYONE_IN_TENANT, false, false),
  approveApproval: r(ADMIN, false, false),
  denyApproval: r(WRITERS, false, false),
};

/** Throws the refusal for this call, or returns when the caller's scope allows it. */
export function checkAccess(method: CallerMethod, caller: Caller, args: readonly unknown[]): void {
  const rule = METHOD_ACCESS[method];
  const scope = scopeOf(caller);
  if (scope === 'exec' && rule.sandboxArg && args[0] !== caller.sandbox) throw notFound('sandbox', String(args[0]));
  if (!rule.scopes.includes(scope)) {
    throw forbidden(`a ${scope} key may not call ${method}${scope === 'exec' ? ' (exec keys may only get, exec in and use the files of their one sandbox)' : scope === 'read' ? ' (read-only key)' : ''}`);
  }
}

/**
 * Puts checkAccess in front of every Caller method of `engine` (own properties shadowing the
 * prototype's), so each call is checked before the method runs, whoever calls it.
 */
export function guardCallerMethods(engine: AirlockEngine): void {
  const target = engine as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const method of Object.keys(METHOD_ACCESS) as CallerMethod[]) {
    const original = target[method];
    if (typeof original !== 'function') throw new Error(`engine has no method ${method}`);
    const { async } = METHOD_ACCESS[method];
    target[method] = function guarded(this: unknown, caller: unknown, ...args: unknown[]) {
      try {
        checkAccess(method, caller as Caller, args);
      } catch (e) {
        if (async) return Promise.reject(e);
        throw e;
      }
      return original.call(engine, caller, ...args);
    };
  }
}
