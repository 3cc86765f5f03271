/*
 * airlock-vminit: PID 1 of a microvm sandbox's initramfs (docs/microvm.md).
 *
 * It turns the guest into what the container tier's OCI bundle gives a sandbox, then becomes
 * the agent:
 *   1. /dev (devtmpfs), /proc, /sys of the initramfs; the console on fds 0-2;
 *   2. loads the guest kernel's modules listed in /airlock/modules (finit_module);
 *   3. finds the disks by serial: "airlock-tpl" (the template, read-only ext4) and
 *      "airlock-layer" (the writable layer, ext4 of exactly the disk quota);
 *   4. mounts the template read-only and *idmapped* (the template's files are stored owned by
 *      the host's sandbox id range, which must read as 0..65535 inside), the layer, and an
 *      overlay of the two at /mnt/root; proc, sys (ro), a small /dev, devpts, shm, mqueue, as
 *      the container tier does;
 *   5. binds the engine-provided files from /airlock/files (e.g. /etc/resolv.conf) read-only;
 *   6. configures lo and, if /airlock/config has a `net` line, eth0 and the default route;
 *   7. hostname, a pids cgroup for the agent and everything it starts;
 *   8. opens the virtio-serial port named "airlock" (the host link), forgets the token file,
 *      switches root, drops the capabilities the container tier drops and sets no_new_privs,
 *      and execs the agent with `--port-fd` (and `--layer-fd`: the layer's upper dir, for
 *      file.changes).
 * Any failure prints one line on the console and powers the guest off (the host then sees
 * the VM exit).
 *
 * /airlock/config: one directive a line, fields separated by single spaces:
 *   hostname NAME | pids N | net ADDR PREFIXLEN GATEWAY | bind FILE TARGET | env K=V
 *   | idmap BASE SIZE | virtiofs TAG TARGET ro|rw   (host mounts and volumes, in order)
 * /airlock/token: the agent token (handed over in the environment, then scrubbed).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/module.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROOT "/mnt/root"
#define AGENT "/airlock/airlock-agent"
#define MAX_ENV 64
#define MAX_BINDS 32
#define MAX_SHARES 32

/* Capabilities code in the sandbox keeps: the container tier's set (runtime/oci-spec.ts). */
static const int KEPT_CAPS[] = {
	CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL,
	CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
};

static void die(const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	dprintf(2, "airlock-vminit: %s\n", msg);
	sync();
	reboot(RB_POWER_OFF);
	_exit(1);
}

static void must(int rc, const char *what, const char *arg)
{
	if (rc != 0)
		die("%s %s: %s", what, arg ? arg : "", strerror(errno));
}

static void mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
		die("path too long: %s", path);
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

static char *read_file(const char *path, size_t max, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *buf = malloc(max + 1);
	size_t n = 0;
	if (!buf)
		die("out of memory");
	for (;;) {
		ssize_t r = read(fd, buf + n, max - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (n == max)
			break;
	}
	close(fd);
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

/* ---- config ---- */
struct bind { char *src, *target; };
static char *cfg_hostname, *cfg_net_addr, *cfg_net_gw;
static int cfg_net_prefix = -1;
static long cfg_pids;
static unsigned long cfg_idmap_base, cfg_idmap_size;
static char *cfg_env[MAX_ENV + 2];
static int cfg_nenv;
static struct bind cfg_binds[MAX_BINDS];
static int cfg_nbinds;
struct share { char *tag, *target; int readonly; };
static struct share cfg_shares[MAX_SHARES];
static int cfg_nshares;

static void parse_config(void)
{
	char *text = read_file("/airlock/config", 1 << 20, NULL);
	if (!text)
		die("no /airlock/config");
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *arg = strchr(line, ' ');
		if (!arg)
			die("bad config line: %s", line);
		*arg++ = 0;
		if (!strcmp(line, "hostname")) {
			cfg_hostname = arg;
		} else if (!strcmp(line, "pids")) {
			cfg_pids = strtol(arg, NULL, 10);
		} else if (!strcmp(line, "idmap")) {
			if (sscanf(arg, "%lu %lu", &cfg_idmap_base, &cfg_idmap_size) != 2)
				die("bad idmap line");
		} else if (!strcmp(line, "env")) {
			if (cfg_nenv == MAX_ENV)
				die("too many env lines");
			cfg_env[cfg_nenv++] = arg;
		} else if (!strcmp(line, "net")) {
			char *prefix = strchr(arg, ' ');
			char *gw = prefix ? strchr(prefix + 1, ' ') : NULL;
			if (!gw)
				die("bad net line");
			*prefix++ = 0;
			*gw++ = 0;
			cfg_net_addr = arg;
			cfg_net_prefix = atoi(prefix);
			cfg_net_gw = gw;
		} else if (!strcmp(line, "virtiofs")) {
			char *target = strchr(arg, ' ');
			char *mode = target ? strchr(target + 1, ' ') : NULL;
			if (!mode || cfg_nshares == MAX_SHARES)
				die("bad virtiofs line");
			*target++ = 0;
			*mode++ = 0;
			cfg_shares[cfg_nshares].tag = arg;
			cfg_shares[cfg_nshares].target = target;
			cfg_shares[cfg_nshares++].readonly = strcmp(mode, "rw") != 0;
		} else if (!strcmp(line, "bind")) {
			char *target = strchr(arg, ' ');
			if (!target || cfg_nbinds == MAX_BINDS)
				die("bad bind line");
			*target++ = 0;
			cfg_binds[cfg_nbinds].src = arg;
			cfg_binds[cfg_nbinds++].target = target;
		} else {
			die("unknown config directive: %s", line);
		}
	}
}

/* ---- modules and disks ---- */
static void load_modules(void)
{
	char *list = read_file("/airlock/modules", 1 << 16, NULL);
	if (!list)
		return;
	for (char *name = strtok(list, "\n"); name; name = strtok(NULL, "\n")) {
		char path[512];
		snprintf(path, sizeof path, "/airlock/modules.d/%s.ko", name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open %s: %s", path, strerror(errno));
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			die("load module %s: %s", name, strerror(errno));
		close(fd);
		unlink(path); /* its memory is the guest's */
	}
	free(list);
}

/* The /dev node of the virtio disk whose serial is `serial`; waits for it to appear. */
static void find_disk(const char *serial, char *dev, size_t devlen)
{
	for (int tries = 0; tries < 1000; tries++) {
		DIR *d = opendir("/sys/block");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (strncmp(e->d_name, "vd", 2) != 0)
				continue;
			char path[300];
			snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
			char *s = read_file(path, 64, NULL);
			if (s) {
				s[strcspn(s, "\n")] = 0;
				int match = !strcmp(s, serial);
				free(s);
				if (match) {
					snprintf(dev, devlen, "/dev/%s", e->d_name);
					closedir(d);
					return;
				}
			}
		}
		if (d)
			closedir(d);
		usleep(5000);
	}
	die("no disk with serial %s", serial);
}

/* The virtio-serial port named `name` (/sys/class/virtio-ports/vportNpM/name), opened. */
static int open_port(const char *name)
{
	for (int tries = 0; tries < 1000; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char path[300];
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			char *s = read_file(path, 64, NULL);
			if (!s)
				continue;
			s[strcspn(s, "\n")] = 0;
			int match = !strcmp(s, name);
			free(s);
			if (!match)
				continue;
			snprintf(path, sizeof path, "/dev/%s", e->d_name);
			int fd = open(path, O_RDWR | O_NONBLOCK | O_NOCTTY);
			if (fd < 0)
				die("open %s: %s", path, strerror(errno));
			closedir(d);
			return fd;
		}
		if (d)
			closedir(d);
		usleep(5000);
	}
	die("no virtio port named %s", name);
	return -1;
}

/* ---- idmapped template ---- */
/*
 * The template's files are owned by BASE..BASE+SIZE-1 (the host ids the container tier maps a
 * sandbox's 0..SIZE-1 to). An idmapped mount through a user namespace mapping BASE → 0 shows
 * them as 0..SIZE-1, with no rewrite of the image.
 */
static int userns_fd(unsigned long base, unsigned long size)
{
	int sync_pipe[2];
	must(pipe2(sync_pipe, O_CLOEXEC), "pipe", NULL);
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		/* Lives only until the parent has opened its namespace. */
		if (unshare(CLONE_NEWUSER) != 0 || write(sync_pipe[1], "x", 1) != 1)
			_exit(1);
		close(sync_pipe[1]);
		pause();
		_exit(0);
	}
	close(sync_pipe[1]);
	char c;
	if (read(sync_pipe[0], &c, 1) != 1)
		die("user namespace child failed");
	close(sync_pipe[0]);
	char path[64], map[64];
	snprintf(map, sizeof map, "%lu 0 %lu\n", base, size);
	const char *files[] = { "uid_map", "gid_map" };
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof path, "/proc/%d/%s", child, files[i]);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, map, strlen(map)) != (ssize_t)strlen(map))
			die("write %s: %s", path, strerror(errno));
		close(fd);
	}
	snprintf(path, sizeof path, "/proc/%d/ns/user", child);
	int ns = open(path, O_RDONLY | O_CLOEXEC);
	if (ns < 0)
		die("open %s: %s", path, strerror(errno));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return ns;
}

static void idmap_mount(const char *src, const char *dst, unsigned long base, unsigned long size)
{
	int ns = userns_fd(base, size);
	int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	if (tree < 0)
		die("open_tree %s: %s", src, strerror(errno));
	struct mount_attr attr = { .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY, .userns_fd = (uint64_t)ns };
	if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
		die("idmap %s: %s", src, strerror(errno));
	if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) != 0)
		die("move_mount %s: %s", dst, strerror(errno));
	close(tree);
	close(ns);
}

/* ---- the sandbox root ---- */
static void mount_fs(const char *src, const char *target, const char *type, unsigned long flags, const char *data)
{
	mkdir_p(target, 0755);
	if (mount(src, target, type, flags, data) != 0)
		die("mount %s on %s: %s", type, target, strerror(errno));
}

static void make_dev(void)
{
	static const struct { const char *name; unsigned maj, min; } nodes[] = {
		{ "null", 1, 3 }, { "zero", 1, 5 }, { "full", 1, 7 },
		{ "random", 1, 8 }, { "urandom", 1, 9 }, { "tty", 5, 0 },
	};
	mount_fs("tmpfs", ROOT "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k,nr_inodes=4096");
	for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
		char path[128];
		snprintf(path, sizeof path, ROOT "/dev/%s", nodes[i].name);
		must(mknod(path, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)), "mknod", path);
		must(chmod(path, 0666), "chmod", path);
	}
	static const char *links[][2] = {
		{ "pts/ptmx", ROOT "/dev/ptmx" }, { "/proc/self/fd", ROOT "/dev/fd" },
		{ "/proc/self/fd/0", ROOT "/dev/stdin" }, { "/proc/self/fd/1", ROOT "/dev/stdout" },
		{ "/proc/self/fd/2", ROOT "/dev/stderr" },
	};
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		must(symlink(links[i][0], links[i][1]), "symlink", links[i][1]);
	mount_fs("devpts", ROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
	mount_fs("shm", ROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=1777,size=65536k");
	mount_fs("mqueue", ROOT "/dev/mqueue", "mqueue", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL);
}

/* A target inside the new root, refused when it could climb out or cover the kernel's file systems. */
static void root_path(char *out, size_t len, const char *t)
{
	if (t[0] != '/' || strstr(t, "/..") || !strcmp(t, "/") || !strncmp(t, "/proc", 5) || !strncmp(t, "/sys", 4) ||
	    !strncmp(t, "/dev", 4) || snprintf(out, len, ROOT "%s", t) >= (int)len)
		die("bad mount target %s", t);
}

/* Host directories (mounts, volumes) through virtiofs; the host enforces read-only as well. */
static void mount_shares(void)
{
	for (int i = 0; i < cfg_nshares; i++) {
		char target[4096];
		root_path(target, sizeof target, cfg_shares[i].target);
		unsigned long flags = MS_NOSUID | MS_NODEV | (cfg_shares[i].readonly ? MS_RDONLY : 0);
		mount_fs(cfg_shares[i].tag, target, "virtiofs", flags, NULL);
	}
}

static void bind_files(void)
{
	for (int i = 0; i < cfg_nbinds; i++) {
		char target[4096];
		const char *t = cfg_binds[i].target;
		if (t[0] != '/' || strstr(t, "/../") || snprintf(target, sizeof target, ROOT "%s", t) >= (int)sizeof target)
			die("bad bind target %s", t);
		char *slash = strrchr(target, '/');
		*slash = 0;
		mkdir_p(target, 0755);
		*slash = '/';
		/* The target is replaced by an empty file if it is a link: never follow a template's link. */
		struct stat st;
		if (lstat(target, &st) != 0 || !S_ISREG(st.st_mode)) {
			unlink(target);
			int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
			if (fd < 0)
				die("create %s: %s", target, strerror(errno));
			close(fd);
		}
		must(mount(cfg_binds[i].src, target, NULL, MS_BIND, NULL), "bind", target);
		must(mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL), "remount ro", target);
	}
}

static void mount_root(void)
{
	char tpl[300], layer[300];
	find_disk("airlock-tpl", tpl, sizeof tpl);
	find_disk("airlock-layer", layer, sizeof layer);
	mount_fs(tpl, "/mnt/tpl", "ext4", MS_RDONLY | MS_NOATIME, "noload");
	if (cfg_idmap_size) {
		mkdir_p("/mnt/lower", 0755);
		idmap_mount("/mnt/tpl", "/mnt/lower", cfg_idmap_base, cfg_idmap_size);
	}
	mount_fs(layer, "/mnt/layer", "ext4", MS_NOATIME | MS_NOSUID | MS_NODEV, "noinit_itable");
	mkdir_p("/mnt/layer/upper", 0755);
	mkdir_p("/mnt/layer/work", 0700);
	char opts[256];
	snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=/mnt/layer/upper,workdir=/mnt/layer/work,volatile",
		 cfg_idmap_size ? "/mnt/lower" : "/mnt/tpl");
	mount_fs("airlock-rootfs", ROOT, "overlay", 0, opts);
	mount_fs("proc", ROOT "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL);
	mount_fs("sysfs", ROOT "/sys", "sysfs", MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_RDONLY, NULL);
	make_dev();
	mkdir_p(ROOT "/tmp", 01777);
	mount_shares();
	bind_files();
}

/* ---- network ---- */
static void if_up(int s, const char *name)
{
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	must(ioctl(s, SIOCGIFFLAGS, &ifr), "SIOCGIFFLAGS", name);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	must(ioctl(s, SIOCSIFFLAGS, &ifr), "SIOCSIFFLAGS", name);
}

static void set_addr(int s, const char *name, unsigned long req, in_addr_t a)
{
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = a;
	must(ioctl(s, req, &ifr), "set address of", name);
}

static void setup_network(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket: %s", strerror(errno));
	if_up(s, "lo");
	if (cfg_net_addr) {
		struct in_addr addr, gw;
		if (!inet_aton(cfg_net_addr, &addr) || !inet_aton(cfg_net_gw, &gw) || cfg_net_prefix < 1 || cfg_net_prefix > 32)
			die("bad net config");
		in_addr_t mask = htonl(cfg_net_prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> cfg_net_prefix));
		/* The NIC may show up a moment after its driver loads. */
		for (int i = 0; i < 1000 && if_nametoindex("eth0") == 0; i++)
			usleep(5000);
		set_addr(s, "eth0", SIOCSIFADDR, addr.s_addr);
		set_addr(s, "eth0", SIOCSIFNETMASK, mask);
		if_up(s, "eth0");
		struct rtentry rt = { 0 };
		struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *g = (struct sockaddr_in *)&rt.rt_gateway,
				   *m = (struct sockaddr_in *)&rt.rt_genmask;
		dst->sin_family = g->sin_family = m->sin_family = AF_INET;
		g->sin_addr = gw;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = "eth0";
		must(ioctl(s, SIOCADDRT, &rt), "add default route via", cfg_net_gw);
	}
	close(s);
}

/* ---- limits and privileges ---- */
static void pids_cgroup(void)
{
	if (cfg_pids <= 0)
		return;
	mount_fs("cgroup2", "/mnt/cgroup", "cgroup2", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL);
	int fd = open("/mnt/cgroup/cgroup.subtree_control", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "+pids", 5) != 5)
		die("enable pids controller: %s", strerror(errno));
	close(fd);
	mkdir_p("/mnt/cgroup/sandbox", 0755);
	char buf[32];
	int n = snprintf(buf, sizeof buf, "%ld", cfg_pids);
	fd = open("/mnt/cgroup/sandbox/pids.max", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, buf, (size_t)n) != n)
		die("pids.max: %s", strerror(errno));
	close(fd);
	n = snprintf(buf, sizeof buf, "%d", getpid());
	fd = open("/mnt/cgroup/sandbox/cgroup.procs", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, buf, (size_t)n) != n)
		die("join pids cgroup: %s", strerror(errno));
	close(fd);
}

static void drop_capabilities(void)
{
	uint64_t keep = 0;
	for (size_t i = 0; i < sizeof KEPT_CAPS / sizeof KEPT_CAPS[0]; i++)
		keep |= 1ull << KEPT_CAPS[i];
	for (int cap = 0; cap <= 63; cap++) {
		if (keep & (1ull << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
			die("drop capability %d: %s", cap, strerror(errno));
	}
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct data[2] = { 0 };
	data[0].effective = data[0].permitted = (uint32_t)keep;
	data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
	must((int)syscall(SYS_capset, &hdr, data), "capset", NULL);
	must(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs", NULL);
}

static void console_fds(void)
{
	if (fcntl(1, F_GETFD) >= 0)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		fd = open("/dev/null", O_RDWR);
	for (int i = 0; i < 3 && fd >= 0; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

static const char *cfg_uname(void)
{
	static struct utsname u;
	return uname(&u) == 0 ? u.release : "?";
}

int main(void)
{
	if (getpid() != 1)
		return 2;
	mkdir_p("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	console_fds();
	mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL);
	mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL);
	if (access("/airlock/probe", F_OK) == 0) {
		/* The host's accelerator probe (airlock doctor): booting this far is the answer. */
		dprintf(1, "AIRLOCK-VMINIT-OK %s\n", cfg_uname());
		reboot(RB_POWER_OFF);
		return 0;
	}

	size_t token_len = 0;
	char *token = read_file("/airlock/token", 1024, &token_len);
	if (!token || token_len == 0)
		die("no agent token");
	unlink("/airlock/token");
	parse_config();
	load_modules();
	mount_root();
	setup_network();
	if (cfg_hostname)
		must(sethostname(cfg_hostname, strlen(cfg_hostname)), "sethostname", cfg_hostname);
	pids_cgroup();
	int port = open_port("airlock");
	if (port != 3) {
		must(dup2(port, 3) < 0 ? -1 : 0, "dup2", NULL);
		close(port);
	}
	/* The layer's upper dir, for the agent's LWALK/LREAD (file.changes): after the root switch
	 * it is out of every path's reach, so the agent gets it as a descriptor. Not CLOEXEC: the
	 * agent inherits it and marks it CLOEXEC itself, so no sandbox process ever holds it. */
	int layer = open("/mnt/layer/upper", O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	if (layer < 0)
		die("open layer: %s", strerror(errno));
	char layer_arg[16];
	snprintf(layer_arg, sizeof layer_arg, "%d", layer);
	int agent = open(AGENT, O_RDONLY | O_CLOEXEC);
	if (agent < 0)
		die("open agent: %s", strerror(errno));

	/* Switch root: the initramfs stays underneath, unreachable; its files are the engine's. */
	must(chdir(ROOT), "chdir", ROOT);
	must(mount(ROOT, "/", NULL, MS_MOVE, NULL), "move root", NULL);
	must(chroot("."), "chroot", NULL);
	must(chdir("/"), "chdir", "/");

	char *env[MAX_ENV + 2];
	int n = 0;
	for (int i = 0; i < cfg_nenv; i++)
		env[n++] = cfg_env[i];
	char *tok = malloc(token_len + 32);
	if (!tok)
		die("out of memory");
	snprintf(tok, token_len + 32, "AIRLOCK_AGENT_TOKEN=%s", token);
	explicit_bzero(token, token_len);
	env[n++] = tok;
	env[n] = NULL;
	drop_capabilities();
	char *argv[] = { "airlock-agent", "--port-fd", "3", "--layer-fd", layer_arg, NULL };
	syscall(SYS_execveat, agent, "", argv, env, AT_EMPTY_PATH);
	die("exec agent: %s", strerror(errno));
	return 1;
}
