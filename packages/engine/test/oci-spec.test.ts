/** The shape of the container tier's OCI spec and seccomp profile (pure; no container runs here). */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { test } from 'node:test';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../src/constants.js';
import { AirlockError } from '../src/errors.js';
import {
  buildOciSpec, cgroupV1Path, detectCgroupMode, KEPT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS,
  type OciSpecOptions,
} from '../src/runtime/oci-spec.js';
import { ALLOWED_SYSCALLS, CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS, seccompProfile } from '../src/runtime/seccomp-profile.js';

/** JSON read back from the spec: shape checked by the assertions themselves. */
type Json = Record<string, any>;

const base: OciSpecOptions = {
  rootfsPath: '/var/lib/airlock/sandboxes/abc/rootfs',
  hostname: 'airlock-abc',
  args: ['/run/airlock/bin/airlock-agent'],
  env: ['PATH=/usr/bin:/bin', 'EMPTY='],
  cwd: '/',
  uidMapBase: SANDBOX_ID_BASE,
  idMapSize: SANDBOX_ID_SIZE,
  resources: { cpus: 0.5, memoryMiB: 256, diskMiB: 1024, pids: 128 },
  cgroupsPath: '/airlock/abc',
  binds: [
    { source: '/var/lib/airlock/sandboxes/abc/ctl', target: '/run/airlock', readOnly: true },
    { source: '/srv/data', target: '/data', readOnly: false },
  ],
};
const spec = (o: Partial<OciSpecOptions> = {}): Json => buildOciSpec({ ...base, ...o }) as Json;

test('every namespace is new, and ids map to the sandbox range', () => {
  const s = spec();
  assert.equal(s.ociVersion, '1.0.2');
  assert.deepEqual(s.linux.namespaces, ['user', 'pid', 'mount', 'ipc', 'uts', 'network', 'cgroup'].map((type) => ({ type })));
  const map = [{ containerID: 0, hostID: SANDBOX_ID_BASE, size: SANDBOX_ID_SIZE }];
  assert.deepEqual(s.linux.uidMappings, map);
  assert.deepEqual(s.linux.gidMappings, map);
  assert.equal(s.hostname, 'airlock-abc');
  assert.deepEqual(s.root, { path: base.rootfsPath, readonly: false });
});

test('process: root inside, kept capabilities only, no_new_privs, rlimits, oomScoreAdj when asked', () => {
  const p = spec().process;
  assert.deepEqual(p.user, { uid: 0, gid: 0, additionalGids: [] });
  assert.equal(p.noNewPrivileges, true);
  assert.equal(p.terminal, false);
  for (const set of ['bounding', 'effective', 'permitted']) assert.deepEqual(p.capabilities[set], KEPT_CAPABILITIES);
  assert.deepEqual(p.capabilities.inheritable, []);
  assert.deepEqual(p.capabilities.ambient, []);
  assert.ok(!KEPT_CAPABILITIES.includes('CAP_SYS_ADMIN') && !KEPT_CAPABILITIES.includes('CAP_NET_RAW'));
  assert.deepEqual(p.rlimits, [
    { type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 },
    { type: 'RLIMIT_CORE', hard: 0, soft: 0 },
  ]);
  assert.equal('oomScoreAdj' in p, false);
  assert.equal(spec({ oomScoreAdj: -1000 }).process.oomScoreAdj, -1000);
});

test('resources: cpu quota from cpus, memory with no swap, pids, devices deny-by-default', () => {
  const r = spec().linux.resources;
  assert.deepEqual(r.cpu, { quota: 50_000, period: 100_000 });
  assert.deepEqual(r.memory, { limit: 256 * 1024 * 1024, swap: 256 * 1024 * 1024 });
  assert.deepEqual(r.pids, { limit: 128 });
  assert.deepEqual(r.devices[0], { allow: false, access: 'rwm' });
  assert.ok(r.devices.slice(1).every((d: Json) => d.allow === true && d.type === 'c'));
  assert.deepEqual(spec({ resources: { ...base.resources, cpus: 2.25 } }).linux.resources.cpu, { quota: 225_000, period: 100_000 });
  // The kernel's floor for a CFS quota is 1 ms.
  assert.equal(spec({ resources: { ...base.resources, cpus: 0.01 } }).linux.resources.cpu.quota, 1_000);
});

test('mounts: read-only sysfs and cgroupfs, private devpts, bounded /dev/shm, binds in order', () => {
  const mounts = spec({ shmSizeMiB: 32 }).mounts as Json[];
  const at = (d: string) => mounts.find((m) => m.destination === d)!;
  assert.ok(at('/sys').options.includes('ro'));
  assert.ok(at('/sys/fs/cgroup').options.includes('ro'));
  assert.ok(at('/dev/pts').options.includes('newinstance'));
  assert.ok(at('/dev/shm').options.includes('size=32m'));
  assert.ok(at('/proc').options.includes('noexec'));
  assert.deepEqual(mounts.slice(-2), [
    { destination: '/run/airlock', type: 'bind', source: base.binds[0]!.source, options: ['bind', 'ro', 'nosuid', 'nodev'] },
    { destination: '/data', type: 'bind', source: '/srv/data', options: ['bind', 'rw', 'nosuid', 'nodev'] },
  ]);
  const s = spec();
  assert.deepEqual(s.linux.maskedPaths, MASKED_PATHS);
  assert.deepEqual(s.linux.readonlyPaths, READONLY_PATHS);
  for (const p of ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/sys/firmware']) assert.ok(MASKED_PATHS.includes(p), p);
  for (const p of ['/proc/sys', '/proc/sysrq-trigger']) assert.ok(READONLY_PATHS.includes(p), p);
});

test('bad options are refused with the field at fault', () => {
  const refuses = (o: Partial<OciSpecOptions>, field: string) => {
    assert.throws(() => spec(o), (e: unknown) => e instanceof AirlockError && e.code === 'bad_request' && e.field === field);
  };
  refuses({ uidMapBase: 0 }, 'uidMapBase');
  refuses({ rootfsPath: 'rootfs' }, 'rootfsPath');
  refuses({ rootfsPath: '/a/../b' }, 'rootfsPath');
  refuses({ hostname: 'bad name' }, 'hostname');
  refuses({ hostname: 'x'.repeat(64) }, 'hostname');
  refuses({ args: [] }, 'args');
  refuses({ env: ['NOEQUALS'] }, 'env');
  refuses({ cwd: 'work' }, 'cwd');
  refuses({ cgroupsPath: '/' }, 'cgroupsPath');
  refuses({ cgroupsPath: '/airlock/../x' }, 'cgroupsPath');
  refuses({ cgroupsPath: '/airlock//x' }, 'cgroupsPath');
  refuses({ resources: { ...base.resources, cpus: 0 } }, 'resources.cpus');
  refuses({ resources: { ...base.resources, memoryMiB: 1.5 } }, 'resources.memoryMiB');
  refuses({ resources: { ...base.resources, pids: 0 } }, 'resources.pids');
  refuses({ binds: [{ source: 'rel', target: '/x', readOnly: true }] }, 'binds[0].source');
  refuses({ binds: [{ source: '/x', target: '/a/../etc', readOnly: true }] }, 'binds[0].target');
  for (const target of ['/', '/proc', '/proc/sys', '/sys/fs/cgroup', '/dev', '/dev/shm/']) {
    refuses({ binds: [{ source: '/x', target, readOnly: true }] }, 'binds[0].target');
  }
  assert.doesNotThrow(() => spec({ binds: [{ source: '/x', target: '/devices', readOnly: true }] }));
  refuses({ oomScoreAdj: -1001 }, 'oomScoreAdj');
  refuses({ shmSizeMiB: 0 }, 'shmSizeMiB');
});

test('seccomp: an EPERM allowlist with no denied syscall in it', () => {
  const s = seccompProfile() as Json;
  assert.equal(s.defaultAction, 'SCMP_ACT_ERRNO');
  assert.equal(s.defaultErrnoRet, 1);
  assert.deepEqual(s.architectures, ['SCMP_ARCH_X86_64']);
  assert.deepEqual((seccompProfile({ compat32: true }) as Json).architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86']);
  assert.equal(new Set(ALLOWED_SYSCALLS).size, ALLOWED_SYSCALLS.length, 'duplicate in allowlist');
  const allowedAnyhow = new Set((s.syscalls as Json[]).filter((r) => r.action === 'SCMP_ACT_ALLOW' && !r.args).flatMap((r) => r.names));
  for (const d of DENIED_SYSCALLS) assert.ok(!allowedAnyhow.has(d), `${d} is allowed`);
  for (const d of ['mount', 'unshare', 'setns', 'ptrace', 'bpf', 'keyctl', 'io_uring_setup', 'userfaultfd', 'finit_module']) {
    assert.ok(DENIED_SYSCALLS.includes(d), d);
  }
  assert.equal(CLONE_NAMESPACE_FLAGS, 0x7e020000);
  const clone = (s.syscalls as Json[]).find((r) => r.names.includes('clone'))!;
  assert.deepEqual(clone.args, [{ index: 0, value: 0x7e020000, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
  const clone3 = (s.syscalls as Json[]).find((r) => r.names.includes('clone3'))!;
  assert.deepEqual([clone3.action, clone3.errnoRet], ['SCMP_ACT_ERRNO', 38]);
  assert.deepEqual(spec().linux.seccomp, s);
});

test('cgroup helpers: the mode matches the kernel mounts, v1 paths sit under a controller mount', () => {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' '));
  const fsAt = (p: string) => mounts.find((m) => m[1] === p)?.[2];
  const mode = detectCgroupMode();
  const expected = fsAt('/sys/fs/cgroup') === 'cgroup2' ? 'v2' : fsAt('/sys/fs/cgroup/unified') === 'cgroup2' ? 'hybrid' : 'v1';
  assert.equal(mode, expected);
  if (mode !== 'v2') {
    for (const [ctl, file] of [['memory', 'memory.limit_in_bytes'], ['cpuacct', 'cpuacct.usage'], ['cpu', 'cpu.shares']] as const) {
      const p = cgroupV1Path(ctl, '/airlock/x');
      assert.ok(p.endsWith('/airlock/x'), p);
      assert.ok(existsSync(`${dirname(dirname(p))}/${file}`), `${p}: not under a ${ctl} mount`);
    }
  }
  assert.throws(() => cgroupV1Path('memory', 'airlock/x'), AirlockError);
  assert.throws(() => cgroupV1Path('../memory', '/airlock/x'), AirlockError);
});
