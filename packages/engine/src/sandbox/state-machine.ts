import type { SandboxState } from '../types.js';
import { AirlockError } from '../errors.js';

/** The lifecycle: creating → running ⇄ paused → stopped | killed | expired | failed. */
const NEXT: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['running', 'failed', 'killed', 'expired'],
  running: ['paused', 'stopped', 'killed', 'expired', 'failed'],
  paused: ['running', 'stopped', 'killed', 'expired', 'failed'],
  stopped: [],
  killed: [],
  expired: [],
  failed: [],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return NEXT[from].includes(to);
}

export function assertTransition(id: string, from: SandboxState, to: SandboxState): void {
  if (!canTransition(from, to)) {
    throw new AirlockError('conflict', `sandbox ${id} is ${from}; cannot become ${to}`);
  }
}

export function isTerminal(s: SandboxState): boolean {
  return NEXT[s].length === 0;
}

export function isLive(s: SandboxState): boolean {
  return s === 'running' || s === 'paused';
}
