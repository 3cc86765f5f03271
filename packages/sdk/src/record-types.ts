/** Exec records and sandbox history (docs/records.md), as GET /v1/sandboxes/{id}/history answers. */
export interface RecordedStream {
  bytes: number;
  /** The recorded part's blob (ApiClient.readBlob); null when output is not recorded. */
  sha256: string | null;
  stored: number;
  truncated: boolean;
}

export interface ExecRecord {
  execId: string;
  sandbox: string;
  tenant: string;
  cmd: string[];
  /** Names only; values are never recorded. */
  envNames: string[];
  cwd: string;
  user: string | null;
  pty: boolean;
  /** A background exec (its output is not captured: streams are empty). */
  background?: boolean;
  startedAt: string;
  endedAt: string;
  exitCode: number;
  reason: string;
  stdout: RecordedStream;
  stderr: RecordedStream;
}

export type HistoryEntry =
  | { ts: string; kind: 'exec'; exec: ExecRecord }
  | { ts: string; kind: 'event'; seq: number; type: string; data: Record<string, unknown> };
