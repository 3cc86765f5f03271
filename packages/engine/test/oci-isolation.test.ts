/**
 * The container tier's isolation, checked against the real kernel with raw runc: a busybox
 * root, the spec from buildOciSpec, and probes that try to get out. Every probe is harmless
 * if it succeeds (see oci-probe.c). Needs root, runc, /bin/busybox and gcc with static libc.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, lchownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SANDBOX_ID_BASE } from '../src/constants.js';
import { detectCgroupMode, hostCanLowerOomScoreAdj, KEPT_CAPABILITIES } from '../src/runtime/oci-spec.js';
import { run } from '../src/util/run.js';
import {
  type Bundle, cgroupFile, cleanup, cpuSeconds, makeBusyboxBundle, probe, readKeyed, ROOTFS_ENTRIES, sh,
} from './oci-harness.js';
import { C_WORKLOAD, NODE_WORKLOAD, PYTHON_WORKLOAD } from './oci-workloads.js';

/** Capability numbers of the kept set (linux/capability.h). */
const CAP_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0, CAP_DAC_OVERRIDE: 1, CAP_FOWNER: 3, CAP_FSETID: 4, CAP_KILL: 5, CAP_SETGID: 6,
  CAP_SETUID: 7, CAP_SETPCAP: 8, CAP_NET_BIND_SERVICE: 10,
};

let b: Bundle | undefined;
const bundle = (): Bundle => { assert.ok(b, 'bundle was not built'); return b; };

before(async () => { b = await makeBusyboxBundle(); });
after(async () => { await cleanup(b); });

describe('namespaces', () => {
  test('sees only its own processes', async () => {
    // Builtins only (read, echo), so the listing itself starts no process.
    const r = await sh(bundle(), 'for d in /proc/[0-9]*; do read c < $d/comm; echo "${d#/proc/} $c"; done');
    assert.equal(r.stdout, '1 sh\n');
    assert.equal(r.stderr, '');
  });

  test('has the hostname it was given', async () => {
    const r = await sh(bundle(), 'hostname; cat /proc/sys/kernel/hostname', { overrides: { hostname: 'airlock-h0stname' } });
    assert.equal(r.stdout, 'airlock-h0stname\nairlock-h0stname\n');
  });

  test('has only lo, and cannot reconfigure it', async () => {
    const r = await sh(bundle(), [
      'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "',
      'ls /sys/class/net',
      'ip link set lo down; echo down=$?',
      'ip addr add 192.0.2.1/24 dev lo; echo addr=$?',
    ].join('; '));
    assert.equal(r.stdout, 'lo\nlo\ndown=2\naddr=2\n');
    assert.equal(r.stderr, 'ip: SIOCSIFFLAGS: Operation not permitted\nip: RTNETLINK answers: Operation not permitted\n');
  });

  test('sees none of the host files outside its root', async () => {
    const bb = bundle();
    writeFileSync(join(bb.dir, 'airlock-host-secret'), 'secret\n');
    const r = await sh(bb, [
      'ls /',
      `[ -e ${bb.dir}/airlock-host-secret ] && echo LEAK-BY-PATH`,
      'ls /proc/1/root/ | tr "\\n" " "; echo',
      'cat /etc/passwd',
    ].join('; '));
    assert.equal(r.stdout, `${ROOTFS_ENTRIES.join('\n')}\n${ROOTFS_ENTRIES.join(' ')} \nroot:x:0:0:root:/:/bin/sh\n`);
  });

  test('runs as uid 0 mapped to SANDBOX_ID_BASE, with the kept capabilities, no_new_privs and seccomp', async () => {
    const r = await sh(bundle(), [
      'id -u',
      'cat /proc/self/uid_map /proc/self/gid_map',
      'grep -E "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status',
    ].join('; '));
    const mask = KEPT_CAPABILITIES.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c]!)), 0n);
    const hex = mask.toString(16).padStart(16, '0');
    const lines = r.stdout.split('\n').map((l) => l.trim().replace(/\s+/g, ' '));
    assert.deepEqual(lines, [
      '0',
      `0 ${SANDBOX_ID_BASE} 65536`,
      `0 ${SANDBOX_ID_BASE} 65536`,
      'CapInh: 0000000000000000',
      `CapPrm: ${hex}`,
      `CapEff: ${hex}`,
      `CapBnd: ${hex}`,
      'CapAmb: 0000000000000000',
      'NoNewPrivs: 1',
      'Seccomp: 2',
      '',
    ]);
    assert.equal(hex, '00000000000005fb');
  });

  test('processes belong to SANDBOX_ID_BASE on the host', async () => {
    let hostUid = -1;
    await sh(bundle(), 'echo ready; sleep 5', {
      whileRunning: async (c) => {
        const pids = readFileSync(cgroupFile('pids', c.cgroupsPath, 'cgroup.procs', 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
        assert.ok(pids.length >= 1);
        hostUid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pids[0]}/status`, 'utf8'))![1]);
        await run('runc', ['--root', bundle().runcRoot, 'kill', c.id, 'KILL'], { allowFailure: true });
      },
    });
    assert.equal(hostUid, SANDBOX_ID_BASE);
  });
});

describe('escapes that must fail', () => {
  test('mount -t tmpfs', async () => {
    const r = await sh(bundle(), 'mount -t tmpfs x /mnt; echo rc=$?; grep -c " /mnt " /proc/mounts');
    assert.equal(r.stdout, 'rc=1\n0\n');
    assert.equal(r.stderr, 'mount: permission denied (are you root?)\n');
  });

  test('unshare -U and unshare -n', async () => {
    const r = await sh(bundle(), 'unshare -U true; echo user=$?; unshare -n true; echo net=$?');
    assert.equal(r.stdout, 'user=1\nnet=1\n');
    assert.equal(r.stderr, 'unshare: unshare(0x10000000): Operation not permitted\nunshare: unshare(0x40000000): Operation not permitted\n');
  });

  test('insmod', async () => {
    const r = await sh(bundle(), 'echo airlock > /tmp/dummy.ko; insmod /tmp/dummy.ko; echo rc=$?');
    assert.equal(r.stdout, 'rc=1\n');
    assert.equal(r.stderr, "insmod: can't insert '/tmp/dummy.ko': Operation not permitted\n");
  });

  test("writing 'h' to /proc/sysrq-trigger", async () => {
    const r = await sh(bundle(), 'echo h > /proc/sysrq-trigger; echo rc=$?');
    assert.equal(r.stdout, 'rc=1\n');
    // A kernel without CONFIG_MAGIC_SYSRQ has no such file; elsewhere the read-only bind refuses it.
    const expected = existsSync('/proc/sysrq-trigger')
      ? '/bin/sh: can\'t create /proc/sysrq-trigger: Read-only file system\n'
      : '/bin/sh: can\'t create /proc/sysrq-trigger: nonexistent directory\n';
    assert.equal(r.stderr, expected);
  });

  test('ptrace, raw and packet sockets, module loading (static C probe)', async () => {
    const p = await probe(bundle(), ['ptrace_attach', 'ptrace_traceme', 'process_vm_readv', 'raw_socket', 'packet_socket', 'init_module', 'finit_module']);
    assert.deepEqual(Object.fromEntries(p), {
      ptrace_attach: 'EPERM', ptrace_traceme: 'EPERM', process_vm_readv: 'EPERM',
      raw_socket: 'EPERM', packet_socket: 'EPERM', init_module: 'EPERM', finit_module: 'EPERM',
    });
  });

  test('/proc and /sys: masked paths are empty, the rest of the kernel knobs read-only', async () => {
    const r = await sh(bundle(), [
      'wc -c < /proc/keys', 'wc -c < /proc/timer_list', 'wc -c < /proc/interrupts', 'ls -A /sys/firmware | wc -l',
      'touch /sys/airlock', 'echo 1 > /proc/sys/kernel/ns_last_pid', 'echo 1000 > /sys/fs/cgroup/pids/pids.max',
    ].join('; '));
    assert.equal(r.stdout, '0\n0\n0\n0\n');
    assert.equal(r.stderr, [
      'touch: /sys/airlock: Read-only file system',
      "/bin/sh: can't create /proc/sys/kernel/ns_last_pid: Read-only file system",
      "/bin/sh: can't create /sys/fs/cgroup/pids/pids.max: Read-only file system",
      '',
    ].join('\n'));
  });
});

describe('seccomp allowlist', () => {
  test('every probed syscall gets exactly the expected answer', async () => {
    const p = await probe(bundle());
    const newSyscall = p.get('new_syscall');
    // fchmodat2 (Linux 6.6): allowed where libseccomp knows it, else ENOSYS (runc's stub) so libc falls back.
    assert.ok(newSyscall === 'ok' || newSyscall === 'ENOSYS', `new_syscall=${newSyscall}`);
    p.delete('new_syscall');
    const denied = [
      'mount', 'umount', 'pivot_root', 'chroot', 'unshare_user', 'unshare_net', 'setns',
      'clone_newuser', 'clone_newns', 'clone_newnet', 'ptrace_attach', 'ptrace_traceme', 'process_vm_readv',
      'kcmp', 'init_module', 'finit_module', 'delete_module', 'kexec_load', 'reboot', 'swapon', 'iopl',
      'ioperm', 'modify_ldt', 'syslog', 'acct', 'settimeofday', 'clock_settime', 'keyctl', 'add_key',
      'request_key', 'bpf', 'perf_event_open', 'io_uring_setup', 'userfaultfd', 'open_by_handle_at',
      'name_to_handle_at', 'fanotify_init', 'quotactl', 'lookup_dcookie', 'personality_noaslr', 'mbind',
      'set_mempolicy', 'sethostname', 'raw_socket', 'packet_socket', 'netlink_generic',
      'socket_bogus_family',
    ];
    const expected: Record<string, string> = Object.fromEntries(denied.map((n) => [n, 'EPERM']));
    Object.assign(expected, {
      // What normal programs need keeps working: fork, threads (glibc falls back from clone3), sockets.
      clone_plain: 'ok', fork: 'ok', thread: 'ok', clone3: 'ENOSYS', personality_query: 'ok',
      clock_adjtime: 'EFAULT', adjtimex_read: 'ok',
      inet_socket: 'ok', inet6_socket: 'ok', unix_socket: 'ok', netlink_route: 'ok',
      // "audit not built in": useradd and passwd carry on instead of aborting.
      netlink_audit: 'EPROTONOSUPPORT',
      // No i386 ABI by default: the first int 0x80 kills the thread (SIGSYS).
      x32_unshare: 'signal31', i386_getpid: 'signal31', i386_mount: 'signal31', i386_unshare: 'signal31',
      i386_socket_bogus_family: 'signal31', i386_socketcall_bogus_family: 'signal31',
    });
    assert.deepEqual(Object.fromEntries([...p].sort()), Object.fromEntries(Object.entries(expected).sort()));
  });

  test('compat32 accepts i386 system calls and filters them with the same rules', async () => {
    const p = await probe(bundle(), ['i386_getpid', 'i386_mount', 'i386_unshare', 'i386_socket_bogus_family'], {
      overrides: { compat32: true },
    });
    assert.deepEqual(Object.fromEntries(p), {
      i386_getpid: 'ok', i386_mount: 'EPERM', i386_unshare: 'EPERM', i386_socket_bogus_family: 'EPERM',
    });
  });
});

describe('devices, rlimits, oom_score_adj', () => {
  test('/dev holds only the standard devices; /dev/shm has its size bound', async () => {
    const r = await sh(bundle(), 'ls /dev | tr "\\n" " "; echo; grep " /dev/shm " /proc/mounts | grep -o "size=[0-9]*k"', {
      overrides: { shmSizeMiB: 16 },
    });
    assert.equal(r.stdout, 'fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero \nsize=16384k\n');
  });

  test('no device node can be made, and the devices cgroup opens no block device', async () => {
    let devicesList: string[] | null = null;
    // mknod of a device needs CAP_MKNOD in the host's user namespace: never true for a sandbox.
    const r = await sh(bundle(), 'mknod /tmp/airlock-sda b 8 0; echo rc=$?', {
      afterExit: (c) => {
        if (detectCgroupMode() === 'v2') return; // v2 enforces device rules with an eBPF program: no file to read
        devicesList = readFileSync(cgroupFile('devices', c.cgroupsPath, 'devices.list', ''), 'utf8').trim().split('\n');
      },
    });
    assert.equal(r.stdout, 'rc=1\n');
    assert.equal(r.stderr, 'mknod: /tmp/airlock-sda: Operation not permitted\n');
    if (devicesList !== null) {
      const list: string[] = devicesList;
      assert.ok(!list.some((l) => l.startsWith('a ')), list.join(', '));
      // Block devices: mknod permission only (runc's default, useless without CAP_MKNOD), never read/write.
      assert.deepEqual(list.filter((l) => l.startsWith('b ')), ['b *:* m']);
      for (const dev of ['c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm', 'c 5:0 rwm', 'c 5:2 rwm', 'c 136:* rwm']) {
        assert.ok(list.includes(dev), `${dev} missing from ${list.join(', ')}`);
      }
    }
  });

  test('RLIMIT_NOFILE 4096 and RLIMIT_CORE 0', async () => {
    const r = await sh(bundle(), 'ulimit -n; ulimit -c');
    assert.equal(r.stdout, '4096\n0\n');
  });

  test('PID 1 gets oomScoreAdj; a child may reset itself to 0', async () => {
    // Lowering below 0 needs CAP_SYS_RESOURCE on the host; without it, a raise shows the same plumbing.
    const adj = hostCanLowerOomScoreAdj() ? -1000 : 500;
    const r = await sh(bundle(), 'cat /proc/1/oom_score_adj; sh -c "echo 0 > /proc/self/oom_score_adj && cat /proc/self/oom_score_adj"', {
      overrides: { oomScoreAdj: adj },
    });
    assert.equal(r.stdout, `${adj}\n0\n`);
  });
});

describe('bind mounts', () => {
  test('read-only control dir, a file bound inside it, and a read-write user mount', async () => {
    const bb = bundle();
    const ctl = join(bb.dir, 'airlock-ctl');
    const work = join(bb.dir, 'airlock-work');
    // A placeholder for the file bind: /run/airlock is read-only inside, so runc cannot create it.
    mkdirSync(join(ctl, 'bin'), { recursive: true });
    writeFileSync(join(ctl, 'bin', 'airlock-agent'), '');
    writeFileSync(join(ctl, 'hello'), 'from host\n');
    mkdirSync(work);
    chownSync(work, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
    chmodSync(work, 0o755);
    const r = await sh(bb, [
      'cat /run/airlock/hello',
      '/run/airlock/bin/airlock-agent personality_query',
      'touch /run/airlock/x 2>/dev/null || echo ctl-ro',
      'echo data > /work/out && echo work-rw',
    ].join('; '), {
      overrides: {
        binds: [
          { source: ctl, target: '/run/airlock', readOnly: true },
          // The probe binary stands in for the agent binary.
          { source: join(bb.rootfs, 'bin', 'airlock-probe'), target: '/run/airlock/bin/airlock-agent', readOnly: true },
          { source: work, target: '/work', readOnly: false },
        ],
      },
    });
    assert.equal(r.stdout, 'from host\npersonality_query=ok\nctl-ro\nwork-rw\n');
    assert.equal(r.stderr, '');
    assert.equal(readFileSync(join(work, 'out'), 'utf8'), 'data\n');
  });
});

describe('limits', () => {
  test('a bounded process flood hits the pids limit; the host is unaffected', async () => {
    const pids = 64;
    let maxHits = -1;
    let pidsMax = '';
    const r = await sh(bundle(), [
      // The flood runs in a subshell so PID 1 survives to report how far it got.
      '( i=0; while [ $i -lt 500 ]; do sleep 5 & i=$((i+1)); echo $i > /tmp/started; done )',
      'echo flood=$?',
      'read n < /tmp/started; echo started=$n',
    ].join('; '), {
      overrides: { resources: { cpus: 1, memoryMiB: 256, diskMiB: 64, pids } },
      afterExit: (c) => {
        maxHits = readKeyed(cgroupFile('pids', c.cgroupsPath, 'pids.events', 'pids.events'), 'max');
        pidsMax = readFileSync(cgroupFile('pids', c.cgroupsPath, 'pids.max', 'pids.max'), 'utf8').trim();
      },
    });
    // PID 1 and the subshell count too: 62 sleeps fit under 64.
    assert.equal(r.stdout, `flood=2\nstarted=${pids - 2}\n`);
    assert.match(r.stderr, /can't fork: Resource temporarily unavailable/);
    assert.equal(pidsMax, String(pids));
    assert.ok(maxHits >= 1, `pids.events max=${maxHits}`);
    const host = await run('/bin/true', []);
    assert.equal(host.code, 0);
  });

  test('a memory hog is OOM-killed and the memory cgroup counts it', async () => {
    let oomKills = -1;
    const r = await sh(bundle(), 'head -c 200m /dev/zero | tail > /dev/null; echo status=$?', {
      overrides: { resources: { cpus: 1, memoryMiB: 64, diskMiB: 64, pids: 64 } },
      afterExit: (c) => {
        oomKills = readKeyed(cgroupFile('memory', c.cgroupsPath, 'memory.oom_control', 'memory.events'), 'oom_kill');
      },
    });
    assert.equal(r.stdout, 'status=137\n');
    assert.ok(oomKills >= 1, `oom_kill=${oomKills}`);
  });

  test('cpus 0.5 caps CPU time at about half a CPU', async () => {
    let rate = -1;
    await sh(bundle(), 'while :; do :; done & while :; do :; done & sleep 5', {
      overrides: { resources: { cpus: 0.5, memoryMiB: 64, diskMiB: 64, pids: 64 } },
      whileRunning: async (c) => {
        await new Promise((res) => setTimeout(res, 300));
        const t0 = process.hrtime.bigint();
        const u0 = cpuSeconds(c.cgroupsPath);
        await new Promise((res) => setTimeout(res, 1500));
        const u1 = cpuSeconds(c.cgroupsPath);
        const wall = Number(process.hrtime.bigint() - t0) / 1e9;
        rate = (u1 - u0) / wall;
        await run('runc', ['--root', bundle().runcRoot, 'kill', c.id, 'KILL'], { allowFailure: true });
      },
    });
    assert.ok(rate <= 0.6, `cpu rate ${rate.toFixed(3)} exceeds 0.6`);
    // Two burners ran: well above idle even on a busy host.
    assert.ok(rate >= 0.15, `cpu rate ${rate.toFixed(3)}: burners did not run`);
  });
});

describe("normal programs still work (the host's /usr bound read-only)", () => {
  const usrOverrides = {
    binds: [{ source: '/usr', target: '/usr', readOnly: true }],
    env: ['PATH=/usr/bin:/bin', 'HOME=/tmp'],
  };
  const place = (name: string, text: string): string => {
    const p = join(bundle().rootfs, 'tmp', name);
    writeFileSync(p, text);
    lchownSync(p, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
    return `/tmp/${name}`;
  };

  test('python3: threads, subprocess, multiprocessing, TCP on lo', { skip: !existsSync('/usr/bin/python3') && 'no /usr/bin/python3' }, async () => {
    const r = await sh(bundle(), `python3 ${place('airlock-w.py', PYTHON_WORKLOAD)}`, { overrides: usrOverrides });
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'thread ok\nsubprocess ok\nsocketpair ok\nmultiprocessing ok\ntcp on lo ok\nfsync ok\n');
  });

  test('node: worker threads, child process, TCP on lo', { skip: !existsSync('/usr/bin/node') && 'no /usr/bin/node' }, async () => {
    const r = await sh(bundle(), `node ${place('airlock-w.js', NODE_WORKLOAD)}`, { overrides: usrOverrides });
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'worker 42\nspawn 0\ntcp on lo hi\nfs x\nrandom 4\n');
  });

  test('gcc compiles and the program runs', async () => {
    const src = place('airlock-w.c', C_WORKLOAD);
    const r = await sh(bundle(), `gcc -O1 -pthread -o /tmp/airlock-w ${src} && /tmp/airlock-w`, { overrides: usrOverrides });
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'compiled program ok\n');
  });
});
