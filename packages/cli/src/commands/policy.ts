/** `airlock policy get | set | test`: policy as code, per tenant (`default`: the server default). */
import { readFile } from 'node:fs/promises';
import { withAdminBackend } from '../admin-backend.js';
import type { BackendOptions } from '../backend.js';
import { UsageError } from '../flags.js';
import { EXIT, formatTable, printJson } from '../output.js';
import { readStdinIfPiped } from '../stdin.js';

type Flags = BackendOptions & { tenant?: string; json?: boolean };

const tenantOf = (flags: Flags) => flags.tenant ?? 'default';

/** A YAML or JSON file (- for stdin), parsed and checked here, so a mistake names its path before anything is sent. */
async function readPolicyFile(file: string): Promise<unknown> {
  const { parsePolicyText } = await import('@airlock/engine');
  return parsePolicyText(await readText(file));
}

async function readText(file: string): Promise<string> {
  if (file === '-') return ((await readStdinIfPiped()) ?? Buffer.alloc(0)).toString('utf8');
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

export async function policyGetCommand(flags: Flags & { version?: number; effective?: boolean }): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    const p = await b.getPolicy(tenantOf(flags), flags.version);
    if (flags.json) {
      printJson(p);
      return EXIT.ok;
    }
    const { policyToYaml } = await import('@airlock/engine');
    const what = p.version === 0 ? 'no policy set yet' : `version ${p.version}, set ${p.createdAt ?? '?'}${p.createdBy ? ` by key ${p.createdBy}` : ''}`;
    const header = flags.effective ? `# effective policy of tenant ${p.tenant} (the server default overlaid by its own, ${what})` : `# policy of ${p.tenant === 'default' ? 'the server default' : `tenant ${p.tenant}`}: ${what}`;
    process.stdout.write(`${header}\n${policyToYaml(flags.effective ? p.effective : p.document)}`);
    return EXIT.ok;
  });
}

export async function policySetCommand(file: string, flags: Flags): Promise<number> {
  const document = await readPolicyFile(file);
  return withAdminBackend(flags, async (b) => {
    const p = await b.setPolicy(tenantOf(flags), document);
    if (flags.json) printJson(p);
    else process.stdout.write(`${p.tenant === 'default' ? 'server default' : `tenant ${p.tenant}`}: policy version ${p.version}\n`);
    return EXIT.ok;
  });
}

/** Exit 0 when the spec would be allowed, 1 when a rule denies it or asks for approval. */
export async function policyTestCommand(specFile: string, flags: Flags & { policy?: string }): Promise<number> {
  let spec: unknown;
  try {
    spec = JSON.parse(await readText(specFile));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${specFile}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new UsageError(`${specFile}: must hold one sandbox spec object`);
  const draft = flags.policy !== undefined ? await readPolicyFile(flags.policy) : undefined;
  return withAdminBackend(flags, async (b) => {
    const r = await b.testPolicy({ tenant: tenantOf(flags), spec: spec as never, ...(draft !== undefined ? { policy: draft } : {}) });
    if (flags.json) printJson(r);
    else {
      process.stdout.write(formatTable(['RULE', 'VERDICT', 'DETAIL'], r.rules.map((x) => [x.rule, x.verdict, x.detail])));
      const v = r.versions;
      const against = draft !== undefined ? 'the draft policy' : `server default v${v.default ?? 0}${r.tenant === 'default' ? '' : `, tenant ${r.tenant} v${v.tenant ?? 0}`}`;
      process.stdout.write(`${r.allowed ? 'allowed' : r.approvalRequired ? 'approval required' : 'denied'} (against ${against})\n`);
    }
    return r.allowed ? EXIT.ok : EXIT.failure;
  });
}
