/**
 * The effective policy of a tenant: the server default overlaid by the tenant's own document.
 * Within each section the tenant's fields replace the default's (an operator who writes a
 * tenant policy means it), except floors, where the stronger wins: runtimes.minimum. In the
 * network section allowCeiling and allowAny exclude each other, so setting one drops the
 * other inherited from the default. The operator's EngineOptions (mountPolicy, runtimePolicy)
 * stay outside both: a policy can narrow them, never widen them.
 */
import { RUNTIME_ORDER, type RuntimeName } from '../types.js';
import type { PolicyDocument } from './schema.js';

const rank = (r: RuntimeName): number => RUNTIME_ORDER.indexOf(r);
export const strongerRuntime = (a: RuntimeName, b: RuntimeName): RuntimeName => (rank(a) >= rank(b) ? a : b);

type Section = Exclude<keyof PolicyDocument, 'description'>;
const SECTIONS: Section[] = ['runtimes', 'resources', 'templates', 'network', 'mounts', 'lifetime', 'exec', 'approvals', 'quotas', 'detectors', 'evidence'];

export function mergePolicies(base: PolicyDocument | null, over: PolicyDocument | null): PolicyDocument {
  const out: Record<string, unknown> = {};
  for (const s of SECTIONS) {
    const a = base?.[s] as Record<string, unknown> | undefined;
    const b = over?.[s] as Record<string, unknown> | undefined;
    if (!a && !b) continue;
    const merged: Record<string, unknown> = { ...(a ?? {}), ...(b ?? {}) };
    if (s === 'network' && b) {
      if (b.allowAny === true) delete merged.allowCeiling;
      if (b.allowCeiling !== undefined) delete merged.allowAny;
    }
    if (s === 'runtimes' && a?.minimum && b?.minimum) {
      merged.minimum = strongerRuntime(a.minimum as RuntimeName, b.minimum as RuntimeName);
    }
    out[s] = merged;
  }
  return out as PolicyDocument;
}
