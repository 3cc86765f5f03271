/**
 * Which isolation tier a sandbox may use. The operator sets a floor (e.g. untrusted tenants get
 * gvisor or microvm only); a spec may ask for a stronger tier, never a weaker one. A spec that
 * names no runtime gets the default, raised to the floor.
 */
import { AirlockError } from '../errors.js';
import { RUNTIME_ORDER, type RuntimeName } from '../types.js';
import { PolicyDeniedError } from '../storage/mount-policy.js';

export interface RuntimePolicy {
  /** The weakest tier any sandbox may use (default: container, i.e. any). */
  minimum?: RuntimeName;
  /** Floors per tenant; the stronger of a tenant's and `minimum` applies. */
  tenants?: Record<string, RuntimeName>;
  /** The tier of a spec that names none (default container), raised to the caller's floor. */
  default?: RuntimeName;
}

/** Data of the `policy.denied` event of a refused runtime. */
export interface RuntimeDenial {
  field: 'runtime';
  requested: RuntimeName;
  minimum: RuntimeName;
}

const rank = (r: RuntimeName): number => RUNTIME_ORDER.indexOf(r);
const stronger = (a: RuntimeName, b: RuntimeName): RuntimeName => (rank(a) >= rank(b) ? a : b);

export function isRuntimeName(v: unknown): v is RuntimeName {
  return typeof v === 'string' && (RUNTIME_ORDER as readonly string[]).includes(v);
}

export class RuntimePolicyChecker {
  private readonly minimum: RuntimeName;
  private readonly tenants: ReadonlyMap<string, RuntimeName>;
  private readonly fallback: RuntimeName;

  /** Refuses a policy that names an unknown tier, or whose floor no installed tier can meet. */
  constructor(policy: RuntimePolicy = {}, private readonly available: readonly RuntimeName[]) {
    for (const [what, v] of [['minimum', policy.minimum], ['default', policy.default], ...Object.entries(policy.tenants ?? {}).map(([t, r]) => [`tenants.${t}`, r])] as Array<[string, unknown]>) {
      if (v !== undefined && !isRuntimeName(v)) throw new AirlockError('bad_request', `runtime policy ${what}: ${JSON.stringify(v)} is not one of ${RUNTIME_ORDER.join(', ')}`);
    }
    this.minimum = policy.minimum ?? 'container';
    this.tenants = new Map(Object.entries(policy.tenants ?? {}));
    this.fallback = policy.default ?? 'container';
    const floors = [this.minimum, ...this.tenants.values()];
    for (const floor of floors) {
      if (!available.some((r) => rank(r) >= rank(floor))) {
        throw new AirlockError('unavailable', `runtime policy requires ${floor} or stronger, but this host has only ${available.join(', ')}`);
      }
    }
  }

  /** The weakest tier this tenant may use. */
  floorFor(tenant: string): RuntimeName {
    const own = this.tenants.get(tenant);
    return own ? stronger(own, this.minimum) : this.minimum;
  }

  /**
   * The runtime a new sandbox gets: the one asked for if the policy allows it, else a
   * PolicyDeniedError naming the floor; none asked for: the default raised to the floor (then to
   * the weakest installed tier at or above it).
   */
  choose(tenant: string, requested: RuntimeName | undefined): RuntimeName {
    const floor = this.floorFor(tenant);
    if (requested !== undefined) {
      if (rank(requested) < rank(floor)) {
        throw new PolicyDeniedError<RuntimeDenial>(`runtime ${requested} is below this installation's minimum for tenant ${tenant}: use ${RUNTIME_ORDER.filter((r) => rank(r) >= rank(floor)).join(' or ')}`, {
          field: 'runtime', requested, minimum: floor,
        });
      }
      return requested;
    }
    const wanted = stronger(this.fallback, floor);
    return this.available.find((r) => rank(r) >= rank(wanted)) ?? wanted;
  }
}
