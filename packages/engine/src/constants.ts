/**
 * Host uid/gid range that sandbox ids map to: uid 0 inside a sandbox is SANDBOX_ID_BASE on the host.
 * Far above any login or subuid range a distribution hands out, so a sandbox's files and
 * processes belong to nobody real on the host.
 */
export const SANDBOX_ID_BASE = 900_000_000;
export const SANDBOX_ID_SIZE = 65_536;

/** Where the agent binary and the control socket appear inside every sandbox. */
export const AGENT_PATH_IN_SANDBOX = '/run/airlock/bin/airlock-agent';
export const CONTROL_DIR_IN_SANDBOX = '/run/airlock';
export const HOST_SOCKET_NAME = 'host.sock';

export const DEFAULT_DATA_DIR = '/var/lib/airlock';
