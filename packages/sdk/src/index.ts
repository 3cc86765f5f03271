export { ApiClient, type ClientOptions, type ExecStreamHandlers } from './client.js';
export { ApiError } from './errors.js';
export { NdjsonParser } from './ndjson.js';
export { SseParser, type SseMessage } from './sse.js';
export {
  Sandbox, Commands, Files,
  type SandboxCreateOptions, type CommandOptions, type CommandResult, type BackgroundCommand,
} from './sandbox.js';
export { Volume } from './volume.js';
export { Secret } from './secret.js';
export type * from './secret-types.js';
export { Pty, PtyHandle, openPty, type PtyCreateOptions, type PtyResult, type PtySize } from './pty.js';
export type * from './types.js';
export type * from './volume-types.js';
export type * from './file-types.js';
export { iterableToStream } from './file-streams.js';
export type * from './tenant-types.js';
export type * from './approval-types.js';
export type { ExecRecord, HistoryEntry, RecordedStream } from './record-types.js';
export type * from './usage-types.js';
