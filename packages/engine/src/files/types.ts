/** Shapes of the streamed files API, file watches and outputs (REST and SDK mirror these). */

export type FileWatchEventType = 'created' | 'modified' | 'deleted' | 'moved' | 'overflow';

/**
 * One change seen by a watch. `overflow`: events were dropped (too many at once, or too many
 * directories to watch); re-list what matters. `path` is absolute inside the sandbox.
 */
export interface FileWatchEvent {
  type: FileWatchEventType;
  path: string;
  isDir: boolean;
  /** For `moved`: the old path. */
  from?: string;
}

/** Why a watch ended. */
export type FileWatchEnd = 'stopped' | 'removed' | 'sandbox_ended';

export interface FileWatchHandle {
  /** Settles once the watch ends; never rejects. */
  done: Promise<FileWatchEnd>;
  stop(): void;
}

/** One entry of a sandbox's outputs, `path` relative to the output directory. */
export interface OutputEntry {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: number;
  mtime: string;
  /** Files only: hex SHA-256 of the bytes, computed while they streamed. */
  sha256?: string;
  /** Symlinks only: the target as stored; never followed. */
  linkTarget?: string;
}

export interface OutputsListing {
  /** The output directory inside the sandbox. */
  root: string;
  entries: OutputEntry[];
}

/** Bytes accepted from a caller: whole, or streamed (no whole-file buffering). */
export type FileData = Buffer | Uint8Array | AsyncIterable<Uint8Array>;
