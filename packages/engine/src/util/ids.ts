import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * 12 lowercase alphanumerics (~62 bits): short enough for kernel names with a prefix
 * (interface names are limited to 15 bytes), long enough that guessing another tenant's id is hopeless.
 */
export function newSandboxId(): string {
  const bytes = randomBytes(12);
  let id = '';
  for (const b of bytes) id += ALPHABET[b % 36];
  return id;
}

export const SANDBOX_ID_RE = /^[a-z0-9]{12}$/;

export function newToken(): string {
  return randomBytes(32).toString('hex');
}

/**
 * An exec's id: the sandbox, the agent channel and a random part. Channels restart with every
 * agent connection (an engine restart, or each embedded CLI process), so the channel alone
 * would name two execs alike.
 */
export function newExecId(sandbox: string, channel: number): string {
  return `${sandbox}-${channel}-${randomBytes(3).toString('hex')}`;
}
