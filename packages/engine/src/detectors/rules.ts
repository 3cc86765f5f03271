/**
 * Detector rules: pure functions from one audit event to the alert it raises, if any. Stateful
 * thresholds (repeated denials, repeated OOMs) are counted by the DetectorEngine.
 */
import type { AuditEvent } from '../types.js';

export const DETECTOR_NAMES = [
  'metadata_access', 'private_address', 'dns_exfiltration', 'credential_read', 'fork_bomb', 'memory_bomb', 'repeated_denials',
] as const;
export type DetectorName = (typeof DETECTOR_NAMES)[number];

/** An alert a single event raises: which detector, a subject that deduplicates it, what to record. */
export interface Finding {
  detector: DetectorName;
  subject: string;
  data: Record<string, unknown>;
}

/** Block-list reasons (network/blocked-addresses.ts) that mean "an internal address". */
const PRIVATE_REASONS = new Set(['private', 'cgnat', 'loopback', 'this-network', 'ula', 'host-address']);

function isMetadataAddress(address: string): boolean {
  return /^169\.254\./.test(address) || /^fe80:/i.test(address) || /^fd00:ec2::254$/i.test(address);
}

function isPrivateAddress(address: string): boolean {
  const m = /^(\d+)\.(\d+)\.\d+\.\d+$/.exec(address);
  if (!m) return /^f[cd]/i.test(address) || address === '::1';
  const a = Number(m[1]); const b = Number(m[2]);
  return a === 10 || a === 127 || a === 0 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127);
}

/** Credential-like paths: SSH keys and config, dotenv files, PEM keys, cloud and netrc credentials. */
const CREDENTIAL_PATTERNS: readonly RegExp[] = [
  /(^|\/)\.ssh(\/|$)/,
  /(^|\/)\.env(\.[^/]*)?$/,
  /\.pem$/i,
  /(^|\/)id_(rsa|dsa|ecdsa|ed25519)[^/]*$/,
  /(^|\/)\.aws\/credentials$/,
  /(^|\/)\.netrc$/,
];

export function isCredentialPath(path: string): boolean {
  return CREDENTIAL_PATTERNS.some((re) => re.test(path));
}

/** The alert one event raises on its own (null for most events). */
export function immediateFinding(e: AuditEvent): Finding | null {
  const d = e.data;
  switch (e.type) {
    case 'net.connect': {
      if (d.verdict === 'allow' || d.verdict === 'cut') return null;
      const address = typeof d.address === 'string' ? d.address : '';
      const reason = typeof d.reason === 'string' ? d.reason : '';
      const base = { address, port: d.port ?? null, name: d.name ?? null, reason, eventSeq: e.seq };
      if (reason === 'link-local' || isMetadataAddress(address)) return { detector: 'metadata_access', subject: address, data: base };
      if (PRIVATE_REASONS.has(reason) || (reason !== '' && isPrivateAddress(address))) return { detector: 'private_address', subject: address, data: base };
      return null;
    }
    case 'net.dns': {
      const flags = Array.isArray(d.flags) ? d.flags.filter((f): f is string => typeof f === 'string') : [];
      if (!flags.length) return null;
      // Subject: the queried zone (last two labels), so one tunnel is one alert however many names it uses.
      const name = typeof d.name === 'string' ? d.name : '';
      const zone = name.split('.').filter(Boolean).slice(-2).join('.') || '(flood)';
      return { detector: 'dns_exfiltration', subject: zone, data: { name: name.slice(0, 255), flags, verdict: d.verdict ?? null, eventSeq: e.seq } };
    }
    case 'file.read': {
      const path = typeof d.path === 'string' ? d.path : '';
      if (!isCredentialPath(path)) return null;
      // `via`: the files API, or 'sandbox' for an open by the sandbox's own processes (telemetry/credential-reads.ts).
      const via = typeof d.via === 'string' ? d.via : 'files-api';
      const opener = via === 'sandbox' ? { pid: d.pid ?? null, comm: d.comm ?? null } : {};
      return { detector: 'credential_read', subject: path, data: { path, via, ...opener, eventSeq: e.seq } };
    }
    case 'limit.pids':
      return { detector: 'fork_bomb', subject: 'pids', data: { limit: d.limit ?? null, hits: d.hits ?? null, eventSeq: e.seq } };
    default:
      return null;
  }
}

/** Events that count towards repeated_denials. */
export function isDenial(e: AuditEvent): boolean {
  if (e.type === 'policy.denied') return true;
  // Refusals for the client's own faults (no SNI, timeouts) are not denials of something it asked for.
  if (e.type === 'net.connect' || e.type === 'net.dns') return e.data.verdict === 'deny' || e.data.verdict === 'not-allowed';
  return false;
}
