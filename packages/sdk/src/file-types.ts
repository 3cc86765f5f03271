/** Shapes of the streamed files API, watches and outputs (docs/rest-api.md). */

/** What an upload accepts: whole bytes or text, or a stream (sent as it is read, never gathered). */
export type UploadData = string | Uint8Array | ArrayBuffer | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

export type FileWatchEventType = 'created' | 'modified' | 'deleted' | 'moved' | 'overflow';

/** One change under a watched directory; `overflow`: some were dropped, list again. */
export interface FileWatchEvent {
  type: FileWatchEventType;
  path: string;
  isDir: boolean;
  /** For `moved`: the old path. */
  from?: string;
}

/** Why a watch ended: stopped (by you), removed (the directory went), sandbox_ended, disconnected. */
export type FileWatchEnd = 'stopped' | 'removed' | 'sandbox_ended' | 'disconnected';

export interface OutputEntry {
  /** Relative to the output directory. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: number;
  mtime: string;
  /** Files: hex SHA-256 of the content. */
  sha256?: string;
  /** Symlinks: the target as stored (never followed). */
  linkTarget?: string;
}

export interface OutputsListing {
  /** The output directory inside the sandbox. */
  root: string;
  entries: OutputEntry[];
}
