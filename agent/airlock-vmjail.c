/*
 * airlock-vmjail: starts a microvm sandbox's QEMU jailed (docs/microvm.md), so that a QEMU
 * escape lands in a process that can reach almost nothing:
 *
 *   airlock-vmjail --root DIR --uid N --gid N --pidfile FILE --log FILE [--cgroup PROCS_FILE]...
 *                  [--netns PATH [--tap NAME]] [--ro PATH]... [--rw PATH]... [--dev NAME]...
 *                  -- QEMU ARGS...
 *
 * 1. joins the sandbox's cgroups (each PROCS_FILE: a cgroup.procs) and network namespace (a new,
 *    empty one when the sandbox has none);
 * 2. opens the TAP device NAME in that namespace as fd 3 (QEMU's `-netdev tap,fd=3`), so QEMU
 *    needs neither /dev/net/tun nor CAP_NET_ADMIN;
 * 3. new mount, pid, ipc and uts namespaces; the child (PID 1 there) builds a root on a tmpfs
 *    at DIR holding only /usr (read-only; /bin, /lib... as the host's links), the given paths
 *    bound read-only or read-write at their own names, the given /dev nodes and a /proc of its
 *    own, pivots into it and makes it read-only;
 * 4. drops to uid/gid N (no groups, so no capabilities), sets no_new_privs and execs QEMU with
 *    stdin /dev/null and stdout/stderr appended to the log FILE (never the caller's pipes: QEMU
 *    outlives this launcher).
 * The parent waits until QEMU was exec'd (a CLOEXEC pipe reaches EOF), writes QEMU's host pid
 * to FILE and exits 0; or prints the child's error and exits 1.
 *
 *   airlock-vmjail --fsd --source DIR --readonly 0|1 --idmap BASE:SIZE --log FILE
 *                  [--cgroup PROCS_FILE]... -- VIRTIOFSD ARGS...
 *
 * starts a virtiofsd serving one host directory (a sandbox's mount or volume) to the guest:
 * in the sandbox's cgroups; DIR bound onto itself read-only first when asked (from the host's
 * user namespace, so the flag is locked and nothing in the next namespace can lift it); then a
 * user namespace mapping 0..SIZE-1 to BASE.. (the container tier's mapping: what the guest's
 * root writes belongs to the sandbox's unprivileged host ids, never to host root, so a setuid
 * file it leaves is harmless) with a mount namespace of its own, where virtiofsd runs as that
 * namespace's root and adds its own sandbox (pivot_root into DIR, seccomp). Exits once
 * virtiofsd was exec'd.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/if.h>
#include <linux/close_range.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PATHS 64

static int g_err_fd = 2; /* the child reports its failure through the pipe */

static void die(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n >= (int)sizeof msg)
		n = sizeof msg - 1;
	dprintf(g_err_fd, "airlock-vmjail: %.*s\n", n, msg);
	_exit(1);
}

static void mkdirs(const char *path, mode_t mode)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
		die("path too long");
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) != 0 && errno != EEXIST)
			die("mkdir %s: %s", buf, strerror(errno));
		*p = '/';
	}
	if (mkdir(buf, mode) != 0 && errno != EEXIST)
		die("mkdir %s: %s", buf, strerror(errno));
}

/* Binds host `path` at the same name under `root` (a file onto an empty file). */
static void bind_in(const char *root, const char *path, int readonly)
{
	struct stat st;
	char target[4096];
	if (path[0] != '/' || strstr(path, "/..") || stat(path, &st) != 0)
		die("cannot bind %s: %s", path, errno ? strerror(errno) : "bad path");
	if (snprintf(target, sizeof target, "%s%s", root, path) >= (int)sizeof target)
		die("path too long: %s", path);
	if (S_ISDIR(st.st_mode)) {
		mkdirs(target, 0755);
	} else {
		char *slash = strrchr(target, '/');
		*slash = 0;
		mkdirs(target, 0755);
		*slash = '/';
		int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0)
			die("create %s: %s", target, strerror(errno));
		close(fd);
	}
	if (mount(path, target, NULL, MS_BIND, NULL) != 0)
		die("bind %s: %s", path, strerror(errno));
	unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (readonly ? MS_RDONLY : 0);
	if (strncmp(path, "/dev/", 5) != 0)
		flags |= MS_NODEV;
	if (mount(NULL, target, NULL, flags, NULL) != 0)
		die("remount %s: %s", path, strerror(errno));
}

static int open_tap(const char *name)
{
	int fd = open("/dev/net/tun", O_RDWR);
	if (fd < 0)
		die("open /dev/net/tun: %s", strerror(errno));
	struct ifreq ifr = { 0 };
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	if (snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name) >= IFNAMSIZ)
		die("tap name too long");
	if (ioctl(fd, TUNSETIFF, &ifr) != 0)
		die("attach tap %s: %s", name, strerror(errno));
	return fd;
}

static unsigned long number(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || !*s)
		die("%s: not a number: %s", what, s);
	return v;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die("write %s: %s", path, strerror(errno));
	close(fd);
}

static void join_cgroups(const char **cgroups, int ncg)
{
	char self[32];
	int n = snprintf(self, sizeof self, "%d", getpid());
	for (int c = 0; c < ncg; c++) {
		int fd = open(cgroups[c], O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, self, (size_t)n) != n)
			die("join cgroup %s: %s", cgroups[c], strerror(errno));
		close(fd);
	}
}

static int fsd_main(int argc, char **argv)
{
	const char *source = NULL, *logfile = NULL, *cgroups[MAX_PATHS];
	int ncg = 0, readonly = -1;
	unsigned long base = 0, size = 0;
	int i = 2;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--"))
			break;
		if (i + 1 >= argc)
			die("%s needs a value", a);
		const char *v = argv[++i];
		if (!strcmp(a, "--source")) source = v;
		else if (!strcmp(a, "--log")) logfile = v;
		else if (!strcmp(a, "--readonly")) readonly = (int)number(v, "--readonly");
		else if (!strcmp(a, "--idmap")) {
			if (sscanf(v, "%lu:%lu", &base, &size) != 2)
				die("--idmap: BASE:SIZE");
		} else if (!strcmp(a, "--cgroup") && ncg < MAX_PATHS) cgroups[ncg++] = v;
		else die("unknown or repeated too often: %s", a);
	}
	if (i >= argc - 1 || !source || source[0] != '/' || !logfile || readonly < 0 || base == 0 || size == 0)
		die("usage: airlock-vmjail --fsd --source DIR --readonly 0|1 --idmap BASE:SIZE --log FILE [...] -- VIRTIOFSD ARGS");
	char **fsd = argv + i + 1;
	int log = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (log < 0 || null < 0)
		die("open %s: %s", logfile, strerror(errno));
	join_cgroups(cgroups, ncg);

	int ready[2], report[2];
	if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(report, O_CLOEXEC) != 0)
		die("pipe: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		close(ready[1]);
		close(report[0]);
		g_err_fd = report[1];
		if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
			die("mount namespace: %s", strerror(errno));
		if (readonly && (mount(source, source, NULL, MS_BIND, NULL) != 0 ||
				 mount(NULL, source, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0))
			die("read-only %s: %s", source, strerror(errno));
		/* virtiofsd keeps a pid/lock file per socket in this fixed directory: give it a
		 * private one it can write (the host keeps only the empty mount point). */
		char opts[96];
		snprintf(opts, sizeof opts, "mode=0755,size=64k,nr_inodes=64,uid=%lu,gid=%lu", base, base);
		if ((mkdir("/run/virtiofsd", 0755) != 0 && errno != EEXIST) ||
		    mount("airlock-virtiofsd", "/run/virtiofsd", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) != 0)
			die("private /run/virtiofsd: %s", strerror(errno));
		if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
			die("user namespace: %s", strerror(errno));
		char c;
		if (read(ready[0], &c, 1) != 1) /* the parent wrote our id maps */
			_exit(1);
		if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0)
			die("become the namespace's root: %s", strerror(errno));
		umask(0); /* the socket must be connectable by QEMU's own uid */
		if (dup2(null, 0) != 0 || dup2(log, 1) != 1 || dup2(log, 2) != 2)
			die("dup2: %s", strerror(errno));
		if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0)
			die("close_range: %s", strerror(errno));
		execv(fsd[0], fsd);
		die("exec %s: %s", fsd[0], strerror(errno));
	}
	close(ready[0]);
	close(report[1]);
	/* Wait for the child's user namespace (its /proc/PID/ns/user differs from ours). */
	char path[64], mine[64], theirs[64];
	ssize_t a = readlink("/proc/self/ns/user", mine, sizeof mine - 1);
	snprintf(path, sizeof path, "/proc/%d/ns/user", child);
	for (int t = 0;; t++) {
		ssize_t b = readlink(path, theirs, sizeof theirs - 1);
		if (a > 0 && b > 0 && (a != b || memcmp(mine, theirs, (size_t)a) != 0))
			break;
		if (t > 5000 || b < 0) {
			char msg[512];
			ssize_t m = read(report[0], msg, sizeof msg - 1);
			if (m > 0 && write(2, msg, (size_t)m) < 0) { /* nothing more to say */ }
			die("the virtiofsd child did not reach its user namespace");
		}
		usleep(1000);
	}
	char map[96];
	snprintf(map, sizeof map, "0 %lu %lu\n", base, size);
	snprintf(path, sizeof path, "/proc/%d/uid_map", child);
	write_file(path, map);
	snprintf(path, sizeof path, "/proc/%d/gid_map", child);
	write_file(path, map);
	if (write(ready[1], "x", 1) != 1)
		die("release the child: %s", strerror(errno));
	close(ready[1]);
	char msg[1024];
	ssize_t len = 0, r;
	while (len < (ssize_t)sizeof msg - 1 && (r = read(report[0], msg + len, sizeof msg - 1 - (size_t)len)) > 0)
		len += r;
	if (len > 0) {
		if (write(2, msg, (size_t)len) < 0) { /* nothing more to say */ }
		waitpid(child, NULL, 0);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--fsd"))
		return fsd_main(argc, argv);
	const char *root = NULL, *pidfile = NULL, *netns = NULL, *tap = NULL, *logfile = NULL;
	const char *ro[MAX_PATHS], *rw[MAX_PATHS], *dev[MAX_PATHS], *cgroups[MAX_PATHS];
	int nro = 0, nrw = 0, ndev = 0, ncg = 0;
	long uid = -1, gid = -1;
	int i = 1;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--"))
			break;
		if (i + 1 >= argc)
			die("%s needs a value", a);
		const char *v = argv[++i];
		if (!strcmp(a, "--root")) root = v;
		else if (!strcmp(a, "--pidfile")) pidfile = v;
		else if (!strcmp(a, "--log")) logfile = v;
		else if (!strcmp(a, "--netns")) netns = v;
		else if (!strcmp(a, "--tap")) tap = v;
		else if (!strcmp(a, "--uid")) uid = (long)number(v, "--uid");
		else if (!strcmp(a, "--gid")) gid = (long)number(v, "--gid");
		else if (!strcmp(a, "--ro") && nro < MAX_PATHS) ro[nro++] = v;
		else if (!strcmp(a, "--rw") && nrw < MAX_PATHS) rw[nrw++] = v;
		else if (!strcmp(a, "--dev") && ndev < MAX_PATHS) dev[ndev++] = v;
		else if (!strcmp(a, "--cgroup") && ncg < MAX_PATHS) cgroups[ncg++] = v;
		else die("unknown or repeated too often: %s", a);
	}
	if (i >= argc - 1 || !root || !pidfile || !logfile || uid <= 0 || gid <= 0 || (tap && !netns))
		die("usage: airlock-vmjail --root DIR --uid N --gid N --pidfile FILE [...] -- QEMU ARGS");
	char **qemu = argv + i + 1;
	int log = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (log < 0 || null < 0 || fchown(log, (uid_t)uid, (gid_t)gid) != 0)
		die("open %s: %s", logfile, strerror(errno));

	join_cgroups(cgroups, ncg);
	if (netns) {
		int fd = open(netns, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
			die("join network namespace %s: %s", netns, strerror(errno));
		close(fd);
	}
	if (tap) {
		int fd = open_tap(tap);
		if (fd != 3) {
			if (dup2(fd, 3) != 3)
				die("dup2: %s", strerror(errno));
			close(fd);
		}
	}
	/* The mount namespace is the child's alone: the parent still writes the pid file. Without
	 * the sandbox's namespace, an empty one: an escaped QEMU must not reach the host's network
	 * (its unix sockets are reached by path, which works across network namespaces). */
	if (unshare(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (netns ? 0 : CLONE_NEWNET)) != 0)
		die("unshare: %s", strerror(errno));
	int report[2];
	if (pipe2(report, O_CLOEXEC) != 0)
		die("pipe: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child > 0) {
		close(report[1]);
		if (tap)
			close(3);
		char msg[1024];
		ssize_t len = 0, r;
		while (len < (ssize_t)sizeof msg - 1 && (r = read(report[0], msg + len, sizeof msg - 1 - (size_t)len)) > 0)
			len += r;
		if (len > 0) {
			if (write(2, msg, (size_t)len) < 0) { /* nothing more to say */ }
			waitpid(child, NULL, 0);
			return 1;
		}
		char tmp[4096];
		if (snprintf(tmp, sizeof tmp, "%s.tmp", pidfile) >= (int)sizeof tmp)
			die("pidfile path too long");
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || dprintf(fd, "%d\n", child) < 0 || close(fd) != 0 || rename(tmp, pidfile) != 0)
			die("write %s: %s", pidfile, strerror(errno));
		return 0;
	}

	/* The child: PID 1 of the new pid namespace. */
	close(report[0]);
	g_err_fd = report[1];
	if (prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0) != 0)
		die("prctl: %s", strerror(errno));
	if (unshare(CLONE_NEWNS) != 0)
		die("unshare mount namespace: %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		die("make mounts private: %s", strerror(errno));
	if (mount("airlock-vmjail", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1024") != 0)
		die("tmpfs on %s: %s", root, strerror(errno));
	bind_in(root, "/usr", 1);
	static const char *top_links[] = { "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32" };
	for (size_t l = 0; l < sizeof top_links / sizeof top_links[0]; l++) {
		char target[512], link[512];
		ssize_t len = readlink(top_links[l], target, sizeof target - 1);
		if (len <= 0)
			continue; /* absent, or a real directory: QEMU needs only /usr */
		target[len] = 0;
		snprintf(link, sizeof link, "%s%s", root, top_links[l]);
		if (symlink(target, link) != 0)
			die("symlink %s: %s", link, strerror(errno));
	}
	if (access("/etc/ld.so.cache", R_OK) == 0)
		bind_in(root, "/etc/ld.so.cache", 1);
	for (int k = 0; k < nro; k++)
		bind_in(root, ro[k], 1);
	for (int k = 0; k < nrw; k++)
		bind_in(root, rw[k], 0);
	for (int k = 0; k < ndev; k++) {
		char path[256];
		if (strchr(dev[k], '/') || snprintf(path, sizeof path, "/dev/%s", dev[k]) >= (int)sizeof path)
			die("bad device name %s", dev[k]);
		bind_in(root, path, 0);
	}
	char proc[4096];
	snprintf(proc, sizeof proc, "%s/proc", root);
	mkdirs(proc, 0555);
	if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		die("mount proc: %s", strerror(errno));
	if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 || umount2(".", MNT_DETACH) != 0 || chdir("/") != 0)
		die("pivot_root: %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
		die("read-only root: %s", strerror(errno));
	if (sethostname("airlock-vmm", 11) != 0)
		die("sethostname: %s", strerror(errno));
	struct rlimit core = { 0, 0 };
	setrlimit(RLIMIT_CORE, &core);
	for (int cap = 0; cap <= 63; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
			die("drop capability %d: %s", cap, strerror(errno));
	if (setgroups(0, NULL) != 0 || setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0 ||
	    setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
		die("drop privileges: %s", strerror(errno));
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		die("no_new_privs: %s", strerror(errno));
	if (dup2(null, 0) != 0 || dup2(log, 1) != 1 || dup2(log, 2) != 2)
		die("dup2: %s", strerror(errno));
	/* Nothing the caller left open reaches QEMU, except the TAP at 3. */
	if (syscall(SYS_close_range, tap ? 4u : 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0)
		die("close_range: %s", strerror(errno));
	execv(qemu[0], qemu);
	die("exec %s: %s", qemu[0], strerror(errno));
	return 1;
}
