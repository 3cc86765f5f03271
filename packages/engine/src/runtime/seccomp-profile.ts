/**
 * The seccomp allowlist of the `container` tier (docs/security.md explains each choice).
 *
 * Started from the Docker default profile's unconditional allowlist, then trimmed: everything
 * Docker only allows with a capability we drop is simply not allowed, and a few more entries
 * (io_uring, file handles, fanotify, modify_ldt, socketcall) are gone. Anything not listed fails
 * with EPERM. Syscalls newer than every name runc's libseccomp knows fail with ENOSYS instead
 * (runc patches its filter so), so a newer libc falls back to the older call.
 */

const EPERM = 1;
const EPROTONOSUPPORT = 93;
const ENOSYS = 38;

/** Every CLONE_NEW* flag that fits in clone()'s flags word (CLONE_NEWTIME only exists for clone3/unshare). */
export const CLONE_NAMESPACE_FLAGS =
  0x00020000 /* NEWNS */ | 0x02000000 /* NEWCGROUP */ | 0x04000000 /* NEWUTS */ | 0x08000000 /* NEWIPC */ |
  0x10000000 /* NEWUSER */ | 0x20000000 /* NEWPID */ | 0x40000000; /* NEWNET */

const AF_UNIX = 1;
const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const NETLINK_ROUTE = 0;
const NETLINK_SOCK_DIAG = 4;
const NETLINK_AUDIT = 9;

/** Allowed with any arguments. Names libseccomp does not know on this host are skipped by runc. */
export const ALLOWED_SYSCALLS: readonly string[] = [
  // files and directories
  'access', 'chdir', 'chmod', 'chown', 'chown32', 'close', 'close_range', 'copy_file_range', 'creat',
  'dup', 'dup2', 'dup3', 'faccessat', 'faccessat2', 'fadvise64', 'fadvise64_64', 'fallocate', 'fchdir',
  'fchmod', 'fchmodat', 'fchmodat2', 'fchown', 'fchown32', 'fchownat', 'fcntl', 'fcntl64', 'fdatasync',
  'fgetxattr', 'flistxattr', 'flock', 'fremovexattr', 'fsetxattr', 'fstat', 'fstat64', 'fstatat64',
  'fstatfs', 'fstatfs64', 'fsync', 'ftruncate', 'ftruncate64', 'futimesat', 'getcwd', 'getdents',
  'getdents64', 'getxattr', 'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch',
  'lchown', 'lchown32', 'lgetxattr', 'link', 'linkat', 'listxattr', 'llistxattr', '_llseek',
  'lremovexattr', 'lseek', 'lsetxattr', 'lstat', 'lstat64', 'mkdir', 'mkdirat', 'mknod', 'mknodat',
  'newfstatat', 'open', 'openat', 'openat2', 'pread64', 'preadv', 'preadv2', 'pwrite64', 'pwritev',
  'pwritev2', 'read', 'readahead', 'readlink', 'readlinkat', 'readv', 'removexattr', 'rename',
  'renameat', 'renameat2', 'rmdir', 'sendfile', 'sendfile64', 'setxattr', 'splice', 'stat', 'stat64',
  'statfs', 'statfs64', 'statx', 'symlink', 'symlinkat', 'sync', 'sync_file_range', 'syncfs', 'tee',
  'truncate', 'truncate64', 'umask', 'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64',
  'utimes', 'vmsplice', 'write', 'writev', 'cachestat',
  // asynchronous I/O (the old AIO interface; io_uring is denied)
  'io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'io_setup',
  'io_submit',
  // polling and event descriptors
  'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait', 'epoll_pwait2',
  'epoll_wait', 'epoll_wait_old', 'eventfd', 'eventfd2', 'poll', 'ppoll', 'ppoll_time64', 'pselect6',
  'pselect6_time64', 'select', '_newselect', 'signalfd', 'signalfd4', 'timerfd_create',
  'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64', 'pipe', 'pipe2',
  'ioctl',
  // memory
  'brk', 'madvise', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore', 'mlock', 'mlock2',
  'mlockall', 'mmap', 'mmap2', 'mprotect', 'mremap', 'msync', 'munlock', 'munlockall', 'munmap',
  'pkey_alloc', 'pkey_free', 'pkey_mprotect', 'remap_file_pages', 'get_mempolicy', 'map_shadow_stack',
  'mseal',
  // processes, threads, signals (clone is argument-filtered below; clone3 answers ENOSYS)
  'execve', 'execveat', 'exit', 'exit_group', 'fork', 'vfork', 'wait4', 'waitid', 'waitpid', 'kill',
  'tkill', 'tgkill', 'pidfd_open', 'pidfd_send_signal', 'process_mrelease', 'pause',
  'restart_syscall', 'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask', 'rt_sigqueueinfo',
  'rt_sigreturn', 'rt_sigsuspend', 'rt_sigtimedwait', 'rt_sigtimedwait_time64', 'rt_tgsigqueueinfo',
  'sigaltstack', 'sigprocmask', 'sigreturn', 'futex', 'futex_time64', 'futex_waitv', 'futex_wake',
  'futex_wait', 'futex_requeue', 'get_robust_list', 'set_robust_list', 'set_tid_address', 'rseq',
  'arch_prctl', 'get_thread_area', 'set_thread_area', 'prctl', 'seccomp', 'landlock_add_rule',
  'landlock_create_ruleset', 'landlock_restrict_self', 'capget', 'capset',
  // identity and limits (capabilities and the user namespace bound what they can do)
  'getegid', 'getegid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32', 'getgroups', 'getgroups32',
  'getpgid', 'getpgrp', 'getpid', 'getppid', 'getresgid', 'getresgid32', 'getresuid', 'getresuid32',
  'getsid', 'gettid', 'getuid', 'getuid32', 'setfsgid', 'setfsgid32', 'setfsuid', 'setfsuid32',
  'setgid', 'setgid32', 'setgroups', 'setgroups32', 'setpgid', 'setregid', 'setregid32', 'setresgid',
  'setresgid32', 'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setsid', 'setuid', 'setuid32',
  'getrlimit', 'ugetrlimit', 'setrlimit', 'prlimit64', 'getrusage', 'getpriority', 'setpriority',
  'ioprio_get', 'ioprio_set',
  // scheduling
  'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_get_priority_max',
  'sched_get_priority_min', 'sched_getscheduler', 'sched_rr_get_interval',
  'sched_rr_get_interval_time64', 'sched_setaffinity', 'sched_setattr', 'sched_setparam',
  'sched_setscheduler', 'sched_yield', 'getcpu',
  // time (reading clocks and timers; setting the clock is denied)
  'alarm', 'clock_getres', 'clock_getres_time64', 'clock_gettime', 'clock_gettime64',
  'clock_nanosleep', 'clock_nanosleep_time64', 'nanosleep', 'gettimeofday', 'time', 'times',
  'getitimer', 'setitimer', 'timer_create', 'timer_delete', 'timer_getoverrun', 'timer_gettime',
  'timer_gettime64', 'timer_settime', 'timer_settime64',
  // Reading the clock discipline (modes=0; glibc's adjtimex and ntp_gettime call clock_adjtime).
  // Any change needs CAP_SYS_TIME in the host's user namespace, which no sandbox process has.
  'adjtimex', 'clock_adjtime', 'clock_adjtime64',
  // system information
  'uname', 'sysinfo', 'getrandom',
  // sockets (socket itself is argument-filtered below)
  'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen', 'recv',
  'recvfrom', 'recvmmsg', 'recvmmsg_time64', 'recvmsg', 'send', 'sendmmsg', 'sendmsg', 'sendto',
  'setsockopt', 'shutdown', 'socketpair',
  // System V and POSIX IPC (private to the sandbox's IPC namespace)
  'ipc', 'msgctl', 'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop', 'semtimedop',
  'semtimedop_time64', 'shmat', 'shmctl', 'shmdt', 'shmget', 'mq_getsetattr', 'mq_notify', 'mq_open',
  'mq_timedreceive', 'mq_timedreceive_time64', 'mq_timedsend', 'mq_timedsend_time64', 'mq_unlink',
];

/**
 * Never allowed (the default action answers EPERM). Listed so tests and docs can check that
 * no entry slips into the allowlist; the filter itself needs no rule for them.
 */
export const DENIED_SYSCALLS: readonly string[] = [
  // mounts and namespaces: the sandbox's view of the world is fixed by the host
  'mount', 'umount', 'umount2', 'pivot_root', 'chroot', 'fsopen', 'fsconfig', 'fsmount', 'fspick',
  'move_mount', 'open_tree', 'mount_setattr', 'unshare', 'setns', 'clone3',
  // kernel keyrings are not namespaced
  'keyctl', 'add_key', 'request_key',
  // kernel programmability, tracing and other processes' memory
  'bpf', 'perf_event_open', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'kcmp', 'pidfd_getfd',
  'process_madvise', 'userfaultfd', 'io_uring_setup', 'io_uring_enter', 'io_uring_register',
  // modules, kexec, reboot, swap, hardware I/O
  'init_module', 'finit_module', 'delete_module', 'create_module', 'query_module', 'get_kernel_syms',
  'kexec_load', 'kexec_file_load', 'reboot', 'swapon', 'swapoff', 'iopl', 'ioperm', 'vm86',
  'vm86old', 'modify_ldt',
  // host-wide state: logs, accounting, clock, quotas, hostnames
  'syslog', 'acct', 'settimeofday', 'stime', 'clock_settime', 'clock_settime64', 'quotactl', 'quotactl_fd', 'nfsservctl', 'lookup_dcookie', 'sethostname',
  'setdomainname', 'vhangup', '_sysctl', 'sysfs', 'ustat', 'uselib',
  // file handles bypass path permission checks; fanotify watches the whole mount
  'open_by_handle_at', 'name_to_handle_at', 'fanotify_init', 'fanotify_mark',
  // NUMA placement of host memory
  'mbind', 'set_mempolicy', 'set_mempolicy_home_node', 'move_pages', 'migrate_pages',
  // the i386 socket multiplexer hides its arguments in memory (see seccompProfile's compat32)
  'socketcall',
];

/** personality(2) values that change nothing dangerous: Linux, Linux32, UNAME26 (+32), and the query. */
const HARMLESS_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

type Arg = { index: number; value: number; valueTwo?: number; op: string };
type Rule = { names: string[]; action: string; errnoRet?: number; args?: Arg[] };

function socketRules(): Rule[] {
  const eq = (index: number, value: number): Arg => ({ index, value, op: 'SCMP_CMP_EQ' });
  return [
    // Families a normal program uses; raw/packet sockets also need CAP_NET_RAW, which is dropped.
    ...[AF_UNIX, AF_INET, AF_INET6].map((f) => ({ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [eq(0, f)] })),
    // Netlink only for routes/addresses (getifaddrs, ip) and socket diagnostics (ss).
    ...[NETLINK_ROUTE, NETLINK_SOCK_DIAG].map((p) => ({
      names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [eq(0, AF_NETLINK), eq(2, p)],
    })),
    // useradd/passwd abort on EPERM from the audit socket but accept "audit not built in".
    { names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: EPROTONOSUPPORT, args: [eq(0, AF_NETLINK), eq(2, NETLINK_AUDIT)] },
  ];
}

export interface SeccompOptions {
  /**
   * Also accept the i386 system call ABI (int 0x80) for 32-bit programs. Off by default: on
   * i386, libseccomp turns every `socket` rule into an unconditional rule for the socketcall
   * multiplexer, whose arguments live in memory, so the address-family allowlist cannot hold
   * there (measured: a 64-bit process reached socket(63, ...) through int 0x80). With it off,
   * any i386 system call kills the calling thread (SIGSYS).
   */
  compat32?: boolean;
}

export function seccompProfile(options: SeccompOptions = {}): Record<string, unknown> {
  const rules: Rule[] = [
    { names: [...ALLOWED_SYSCALLS], action: 'SCMP_ACT_ALLOW' },
    // clone without any namespace flag: fork and threads. (On x86 the flags are argument 0.)
    {
      names: ['clone'], action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
    },
    // clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes glibc use clone.
    { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
    ...HARMLESS_PERSONALITIES.map((v) => ({
      names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: v, op: 'SCMP_CMP_EQ' }],
    })),
    ...socketRules(),
  ];
  // x32 is left out on purpose: its calls then fail like any unlisted one. Almost no kernel
  // enables it, no template uses it, and every listed architecture lengthens the filter that
  // runc compiles at each sandbox start (measured: ~3 ms of a ~35 ms cold start).
  const architectures = ['SCMP_ARCH_X86_64'];
  if (options.compat32) architectures.push('SCMP_ARCH_X86');
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures,
    syscalls: rules,
  };
}
