/*
 * airlock-fawatch: reports opens of credential-like files made by the processes of container
 * and gVisor sandboxes, seen from the host with fanotify(7), so nothing inside a sandbox can hide or
 * forge them (docs/records.md#detectors).
 *
 *   airlock-fawatch            (root: FAN_MARK_FILESYSTEM needs CAP_SYS_ADMIN)
 *
 * stdin, one command a line:   ADD <tag> <path>   watch the overlay file system mounted at path
 *                                                 (a sandbox's rootfs on the host)
 *                              ADDSENTRY <tag> <path>
 *                                                 the same for a gVisor sandbox: its sentry (in
 *                                                 the host pid namespace, in cgroup /airlock/<tag>)
 *                                                 opens for every process inside, so lines name
 *                                                 no process (pid and comm "-"), and the sentry's
 *                                                 /root prefix is cut from paths. It keeps files
 *                                                 open, so mostly the first open of a file shows.
 *                              REMOVE <tag>       report what is queued, then stop watching
 * stdout, one event a line:    READY              once, at start
 *                              OK <tag>           the watch is in place
 *                              ERR <tag> <message>
 *                              DONE <tag>         after REMOVE (also for a tag not watched)
 *                              OPEN <tag> <hostpid> <pid|-> <comm|-> <path> <suppressed>
 *                              LOST <tag> <overflow 0|1> <dropped>
 *                              FAIL <tag> <message>   the watch broke and is gone
 * comm and path are hex (file names are the sandbox's: newlines, spaces, any bytes). pid is the
 * opener's pid in the sandbox's pid namespace, "-" when it exited before we looked; suppressed
 * counts earlier opens of the same path that were coalesced into this line. LOST says that the
 * kernel's queue overflowed (events were lost) or that `dropped` candidate opens went over the
 * rate limit since the last LOST line. Each command gets exactly one answer (OK/ERR for ADD,
 * DONE for REMOVE), in order. When stdin closes we exit 0.
 *
 * One fanotify group per sandbox, marking the whole overlay superblock: the container's root is
 * a bind of that mount in its own mount namespace, and a filesystem mark sees opens through
 * every mount of the superblock. A group of its own gives each sandbox its own queue (one
 * sandbox flooding opens overflows only its own), and the group names the sandbox. Events
 * carry a descriptor the kernel opened for us (FAN_REPORT_FID is refused for overlayfs
 * filesystem marks here: its file handles do not decode); /proc/self/fd/N names the path as
 * the opener saw it, relative to the sandbox's root. We only readlink, fstat and close it:
 * never read contents, never open anything by a name the sandbox chose.
 *
 * Bounded: per group, opens of one path are reported once per COALESCE_MS (the next line counts
 * the ones in between), at most BUCKET_BURST lines at once and BUCKET_PER_SEC a second after
 * that, and a LOST line at most every LOST_EVERY_MS. The kernel's queue is bounded too
 * (16384 events, then FAN_Q_OVERFLOW).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/fanotify.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#ifndef OVERLAYFS_SUPER_MAGIC
#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#endif
#ifndef FAN_REPORT_FD_ERROR
#define FAN_REPORT_FD_ERROR 0x00002000
#endif

#define MAX_GROUPS 1024
#define TAG_MAX 64
#define MAX_LINE (PATH_MAX + 256)
#define COALESCE_SLOTS 256
#define COALESCE_MS 60000
#define BUCKET_BURST 32
#define BUCKET_PER_SEC 2
#define LOST_EVERY_MS 5000
/* Events per read(): each holds a descriptor until we close it. */
#define EVENT_BUF 4096
/* stdin's epoll tag: group tags are indices below MAX_GROUPS. */
#define STDIN_KEY MAX_GROUPS

struct slot {
	uint64_t hash;
	int64_t last_ms;
	uint32_t suppressed;
};

struct group {
	int fd;
	char tag[TAG_MAX + 1];
	struct slot slots[COALESCE_SLOTS];
	int64_t tokens_at_ms;
	double tokens;
	uint64_t dropped;
	bool overflow;
	int64_t lost_at_ms;
	/* gVisor: the sentry opens files for every process inside, so an open names no process. */
	bool sentry;
};

static struct group *groups[MAX_GROUPS];
static int epfd = -1;
static uint64_t hash_seed;
static char own_pidns[64];

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void out_flush(void)
{
	if (fflush(stdout) != 0)
		_exit(0); /* the engine is gone */
}

static void put_hex(const unsigned char *s, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		putchar(digits[s[i] >> 4]);
		putchar(digits[s[i] & 15]);
	}
}

static bool valid_tag(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > TAG_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= '0' && t[i] <= '9') || t[i] == '-' || t[i] == '_'))
			return false;
	return true;
}

static int find_group(const char *tag)
{
	for (int i = 0; i < MAX_GROUPS; i++)
		if (groups[i] && strcmp(groups[i]->tag, tag) == 0)
			return i;
	return -1;
}

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static bool ends_with(const char *s, size_t n, const char *p, bool fold)
{
	size_t k = strlen(p);
	if (n < k)
		return false;
	return fold ? strncasecmp(s + n - k, p, k) == 0 : memcmp(s + n - k, p, k) == 0;
}

/* A cheap superset of the engine's isCredentialPath (detectors/rules.ts), which decides. */
static bool credential_candidate(const char *path, size_t n)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	return strstr(path, "/.ssh/") || starts_with(path, ".ssh/") || starts_with(base, ".env") || starts_with(base, "id_") ||
	       ends_with(path, n, ".pem", true) || strcmp(base, ".netrc") == 0 || ends_with(path, n, ".aws/credentials", false);
}

/* FNV-1a, seeded: a sandbox cannot precompute paths that collide in our table. */
static uint64_t path_hash(const char *s, size_t n)
{
	uint64_t h = 14695981039346656037ULL ^ hash_seed;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* Reads a small /proc file of the opener into buf; the length, or -1. */
static ssize_t read_proc(int pid, const char *what, char *buf, size_t size)
{
	char name[64];
	snprintf(name, sizeof name, "/proc/%d/%s", pid, what);
	int fd = open(name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return n;
}

enum opener { OPENER_GONE, OPENER_HOST, OPENER_AGENT, OPENER_SANDBOX };

/*
 * Where the opener runs, from its NSpid line (ours first, then the sandbox's, then any it
 * nested): a host process, the sandbox's agent (pid 1 of the sandbox's own pid namespace: the
 * files API records its reads itself), or a sandbox process (its pid there in *sbxpid).
 */
static enum opener classify(int pid, long *sbxpid)
{
	char status[4096];
	if (read_proc(pid, "status", status, sizeof status) < 0)
		return OPENER_GONE;
	char *line = strstr(status, "\nNSpid:");
	if (!line)
		return OPENER_GONE;
	long ids[4];
	int n = 0;
	char *p = line + 7;
	while (n < 4) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		ids[n++] = v;
		p = end;
	}
	if (n < 2) {
		/* Our own pid namespace: a host process, unless ours is not the host's. */
		char ns[64];
		char link[64];
		snprintf(link, sizeof link, "/proc/%d/ns/pid", pid);
		ssize_t k = readlink(link, ns, sizeof ns - 1);
		if (k > 0) {
			ns[k] = 0;
			if (strcmp(ns, own_pidns) == 0)
				return OPENER_HOST;
		}
		return OPENER_GONE;
	}
	*sbxpid = ids[1];
	return n == 2 && ids[1] == 1 ? OPENER_AGENT : OPENER_SANDBOX;
}

/* Whether the process is in cgroup /airlock/<tag> (any hierarchy: v1 or v2). */
static bool in_sandbox_cgroup(int pid, const char *tag)
{
	char text[4096];
	char want[TAG_MAX + 16];
	if (read_proc(pid, "cgroup", text, sizeof text) < 0)
		return false;
	int w = snprintf(want, sizeof want, ":/airlock/%s\n", tag);
	return w > 0 && (size_t)w < sizeof want && strstr(text, want) != NULL;
}

static bool take_token(struct group *g, int64_t now)
{
	g->tokens += (double)(now - g->tokens_at_ms) * BUCKET_PER_SEC / 1000.0;
	if (g->tokens > BUCKET_BURST)
		g->tokens = BUCKET_BURST;
	g->tokens_at_ms = now;
	if (g->tokens < 1)
		return false;
	g->tokens -= 1;
	return true;
}

static void report_lost(struct group *g, bool force)
{
	if (!g->overflow && g->dropped == 0)
		return;
	int64_t now = now_ms();
	if (!force && now - g->lost_at_ms < LOST_EVERY_MS)
		return;
	printf("LOST %s %d %llu\n", g->tag, g->overflow ? 1 : 0, (unsigned long long)g->dropped);
	g->overflow = false;
	g->dropped = 0;
	g->lost_at_ms = now;
}

static void on_open(struct group *g, int fd, int pid)
{
	char link[64];
	char path[PATH_MAX + 1];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof path);
	if (n <= 0 || n >= (ssize_t)sizeof path)
		return;
	path[n] = 0;
	struct stat st;
	/* Credential files are regular files; FIFOs and devices are not ours to look at. */
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		return;
	if (st.st_nlink == 0 && ends_with(path, (size_t)n, " (deleted)", false)) {
		n -= 10;
		path[n] = 0;
	}
	if (memchr(path, 0, (size_t)n) || !credential_candidate(path, (size_t)n))
		return;
	long sbxpid = -1;
	enum opener who;
	if (g->sentry) {
		/* The sentry runs in the host's pid namespace but in the sandbox's cgroup, which no
		 * host process of ours joins; it opens the rootfs under its own /root. */
		if (!in_sandbox_cgroup(pid, g->tag))
			return;
		if (n > 5 && memcmp(path, "/root/", 6) == 0) {
			memmove(path, path + 5, (size_t)n - 5 + 1);
			n -= 5;
		}
		who = OPENER_GONE;
	} else {
		who = classify(pid, &sbxpid);
		if (who == OPENER_HOST || who == OPENER_AGENT)
			return;
	}
	int64_t now = now_ms();
	uint64_t h = path_hash(path, (size_t)n);
	struct slot *s = &g->slots[h % COALESCE_SLOTS];
	if (s->hash == h && s->last_ms != 0 && now - s->last_ms < COALESCE_MS) {
		if (s->suppressed < UINT32_MAX)
			s->suppressed++;
		return;
	}
	if (!take_token(g, now)) {
		g->dropped++;
		return;
	}
	uint32_t suppressed = s->hash == h ? s->suppressed : 0;
	s->hash = h;
	s->last_ms = now;
	s->suppressed = 0;
	char comm[32];
	ssize_t c = who == OPENER_SANDBOX ? read_proc(pid, "comm", comm, sizeof comm) : -1;
	while (c > 0 && comm[c - 1] == '\n')
		c--;
	printf("OPEN %s %d ", g->tag, pid);
	if (sbxpid > 0)
		printf("%ld ", sbxpid);
	else
		fputs("- ", stdout);
	if (c > 0)
		put_hex((const unsigned char *)comm, (size_t)c);
	else
		putchar('-');
	putchar(' ');
	put_hex((const unsigned char *)path, (size_t)n);
	printf(" %u\n", suppressed);
}

/* Handles what the group's queue holds now; false once the group's descriptor failed. */
static bool drain(struct group *g, int max_reads)
{
	/* Aligned for the event structs the kernel writes. */
	static uint64_t buf[EVENT_BUF / sizeof(uint64_t)];
	for (int r = 0; r < max_reads; r++) {
		ssize_t len = read(g->fd, buf, sizeof buf);
		if (len < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return true;
			/* Without FAN_REPORT_FD_ERROR a failed descriptor fails the read: that event is lost. */
			if (errno == EMFILE || errno == ENFILE || errno == ENXIO || errno == EACCES || errno == EPERM || errno == ENOENT || errno == ESTALE) {
				g->dropped++;
				continue;
			}
			return false;
		}
		if (len == 0)
			return true;
		struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
		for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			if (m->vers != FANOTIFY_METADATA_VERSION) {
				fprintf(stderr, "airlock-fawatch: fanotify metadata version %u, built for %u\n", m->vers, FANOTIFY_METADATA_VERSION);
				exit(2);
			}
			if (m->mask & FAN_Q_OVERFLOW)
				g->overflow = true;
			if (m->fd >= 0) {
				on_open(g, m->fd, m->pid);
				close(m->fd);
			} else if (m->fd != FAN_NOFD) {
				g->dropped++; /* FAN_REPORT_FD_ERROR: the kernel could not open it for us */
			}
		}
	}
	return true;
}

static void drop_group(int i)
{
	struct group *g = groups[i];
	epoll_ctl(epfd, EPOLL_CTL_DEL, g->fd, NULL);
	close(g->fd);
	free(g);
	groups[i] = NULL;
}

static int new_group(void)
{
	/* The kernel opens each event's file for us: read-only, never blocking on a FIFO. */
	unsigned int event_flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_LARGEFILE | O_NOATIME;
	int fd = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_FD_ERROR, event_flags);
	if (fd < 0 && errno == EINVAL) /* before Linux 6.13 */
		fd = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, event_flags);
	return fd;
}

static void cmd_add(char *tag, char *path, bool sentry)
{
	if (find_group(tag) >= 0) {
		printf("ERR %s already watched\n", tag);
		return;
	}
	int slot = -1;
	for (int i = 0; i < MAX_GROUPS && slot < 0; i++)
		if (!groups[i])
			slot = i;
	if (slot < 0) {
		printf("ERR %s too many watches\n", tag);
		return;
	}
	/* The engine's own directory; O_NOFOLLOW so a link there cannot point us elsewhere. */
	int dir = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir < 0) {
		printf("ERR %s open: %s\n", tag, strerror(errno));
		return;
	}
	struct statfs sf;
	if (fstatfs(dir, &sf) != 0 || sf.f_type != OVERLAYFS_SUPER_MAGIC) {
		close(dir);
		printf("ERR %s not an overlay mount\n", tag);
		return;
	}
	int fd = new_group();
	if (fd < 0) {
		printf("ERR %s fanotify_init: %s\n", tag, strerror(errno));
		close(dir);
		return;
	}
	/* "." of the descriptor: a NULL name would need a non-O_PATH one. */
	int rc = fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM | FAN_MARK_DONT_FOLLOW, FAN_OPEN, dir, ".");
	int err = errno;
	close(dir);
	if (rc != 0) {
		printf("ERR %s fanotify_mark: %s\n", tag, strerror(err));
		close(fd);
		return;
	}
	struct group *g = calloc(1, sizeof *g);
	if (!g) {
		close(fd);
		printf("ERR %s out of memory\n", tag);
		return;
	}
	g->fd = fd;
	g->sentry = sentry;
	snprintf(g->tag, sizeof g->tag, "%s", tag);
	g->tokens = BUCKET_BURST;
	g->tokens_at_ms = now_ms();
	g->lost_at_ms = 0;
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)slot };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		printf("ERR %s epoll: %s\n", tag, strerror(errno));
		close(fd);
		free(g);
		return;
	}
	groups[slot] = g;
	printf("OK %s\n", tag);
}

static void cmd_remove(const char *tag)
{
	int i = find_group(tag);
	if (i >= 0) {
		/* Remove the mark first: no new events, so the queue is finite and draining it lets go
		 * of every file the events pinned (the engine unmounts the rootfs after DONE). What the
		 * sandbox did before is still reported. */
		bool flushed = fanotify_mark(groups[i]->fd, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0, AT_FDCWD, NULL) == 0;
		drain(groups[i], flushed ? INT32_MAX : 16);
		report_lost(groups[i], true);
		if (flushed) {
			/* Closing a group waits for an RCU grace period (milliseconds): answer first, so
			 * the sandbox's end does not wait on it. */
			printf("DONE %s\n", tag);
			out_flush();
			drop_group(i);
			return;
		}
		drop_group(i);
	}
	printf("DONE %s\n", tag);
}

static void on_line(char *line)
{
	char *sp = strchr(line, ' ');
	if (!sp) {
		printf("ERR - bad command\n");
		return;
	}
	*sp = 0;
	char *tag = sp + 1;
	char *rest = NULL;
	bool add = strcmp(line, "ADD") == 0 || strcmp(line, "ADDSENTRY") == 0;
	if (add) {
		rest = strchr(tag, ' ');
		if (!rest) {
			printf("ERR - bad command\n");
			return;
		}
		*rest++ = 0;
	}
	if (!valid_tag(tag)) {
		printf("ERR - bad tag\n");
		return;
	}
	if (add && rest[0] == '/')
		cmd_add(tag, rest, strcmp(line, "ADDSENTRY") == 0);
	else if (strcmp(line, "REMOVE") == 0)
		cmd_remove(tag);
	else
		printf("ERR %s bad command\n", tag);
}

/* Reads commands; false at EOF. */
static bool on_stdin(void)
{
	static char buf[MAX_LINE * 2];
	static size_t used;
	static bool skipping;
	ssize_t n = read(STDIN_FILENO, buf + used, sizeof buf - used - 1);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return false;
	used += (size_t)n;
	char *start = buf;
	char *nl;
	while ((nl = memchr(start, '\n', used - (size_t)(start - buf)))) {
		*nl = 0;
		if (!skipping)
			on_line(start);
		skipping = false;
		start = nl + 1;
	}
	used -= (size_t)(start - buf);
	memmove(buf, start, used);
	if (used >= sizeof buf - 1) {
		/* A line longer than any valid command: drop it up to its newline. */
		used = 0;
		skipping = true;
		printf("ERR - line too long\n");
	}
	return true;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	/* Never outlive the engine that started us. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		return 1;
	/* Each queued event holds a descriptor while we handle it. */
	struct rlimit rl = { 8192, 8192 };
	setrlimit(RLIMIT_NOFILE, &rl);
	if (getrandom(&hash_seed, sizeof hash_seed, 0) != sizeof hash_seed)
		hash_seed = (uint64_t)now_ms() ^ (uint64_t)getpid();
	ssize_t k = readlink("/proc/self/ns/pid", own_pidns, sizeof own_pidns - 1);
	if (k <= 0) {
		fprintf(stderr, "airlock-fawatch: cannot read our pid namespace\n");
		return 1;
	}
	own_pidns[k] = 0;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		perror("airlock-fawatch: epoll_create1");
		return 1;
	}
	struct epoll_event in = { .events = EPOLLIN, .data.u32 = STDIN_KEY };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &in) != 0) {
		perror("airlock-fawatch: epoll stdin");
		return 1;
	}
	/* Lines go out whole: block buffering, flushed after each round. */
	static char outbuf[1 << 16];
	setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
	printf("READY\n");
	out_flush();
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(epfd, evs, 64, 1000);
		if (n < 0 && errno != EINTR) {
			perror("airlock-fawatch: epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			uint32_t key = evs[i].data.u32;
			if (key == STDIN_KEY) {
				if (!on_stdin()) {
					out_flush();
					for (int j = 0; j < MAX_GROUPS; j++)
						if (groups[j])
							drop_group(j);
					return 0;
				}
			} else if (key < MAX_GROUPS && groups[key]) {
				struct group *g = groups[key];
				if (!drain(g, 8)) {
					printf("LOST %s 1 %llu\n", g->tag, (unsigned long long)g->dropped);
					printf("FAIL %s fanotify read: %s\n", g->tag, strerror(errno));
					drop_group((int)key);
				}
			}
		}
		for (int j = 0; j < MAX_GROUPS; j++)
			if (groups[j])
				report_lost(groups[j], false);
		out_flush();
	}
}
