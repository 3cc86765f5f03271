import { realpathSync, statSync } from 'node:fs';
import { isAbsolute, posix } from 'node:path';
import { AirlockError, badRequest } from '../errors.js';
import type { MountSpec } from '../types.js';

/** What an operator allows sandboxes to bind from the host (EngineOptions.mountPolicy, `airlock serve --mount-allow`). */
export interface MountPolicy {
  /** false: every host mount is read-only, a `readOnly: false` request is denied. Default true. */
  allowReadWrite?: boolean;
  /** Host paths under which sources must lie (after links are resolved). Default: anywhere. */
  allowedHostPrefixes?: string[];
}

/** Data of a `policy.denied` event. */
export interface DenialDetail {
  field: string;
  rule: 'read_write_forbidden' | 'outside_allowed_prefixes' | 'airlock_internal';
  source: string;
  target: string;
  readOnly: boolean;
}

/** A 422 that carries what the audit event records. */
export class PolicyDeniedError<D extends { field: string } = DenialDetail> extends AirlockError {
  constructor(message: string, readonly detail: D) {
    super('policy_denied', message, detail.field);
  }
}

/** Where a sandbox must never bind anything: the kernel's file systems and the agent's own directory. */
export const RESERVED_TARGETS = ['/proc', '/sys', '/dev', '/run/airlock'];

/** `a` is `b` or lies below it, on path-component boundaries (/data does not contain /database). */
export function isWithin(a: string, b: string): boolean {
  return b === '/' || a === b || a.startsWith(b + '/');
}

function resolveHost(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return posix.normalize(p).replace(/\/+$/, '') || '/';
  }
}

/** A sandbox path for a bind or volume: absolute, no `..`, not / and not a reserved tree. Normalized. */
export function checkTarget(target: string, field: string): string {
  if (!isAbsolute(target) || target.split('/').includes('..')) throw badRequest(`${field}: must be an absolute path without ..`, field);
  const t = posix.normalize(target).replace(/\/+$/, '') || '/';
  if (t === '/' || RESERVED_TARGETS.some((r) => isWithin(t, r))) throw badRequest(`${field}: ${target} is reserved`, field);
  return t;
}

/**
 * Checks host mounts against the policy. Sources are compared after realpath, so a link cannot
 * smuggle a path past a prefix, and what was checked is what gets bound. Airlock's own
 * directories (data dir, templates) can never be bound, nor any directory holding them: a
 * sandbox that saw them could read other sandboxes' layers or rewrite shared templates.
 */
export class MountPolicyChecker {
  private readonly allowReadWrite: boolean;
  private readonly prefixes: string[] | null;
  private readonly internal: string[];

  constructor(policy: MountPolicy = {}, internalPaths: string[] = []) {
    this.allowReadWrite = policy.allowReadWrite ?? true;
    if (policy.allowedHostPrefixes !== undefined) {
      for (const p of policy.allowedHostPrefixes) {
        if (typeof p !== 'string' || !isAbsolute(p)) throw new Error(`mountPolicy.allowedHostPrefixes: ${String(p)} is not an absolute path`);
      }
      this.prefixes = policy.allowedHostPrefixes.map(resolveHost);
    } else {
      this.prefixes = null;
    }
    this.internal = internalPaths.map(resolveHost);
  }

  describe(): { allowReadWrite: boolean; allowedHostPrefixes: string[] | null } {
    return { allowReadWrite: this.allowReadWrite, allowedHostPrefixes: this.prefixes };
  }

  /** Resolved mounts, or a PolicyDeniedError (422) / 400 naming the first mount at fault. */
  check(mounts: MountSpec[]): MountSpec[] {
    return mounts.map((m, i) => {
      const field = `mounts.${i}`;
      if (m.source.split('/').includes('..')) throw badRequest(`${field}.source: must not contain ..`, `${field}.source`);
      const target = checkTarget(m.target, `${field}.target`);
      let source: string;
      try {
        source = realpathSync(m.source);
        statSync(source);
      } catch {
        throw badRequest(`${field}.source: ${m.source} does not exist on the host`, `${field}.source`);
      }
      const deny = (rule: DenialDetail['rule'], why: string): never => {
        throw new PolicyDeniedError(`${field}: ${m.source} → ${m.target} denied: ${why}`, { field, rule, source, target, readOnly: m.readOnly });
      };
      if (this.internal.some((p) => isWithin(source, p) || isWithin(p, source))) {
        deny('airlock_internal', 'it holds or is inside Airlock\'s own data');
      }
      if (this.prefixes && !this.prefixes.some((p) => isWithin(source, p))) {
        deny('outside_allowed_prefixes', `${source} is not under an allowed host path (${this.prefixes.join(', ') || 'none allowed'})`);
      }
      if (!m.readOnly && !this.allowReadWrite) deny('read_write_forbidden', 'read-write host mounts are not allowed here; mount it read-only');
      return { source, target, readOnly: m.readOnly };
    });
  }
}
