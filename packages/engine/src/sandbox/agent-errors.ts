import { AirlockError } from '../errors.js';
import { AgentDisconnectedError, AgentError } from '../agent/agent-link.js';

const ERRNO_MESSAGES: Record<number, [AirlockError['code'], string]> = {
  2: ['not_found', 'no such file or directory'],
  3: ['not_found', 'no such process'],
  11: ['quota_exceeded', 'the sandbox reached its process limit (pids)'],
  12: ['quota_exceeded', 'the sandbox is out of memory'],
  13: ['forbidden', 'permission denied'],
  16: ['bad_request', 'refusing to act on / or a busy mount point'],
  17: ['conflict', 'already exists'],
  18: ['bad_request', 'cannot move across mount points'],
  20: ['bad_request', 'a component of the path is not a directory'],
  21: ['bad_request', 'is a directory'],
  24: ['quota_exceeded', 'too many file operations or watches open in the sandbox'],
  27: ['too_large', 'file too large'],
  28: ['too_large', 'no space left in the sandbox (disk quota reached)'],
  36: ['bad_request', 'path too long'],
  39: ['conflict', 'directory not empty'],
  40: ['bad_request', 'path is a symbolic link (links are never followed)'],
};

/** Turns what the agent or the link reported into the error the API answers with. */
export function mapAgentError(e: unknown, path?: string): AirlockError {
  if (e instanceof AirlockError) return e;
  if (e instanceof AgentDisconnectedError) return new AirlockError('conflict', 'the sandbox is not running (its agent is gone)');
  if (e instanceof AgentError) {
    const known = ERRNO_MESSAGES[e.errno];
    const where = path ? `${path}: ` : '';
    if (known) return new AirlockError(known[0], `${where}${known[1]}`);
    return new AirlockError('bad_request', `${where}${e.message || `error ${e.errno}`}`);
  }
  return new AirlockError('internal', e instanceof Error ? e.message : String(e));
}
