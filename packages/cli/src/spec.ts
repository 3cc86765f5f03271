/** The sandbox flags shared by `run` and `sandbox create`, already parsed by commander, → the API's SandboxSpecInput. */
import type { SandboxSpecInput } from './backend.js';
import type { MountFlag } from './flags.js';
import type { VolumeFlag } from './volume-flags.js';

export interface SandboxFlags {
  runtime?: 'container' | 'gvisor' | 'microvm';
  template?: string;
  memory?: number;
  cpus?: number;
  pids?: number;
  disk?: number;
  timeout?: number;
  allowHost?: string[];
  denyHost?: string[];
  bandwidth?: number;
  mount?: MountFlag[];
  volume?: VolumeFlag[];
  env?: Record<string, string>;
  workdir?: string;
  outputPath?: string;
  label?: Record<string, string>;
  secret?: string[];
  json?: boolean;
  dataDir?: string;
  dnsUpstream?: string;
}

/** Only what was given is sent: the engine (or the daemon's policy) fills the defaults. */
export function specFromFlags(f: SandboxFlags): SandboxSpecInput {
  const spec: SandboxSpecInput = {};
  if (f.template !== undefined) spec.template = f.template;
  if (f.runtime !== undefined) spec.runtime = f.runtime;
  const resources: NonNullable<SandboxSpecInput['resources']> = {};
  if (f.memory !== undefined) resources.memoryMiB = f.memory;
  if (f.cpus !== undefined) resources.cpus = f.cpus;
  if (f.pids !== undefined) resources.pids = f.pids;
  if (f.disk !== undefined) resources.diskMiB = f.disk;
  if (Object.keys(resources).length > 0) spec.resources = resources;
  if (f.timeout !== undefined) spec.timeoutSeconds = f.timeout;
  if (f.allowHost && f.allowHost.length > 0) spec.network = { allow: [...new Set(f.allowHost)] };
  if (f.denyHost && f.denyHost.length > 0) spec.network = { ...spec.network, deny: [...new Set(f.denyHost)] };
  if (f.bandwidth !== undefined) spec.network = { ...spec.network, bandwidthMbps: f.bandwidth };
  if (f.mount && f.mount.length > 0) spec.mounts = f.mount;
  if (f.volume && f.volume.length > 0) spec.volumes = f.volume;
  if (f.env && Object.keys(f.env).length > 0) spec.env = f.env;
  if (f.workdir !== undefined) spec.workdir = f.workdir;
  if (f.outputPath !== undefined) spec.outputPath = f.outputPath;
  if (f.label && Object.keys(f.label).length > 0) spec.metadata = f.label;
  if (f.secret && f.secret.length > 0) spec.secrets = [...new Set(f.secret)];
  return spec;
}
