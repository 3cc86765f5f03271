/*
 * Syscall probe for the container-tier isolation tests (compiled static by the test).
 * Prints one line per probe: NAME=ok, NAME=<errno name>, or NAME=signal<N>.
 * Every probe is harmless if it succeeds: bogus arguments, the probe's own memory,
 * a no-op change, or a child that exits at once. Nothing touches the network.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/timex.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define X32_BIT 0x40000000L
#define AF_BOGUS 63 /* past AF_MAX: the kernel answers EAFNOSUPPORT without loading anything */

static void report(const char *name, long rc, int err) {
  if (rc < 0) printf("%s=%s\n", name, strerrorname_np(err));
  else printf("%s=ok\n", name);
}

/* Runs fn in a forked child so a crash (e.g. no 32-bit ABI) is reported, not fatal. */
static void isolated(const char *name, long (*fn)(void)) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    errno = 0;
    long rc = fn();
    report(name, rc, errno);
    fflush(stdout);
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  if (WIFSIGNALED(st)) printf("%s=signal%d\n", name, WTERMSIG(st));
}

/* A raw clone that behaves like fork: the child exits at once. */
static long clone_flags(unsigned long flags) {
  long rc = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid((pid_t)rc, NULL, 0);
  return rc;
}

static long p_clone_newuser(void) { return clone_flags(CLONE_NEWUSER); }
static long p_clone_newns(void) { return clone_flags(CLONE_NEWNS); }
static long p_clone_newnet(void) { return clone_flags(CLONE_NEWNET); }
static long p_clone_plain(void) { return clone_flags(0); }

static long p_clone3(void) {
  uint64_t args[11] = {0};
  args[4] = SIGCHLD; /* exit_signal */
  long rc = syscall(SYS_clone3, args, sizeof args);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid((pid_t)rc, NULL, 0);
  return rc;
}

static void *thread_fn(void *arg) { return arg; }
static long p_thread(void) {
  pthread_t t;
  int e = pthread_create(&t, NULL, thread_fn, NULL);
  if (e) { errno = e; return -1; }
  pthread_join(t, NULL);
  return 0;
}

static long p_ptrace_attach(void) {
  pid_t child = fork();
  if (child == 0) { pause(); _exit(0); }
  long rc = ptrace(PTRACE_ATTACH, child, 0, 0);
  int e = errno;
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  errno = e;
  return rc;
}

static long p_ptrace_traceme(void) { return ptrace(PTRACE_TRACEME, 0, 0, 0); }

static long p_process_vm_readv(void) {
  char src[8] = "airlock", dst[8];
  struct iovec l = {dst, sizeof dst}, r = {src, sizeof src};
  return process_vm_readv(getpid(), &l, 1, &r, 1, 0);
}

static long p_finit_module(void) {
  int fd = open("/dev/null", O_RDONLY);
  long rc = syscall(SYS_finit_module, fd, "", 0);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

static long p_sock(int family, int type, int proto) {
  int fd = socket(family, type, proto);
  if (fd >= 0) close(fd);
  return fd;
}
static long p_raw_socket(void) { return p_sock(AF_INET, SOCK_RAW, IPPROTO_ICMP); }
static long p_packet_socket(void) { return p_sock(AF_PACKET, SOCK_RAW, htons(0x0003)); }
static long p_inet_socket(void) { return p_sock(AF_INET, SOCK_STREAM, 0); }
static long p_inet6_socket(void) { return p_sock(AF_INET6, SOCK_DGRAM, 0); }
static long p_unix_socket(void) { return p_sock(AF_UNIX, SOCK_STREAM, 0); }
static long p_netlink_route(void) { return p_sock(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE); }
static long p_netlink_audit(void) { return p_sock(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT); }
static long p_netlink_generic(void) { return p_sock(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC); }
static long p_socket_bogus(void) { return p_sock(AF_BOGUS, SOCK_STREAM, 0); }

static long p_new_syscall(void) {
  int fd = open("/tmp/airlock-probe-file", O_CREAT | O_WRONLY, 0600);
  if (fd >= 0) close(fd);
  return syscall(SYS_fchmodat2, AT_FDCWD, "/tmp/airlock-probe-file", 0644, 0);
}

static long p_adjtimex_read(void) {
  struct timex tx;
  memset(&tx, 0, sizeof tx);
  return adjtimex(&tx);
}

/* 32-bit system calls from this 64-bit process; a compat-ABI bypass would show here. */
static uint32_t sc_args[3];
static long int80(long nr, long a, long b, long c) {
  long ret;
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory", "r8", "r9", "r10", "r11");
  if (ret < 0 && ret > -4096) { errno = (int)-ret; return -1; }
  return ret;
}
static long p_i386_getpid(void) { return int80(20, 0, 0, 0); }
static long p_i386_mount(void) { return int80(21, 0, 0, 0); }
static long p_i386_unshare(void) { return int80(310, CLONE_NEWUSER, 0, 0); }
static long p_i386_socket_bogus(void) {
  long fd = int80(359, AF_BOGUS, SOCK_STREAM, 0);
  if (fd >= 0) close((int)fd);
  return fd;
}
static long p_i386_socketcall_bogus(void) {
  sc_args[0] = AF_BOGUS; sc_args[1] = SOCK_STREAM; sc_args[2] = 0;
  long fd = int80(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)sc_args, 0);
  if (fd >= 0) close((int)fd);
  return fd;
}
static long p_x32_unshare(void) { return syscall(X32_BIT | SYS_unshare, CLONE_NEWUSER); }

/* Simple probes: the call, its arguments bogus or no-ops. */
static long p_mount(void) { return mount("x", "/mnt", "tmpfs", 0, NULL); }
static long p_umount(void) { return umount2("/airlock-not-a-mount", MNT_DETACH); }
static long p_pivot_root(void) { return syscall(SYS_pivot_root, "/airlock-none", "/airlock-none"); }
static long p_chroot(void) { return chroot("/"); }
static long p_unshare_user(void) { return unshare(CLONE_NEWUSER); }
static long p_unshare_net(void) { return unshare(CLONE_NEWNET); }
static long p_setns(void) { return setns(-1, 0); }
static long p_keyctl(void) { return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -2 /* process keyring */, 0); }
static long p_add_key(void) { return syscall(SYS_add_key, "user", "airlock-probe", "x", 1, -2); }
static long p_request_key(void) { return syscall(SYS_request_key, "user", "airlock-none", NULL, 0); }
static long p_bpf(void) { return syscall(SYS_bpf, 0, NULL, 0); }
static long p_perf_event_open(void) { return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0); }
static long p_io_uring_setup(void) { return syscall(SYS_io_uring_setup, 1, NULL); }
static long p_userfaultfd(void) {
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC);
  if (fd >= 0) close((int)fd);
  return fd;
}
static long p_init_module(void) { return syscall(SYS_init_module, NULL, 0, ""); }
static long p_delete_module(void) { return syscall(SYS_delete_module, "airlock_none", O_NONBLOCK); }
static long p_kexec_load(void) { return syscall(SYS_kexec_load, 0, 0, NULL, 3L << 16); /* i386 image: refused even with CAP_SYS_BOOT */ }
static long p_reboot(void) { return syscall(SYS_reboot, 0, 0, 0, NULL); /* bad magic */ }
static long p_swapon(void) { return swapon("/airlock-none", 0); }
static long p_iopl(void) { return syscall(SYS_iopl, 0); }
static long p_ioperm(void) { return syscall(SYS_ioperm, 0, 0, 0); }
static long p_syslog(void) { return syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0); }
static long p_acct(void) { return syscall(SYS_acct, "/airlock-none"); }
static long p_settimeofday(void) { return syscall(SYS_settimeofday, NULL, NULL); }
static long p_clock_settime(void) { return syscall(SYS_clock_settime, 0, NULL); }
static long p_clock_adjtime(void) { return syscall(SYS_clock_adjtime, 0, NULL); }
static long p_open_by_handle_at(void) { return syscall(SYS_open_by_handle_at, -1, NULL, 0); }
static long p_name_to_handle_at(void) { return syscall(SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0); }
static long p_fanotify_init(void) { return syscall(SYS_fanotify_init, 0, 0); }
static long p_quotactl(void) { return syscall(SYS_quotactl, 0, NULL, 0, NULL); }
static long p_lookup_dcookie(void) { return syscall(SYS_lookup_dcookie, 0, NULL, 0); }
static long p_personality_noaslr(void) { return personality(ADDR_NO_RANDOMIZE); }
static long p_personality_query(void) { return personality(0xffffffff); }
static long p_mbind(void) { return syscall(SYS_mbind, NULL, 0, 0, NULL, 0, 0); }
static long p_set_mempolicy(void) { return syscall(SYS_set_mempolicy, 0, NULL, 0); }
static long p_modify_ldt(void) { char b[16]; return syscall(SYS_modify_ldt, 0, b, sizeof b); }
static long p_sethostname(void) { return sethostname("airlock-x", 9); }
static long p_kcmp(void) { return syscall(SYS_kcmp, getpid(), getpid(), 0, 0, 0); }
static long p_fork(void) {
  pid_t p = fork();
  if (p == 0) _exit(0);
  if (p > 0) waitpid(p, NULL, 0);
  return p;
}

struct probe { const char *name; long (*fn)(void); };
static const struct probe PROBES[] = {
  {"mount", p_mount}, {"umount", p_umount}, {"pivot_root", p_pivot_root}, {"chroot", p_chroot},
  {"unshare_user", p_unshare_user}, {"unshare_net", p_unshare_net}, {"setns", p_setns},
  {"clone_newuser", p_clone_newuser}, {"clone_newns", p_clone_newns}, {"clone_newnet", p_clone_newnet},
  {"clone_plain", p_clone_plain}, {"clone3", p_clone3}, {"fork", p_fork}, {"thread", p_thread},
  {"ptrace_attach", p_ptrace_attach}, {"ptrace_traceme", p_ptrace_traceme},
  {"process_vm_readv", p_process_vm_readv}, {"kcmp", p_kcmp},
  {"init_module", p_init_module}, {"finit_module", p_finit_module}, {"delete_module", p_delete_module},
  {"kexec_load", p_kexec_load}, {"reboot", p_reboot}, {"swapon", p_swapon},
  {"iopl", p_iopl}, {"ioperm", p_ioperm}, {"modify_ldt", p_modify_ldt},
  {"syslog", p_syslog}, {"acct", p_acct}, {"settimeofday", p_settimeofday},
  {"clock_settime", p_clock_settime}, {"clock_adjtime", p_clock_adjtime}, {"adjtimex_read", p_adjtimex_read},
  {"keyctl", p_keyctl}, {"add_key", p_add_key}, {"request_key", p_request_key},
  {"bpf", p_bpf}, {"perf_event_open", p_perf_event_open}, {"io_uring_setup", p_io_uring_setup},
  {"userfaultfd", p_userfaultfd}, {"open_by_handle_at", p_open_by_handle_at},
  {"name_to_handle_at", p_name_to_handle_at}, {"fanotify_init", p_fanotify_init},
  {"quotactl", p_quotactl}, {"lookup_dcookie", p_lookup_dcookie},
  {"personality_noaslr", p_personality_noaslr}, {"personality_query", p_personality_query},
  {"mbind", p_mbind}, {"set_mempolicy", p_set_mempolicy}, {"sethostname", p_sethostname},
  {"raw_socket", p_raw_socket}, {"packet_socket", p_packet_socket}, {"inet_socket", p_inet_socket},
  {"inet6_socket", p_inet6_socket}, {"unix_socket", p_unix_socket}, {"netlink_route", p_netlink_route},
  {"netlink_audit", p_netlink_audit}, {"netlink_generic", p_netlink_generic},
  {"socket_bogus_family", p_socket_bogus}, {"new_syscall", p_new_syscall},
  {"i386_getpid", p_i386_getpid}, {"i386_mount", p_i386_mount}, {"i386_unshare", p_i386_unshare},
  {"i386_socket_bogus_family", p_i386_socket_bogus},
  {"i386_socketcall_bogus_family", p_i386_socketcall_bogus}, {"x32_unshare", p_x32_unshare},
};

int main(int argc, char **argv) {
  size_t n = sizeof PROBES / sizeof PROBES[0];
  for (size_t i = 0; i < n; i++) {
    int wanted = argc < 2;
    for (int a = 1; a < argc; a++) if (strcmp(argv[a], PROBES[i].name) == 0) wanted = 1;
    if (wanted) isolated(PROBES[i].name, PROBES[i].fn);
  }
  return 0;
}
