/*
 * airlock-agent: PID 1 of every Airlock sandbox.
 *
 * It dials the host's unix socket, authenticates with a token, then runs commands, does
 * file I/O from inside the sandbox's own root and reaps every zombie. One poll() loop, no
 * threads, non-blocking everywhere, bounded buffers. The wire format and the rules are in
 * docs/agent-protocol.md; keep the two in agreement.
 *
 * The host is trusted to be the host, but anything it sends is still validated: a frame
 * that breaks the framing drops the connection (the agent then reconnects), a bad request
 * gets an ERROR frame. The agent must never exit on its own: as PID 1, its exit ends the
 * sandbox.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/openat2.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- protocol constants (docs/agent-protocol.md) ---- */
#define PROTO_VERSION 1u
#define HDR 9u                          /* u32 length, u8 type, u32 channel */
#define MAX_PAYLOAD (1024u * 1024u)     /* frames above this are refused both ways */

enum {
	T_EXEC = 1, T_STDIN = 2, T_SIGNAL = 3, T_PS = 4, T_KILLPID = 5, T_PING = 6, T_CANCEL = 7,
	T_RESIZE = 8, T_FLOW = 9,
	T_FREAD = 10, T_FWRITE_BEGIN = 11, T_FWRITE_DATA = 12, T_FLIST = 13, T_FDELETE = 14,
	T_FSTAT = 15, T_FMKDIR = 16, T_FRENAME = 17, T_FWATCH = 18, T_FWALK = 19,
	T_LWALK = 20, T_LREAD = 21,
	T_HELLO = 128, T_STARTED = 129, T_STDOUT = 130, T_STDERR = 131, T_EXIT = 132, T_ERROR = 133,
	T_PS_RESULT = 134, T_PONG = 135, T_FDATA = 136, T_FOK = 137, T_FLIST_RESULT = 138,
	T_FWALK_ENTRY = 139, T_FEVENT = 140, T_LWALK_RESULT = 141,
};

#define EXEC_KEEP_STDIN 1u
#define EXEC_BACKGROUND 2u
#define EXEC_PTY 4u
#define EXIT_TIMED_OUT 1u
#define EXIT_OOM_KILLED 2u /* microvm: SIGKILLed while the guest's OOM killer ran */

/* ---- limits ---- */
#define OUT_SOFT (4u << 20)      /* queued output above this: stop reading pipes and files */
#define OUT_HARD (8u << 20)      /* ... above this: stop reading the host socket too */
#define STDIN_HIGH (1u << 20)    /* buffered stdin above this: stop reading the host socket */
#define PTY_IN_MAX (256u * 1024u) /* a pty's unread input beyond this is dropped, as a full tty queue does */
#define PTY_DRAIN_MAX (1u << 20) /* output a pty still holds when its process exits, sent before EXIT */
#define BLOCK_SIZE (128u * 1024u)
#define PIPE_READ (64u * 1024u)
#define FILE_CHUNK (256u * 1024u)
#define RESULT_FRAME (64u * 1024u) /* PS_RESULT / FLIST_RESULT frame size */
#define IN_INITIAL (64u * 1024u)
#define IOV_BATCH 64
#define MAX_EXECS 4096
#define MAX_FOPS 256
#define MAX_ARGS 65536
#define PATH_MAXLEN 4096
#define NAME_MAXLEN 255
#define CMDLINE_MAX 4096
#define PS_LINE_MAX (CMDLINE_MAX + 32)
#define LIST_ENTRY_MAX (1 + 8 + 4 + 8 + NAME_MAXLEN + 1)
#define STAT_BYTES 21
#define RM_MAX_DEPTH 256
#define WALK_MAX_DEPTH 128       /* FWALK: open directories at once (each holds a 32 KiB DIR buffer) */
#define TOKEN_MAX 1024
#define LWALK_MAX_ENTRIES 20000   /* LWALK: entries before it gives up (E2BIG) */
#define LWALK_ENTRY_MAX (1 + 8 + 8 + 8 + 8 + PATH_MAXLEN) /* u8 type, u64 size, i64 mtime_ns, i64 ctime_ns, u64 ino, path\0 */
#define WATCH_MAX_OPS 16         /* FWATCH operations at once (one inotify instance each) */
#define WATCH_MAX_DIRS 8192      /* directories one FWATCH watches */
#define WATCH_MAX_PATH_BYTES (1u << 20) /* bytes of watched directory paths one FWATCH keeps */
#define WATCH_MAX_PENDING 1024   /* coalesced events waiting for the next flush */
#define WATCH_PENDING_BYTES (1u << 20)
#define WATCH_WINDOW_MS 50       /* events are coalesced and sent at most this often */
#define WATCH_HASH 2048          /* power of two, > WATCH_MAX_PENDING */
#define WATCH_SCAN_DEPTH 128
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | \
		    IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK | IN_ONLYDIR | IN_DONT_FOLLOW)

/* ---- state ---- */
static char *g_token;
static size_t g_token_len;
static const char *g_sock_path;
static int g_port_fd = -1;      /* --port-fd: a virtio-serial port (microvm), held for life */
static int g_layer_fd = -1;     /* --layer-fd: the microvm's overlay upper dir (outside our root), for LWALK/LREAD */
static pid_t g_self;
static int g_is_init;           /* PID 1 of a pid namespace (the sandbox), not a test run */
static int g_devnull = -1;
static int g_sigfd = -1;
static int g_sock = -1;         /* the host connection, -1 while disconnected */
static const char *g_drop;      /* set when the connection must be dropped; done at a safe point */
static uint64_t g_up_since, g_down_since, g_next_connect;
static int g_connect_logged;
static unsigned g_tmp_counter;
static char g_sink[16384];      /* output nobody will receive is read into here and dropped */

static uint64_t g_last_busy;    /* when the loop last had work; memory is trimmed after a quiet second */
static int g_trimmed = 1;

static unsigned char *g_in;     /* bytes read from the host, not yet handled */
static size_t g_in_len, g_in_cap;

struct block {
	struct block *next;
	size_t len, off, cap;
	unsigned char data[];
};
static struct block *q_head, *q_tail, *q_spare;
static size_t q_bytes;          /* framed bytes waiting to be written to the host */

struct exec {
	struct exec *next;
	uint32_t channel;           /* 0 once detached: EXIT sent or connection lost */
	pid_t pid;                  /* main child, also its pgid and sid; 0 once reaped */
	int out_fd, err_fd, in_fd;
	int in_closing;             /* close stdin once the buffer is written */
	unsigned char *in_buf;
	size_t in_off, in_len;
	uint64_t deadline;          /* monotonic ms, 0 = none */
	int timed_out;
	uint64_t oom_kills_at_start; /* microvm: the guest kernel's oom_kill count at fork */
	/* STARTED waits until the child has exec'd (or failed to): the read end of a CLOEXEC pipe
	 * whose write end only the child holds reaches EOF then. Until then a PS would show the
	 * agent's own command line for the pid the host is about to learn. */
	int ready_fd;
	int announced;
	pid_t started_pid;
	int is_pty;                 /* out_fd is a pty master, in_fd a dup of it; no err_fd */
	int out_held;               /* FLOW: the host asked us to stop reading this exec's output */
	/* RESIZE re-checks (see handle_resize): the size asked for, the one it replaced, and when
	 * to look again (monotonic ms, 0 = done; ws_checks = looks taken so far). */
	struct winsize ws_want, ws_prev;
	uint64_t ws_check_at;
	int ws_checks;
};
static struct exec *g_execs;
static size_t g_exec_count;
static size_t g_stdin_bytes;

enum { FOP_READ, FOP_WRITE, FOP_LIST, FOP_WALK, FOP_WATCH, FOP_LWALK };

/* FWALK: a depth-first walk, every level opened relative to its parent with O_NOFOLLOW. */
struct walk_level {
	DIR *dir;
	size_t path_len;            /* length of this directory's relative path in walk.path */
};
struct walk {
	struct walk_level levels[WALK_MAX_DEPTH];
	int depth;
	uint64_t remaining;         /* bytes of the current file (fop.fd) still to send */
	uint32_t count;             /* LWALK: entries sent so far */
	char path[PATH_MAXLEN];     /* relative path of the current entry */
};

/* FWATCH: one inotify instance; watched directories sorted by wd (wds only grow). */
struct wdir {
	int wd;
	char *path;
};
struct wevent {
	unsigned char kind, isdir;
	char *path, *from;
};
struct watch {
	int recursive, root_wd, overflow, ended;
	char *root;
	struct wdir *dirs;
	size_t ndirs, capdirs, path_bytes;
	struct wevent pend[WATCH_MAX_PENDING];
	size_t npend, pend_bytes;
	int32_t slots[WATCH_HASH];  /* index + 1 into pend, 0 = empty; duplicates are coalesced */
	uint64_t flush_at;          /* 0: nothing to send */
	uint32_t move_cookie;       /* an IN_MOVED_FROM waiting for its IN_MOVED_TO */
	char *move_from;
	int move_isdir;
	int move_hidden;            /* ... of one of our own FWRITE temp files */
};

struct fop {
	struct fop *next;
	uint32_t channel;
	int kind;
	int fd;                     /* READ: the file; WRITE: the temp file */
	DIR *dir;                   /* LIST */
	struct walk *walk;          /* WALK */
	struct watch *watch;        /* WATCH; fd is its inotify instance */
	int dirfd;                  /* WRITE: directory holding the target */
	char *base;                 /* WRITE: target name in dirfd */
	char tmp[64];               /* WRITE: temp name in dirfd */
	uint32_t mode;
	int existed;
	uid_t uid;
	gid_t gid;
};
static struct fop *g_fops;
static size_t g_fop_count;
static size_t g_watch_count;

/* ---- small helpers ---- */

/* Messages only need %s, %.Ns, %d, %u and %%. Formatting them here instead of with stdio's
 * printf keeps glibc's locale, wide-char and floating-point code (and with it about half
 * of the agent's resident size) out of the static binary. */
static size_t fmt_v(char *buf, size_t cap, const char *f, va_list ap)
{
	size_t n = 0;
	if (cap == 0)
		return 0;
	for (; *f; f++) {
		if (*f != '%') {
			if (n + 1 < cap)
				buf[n++] = *f;
			continue;
		}
		size_t prec = (size_t)-1;
		if (f[1] == '.') {
			f++;
			prec = 0;
			while (f[1] >= '0' && f[1] <= '9')
				prec = prec * 10 + (size_t)(*++f - '0');
		}
		char num[24];
		const char *s = num + sizeof num;
		size_t len = 0;
		unsigned long v = 0;
		int neg = 0;
		switch (*++f) {
		case 's':
			s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			len = strnlen(s, prec);
			break;
		case 'd': {
			long d = va_arg(ap, int);
			neg = d < 0;
			v = neg ? (unsigned long)-d : (unsigned long)d;
			goto number;
		}
		case 'u':
			v = va_arg(ap, unsigned);
		number:
			do {
				*(char *)--s = (char)('0' + v % 10);
				v /= 10;
			} while (v);
			if (neg)
				*(char *)--s = '-';
			len = (size_t)(num + sizeof num - s);
			break;
		case '%':
			s = "%";
			len = 1;
			break;
		default: /* unsupported or truncated directive: print nothing for it */
			if (!*f)
				f--;
			continue;
		}
		for (size_t i = 0; i < len && n + 1 < cap; i++)
			buf[n++] = s[i];
	}
	buf[n] = 0;
	return n;
}

static size_t fmt(char *buf, size_t cap, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	size_t n = fmt_v(buf, cap, f, ap);
	va_end(ap);
	return n;
}

/* glibc: strerror() would pull in gettext; the untranslated text is what the host wants
 * anyway. musl's strerror is that already. */
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0) /* <linux/fs.h>, whose BLOCK_SIZE collides with ours */
#endif

static const char *errstr(int err)
{
#ifdef __GLIBC__
	const char *s = strerrordesc_np(err);
#else
	const char *s = strerror(err);
#endif
	return s ? s : "Unknown error";
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void logmsg(const char *f, ...)
{
	char buf[512];
	size_t n = fmt(buf, sizeof buf, "airlock-agent[%d]: ", (int)g_self);
	va_list ap;
	va_start(ap, f);
	n += fmt_v(buf + n, sizeof buf - n - 1, f, ap);
	va_end(ap);
	buf[n++] = '\n';
	ssize_t w = write(2, buf, n);
	(void)w;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_hdr(unsigned char *p, unsigned type, uint32_t channel, size_t payload)
{
	put32(p, (uint32_t)(5 + payload));
	p[4] = (unsigned char)type;
	put32(p + 5, channel);
}

static void conn_fail(const char *why)
{
	if (!g_drop)
		g_drop = why;
}

static int online(void)
{
	return g_sock >= 0 && !g_drop;
}

/* Reader over a frame's payload: every get fails (returns -1) past the end. */
struct rd {
	const unsigned char *p;
	size_t n;
};

static int rd_u32(struct rd *r, uint32_t *v)
{
	if (r->n < 4)
		return -1;
	*v = get32(r->p);
	r->p += 4;
	r->n -= 4;
	return 0;
}

static int rd_str(struct rd *r, const char **s)
{
	const unsigned char *z = memchr(r->p, 0, r->n);
	if (!z)
		return -1;
	*s = (const char *)r->p;
	r->n -= (size_t)(z - r->p) + 1;
	r->p = z + 1;
	return 0;
}

/* ---- outbound queue: a list of blocks written with writev ---- */
static struct block *block_new(size_t need)
{
	struct block *b;
	if (q_spare && q_spare->cap >= need) {
		b = q_spare;
		q_spare = NULL;
	} else {
		size_t cap = need > BLOCK_SIZE ? need : BLOCK_SIZE;
		b = malloc(sizeof *b + cap);
		if (!b)
			return NULL;
		b->cap = cap;
	}
	b->next = NULL;
	b->len = b->off = 0;
	return b;
}

static void block_release(struct block *b)
{
	/* One spare block avoids an mmap/munmap pair per small frame. */
	if (!q_spare && b->cap == BLOCK_SIZE)
		q_spare = b;
	else
		free(b);
}

/* Room for at least `min` (and up to `max`) bytes at the tail; *room gets how many. */
static unsigned char *q_reserve(size_t min, size_t max, size_t *room)
{
	if (!q_tail || q_tail->cap - q_tail->len < min) {
		struct block *b = block_new(min);
		if (!b) {
			conn_fail("out of memory");
			return NULL;
		}
		if (q_tail)
			q_tail->next = b;
		else
			q_head = b;
		q_tail = b;
	}
	size_t avail = q_tail->cap - q_tail->len;
	*room = avail < max ? avail : max;
	return q_tail->data + q_tail->len;
}

static void q_commit(size_t n)
{
	q_tail->len += n;
	q_bytes += n;
}

static void q_clear(void)
{
	while (q_head) {
		struct block *b = q_head;
		q_head = b->next;
		block_release(b);
	}
	q_tail = NULL;
	q_bytes = 0;
}

static void q_consume(size_t w)
{
	q_bytes -= w;
	while (q_head) {
		struct block *b = q_head;
		size_t left = b->len - b->off;
		if (w < left) {
			b->off += w;
			return;
		}
		w -= left;
		q_head = b->next;
		if (!q_head)
			q_tail = NULL;
		block_release(b);
	}
}

static void q_flush(void)
{
	while (q_head && online()) {
		struct iovec iov[IOV_BATCH];
		int n = 0;
		for (struct block *b = q_head; b && n < IOV_BATCH; b = b->next) {
			if (b->len > b->off) {
				iov[n].iov_base = b->data + b->off;
				iov[n].iov_len = b->len - b->off;
				n++;
			}
		}
		if (n == 0) {
			q_consume(0);
			return;
		}
		ssize_t w = writev(g_sock, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_fail("write to host failed");
			return;
		}
		q_consume((size_t)w);
	}
}

static void send_frame2(unsigned type, uint32_t ch, const void *a, size_t alen, const void *b, size_t blen)
{
	if (!online())
		return;
	size_t n = HDR + alen + blen, room;
	unsigned char *p = q_reserve(n, n, &room);
	if (!p)
		return;
	put_hdr(p, type, ch, alen + blen);
	if (alen)
		memcpy(p + HDR, a, alen);
	if (blen)
		memcpy(p + HDR + alen, b, blen);
	q_commit(n);
}

static void send_frame(unsigned type, uint32_t ch, const void *a, size_t alen)
{
	send_frame2(type, ch, a, alen, NULL, 0);
}

static void send_error(uint32_t ch, int err, const char *f, ...)
{
	char msg[640];
	va_list ap;
	va_start(ap, f);
	size_t m = fmt_v(msg, 512, f, ap);
	va_end(ap);
	m += fmt(msg + m, sizeof msg - m, ": %s", errstr(err));
	unsigned char e[4];
	put32(e, (uint32_t)err);
	send_frame2(T_ERROR, ch, e, 4, msg, m + 1);
}

/* Builds a run of result frames (PS_RESULT, FLIST_RESULT) in place in the queue. */
struct fbuild {
	unsigned type;
	uint32_t ch;
	unsigned char *base;
	size_t used, room;
};

static int fb_begin(struct fbuild *f)
{
	f->base = q_reserve(HDR + PS_LINE_MAX, HDR + RESULT_FRAME, &f->room);
	f->used = 0;
	return f->base ? 0 : -1;
}

static void fb_end(struct fbuild *f)
{
	if (f->base && f->used) {
		put_hdr(f->base, f->type, f->ch, f->used);
		q_commit(HDR + f->used);
	}
	f->base = NULL;
}

/* Room for `need` more bytes, ending the current frame and starting another if needed. */
static unsigned char *fb_room(struct fbuild *f, size_t need)
{
	if (f->base && HDR + f->used + need > f->room)
		fb_end(f);
	if (!f->base && fb_begin(f) < 0)
		return NULL;
	return f->base + HDR + f->used;
}

static size_t stat_encode(unsigned char *p, const struct stat *st)
{
	char t = S_ISREG(st->st_mode) ? 'f' : S_ISDIR(st->st_mode) ? 'd' : S_ISLNK(st->st_mode) ? 'l' : 'o';
	p[0] = (unsigned char)t;
	put64(p + 1, (uint64_t)st->st_size);
	put32(p + 9, (uint32_t)(st->st_mode & 07777));
	put64(p + 13, (uint64_t)(int64_t)st->st_mtim.tv_sec);
	return STAT_BYTES;
}

static void send_stat_ok(uint32_t ch, const struct stat *st)
{
	unsigned char p[STAT_BYTES];
	send_frame(T_FOK, ch, p, stat_encode(p, st));
}

/* ---- /proc walking (PS, KILLPID and shutdown) ---- */
struct procent {
	pid_t pid, ppid, sid;
};

static int procent_cmp(const void *a, const void *b)
{
	pid_t x = ((const struct procent *)a)->pid, y = ((const struct procent *)b)->pid;
	return (x > y) - (x < y);
}

static int read_small(int dirfd, const char *name, char *buf, size_t cap)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	size_t got = 0;
	while (got < cap) {
		ssize_t r = read(fd, buf + got, cap - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	return (int)got;
}

/* Every process visible in /proc, sorted by pid. */
static struct procent *proc_scan(size_t *count)
{
	DIR *d = opendir("/proc");
	if (!d)
		return NULL;
	size_t n = 0, cap = 256;
	struct procent *v = malloc(cap * sizeof *v);
	struct dirent *de;
	while (v && (de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char path[64], buf[512];
		fmt(path, sizeof path, "%d/stat", (int)pid);
		int len = read_small(dirfd(d), path, buf, sizeof buf - 1);
		if (len <= 0)
			continue;
		buf[len] = 0;
		/* "pid (comm) S ppid pgrp sid ...": comm may hold anything, so parse after the last ')'. */
		char *p = strrchr(buf, ')');
		if (!p || strlen(p) < 4)
			continue;
		p += 4;
		long ppid = strtol(p, &p, 10);
		strtol(p, &p, 10); /* pgrp */
		long sid = strtol(p, &end, 10);
		if (end == p)
			continue;
		if (n == cap) {
			struct procent *nv = realloc(v, cap * 2 * sizeof *v);
			if (!nv)
				break;
			v = nv;
			cap *= 2;
		}
		v[n].pid = (pid_t)pid;
		v[n].ppid = (pid_t)ppid;
		v[n].sid = (pid_t)sid;
		n++;
	}
	closedir(d);
	if (v)
		qsort(v, n, sizeof *v, procent_cmp);
	*count = n;
	return v;
}

static struct procent *proc_find(struct procent *v, size_t n, pid_t pid)
{
	struct procent key = { .pid = pid };
	return bsearch(&key, v, n, sizeof *v, procent_cmp);
}

/* Whether `pid` belongs to the sandbox: as PID 1 every other process does; in a test run,
 * the agent's descendants do (it is a subreaper, so orphans stay its descendants). */
static int in_sandbox(struct procent *v, size_t n, pid_t pid)
{
	if (pid == g_self)
		return 0;
	if (g_is_init)
		return 1;
	for (size_t depth = 0; depth <= n; depth++) {
		struct procent *p = proc_find(v, n, pid);
		if (!p || p->ppid <= 0)
			return 0;
		if (p->ppid == g_self)
			return 1;
		pid = p->ppid;
	}
	return 0;
}

/* ---- execs ---- */
static struct exec *exec_by_channel(uint32_t ch)
{
	for (struct exec *e = g_execs; e; e = e->next)
		if (e->channel == ch)
			return e;
	return NULL;
}

static struct exec *exec_by_pid(pid_t pid)
{
	for (struct exec *e = g_execs; e; e = e->next)
		if (e->pid == pid)
			return e;
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void stdin_close(struct exec *e)
{
	close_fd(&e->in_fd);
	g_stdin_bytes -= e->in_len - e->in_off;
	free(e->in_buf);
	e->in_buf = NULL;
	e->in_off = e->in_len = 0;
	e->in_closing = 0;
}

/* Kill a whole exec. Before the child's setsid() its group does not exist yet: then the
 * child itself is the target. */
static void exec_kill(struct exec *e, int sig)
{
	if (e->pid <= 0)
		return;
	if (kill(-e->pid, sig) != 0 && errno == ESRCH)
		kill(e->pid, sig);
}

/* Sends STARTED once, before anything else of the exec: when its program runs, or as soon as
 * it produced output or ended (which it can only do after exec, or while failing to). */
static void exec_announce(struct exec *e)
{
	if (e->announced)
		return;
	e->announced = 1;
	close_fd(&e->ready_fd);
	if (e->channel) {
		unsigned char p[4];
		put32(p, (uint32_t)e->started_pid);
		send_frame(T_STARTED, e->channel, p, 4);
	}
}

/* One read from an exec's pipe: forwarded while someone listens, else dropped.
 * Returns bytes read, 0 at EOF (the pipe is then closed), -1 when nothing was there. */
static ssize_t pipe_read(struct exec *e, int is_err, size_t max)
{
	int *fd = is_err ? &e->err_fd : &e->out_fd;
	ssize_t r;
	if (e->channel && online()) {
		exec_announce(e);
		size_t room;
		unsigned char *p = q_reserve(HDR + 4096, HDR + (max < PIPE_READ ? max : PIPE_READ), &room);
		if (!p)
			return -1;
		r = read(*fd, p + HDR, room - HDR);
		if (r > 0) {
			put_hdr(p, is_err ? T_STDERR : T_STDOUT, e->channel, (size_t)r);
			q_commit(HDR + (size_t)r);
		}
	} else {
		r = read(*fd, g_sink, max < sizeof g_sink ? max : sizeof g_sink);
	}
	if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
		close_fd(fd);
		return 0;
	}
	return r;
}

/* What the child already wrote belongs before its EXIT frame; later writers (leftover
 * descendants) are read and dropped until they close the pipe. */
static void pipe_drain(struct exec *e, int is_err)
{
	int fd = is_err ? e->err_fd : e->out_fd;
	int avail = 0;
	if (fd < 0 || ioctl(fd, FIONREAD, &avail) != 0)
		return;
	while (avail > 0) {
		ssize_t r = pipe_read(e, is_err, (size_t)avail);
		if (r <= 0)
			return;
		avail -= (int)r;
	}
}

/* A pty's master: FIONREAD can undercount (the kernel moves a pty's data to the reader's
 * queue from a work item), but a read flushes that first; so read until the queue is empty,
 * bounded, because a leftover descendant may still be writing. */
static void pty_drain(struct exec *e)
{
	size_t total = 0;
	while (e->out_fd >= 0 && total < PTY_DRAIN_MAX) {
		ssize_t r = pipe_read(e, 0, PIPE_READ);
		if (r <= 0)
			return;
		total += (size_t)r;
	}
}

/* Closing a pty's master hangs its terminal up: what is left on it (leftover descendants)
 * reads EOF and gets EIO on writes, and the session's processes get SIGHUP. */
static void pty_hangup(struct exec *e)
{
	if (!e->is_pty)
		return;
	close_fd(&e->out_fd);
	stdin_close(e);
}

/* In a microVM the whole kernel is the sandbox's: its oom_kill counter (in /proc/vmstat) says
 * whether the OOM killer ran, as the host's cgroup counter does for the other tiers. 0 in a
 * container or gVisor, where the host reads its own counters. */
static uint64_t guest_oom_kills(void)
{
	if (g_port_fd < 0)
		return 0;
	int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	static char buf[8192];
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	const char *p = strstr(buf, "\noom_kill ");
	return p ? strtoull(p + 10, NULL, 10) : 0;
}

static void exec_exited(struct exec *e, int status)
{
	exec_announce(e);
	e->pid = 0;
	if (e->is_pty) {
		pty_drain(e);
	} else {
		pipe_drain(e, 0);
		pipe_drain(e, 1);
	}
	if (e->channel) {
		unsigned char p[12];
		int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		uint32_t sig = WIFSIGNALED(status) ? (uint32_t)WTERMSIG(status) : 0;
		put32(p, (uint32_t)code);
		put32(p + 4, sig);
		uint32_t flags = e->timed_out ? EXIT_TIMED_OUT : 0;
		if (sig == SIGKILL && g_port_fd >= 0 && guest_oom_kills() > e->oom_kills_at_start)
			flags |= EXIT_OOM_KILLED;
		put32(p + 8, flags);
		send_frame(T_EXIT, e->channel, p, sizeof p);
		e->channel = 0;
	}
	stdin_close(e);
	pty_hangup(e);
}

/* The connection is gone: the exec keeps running, its output is read and dropped. A terminal
 * nobody can type into any more is hung up, as when a remote login's connection drops. */
static void exec_detach(struct exec *e)
{
	e->channel = 0;
	e->out_held = 0;
	stdin_close(e);
	pty_hangup(e);
}

/* Drop every exec that has exited and whose pipes are closed. */
static void exec_sweep(void)
{
	for (struct exec **pp = &g_execs; *pp;) {
		struct exec *e = *pp;
		if (e->pid == 0 && e->out_fd < 0 && e->err_fd < 0 && e->in_fd < 0 && e->ready_fd < 0) {
			*pp = e->next;
			free(e);
			g_exec_count--;
		} else {
			pp = &e->next;
		}
	}
}

static void reap(void)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0) {
			if (pid < 0 && errno == EINTR)
				continue;
			return;
		}
		struct exec *e = exec_by_pid(pid);
		if (e)
			exec_exited(e, status);
	}
}

static void child_fail(const char *what, const char *arg, int err, int code)
{
	char buf[768];
	size_t n = fmt(buf, sizeof buf, "airlock: %s%.512s: %s\n", what, arg, errstr(err));
	ssize_t w = write(2, buf, n);
	(void)w;
	_exit(code);
}

/* In the vforked child: become the exec's process, or exit 126/127 with a message.
 * `ctty` >= 0: a pty's slave (also in, out and err) that becomes the controlling terminal. */
static void child_exec(int in, int out, int err, int ctty, uid_t uid, gid_t gid, const char *cwd,
		       char **argv, char **envp)
{
	sigset_t none;
	setsid(); /* own process group: the target of SIGNAL and of the timeout */
	if (ctty >= 0 && ioctl(ctty, TIOCSCTTY, 0) != 0) {
		int e = errno;
		dup2(ctty, 2);
		child_fail("controlling terminal", "", e, 126);
	}
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL); /* the only disposition the agent changes */
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		/* Raising the score needs no privilege, and sandbox code cannot lower it below the
		 * agent's (0): under memory pressure the OOM killer prefers the sandbox's processes
		 * to the agent, which would end the whole sandbox. */
		ssize_t w = write(fd, "500", 3);
		(void)w;
		close(fd);
	}
	if (in >= 0)
		dup2(in, 0);
	else
		close(0);
	if (out >= 0)
		dup2(out, 1);
	else
		close(1);
	if (err >= 0)
		dup2(err, 2);
	else
		close(2);
	if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid ||
	    getgroups(0, NULL) != 0) {
		if (setgroups(0, NULL) != 0 && getgroups(0, NULL) != 0)
			child_fail("setgroups", "", errno, 126);
		if (setresgid(gid, gid, gid) != 0)
			child_fail("setgid", "", errno, 126);
		if (setresuid(uid, uid, uid) != 0)
			child_fail("setuid", "", errno, 126);
	}
	if (chdir(*cwd ? cwd : "/") != 0)
		child_fail("cwd ", cwd, errno, 126);
	environ = envp; /* execvpe looks PATH up in environ */
	execvpe(argv[0], argv, envp);
	int e = errno;
	child_fail("", argv[0], e, e == ENOENT ? 127 : 126);
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int rd_u16(struct rd *r, uint16_t *v)
{
	if (r->n < 2)
		return -1;
	*v = (uint16_t)(r->p[0] << 8 | r->p[1]);
	r->p += 2;
	r->n -= 2;
	return 0;
}

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

/* A master that is really a pty master (the sandbox's code may have replaced /dev/ptmx with
 * anything: O_NONBLOCK so a FIFO cannot block us, then the ioctl proves what it is). */
static int ptmx_open(unsigned *index)
{
	static const char *const paths[] = { "/dev/ptmx", "/dev/pts/ptmx" };
	int err = ENOENT;
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		int m = open(paths[i], O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
		if (m < 0) {
			err = errno;
			continue;
		}
		struct stat st;
		int unlock = 0;
		if (fstat(m, &st) == 0 && S_ISCHR(st.st_mode) && ioctl(m, TIOCGPTN, index) == 0 &&
		    ioctl(m, TIOCSPTLCK, &unlock) == 0)
			return m;
		err = ENODEV;
		close(m);
	}
	errno = err;
	return -1;
}

/* Opens a new pty of the sandbox's own devpts; 0 or an errno. The slave is opened through
 * the master where the kernel allows (no path lookup), else by its path, checked to be it. */
static int pty_open(int *master, int *slave, uint16_t rows, uint16_t cols)
{
	unsigned n = 0;
	int m = ptmx_open(&n);
	if (m < 0)
		return errno;
	int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s < 0) {
		char path[32];
		struct stat st;
		fmt(path, sizeof path, "/dev/pts/%u", n);
		s = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
		if (s >= 0 && (fstat(s, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) < 136 ||
			       major(st.st_rdev) > 143 || (major(st.st_rdev) - 136) * 256 + minor(st.st_rdev) != n)) {
			close(s);
			s = -1;
			errno = ENODEV;
		}
		if (s >= 0) {
			int fl = fcntl(s, F_GETFL);
			if (fl >= 0)
				fcntl(s, F_SETFL, fl & ~O_NONBLOCK); /* the program gets a blocking terminal */
		}
	}
	if (s < 0) {
		int e = errno;
		close(m);
		return e;
	}
	if (rows && cols) {
		struct winsize ws = { .ws_row = rows, .ws_col = cols };
		ioctl(m, TIOCSWINSZ, &ws);
	}
	*master = m;
	*slave = s;
	return 0;
}

static void handle_exec(uint32_t ch, struct rd r)
{
	uint32_t flags, uid, gid, timeout, argc, envc;
	uint16_t rows = 0, cols = 0;
	const char *cwd;
	if (rd_u32(&r, &flags) || rd_u32(&r, &uid) || rd_u32(&r, &gid) || rd_u32(&r, &timeout) ||
	    rd_str(&r, &cwd) || rd_u32(&r, &argc)) {
		conn_fail("malformed EXEC");
		return;
	}
	if (argc == 0 || argc > MAX_ARGS || argc > r.n) {
		conn_fail("malformed EXEC argv");
		return;
	}
	char **argv = malloc((argc + 1) * sizeof *argv);
	char **envp = NULL;
	if (!argv) {
		send_error(ch, ENOMEM, "exec");
		return;
	}
	for (uint32_t i = 0; i < argc; i++) {
		if (rd_str(&r, (const char **)&argv[i])) {
			free(argv);
			conn_fail("malformed EXEC argv");
			return;
		}
	}
	argv[argc] = NULL;
	if (rd_u32(&r, &envc) || envc > MAX_ARGS || envc > r.n) {
		free(argv);
		conn_fail("malformed EXEC env");
		return;
	}
	envp = malloc((envc + 2) * sizeof *envp); /* + TERM for a pty */
	if (!envp) {
		free(argv);
		send_error(ch, ENOMEM, "exec");
		return;
	}
	for (uint32_t i = 0; i < envc; i++) {
		if (rd_str(&r, (const char **)&envp[i])) {
			free(argv);
			free(envp);
			conn_fail("malformed EXEC env");
			return;
		}
	}
	int pty = (flags & EXEC_PTY) != 0;
	if (pty && (rd_u16(&r, &rows) || rd_u16(&r, &cols))) {
		free(argv);
		free(envp);
		conn_fail("malformed EXEC pty size");
		return;
	}
	envp[envc] = NULL;
	if (r.n != 0) {
		free(argv);
		free(envp);
		conn_fail("malformed EXEC (trailing bytes)");
		return;
	}
	if (pty) {
		int has_term = 0;
		for (uint32_t i = 0; i < envc && !has_term; i++)
			has_term = strncmp(envp[i], "TERM=", 5) == 0;
		if (!has_term)
			envp[envc++] = (char *)"TERM=xterm-256color";
		envp[envc] = NULL;
	}

	int background = (flags & EXEC_BACKGROUND) != 0;
	int keep_stdin = !background && (flags & EXEC_KEEP_STDIN);
	int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 }, pready[2] = { -1, -1 };
	int slave = -1;
	struct exec *e = NULL;
	int err = 0;
	if (pty && background)
		err = EINVAL;
	else if (g_exec_count >= MAX_EXECS)
		err = EAGAIN;
	else if (!(e = calloc(1, sizeof *e)))
		err = ENOMEM;
	else if (pty)
		err = pty_open(&pout[0], &slave, rows, cols);
	else if (!background && (pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)))
		err = errno;
	else if (keep_stdin && pipe2(pin, O_CLOEXEC))
		err = errno;
	/* The pty's input side: a second descriptor of the master, so closing stdin (an empty
	 * STDIN frame) leaves the terminal alone. */
	if (!err && pty && (pin[1] = fcntl(pout[0], F_DUPFD_CLOEXEC, 3)) < 0)
		err = errno;
	pid_t pid = -1;
	const char *cmd = argv[0]; /* points into the frame, which outlives this call */
	if (!err && pipe2(pready, O_CLOEXEC) != 0)
		pready[0] = pready[1] = -1; /* then STARTED goes out right after fork, as a fallback */
	if (!err) {
		/* vfork: the child borrows this address space until it execs, so no page tables are
		 * copied. Under gVisor a fork costs a new address space in the sentry (~25 ms here);
		 * vfork + exec about a third of that. child_exec only makes system calls, writes
		 * nothing this process reads afterwards except `environ` (put back below), and never
		 * returns. Every signal the agent handles is blocked and read through signalfd, so no
		 * handler can run in the child on this process's memory. */
		char **saved_environ = environ;
		pid = vfork();
		if (pid == 0) {
			if (pty)
				child_exec(slave, slave, slave, slave, uid, gid, cwd, argv, envp);
			child_exec(keep_stdin ? pin[0] : g_devnull, background ? g_devnull : pout[1],
				   background ? g_devnull : perr[1], -1, uid, gid, cwd, argv, envp);
		}
		environ = saved_environ;
		if (pid < 0)
			err = errno;
	}
	free(argv);
	free(envp);
	close_fd(&slave);
	close_fd(&pin[0]);
	close_fd(&pout[1]);
	close_fd(&perr[1]);
	close_fd(&pready[1]);
	if (err) {
		close_fd(&pin[1]);
		close_fd(&pout[0]);
		close_fd(&perr[0]);
		close_fd(&pready[0]);
		free(e);
		send_error(ch, err, "exec %.256s", cmd);
		return;
	}
	e->channel = ch;
	e->pid = pid;
	e->is_pty = pty;
	e->out_fd = pout[0];
	e->err_fd = perr[0];
	e->in_fd = pin[1];
	if (e->out_fd >= 0)
		set_nonblock(e->out_fd);
	if (e->err_fd >= 0)
		set_nonblock(e->err_fd);
	if (e->in_fd >= 0)
		set_nonblock(e->in_fd);
	e->deadline = timeout ? now_ms() + timeout : 0;
	e->started_pid = pid;
	e->oom_kills_at_start = guest_oom_kills();
	e->ready_fd = pready[0];
	e->next = g_execs;
	g_execs = e;
	g_exec_count++;
	if (e->ready_fd < 0)
		exec_announce(e);
	else
		set_nonblock(e->ready_fd);
}

static void stdin_flush(struct exec *e)
{
	while (e->in_fd >= 0 && e->in_len > e->in_off) {
		ssize_t w = write(e->in_fd, e->in_buf + e->in_off, e->in_len - e->in_off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				stdin_close(e); /* the reader is gone: what it did not read is dropped */
			return;
		}
		e->in_off += (size_t)w;
		g_stdin_bytes -= (size_t)w;
	}
	if (e->in_fd >= 0) {
		e->in_off = e->in_len = 0;
		if (e->in_closing)
			stdin_close(e);
	}
}

static void handle_stdin(uint32_t ch, const unsigned char *p, size_t n)
{
	struct exec *e = exec_by_channel(ch);
	if (!e || e->in_fd < 0 || e->in_closing)
		return;
	if (n == 0) {
		e->in_closing = 1;
		stdin_flush(e);
		return;
	}
	if (e->is_pty) {
		/* A program that never reads its terminal must not stall the link for every other
		 * channel: past the bound, keystrokes are dropped, as a full tty input queue does. */
		size_t pending = e->in_len - e->in_off;
		if (pending >= PTY_IN_MAX)
			return;
		if (n > PTY_IN_MAX - pending)
			n = PTY_IN_MAX - pending;
	}
	if (e->in_len == e->in_off) {
		ssize_t w = write(e->in_fd, p, n);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			stdin_close(e);
			return;
		}
		if (w > 0) {
			p += w;
			n -= (size_t)w;
		}
		if (n == 0)
			return;
	}
	if (e->in_off) {
		memmove(e->in_buf, e->in_buf + e->in_off, e->in_len - e->in_off);
		e->in_len -= e->in_off;
		e->in_off = 0;
	}
	unsigned char *nb = realloc(e->in_buf, e->in_len + n);
	if (!nb) {
		stdin_close(e);
		return;
	}
	memcpy(nb + e->in_len, p, n);
	e->in_buf = nb;
	e->in_len += n;
	g_stdin_bytes += n;
}

/* RESIZE: `u16 rows, u16 cols`; the kernel sends SIGWINCH to the terminal's foreground group.
 * readline reads the size and writes the same value back each time it prepares the terminal
 * for a line (rltty.c set_winsize). A resize landing between that read and write is undone:
 * the terminal keeps the old size. The window is microseconds on Linux but milliseconds under
 * gVisor, where each syscall traps. So the agent looks again shortly after, and re-applies the
 * size if it has reverted to exactly the one it replaced; any other value is a program's own
 * change (stty rows N) and is left alone. */
static const unsigned RESIZE_RECHECK_MS[] = { 2, 10, 50, 250 };
#define RESIZE_RECHECKS (sizeof RESIZE_RECHECK_MS / sizeof RESIZE_RECHECK_MS[0])

static int same_size(const struct winsize *a, const struct winsize *b)
{
	return a->ws_row == b->ws_row && a->ws_col == b->ws_col;
}

static int pty_fd(const struct exec *e)
{
	return e && e->is_pty ? (e->out_fd >= 0 ? e->out_fd : e->in_fd) : -1;
}

static void handle_resize(uint32_t ch, struct rd r)
{
	uint16_t rows, cols;
	if (rd_u16(&r, &rows) || rd_u16(&r, &cols) || r.n) {
		conn_fail("malformed RESIZE");
		return;
	}
	struct exec *e = exec_by_channel(ch);
	int fd = pty_fd(e);
	if (fd < 0 || !rows || !cols)
		return;
	struct winsize ws = { .ws_row = rows, .ws_col = cols }, cur;
	if (ioctl(fd, TIOCGWINSZ, &cur) != 0 || ioctl(fd, TIOCSWINSZ, &ws) != 0) {
		logmsg("resize: %s", errstr(errno));
		return;
	}
	e->ws_want = ws;
	e->ws_prev = cur;
	e->ws_checks = 0;
	e->ws_check_at = same_size(&cur, &ws) ? 0 : now_ms() + RESIZE_RECHECK_MS[0];
}

/* A due re-check of a resize; returns ms until the next one, -1 when none is left. */
static int64_t resize_recheck(struct exec *e, uint64_t now)
{
	if (!e->ws_check_at)
		return -1;
	if (now < e->ws_check_at)
		return (int64_t)(e->ws_check_at - now);
	int fd = pty_fd(e);
	struct winsize cur;
	if (fd >= 0 && ioctl(fd, TIOCGWINSZ, &cur) == 0 && same_size(&cur, &e->ws_prev) && !same_size(&cur, &e->ws_want))
		ioctl(fd, TIOCSWINSZ, &e->ws_want);
	e->ws_checks++;
	if (fd < 0 || (size_t)e->ws_checks >= RESIZE_RECHECKS) {
		e->ws_check_at = 0;
		return -1;
	}
	e->ws_check_at = now + (RESIZE_RECHECK_MS[e->ws_checks] - RESIZE_RECHECK_MS[e->ws_checks - 1]);
	return (int64_t)(e->ws_check_at - now);
}

/* FLOW: `u32 held`: 1 = stop reading this exec's output (its consumer is slow; a writer then
 * blocks in the kernel), 0 = read it again. Other channels are not affected. */
static void handle_flow(uint32_t ch, struct rd r)
{
	uint32_t held;
	if (rd_u32(&r, &held) || r.n || held > 1) {
		conn_fail("malformed FLOW");
		return;
	}
	struct exec *e = exec_by_channel(ch);
	if (e)
		e->out_held = (int)held;
}

static void handle_signal(uint32_t ch, struct rd r)
{
	uint32_t sig;
	if (rd_u32(&r, &sig) || r.n) {
		conn_fail("malformed SIGNAL");
		return;
	}
	struct exec *e = exec_by_channel(ch);
	if (e && sig > 0 && sig < (uint32_t)NSIG)
		exec_kill(e, (int)sig);
}

static uint32_t channel_of(struct procent *p)
{
	for (struct exec *e = g_execs; e; e = e->next)
		if (e->channel && e->pid > 0 && (e->pid == p->pid || e->pid == p->sid))
			return e->channel;
	return 0;
}

static void handle_ps(uint32_t ch)
{
	size_t n = 0;
	struct procent *v = proc_scan(&n);
	if (!v) {
		send_error(ch, errno ? errno : ENOMEM, "read /proc");
		return;
	}
	int proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct fbuild f = { .type = T_PS_RESULT, .ch = ch };
	for (size_t i = 0; i < n && online() && proc >= 0; i++) {
		if (!in_sandbox(v, n, v[i].pid))
			continue;
		char line[PS_LINE_MAX], path[64];
		int len = (int)fmt(line, sizeof line, "%d\t%u\t", (int)v[i].pid, channel_of(&v[i]));
		fmt(path, sizeof path, "%d/cmdline", (int)v[i].pid);
		int cl = read_small(proc, path, line + len, CMDLINE_MAX);
		if (cl < 0)
			continue; /* exited meanwhile */
		while (cl > 0 && line[len + cl - 1] == 0)
			cl--;
		for (int k = len; k < len + cl; k++) {
			char c = line[k];
			line[k] = c == 0 ? '\x01' : (c == '\t' || c == '\n' || c == '\x01') ? ' ' : c;
		}
		len += cl;
		line[len++] = '\n';
		unsigned char *dst = fb_room(&f, (size_t)len);
		if (!dst)
			break;
		memcpy(dst, line, (size_t)len);
		f.used += (size_t)len;
	}
	fb_end(&f);
	if (proc >= 0)
		close(proc);
	free(v);
	send_frame(T_FOK, ch, NULL, 0);
}

static void handle_killpid(uint32_t ch, struct rd r)
{
	uint32_t pid, sig;
	if (rd_u32(&r, &pid) || rd_u32(&r, &sig) || r.n) {
		conn_fail("malformed KILLPID");
		return;
	}
	if (pid == 0 || pid > INT_MAX || sig >= (uint32_t)NSIG) {
		send_error(ch, EINVAL, "kill %u", pid);
		return;
	}
	if ((pid_t)pid == g_self) {
		send_error(ch, EPERM, "kill %u", pid);
		return;
	}
	if (!g_is_init) {
		size_t n = 0;
		struct procent *v = proc_scan(&n);
		int ok = v && in_sandbox(v, n, (pid_t)pid);
		free(v);
		if (!ok) {
			send_error(ch, ESRCH, "kill %u", pid);
			return;
		}
	}
	if (kill((pid_t)pid, (int)sig) != 0)
		send_error(ch, errno, "kill %u", pid);
	else
		send_frame(T_FOK, ch, NULL, 0);
}

/* ---- file operations ---- */

/* Lexically normalizes an absolute path ("//a/./b/../c" -> "/a/c"); `..` stops at "/".
 * The kernel then resolves the result inside the agent's root, so nothing leaves it. */
static int norm_path(const char *in, char *out)
{
	if (in[0] != '/')
		return -EINVAL;
	if (strlen(in) >= PATH_MAXLEN)
		return -ENAMETOOLONG;
	size_t len = 1;
	out[0] = '/';
	const char *p = in;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		const char *s = p;
		while (*p && *p != '/')
			p++;
		size_t cl = (size_t)(p - s);
		if (cl == 1 && s[0] == '.')
			continue;
		if (cl == 2 && s[0] == '.' && s[1] == '.') {
			while (len > 1 && out[len - 1] != '/')
				len--;
			if (len > 1)
				len--;
			continue;
		}
		if (cl > NAME_MAXLEN)
			return -ENAMETOOLONG;
		if (len > 1)
			out[len++] = '/';
		if (len + cl >= PATH_MAXLEN)
			return -ENAMETOOLONG;
		memcpy(out + len, s, cl);
		len += cl;
	}
	out[len] = 0;
	return 0;
}

/* Splits a normalized path other than "/" into its parent (in place) and last name. */
static const char *split_path(char *path, const char **base)
{
	char *slash = strrchr(path, '/');
	*base = slash + 1;
	if (slash == path)
		return "/";
	*slash = 0;
	return path;
}

static int read_path(uint32_t ch, struct rd *r, char *norm, const char *op)
{
	const char *path;
	if (rd_str(r, &path) || r->n) {
		conn_fail("malformed file request");
		return -1;
	}
	int e = norm_path(path, norm);
	if (e) {
		send_error(ch, -e, "%s %.256s", op, path);
		return -1;
	}
	return 0;
}

/* mkdir -p; intermediate directories get 0755, the last one `mode`.
 * Returns 1 when the last one was created, 0 when it already was a directory, or -errno. */
static int mkdir_parents(char *path, mode_t mode)
{
	int created = 0;
	for (char *s = path + 1;; s++) {
		if (*s != '/' && *s != 0)
			continue;
		char c = *s;
		*s = 0;
		int rc = 0;
		if (mkdir(path, c ? 0755 : mode) == 0) {
			created = !c;
		} else if (errno != EEXIST) {
			rc = -errno;
		} else {
			struct stat st;
			if (stat(path, &st) != 0)
				rc = -errno;
			else if (!S_ISDIR(st.st_mode))
				rc = c ? -ENOTDIR : -EEXIST;
		}
		*s = c;
		if (rc)
			return rc;
		if (!c)
			return created;
	}
}

static struct fop *fop_by_channel(uint32_t ch)
{
	for (struct fop *f = g_fops; f; f = f->next)
		if (f->channel == ch)
			return f;
	return NULL;
}

static struct fop *fop_new(uint32_t ch, int kind)
{
	if (g_fop_count >= MAX_FOPS) {
		send_error(ch, EMFILE, "too many file operations");
		return NULL;
	}
	struct fop *f = calloc(1, sizeof *f);
	if (!f) {
		send_error(ch, ENOMEM, "file operation");
		return NULL;
	}
	f->channel = ch;
	f->kind = kind;
	f->fd = f->dirfd = -1;
	f->next = g_fops;
	g_fops = f;
	g_fop_count++;
	return f;
}

static void walk_free(struct walk *w)
{
	if (!w)
		return;
	while (w->depth > 0)
		closedir(w->levels[--w->depth].dir);
	free(w);
}

static void wevent_clear(struct watch *w)
{
	for (size_t i = 0; i < w->npend; i++) {
		free(w->pend[i].path);
		free(w->pend[i].from);
	}
	w->npend = w->pend_bytes = 0;
	memset(w->slots, 0, sizeof w->slots);
}

static void watch_free(struct watch *w)
{
	if (!w)
		return;
	wevent_clear(w);
	for (size_t i = 0; i < w->ndirs; i++)
		free(w->dirs[i].path);
	free(w->dirs);
	free(w->move_from);
	free(w->root);
	free(w);
	g_watch_count--;
}

/* Ends a file operation; an unfinished write leaves no temp file behind. */
static void fop_free(struct fop *f)
{
	for (struct fop **pp = &g_fops; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	if (f->kind == FOP_WRITE && f->tmp[0] && f->dirfd >= 0)
		unlinkat(f->dirfd, f->tmp, 0);
	close_fd(&f->fd);
	close_fd(&f->dirfd);
	if (f->dir)
		closedir(f->dir);
	walk_free(f->walk);
	watch_free(f->watch);
	free(f->base);
	free(f);
	g_fop_count--;
}

static void handle_fread(uint32_t ch, struct rd r)
{
	char path[PATH_MAXLEN];
	if (read_path(ch, &r, path, "read"))
		return;
	struct stat st;
	/* Check the type before open(): opening a FIFO or a device can block or act. */
	if (lstat(path, &st) != 0) {
		send_error(ch, errno, "read %s", path);
		return;
	}
	if (S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode) || !S_ISREG(st.st_mode)) {
		send_error(ch, S_ISLNK(st.st_mode) ? ELOOP : S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
			   "read %s", path);
		return;
	}
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		send_error(ch, errno, "read %s", path);
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		send_error(ch, EINVAL, "read %s: not a regular file", path);
		return;
	}
	struct fop *f = fop_new(ch, FOP_READ);
	if (!f) {
		close(fd);
		return;
	}
	f->fd = fd;
}

static void handle_flist(uint32_t ch, struct rd r)
{
	char path[PATH_MAXLEN];
	if (read_path(ch, &r, path, "list"))
		return;
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
		send_error(ch, ELOOP, "list %s", path); /* like FREAD; O_NOFOLLOW below closes the race */
		return;
	}
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		send_error(ch, errno, "list %s", path);
		return;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		send_error(ch, e, "list %s", path);
		return;
	}
	struct fop *f = fop_new(ch, FOP_LIST);
	if (!f) {
		closedir(d);
		return;
	}
	f->dir = d;
}

/* ---- FWALK: stream a directory tree (entries and file contents) without following links ---- */

/* One FWALK_ENTRY: stat of the entry, its path relative to the walk's root, a link's target. */
static void send_walk_entry(uint32_t ch, const struct stat *st, const char *rel, const char *target)
{
	unsigned char p[STAT_BYTES + 2 * PATH_MAXLEN];
	size_t n = stat_encode(p, st);
	size_t rl = strlen(rel), tl = strlen(target);
	memcpy(p + n, rel, rl + 1);
	n += rl + 1;
	memcpy(p + n, target, tl + 1);
	n += tl + 1;
	send_frame(T_FWALK_ENTRY, ch, p, n);
}

/* Sends the next piece of the current file: exactly the size announced in its entry, so a
 * file that shrinks meanwhile is padded with zeros and one that grows is cut. */
static int walk_file_data(struct fop *f)
{
	struct walk *w = f->walk;
	size_t want = w->remaining < FILE_CHUNK ? (size_t)w->remaining : FILE_CHUNK;
	size_t room;
	unsigned char *p = q_reserve(HDR + (want < 4096 ? want : 4096), HDR + want, &room);
	if (!p)
		return -1;
	size_t n = room - HDR;
	ssize_t r = read(f->fd, p + HDR, n);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (r < 0) {
		send_error(f->channel, errno, "read %s", w->path);
		return -1;
	}
	if (r == 0) {
		memset(p + HDR, 0, n);
		r = (ssize_t)n;
	}
	put_hdr(p, T_FDATA, f->channel, (size_t)r);
	q_commit(HDR + (size_t)r);
	w->remaining -= (uint64_t)r;
	if (w->remaining == 0)
		close_fd(&f->fd);
	return 0;
}

/* Handles one directory entry of the walk; returns -1 when the walk failed (ERROR sent). */
static int walk_entry(struct fop *f, struct walk_level *lv, const char *name)
{
	struct walk *w = f->walk;
	size_t nl = strlen(name), plen = lv->path_len;
	size_t len = plen ? plen + 1 + nl : nl;
	if (len >= PATH_MAXLEN) {
		send_error(f->channel, ENAMETOOLONG, "walk %.256s", w->path);
		return -1;
	}
	if (plen)
		w->path[plen] = '/';
	memcpy(w->path + (plen ? plen + 1 : 0), name, nl + 1);
	int dfd = dirfd(lv->dir);
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return 0; /* removed meanwhile */
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAXLEN];
		ssize_t tl = readlinkat(dfd, name, target, sizeof target - 1);
		if (tl < 0)
			return 0;
		target[tl] = 0;
		send_walk_entry(f->channel, &st, w->path, target);
		return 0;
	}
	if (S_ISDIR(st.st_mode)) {
		if (w->depth >= WALK_MAX_DEPTH) {
			send_error(f->channel, ENAMETOOLONG, "walk %.256s: deeper than %d levels", w->path, WALK_MAX_DEPTH);
			return -1;
		}
		/* O_NOFOLLOW relative to the parent: a directory swapped for a link is not entered. */
		int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return 0;
		DIR *d = fstat(fd, &st) == 0 ? fdopendir(fd) : NULL;
		if (!d) {
			close(fd);
			return 0;
		}
		send_walk_entry(f->channel, &st, w->path, "");
		w->levels[w->depth].dir = d;
		w->levels[w->depth].path_len = len;
		w->depth++;
		return 0;
	}
	if (!S_ISREG(st.st_mode))
		return 0; /* FIFOs, devices, sockets: never opened, not part of the walk */
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return 0;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return 0;
	}
	send_walk_entry(f->channel, &st, w->path, "");
	if (st.st_size > 0) {
		f->fd = fd;
		w->remaining = (uint64_t)st.st_size;
	} else {
		close(fd);
	}
	return 0;
}

static void walk_step(struct fop *f)
{
	struct walk *w = f->walk;
	while (online() && q_bytes < OUT_SOFT) {
		if (f->fd >= 0) {
			if (walk_file_data(f) < 0) {
				fop_free(f);
				return;
			}
			if (f->fd >= 0)
				continue;
		}
		if (w->depth == 0) {
			send_frame(T_FOK, f->channel, NULL, 0);
			fop_free(f);
			return;
		}
		struct walk_level *lv = &w->levels[w->depth - 1];
		errno = 0;
		struct dirent *de = readdir(lv->dir);
		if (!de) {
			if (errno) {
				send_error(f->channel, errno, "walk");
				fop_free(f);
				return;
			}
			closedir(lv->dir);
			w->depth--;
			continue;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (walk_entry(f, lv, de->d_name) < 0) {
			fop_free(f);
			return;
		}
	}
}

static void handle_fwalk(uint32_t ch, struct rd r)
{
	char path[PATH_MAXLEN];
	if (read_path(ch, &r, path, "walk"))
		return;
	/* The root itself is not followed either: a link there fails with ELOOP (like FLIST;
	 * O_NOFOLLOW below closes the race). */
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
		send_error(ch, ELOOP, "walk %s", path);
		return;
	}
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		send_error(ch, errno, "walk %s", path);
		return;
	}
	DIR *d = fdopendir(fd);
	struct walk *w = d ? calloc(1, sizeof *w) : NULL;
	if (!w) {
		int e = d ? ENOMEM : errno;
		if (d)
			closedir(d);
		else
			close(fd);
		send_error(ch, e, "walk %s", path);
		return;
	}
	struct fop *f = fop_new(ch, FOP_WALK);
	if (!f) {
		closedir(d);
		free(w);
		return;
	}
	w->levels[0].dir = d;
	w->levels[0].path_len = 0;
	w->depth = 1;
	f->walk = w;
}

/* ---- LWALK / LREAD: the microvm's writable layer (the overlay upper dir vminit handed over,
 * outside the sandbox's root), for file.changes: the host cannot read the guest's disk ---- */

/* Appends LWALK_RESULT entries to the queue, one frame (<= 64 KiB of whole entries) a call. */
static void lwalk_step(struct fop *f)
{
	struct walk *w = f->walk;
	size_t room;
	unsigned char *base = q_reserve(HDR + LWALK_ENTRY_MAX, HDR + RESULT_FRAME, &room);
	if (!base)
		return;
	size_t used = 0;
	int done = 0, err = 0;
	while (HDR + used + LWALK_ENTRY_MAX <= room) {
		if (w->depth == 0) {
			done = 1;
			break;
		}
		struct walk_level *lv = &w->levels[w->depth - 1];
		errno = 0;
		struct dirent *de = readdir(lv->dir);
		if (!de) {
			if (errno) {
				err = errno;
				break;
			}
			closedir(lv->dir);
			w->depth--;
			continue;
		}
		const char *name = de->d_name;
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		size_t nl = strlen(name), plen = lv->path_len;
		size_t len = plen ? plen + 1 + nl : nl;
		if (len >= PATH_MAXLEN) {
			err = ENAMETOOLONG;
			break;
		}
		int dfd = dirfd(lv->dir);
		struct stat st;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue; /* removed meanwhile */
		if (++w->count > LWALK_MAX_ENTRIES) {
			err = E2BIG;
			break;
		}
		if (plen)
			w->path[plen] = '/';
		memcpy(w->path + (plen ? plen + 1 : 0), name, nl + 1);
		char t = S_ISREG(st.st_mode) ? 'f' : S_ISDIR(st.st_mode) ? 'd' : S_ISLNK(st.st_mode) ? 'l'
			: S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0) ? 'w' : 'o';
		unsigned char *p = base + HDR + used;
		p[0] = (unsigned char)t;
		put64(p + 1, t == 'f' || t == 'l' ? (uint64_t)st.st_size : 0);
		put64(p + 9, (uint64_t)((int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec));
		put64(p + 17, (uint64_t)((int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec));
		put64(p + 25, (uint64_t)st.st_ino);
		memcpy(p + 33, w->path, len + 1);
		used += 33 + len + 1;
		if (t != 'd')
			continue;
		if (w->depth >= WALK_MAX_DEPTH) {
			err = ENAMETOOLONG;
			break;
		}
		/* O_NOFOLLOW relative to the parent: a directory swapped for a link is not entered. */
		int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		if (!d) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		w->levels[w->depth].dir = d;
		w->levels[w->depth].path_len = len;
		w->depth++;
	}
	if (used) {
		put_hdr(base, T_LWALK_RESULT, f->channel, used);
		q_commit(HDR + used);
	}
	if (err) {
		if (err == E2BIG)
			send_error(f->channel, err, "layer walk: more than %d entries", LWALK_MAX_ENTRIES);
		else
			send_error(f->channel, err, "layer walk %.256s", w->path);
		fop_free(f);
	} else if (done) {
		send_frame(T_FOK, f->channel, NULL, 0);
		fop_free(f);
	}
}

static void handle_lwalk(uint32_t ch, struct rd r)
{
	(void)r;
	if (g_layer_fd < 0) {
		send_error(ch, ENOTSUP, "no layer to walk");
		return;
	}
	int fd = openat(g_layer_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct walk *w = d ? calloc(1, sizeof *w) : NULL;
	if (!w) {
		int e = d ? ENOMEM : errno;
		if (d)
			closedir(d);
		else if (fd >= 0)
			close(fd);
		send_error(ch, e, "layer walk");
		return;
	}
	struct fop *f = fop_new(ch, FOP_LWALK);
	if (!f) {
		closedir(d);
		free(w);
		return;
	}
	w->levels[0].dir = d;
	w->levels[0].path_len = 0;
	w->depth = 1;
	f->walk = w;
}

/* A regular file of the layer, streamed like FREAD; openat2 keeps the lookup beneath the layer
 * and never follows a link (the layer's content is the sandbox's). */
static void handle_lread(uint32_t ch, struct rd r)
{
	const char *path;
	if (rd_str(&r, &path) || r.n) {
		conn_fail("malformed LREAD");
		return;
	}
	if (g_layer_fd < 0) {
		send_error(ch, ENOTSUP, "no layer to read");
		return;
	}
	if (!path[0] || path[0] == '/' || strlen(path) >= PATH_MAXLEN) {
		send_error(ch, EINVAL, "layer read: bad path");
		return;
	}
	struct open_how how = {
		.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	int fd = (int)syscall(SYS_openat2, g_layer_fd, path, &how, sizeof how);
	if (fd < 0) {
		send_error(ch, errno, "layer read %.256s", path);
		return;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		send_error(ch, EINVAL, "layer read %.256s: not a regular file", path);
		return;
	}
	struct fop *f = fop_new(ch, FOP_READ);
	if (!f) {
		close(fd);
		return;
	}
	f->fd = fd;
}

/* ---- FRENAME ---- */

static void handle_frename(uint32_t ch, struct rd r)
{
	uint32_t flags;
	const char *raw_from, *raw_to;
	if (rd_u32(&r, &flags) || rd_str(&r, &raw_from) || rd_str(&r, &raw_to) || r.n) {
		conn_fail("malformed FRENAME");
		return;
	}
	char from[PATH_MAXLEN], to[PATH_MAXLEN];
	int e = norm_path(raw_from, from);
	const char *bad = raw_from;
	if (!e) {
		e = norm_path(raw_to, to);
		bad = raw_to;
	}
	if (e) {
		send_error(ch, -e, "rename %.256s", bad);
		return;
	}
	if (!strcmp(from, "/") || !strcmp(to, "/")) {
		send_error(ch, EBUSY, "rename /");
		return;
	}
	char fcopy[PATH_MAXLEN], tcopy[PATH_MAXLEN];
	memcpy(fcopy, from, strlen(from) + 1);
	memcpy(tcopy, to, strlen(to) + 1);
	const char *fbase, *tbase;
	const char *fparent = split_path(fcopy, &fbase);
	const char *tparent = split_path(tcopy, &tbase);
	int fd1 = open(fparent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd1 < 0) {
		send_error(ch, errno, "rename %s", from);
		return;
	}
	int fd2 = open(tparent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd2 < 0) {
		e = errno;
		close(fd1);
		send_error(ch, e, "rename to %s", to);
		return;
	}
	/* renameat2 acts on the last components themselves: a link is moved, never its target. */
	unsigned rflags = (flags & 1) ? 0 : RENAME_NOREPLACE;
	int rc = (int)syscall(SYS_renameat2, fd1, fbase, fd2, tbase, rflags); /* musl has no wrapper */
	if (rc != 0 && errno == EINVAL && rflags) {
		/* A file system without RENAME_NOREPLACE (or a move into itself, which fails again). */
		struct stat st;
		if (fstatat(fd2, tbase, &st, AT_SYMLINK_NOFOLLOW) == 0)
			errno = EEXIST;
		else if (errno == ENOENT)
			rc = renameat(fd1, fbase, fd2, tbase);
	}
	struct stat st;
	if (rc != 0)
		send_error(ch, errno, "rename %s to %s", from, to);
	else if (fstatat(fd2, tbase, &st, AT_SYMLINK_NOFOLLOW) != 0)
		send_error(ch, errno, "stat %s", to);
	else
		send_stat_ok(ch, &st);
	close(fd1);
	close(fd2);
}

/* ---- FWATCH: inotify, recursive, coalesced and bounded ---- */

static uint32_t fnv1a(unsigned kind, const char *s)
{
	uint32_t h = 2166136261u ^ kind;
	h *= 16777619u;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static void watch_arm(struct watch *w)
{
	if (!w->flush_at)
		w->flush_at = now_ms() + WATCH_WINDOW_MS;
}

/* Queues an event; the same (kind, path) twice within one window is sent once. */
static void watch_add_event(struct watch *w, unsigned kind, int isdir, const char *path, const char *from)
{
	watch_arm(w);
	uint32_t h = fnv1a(kind, path) & (WATCH_HASH - 1);
	if (!from) {
		for (;; h = (h + 1) & (WATCH_HASH - 1)) {
			int32_t s = w->slots[h];
			if (!s)
				break;
			struct wevent *e = &w->pend[s - 1];
			if (e->kind == kind && !e->from && !strcmp(e->path, path))
				return;
		}
	}
	size_t bytes = strlen(path) + 1 + (from ? strlen(from) + 1 : 0);
	if (w->npend >= WATCH_MAX_PENDING || w->pend_bytes + bytes > WATCH_PENDING_BYTES) {
		w->overflow = 1; /* dropped: the host hears "overflow" instead of memory growing */
		return;
	}
	struct wevent *e = &w->pend[w->npend];
	e->path = strdup(path);
	e->from = from ? strdup(from) : NULL;
	if (!e->path || (from && !e->from)) {
		free(e->path);
		free(e->from);
		w->overflow = 1;
		return;
	}
	e->kind = (unsigned char)kind;
	e->isdir = (unsigned char)(isdir != 0);
	w->npend++;
	w->pend_bytes += bytes;
	if (!from) {
		while (w->slots[h])
			h = (h + 1) & (WATCH_HASH - 1);
		w->slots[h] = (int32_t)w->npend;
	}
}

static ssize_t watch_find(struct watch *w, int wd)
{
	size_t lo = 0, hi = w->ndirs;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (w->dirs[mid].wd == wd)
			return (ssize_t)mid;
		if (w->dirs[mid].wd < wd)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static void watch_remove_at(struct watch *w, size_t i)
{
	w->path_bytes -= strlen(w->dirs[i].path) + 1;
	free(w->dirs[i].path);
	memmove(&w->dirs[i], &w->dirs[i + 1], (w->ndirs - i - 1) * sizeof w->dirs[0]);
	w->ndirs--;
}

/* Watches one directory (by path, inside the agent's root, never through a final link).
 * Returns 0, or -1 when it could not (limits: the overflow flag is then set). */
static int watch_add_dir(struct watch *w, int ifd, const char *path)
{
	size_t pl = strlen(path) + 1;
	if (w->ndirs >= WATCH_MAX_DIRS || w->path_bytes + pl > WATCH_MAX_PATH_BYTES) {
		w->overflow = 1;
		watch_arm(w);
		return -1;
	}
	int wd = inotify_add_watch(ifd, path, WATCH_MASK);
	if (wd < 0) {
		if (errno == ENOSPC || errno == ENOMEM) {
			w->overflow = 1;
			watch_arm(w);
		}
		return -1;
	}
	char *copy = strdup(path);
	if (!copy) {
		inotify_rm_watch(ifd, wd);
		w->overflow = 1;
		watch_arm(w);
		return -1;
	}
	ssize_t at = watch_find(w, wd);
	if (at >= 0) { /* the same directory again (a rescan): keep the newest path */
		w->path_bytes -= strlen(w->dirs[at].path) + 1;
		free(w->dirs[at].path);
		w->dirs[at].path = copy;
		w->path_bytes += pl;
		return 0;
	}
	if (w->ndirs == w->capdirs) {
		size_t cap = w->capdirs ? w->capdirs * 2 : 16;
		struct wdir *nd = realloc(w->dirs, cap * sizeof *nd);
		if (!nd) {
			free(copy);
			inotify_rm_watch(ifd, wd);
			w->overflow = 1;
			watch_arm(w);
			return -1;
		}
		w->dirs = nd;
		w->capdirs = cap;
	}
	/* New wds are larger than all earlier ones, so appending keeps the array sorted; the
	 * loop only matters after the (theoretical) wrap-around. */
	size_t i = w->ndirs;
	while (i > 0 && w->dirs[i - 1].wd > wd) {
		w->dirs[i] = w->dirs[i - 1];
		i--;
	}
	w->dirs[i].wd = wd;
	w->dirs[i].path = copy;
	w->ndirs++;
	w->path_bytes += pl;
	return 0;
}

static int join_path(char *out, const char *dir, const char *name)
{
	size_t dl = strcmp(dir, "/") ? strlen(dir) : 0, nl = strlen(name);
	if (dl + 1 + nl >= PATH_MAXLEN)
		return -1;
	memcpy(out, dir, dl);
	out[dl] = '/';
	memcpy(out + dl + 1, name, nl + 1);
	return 0;
}

static void watch_tree(struct watch *w, int ifd, const char *path, int report, int depth);

/* Watches every directory below `path` (recursive watches). With `report`, what is found is
 * reported as created: it appeared before its parent's watch existed. */
static void watch_scan(struct watch *w, int ifd, const char *path, int report, int depth)
{
	if (depth >= WATCH_SCAN_DEPTH)
		return;
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	struct dirent *de;
	char child[PATH_MAXLEN];
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || join_path(child, path, de->d_name))
			continue;
		int isdir = de->d_type == DT_DIR;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;
			isdir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
		}
		if (report)
			watch_add_event(w, 'c', isdir, child, NULL);
		if (isdir)
			watch_tree(w, ifd, child, report, depth + 1);
	}
	closedir(d);
}

static void watch_tree(struct watch *w, int ifd, const char *path, int report, int depth)
{
	if (watch_add_dir(w, ifd, path) == 0)
		watch_scan(w, ifd, path, report, depth);
}

/* A directory left the watched tree (or moved inside it): forget its watches. */
static void watch_forget_tree(struct watch *w, int ifd, const char *path)
{
	size_t pl = strlen(path);
	for (size_t i = 0; i < w->ndirs;) {
		const char *p = w->dirs[i].path;
		if (w->dirs[i].wd != w->root_wd && !strncmp(p, path, pl) && (p[pl] == 0 || p[pl] == '/')) {
			inotify_rm_watch(ifd, w->dirs[i].wd);
			watch_remove_at(w, i);
		} else {
			i++;
		}
	}
}

/* An IN_MOVED_FROM whose IN_MOVED_TO did not follow: it left the tree, so it is deleted. */
static void watch_flush_move(struct watch *w)
{
	if (!w->move_from)
		return;
	if (!w->move_hidden)
		watch_add_event(w, 'd', w->move_isdir, w->move_from, NULL);
	free(w->move_from);
	w->move_from = NULL;
}

/* Whether `name` is one of this agent's FWRITE temp files (.airlock-<pid>-<n>.tmp). */
static int is_own_tmp(const char *name)
{
	char prefix[32];
	size_t pl = fmt(prefix, sizeof prefix, ".airlock-%d-", (int)g_self), nl = strlen(name);
	return nl > pl + 4 && !strncmp(name, prefix, pl) && !strcmp(name + nl - 4, ".tmp");
}

static void watch_event(struct fop *f, const struct inotify_event *ev)
{
	struct watch *w = f->watch;
	if (ev->mask & IN_Q_OVERFLOW) {
		w->overflow = 1;
		watch_arm(w);
		return;
	}
	ssize_t at = watch_find(w, ev->wd);
	if (at < 0)
		return; /* a watch already forgotten */
	if (ev->wd == w->root_wd && (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT))) {
		/* The watched directory itself is gone or moved: paths would lie from now on. */
		w->ended = 1;
		watch_arm(w);
		return;
	}
	if (ev->mask & IN_IGNORED) {
		watch_remove_at(w, (size_t)at);
		return;
	}
	if (!ev->len || !ev->name[0])
		return; /* a subdirectory's own events: its parent reports them */
	char path[PATH_MAXLEN];
	if (join_path(path, w->dirs[at].path, ev->name))
		return;
	int isdir = (ev->mask & IN_ISDIR) != 0;
	if (!(ev->mask & IN_MOVED_TO))
		watch_flush_move(w);
	if (!isdir && is_own_tmp(ev->name)) {
		/* FWRITE's temp file: a watcher sees the file appear under its real name once,
		 * when the temp file is renamed into place ('created'), not the temp name. */
		if (ev->mask & IN_MOVED_FROM) {
			w->move_from = strdup(path);
			w->move_cookie = ev->cookie;
			w->move_isdir = 0;
			w->move_hidden = 1;
		}
		return;
	}
	if (ev->mask & IN_CREATE) {
		watch_add_event(w, 'c', isdir, path, NULL);
		if (isdir && w->recursive)
			watch_tree(w, f->fd, path, 1, 0);
	}
	if (ev->mask & (IN_MODIFY | IN_CLOSE_WRITE))
		watch_add_event(w, 'm', isdir, path, NULL);
	if (ev->mask & IN_DELETE)
		watch_add_event(w, 'd', isdir, path, NULL);
	if (ev->mask & IN_MOVED_FROM) {
		w->move_from = strdup(path);
		w->move_cookie = ev->cookie;
		w->move_isdir = isdir;
		w->move_hidden = 0;
		if (isdir && w->recursive)
			watch_forget_tree(w, f->fd, path);
	}
	if (ev->mask & IN_MOVED_TO) {
		if (w->move_from && w->move_cookie == ev->cookie && w->move_hidden) {
			watch_add_event(w, 'c', isdir, path, NULL);
			free(w->move_from);
			w->move_from = NULL;
		} else if (w->move_from && w->move_cookie == ev->cookie) {
			watch_add_event(w, 'v', isdir, path, w->move_from);
			free(w->move_from);
			w->move_from = NULL;
		} else {
			watch_flush_move(w);
			watch_add_event(w, 'c', isdir, path, NULL);
		}
		if (isdir && w->recursive)
			watch_tree(w, f->fd, path, 0, 0);
	}
}

static void watch_readable(struct fop *f)
{
	static unsigned char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (int round = 0; round < 4; round++) {
		ssize_t n = read(f->fd, buf, sizeof buf);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			/* Drained: a rename's two halves are queued together, so an unpaired
			 * IN_MOVED_FROM now means the entry left the tree. */
			watch_flush_move(f->watch);
			return;
		}
		for (ssize_t off = 0; off + (ssize_t)sizeof(struct inotify_event) <= n;) {
			const struct inotify_event *ev = (const struct inotify_event *)(buf + off);
			watch_event(f, ev);
			off += (ssize_t)(sizeof *ev + ev->len);
		}
	}
}

static void send_fevent(uint32_t ch, unsigned kind, int isdir, const char *path, const char *from)
{
	unsigned char p[2 + 2 * PATH_MAXLEN];
	size_t pl = strlen(path), fl = from ? strlen(from) : 0;
	p[0] = (unsigned char)kind;
	p[1] = (unsigned char)(isdir != 0);
	memcpy(p + 2, path, pl + 1);
	if (from)
		memcpy(p + 3 + pl, from, fl);
	p[3 + pl + fl] = 0;
	send_frame(T_FEVENT, ch, p, 4 + pl + fl);
}

/* Sends what the last window gathered; frees the op once its root is gone. */
static void watch_flush(struct fop *f)
{
	struct watch *w = f->watch;
	if (w->overflow)
		send_fevent(f->channel, 'o', 1, w->root, NULL);
	w->overflow = 0;
	for (size_t i = 0; i < w->npend; i++)
		send_fevent(f->channel, w->pend[i].kind, w->pend[i].isdir, w->pend[i].path, w->pend[i].from);
	wevent_clear(w);
	w->flush_at = 0;
	if (w->ended) {
		send_fevent(f->channel, 'x', 1, w->root, NULL);
		fop_free(f);
	}
}

static void handle_fwatch(uint32_t ch, struct rd r)
{
	uint32_t flags;
	char path[PATH_MAXLEN];
	if (rd_u32(&r, &flags)) {
		conn_fail("malformed FWATCH");
		return;
	}
	if (read_path(ch, &r, path, "watch"))
		return;
	struct stat st;
	if (lstat(path, &st) != 0) {
		send_error(ch, errno, "watch %s", path);
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		send_error(ch, S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR, "watch %s", path);
		return;
	}
	if (g_watch_count >= WATCH_MAX_OPS) {
		send_error(ch, EMFILE, "watch %s: too many watches", path);
		return;
	}
	int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	struct watch *w = ifd >= 0 ? calloc(1, sizeof *w) : NULL;
	char *root = w ? strdup(path) : NULL;
	if (!root) {
		int e = ifd < 0 ? errno : ENOMEM;
		if (ifd >= 0)
			close(ifd);
		free(w);
		send_error(ch, e, "watch %s", path);
		return;
	}
	g_watch_count++;
	w->root = root;
	w->recursive = (flags & 1) != 0;
	struct fop *f = fop_new(ch, FOP_WATCH);
	if (!f) {
		close(ifd);
		watch_free(w);
		return;
	}
	f->fd = ifd;
	f->watch = w;
	errno = 0;
	if (watch_add_dir(w, ifd, path) < 0) {
		send_error(ch, errno ? errno : ENOSPC, "watch %s", path);
		fop_free(f);
		return;
	}
	w->root_wd = w->dirs[0].wd;
	if (w->recursive)
		watch_scan(w, ifd, path, 0, 0);
	send_fevent(ch, 'r', 1, path, NULL);
}

/* One step of a streaming operation (FREAD, FLIST); frees the op when it is done. */
static void fop_step(struct fop *f)
{
	if (f->kind == FOP_WALK) {
		walk_step(f);
		return;
	}
	if (f->kind == FOP_LWALK) {
		lwalk_step(f);
		return;
	}
	if (f->kind == FOP_READ) {
		size_t room;
		unsigned char *p = q_reserve(HDR + 4096, HDR + FILE_CHUNK, &room);
		if (!p)
			return;
		ssize_t r = read(f->fd, p + HDR, room - HDR);
		if (r > 0) {
			put_hdr(p, T_FDATA, f->channel, (size_t)r);
			q_commit(HDR + (size_t)r);
			return;
		}
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			return;
		if (r == 0)
			send_frame(T_FDATA, f->channel, NULL, 0);
		else
			send_error(f->channel, errno, "read");
		fop_free(f);
		return;
	}
	struct fbuild b = { .type = T_FLIST_RESULT, .ch = f->channel };
	if (fb_begin(&b) < 0)
		return;
	int dfd = dirfd(f->dir);
	while (HDR + b.used + LIST_ENTRY_MAX <= b.room) {
		errno = 0;
		struct dirent *de = readdir(f->dir);
		if (!de) {
			int e = errno;
			fb_end(&b);
			if (e)
				send_error(f->channel, e, "list");
			else
				send_frame(T_FOK, f->channel, NULL, 0);
			fop_free(f);
			return;
		}
		const char *name = de->d_name;
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		struct stat st;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue; /* removed meanwhile */
		unsigned char *p = b.base + HDR + b.used;
		size_t nl = strlen(name);
		stat_encode(p, &st);
		memcpy(p + STAT_BYTES, name, nl + 1);
		b.used += STAT_BYTES + nl + 1;
	}
	fb_end(&b);
}

static void handle_fwrite_begin(uint32_t ch, struct rd r)
{
	uint32_t mode, flags;
	char path[PATH_MAXLEN];
	if (rd_u32(&r, &mode) || rd_u32(&r, &flags)) {
		conn_fail("malformed FWRITE_BEGIN");
		return;
	}
	if (read_path(ch, &r, path, "write"))
		return;
	if (!strcmp(path, "/")) {
		send_error(ch, EISDIR, "write /");
		return;
	}
	char full[PATH_MAXLEN];
	memcpy(full, path, strlen(path) + 1);
	const char *base;
	const char *parent = split_path(path, &base);
	if (flags & 1) {
		char tmp[PATH_MAXLEN];
		memcpy(tmp, parent, strlen(parent) + 1);
		int rc = mkdir_parents(tmp, 0755);
		if (rc < 0) {
			send_error(ch, -rc, "mkdir %s", parent);
			return;
		}
	}
	int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		send_error(ch, errno, "write %s", full);
		return;
	}
	struct stat st;
	int existed = 0;
	if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		int bad = S_ISLNK(st.st_mode) ? ELOOP : S_ISDIR(st.st_mode) ? EISDIR : !S_ISREG(st.st_mode) ? EINVAL : 0;
		if (bad) {
			close(dfd);
			send_error(ch, bad, "write %s", full);
			return;
		}
		existed = 1;
	} else if (errno != ENOENT) {
		int e = errno;
		close(dfd);
		send_error(ch, e, "write %s", full);
		return;
	}
	struct fop *f = fop_new(ch, FOP_WRITE);
	if (!f) {
		close(dfd);
		return;
	}
	f->dirfd = dfd;
	f->mode = mode & 0777;
	f->existed = existed;
	if (existed) {
		f->uid = st.st_uid;
		f->gid = st.st_gid;
	}
	f->base = strdup(base);
	fmt(f->tmp, sizeof f->tmp, ".airlock-%d-%u.tmp", (int)g_self, ++g_tmp_counter);
	f->fd = openat(dfd, f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (f->fd < 0 || !f->base) {
		int e = f->base ? errno : ENOMEM;
		f->tmp[0] = 0;
		send_error(ch, e, "write %s", full);
		fop_free(f);
	}
}

static void fwrite_commit(struct fop *f)
{
	struct stat st;
	if (fchmod(f->fd, f->mode) != 0) {
		send_error(f->channel, errno, "chmod");
		fop_free(f);
		return;
	}
	if (f->existed && fchown(f->fd, f->uid, f->gid) != 0) {
		/* keep the agent's ownership: the write itself succeeded */
	}
	if (fstatat(f->dirfd, f->base, &st, AT_SYMLINK_NOFOLLOW) == 0 && (S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode))) {
		send_error(f->channel, S_ISLNK(st.st_mode) ? ELOOP : EISDIR, "write %s", f->base);
		fop_free(f);
		return;
	}
	if (renameat(f->dirfd, f->tmp, f->dirfd, f->base) != 0) {
		send_error(f->channel, errno, "rename %s", f->base);
		fop_free(f);
		return;
	}
	f->tmp[0] = 0;
	if (fstat(f->fd, &st) != 0)
		send_error(f->channel, errno, "stat %s", f->base);
	else
		send_stat_ok(f->channel, &st);
	fop_free(f);
}

static void handle_fwrite_data(uint32_t ch, const unsigned char *p, size_t n)
{
	struct fop *f = fop_by_channel(ch);
	if (!f || f->kind != FOP_WRITE)
		return; /* the write already failed (ERROR sent) or was cancelled */
	if (n == 0) {
		fwrite_commit(f);
		return;
	}
	while (n > 0) {
		ssize_t w = write(f->fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			send_error(ch, errno, "write %s", f->base);
			fop_free(f);
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

static int rm_tree_at(int pfd, const char *name, int depth)
{
	if (depth > RM_MAX_DEPTH)
		return -ENAMETOOLONG;
	int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOTDIR || errno == ELOOP) /* replaced by a file or link meanwhile */
			return unlinkat(pfd, name, 0) == 0 ? 0 : -errno;
		return -errno;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return -e;
	}
	int rc = 0;
	struct dirent *de;
	while (!rc && (de = readdir(d))) {
		const char *n = de->d_name;
		if (!strcmp(n, ".") || !strcmp(n, ".."))
			continue;
		int isdir = de->d_type == DT_DIR;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;
			isdir = fstatat(fd, n, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
		}
		rc = isdir ? rm_tree_at(fd, n, depth + 1) : unlinkat(fd, n, 0) == 0 ? 0 : -errno;
		if (rc == -ENOENT)
			rc = 0;
	}
	closedir(d);
	if (rc)
		return rc;
	return unlinkat(pfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : -errno;
}

static void handle_fdelete(uint32_t ch, struct rd r)
{
	uint32_t flags;
	char path[PATH_MAXLEN];
	if (rd_u32(&r, &flags)) {
		conn_fail("malformed FDELETE");
		return;
	}
	if (read_path(ch, &r, path, "delete"))
		return;
	if (!strcmp(path, "/")) {
		send_error(ch, EBUSY, "delete /");
		return;
	}
	char full[PATH_MAXLEN];
	memcpy(full, path, strlen(path) + 1);
	struct stat st;
	if (lstat(full, &st) != 0) {
		send_error(ch, errno, "delete %s", full);
		return;
	}
	int rc;
	if (!S_ISDIR(st.st_mode)) {
		rc = unlink(full) == 0 ? 0 : -errno; /* a link is removed, never its target */
	} else if (!(flags & 1)) {
		rc = rmdir(full) == 0 ? 0 : -errno;
	} else {
		const char *base;
		const char *parent = split_path(path, &base);
		int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		rc = pfd < 0 ? -errno : rm_tree_at(pfd, base, 0);
		if (pfd >= 0)
			close(pfd);
	}
	if (rc)
		send_error(ch, -rc, "delete %s", full);
	else
		send_frame(T_FOK, ch, NULL, 0);
}

static void handle_fstat(uint32_t ch, struct rd r)
{
	char path[PATH_MAXLEN];
	if (read_path(ch, &r, path, "stat"))
		return;
	struct stat st;
	if (lstat(path, &st) != 0)
		send_error(ch, errno, "stat %s", path);
	else
		send_stat_ok(ch, &st);
}

static void handle_fmkdir(uint32_t ch, struct rd r)
{
	uint32_t mode, flags;
	char path[PATH_MAXLEN];
	if (rd_u32(&r, &mode) || rd_u32(&r, &flags)) {
		conn_fail("malformed FMKDIR");
		return;
	}
	if (read_path(ch, &r, path, "mkdir"))
		return;
	mode &= 0777;
	int rc;
	if (flags & 1)
		rc = mkdir_parents(path, mode);
	else
		rc = mkdir(path, mode) == 0 ? 1 : -errno;
	if (rc == 1) {
		/* Exact mode, whatever the umask; O_NOFOLLOW: never chmod through a swapped-in link. */
		int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			if (fchmod(fd, mode) != 0)
				rc = -errno;
			close(fd);
		}
	}
	if (rc < 0)
		send_error(ch, -rc, "mkdir %s", path);
	else
		send_frame(T_FOK, ch, NULL, 0);
}

static void handle_cancel(uint32_t ch)
{
	struct fop *f = fop_by_channel(ch);
	if (f)
		fop_free(f);
}

/* ---- inbound ---- */
static int is_new_op(unsigned type)
{
	switch (type) {
	case T_EXEC: case T_PS: case T_KILLPID: case T_PING: case T_FREAD: case T_FWRITE_BEGIN:
	case T_FLIST: case T_FDELETE: case T_FSTAT: case T_FMKDIR: case T_FRENAME: case T_FWATCH:
	case T_FWALK: case T_LWALK: case T_LREAD:
		return 1;
	}
	return 0;
}

static void handle_frame(unsigned type, uint32_t ch, const unsigned char *p, size_t n)
{
	struct rd r = { p, n };
	if (ch == 0) {
		conn_fail("frame on channel 0");
		return;
	}
	if (is_new_op(type) && (exec_by_channel(ch) || fop_by_channel(ch))) {
		conn_fail("channel already in use");
		return;
	}
	switch (type) {
	case T_EXEC: handle_exec(ch, r); break;
	case T_STDIN: handle_stdin(ch, p, n); break;
	case T_SIGNAL: handle_signal(ch, r); break;
	case T_RESIZE: handle_resize(ch, r); break;
	case T_FLOW: handle_flow(ch, r); break;
	case T_PS:
		if (n)
			conn_fail("malformed PS");
		else
			handle_ps(ch);
		break;
	case T_KILLPID: handle_killpid(ch, r); break;
	case T_PING: send_frame(T_PONG, ch, p, n); break;
	case T_CANCEL: handle_cancel(ch); break;
	case T_FREAD: handle_fread(ch, r); break;
	case T_FWRITE_BEGIN: handle_fwrite_begin(ch, r); break;
	case T_FWRITE_DATA: handle_fwrite_data(ch, p, n); break;
	case T_FLIST: handle_flist(ch, r); break;
	case T_FDELETE: handle_fdelete(ch, r); break;
	case T_FSTAT: handle_fstat(ch, r); break;
	case T_FMKDIR: handle_fmkdir(ch, r); break;
	case T_FRENAME: handle_frename(ch, r); break;
	case T_FWATCH: handle_fwatch(ch, r); break;
	case T_FWALK: handle_fwalk(ch, r); break;
	case T_LWALK:
		if (n)
			conn_fail("malformed LWALK");
		else
			handle_lwalk(ch, r);
		break;
	case T_LREAD: handle_lread(ch, r); break;
	default: conn_fail("unknown frame type"); break;
	}
}

/* Reading from the host pauses while too much waits to go out or into children's stdin:
 * memory stays bounded, and the host, which always reads, unblocks it. */
static int inbound_paused(void)
{
	return q_bytes > OUT_HARD || g_stdin_bytes > STDIN_HIGH;
}

static void in_reset(void)
{
	g_in_len = 0;
	if (g_in_cap != IN_INITIAL) {
		unsigned char *nb = realloc(g_in, IN_INITIAL);
		if (nb) {
			g_in = nb;
			g_in_cap = IN_INITIAL;
		}
	}
}

static void process_inbound(void)
{
	size_t off = 0;
	while (online() && !inbound_paused() && g_in_len - off >= 4) {
		uint32_t len = get32(g_in + off);
		if (len < 5 || len > 5 + MAX_PAYLOAD) {
			conn_fail("bad frame length");
			return;
		}
		if (g_in_len - off < 4 + (size_t)len)
			break;
		handle_frame(g_in[off + 4], get32(g_in + off + 5), g_in + off + HDR, len - 5);
		off += 4 + (size_t)len;
	}
	if (!online())
		return;
	if (off) {
		memmove(g_in, g_in + off, g_in_len - off);
		g_in_len -= off;
	}
	if (g_in_len >= 4) {
		size_t need = 4 + (size_t)get32(g_in);
		if (need > 5 + MAX_PAYLOAD + 4) {
			conn_fail("bad frame length");
			return;
		}
		if (need > g_in_cap) {
			unsigned char *nb = realloc(g_in, need);
			if (!nb) {
				conn_fail("out of memory");
				return;
			}
			g_in = nb;
			g_in_cap = need;
		}
	} else if (g_in_cap > IN_INITIAL) {
		in_reset(); /* a big frame is done: give its memory back */
	}
}

/* Idle: hand buffers touched by the last burst back to the kernel (the agent lives in the
 * sandbox's memory limit and is there for the sandbox's whole life). */
static void trim_memory(void)
{
	free(q_spare);
	q_spare = NULL;
	if (g_in_len == 0) {
		unsigned char *fresh = malloc(IN_INITIAL);
		if (fresh) {
			free(g_in);
			g_in = fresh;
			g_in_cap = IN_INITIAL;
		}
	}
#ifdef __GLIBC__
	malloc_trim(0); /* musl's allocator gives freed memory back by itself */
#endif
}

static void sock_readable(void)
{
	for (int i = 0; i < 8 && online() && !inbound_paused() && g_in_len < g_in_cap; i++) {
		ssize_t r = read(g_sock, g_in + g_in_len, g_in_cap - g_in_len);
		if (r == 0) {
			conn_fail("host closed the connection");
			return;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_fail("read from host failed");
			return;
		}
		g_in_len += (size_t)r;
		process_inbound();
	}
}

/* ---- connection ---- */
static void conn_drop(void)
{
	uint64_t now = now_ms();
	logmsg("disconnected: %s", g_drop ? g_drop : "?");
	if (g_sock != g_port_fd)
		close(g_sock);
	g_sock = -1;
	g_drop = NULL;
	q_clear();
	in_reset();
	while (g_fops)
		fop_free(g_fops);
	/* Channels belong to a connection: running processes stay, their output is dropped. */
	for (struct exec *e = g_execs; e; e = e->next)
		exec_detach(e);
	/* A connection that did not last a second does not restart the fast-retry window,
	 * so a host that keeps dropping us is not hammered at 50 Hz. */
	if (now - g_up_since >= 1000) {
		g_down_since = now;
		g_next_connect = now;
	} else {
		g_next_connect = now + (now - g_down_since < 1000 ? 20 : 250);
	}
}

/* A virtio-serial port (microvm tier): its host end is "connected" while QEMU's chardev holds a
 * connection to the host socket, which the port reports as the absence of POLLHUP. So a port
 * showing POLLHUP is a failed connect (retried on the same schedule), and the HUP of the port in
 * use is the host hanging up. The port stays open for the agent's life (the guest's init opened
 * it; a port has one opener, so nothing else in the guest can take it); bytes an old connection
 * left in it are drained while the host end is down. */
static int port_open(void)
{
	struct pollfd p = { .fd = g_port_fd, .events = POLLIN };
	if (poll(&p, 1, 0) < 0)
		return -1;
	if (p.revents & (POLLHUP | POLLERR)) {
		while (read(g_port_fd, g_sink, sizeof g_sink) > 0)
			;
		errno = ENOTCONN;
		return -1;
	}
	return g_port_fd;
}

static int sock_open(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, g_sock_path, strlen(g_sock_path) + 1);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void try_connect(uint64_t now)
{
	int fd = g_port_fd >= 0 ? port_open() : sock_open();
	if (fd < 0) {
		if (!g_connect_logged) {
			logmsg("connect %s: %s (retrying)", g_sock_path ? g_sock_path : "port", errstr(errno));
			g_connect_logged = 1;
		}
		g_next_connect = now + (now - g_down_since < 1000 ? 20 : 250);
		return;
	}
	g_sock = fd;
	g_drop = NULL;
	g_up_since = now;
	g_connect_logged = 0;
	unsigned char v[4];
	put32(v, PROTO_VERSION);
	send_frame2(T_HELLO, 0, v, 4, g_token, g_token_len + 1);
}

/* ---- lifecycle ---- */

/* Test runs only (not PID 1): kill everything we started, then go. As PID 1 the kernel
 * kills the whole sandbox when the agent exits. */
static void shutdown_and_exit(void)
{
	for (struct exec *e = g_execs; e; e = e->next)
		exec_kill(e, SIGKILL);
	for (int round = 0; round < 3 && !g_is_init; round++) {
		size_t n = 0;
		struct procent *v = proc_scan(&n);
		for (size_t i = 0; v && i < n; i++)
			if (in_sandbox(v, n, v[i].pid))
				kill(v[i].pid, SIGKILL);
		free(v);
	}
	_exit(0);
}

static void handle_signals(void)
{
	struct signalfd_siginfo si[16];
	for (;;) {
		ssize_t r = read(g_sigfd, si, sizeof si);
		if (r <= 0)
			break;
		for (size_t i = 0; i < (size_t)r / sizeof si[0]; i++) {
			if (si[i].ssi_signo == SIGCHLD)
				continue;
			/* As PID 1, only a signal from outside the sandbox (sender pid 0 here) stops
			 * the agent: code inside the sandbox must not be able to end it. */
			if (!g_is_init || si[i].ssi_pid == 0)
				shutdown_and_exit();
		}
	}
	reap();
}

static void take_token(void)
{
	char *t = getenv("AIRLOCK_AGENT_TOKEN");
	size_t len = t ? strlen(t) : 0;
	if (len == 0 || len > TOKEN_MAX) {
		logmsg("AIRLOCK_AGENT_TOKEN must be set (1..%d bytes)", TOKEN_MAX);
		exit(2);
	}
	g_token = malloc(len + 1);
	if (!g_token)
		exit(2);
	memcpy(g_token, t, len + 1);
	g_token_len = len;
	/* /proc/1/environ reads the original bytes, so wipe them, not just the pointer. */
	explicit_bzero(t, len);
	unsetenv("AIRLOCK_AGENT_TOKEN");
}

static void setup_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) < 0) {
			int n = open("/dev/null", O_RDWR);
			if (n >= 0 && n != fd) {
				dup2(n, fd);
				close(n);
			}
		}
	}
	/* Inherited descriptors must not leak into the sandbox's processes (the microvm's port and
	 * layer are ours: they are kept, close-on-exec). */
	if (g_port_fd >= 0) {
		int lo = g_layer_fd >= 0 && g_layer_fd < g_port_fd ? g_layer_fd : g_port_fd;
		int hi = g_layer_fd > g_port_fd ? g_layer_fd : g_port_fd;
		unsigned from = 3;
		int keep[2] = { lo, hi };
		for (int i = 0; i < 2; i++) {
			if ((unsigned)keep[i] > from && syscall(SYS_close_range, from, (unsigned)keep[i] - 1, 0u) != 0)
				exit(2);
			from = (unsigned)keep[i] + 1;
		}
		if (syscall(SYS_close_range, from, ~0u, 0u) != 0)
			exit(2);
	} else if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
		DIR *d = opendir("/proc/self/fd");
		if (d) {
			int self = dirfd(d);
			struct dirent *de;
			while ((de = readdir(d))) {
				int fd = (int)strtol(de->d_name, NULL, 10);
				if (fd > 2 && fd != self)
					close(fd);
			}
			closedir(d);
		}
	}
	g_devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
}

static void setup_signals(void)
{
	/* Ignored dispositions survive exec: start clean so children inherit defaults. */
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			signal(s, SIG_DFL);
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	g_sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (g_sigfd < 0) {
		logmsg("signalfd: %s", errstr(errno));
		exit(2);
	}
}

/* ---- main loop ---- */
enum { K_SIG, K_SOCK, K_OUT, K_ERR, K_IN, K_WATCH, K_READY };
struct slot {
	int kind;
	struct exec *e;
	struct fop *f;
};
static struct pollfd *g_pfd;
static struct slot *g_slot;
static size_t g_pcap;

static int poll_add(size_t *n, int fd, short events, int kind, struct exec *e)
{
	if (*n == g_pcap) {
		size_t cap = g_pcap ? g_pcap * 2 : 64;
		struct pollfd *np = realloc(g_pfd, cap * sizeof *np);
		if (np)
			g_pfd = np;
		struct slot *ns = realloc(g_slot, cap * sizeof *ns);
		if (ns)
			g_slot = ns;
		if (!np || !ns)
			return -1;
		g_pcap = cap;
	}
	g_pfd[*n].fd = fd;
	g_pfd[*n].events = events;
	g_pfd[*n].revents = 0;
	g_slot[*n].kind = kind;
	g_slot[*n].e = e;
	g_slot[*n].f = NULL;
	(*n)++;
	return 0;
}

static int is_stream(const struct fop *f)
{
	return f->kind == FOP_READ || f->kind == FOP_LIST || f->kind == FOP_WALK || f->kind == FOP_LWALK;
}

static int streams_pending(void)
{
	for (struct fop *f = g_fops; f; f = f->next)
		if (is_stream(f))
			return 1;
	return 0;
}

static void run_streams(void)
{
	for (struct fop *f = g_fops, *next; f && online() && q_bytes < OUT_SOFT; f = next) {
		next = f->next;
		if (is_stream(f))
			fop_step(f);
	}
}

/* Sends the watches' coalesced events whose window has passed; returns the ms until the
 * next one is due (-1: none). */
static int64_t run_watches(uint64_t now)
{
	int64_t wait = -1;
	for (struct fop *f = g_fops, *next; f; f = next) {
		next = f->next;
		if (f->kind != FOP_WATCH || !f->watch->flush_at)
			continue;
		if (now >= f->watch->flush_at) {
			if (online() && q_bytes < OUT_SOFT)
				watch_flush(f); /* may free f */
			continue; /* else the socket's POLLOUT wakes the loop */
		}
		int64_t d = (int64_t)(f->watch->flush_at - now);
		if (wait < 0 || d < wait)
			wait = d;
	}
	return wait;
}

static struct fop *fop_by_fd(int fd, const struct fop *hint)
{
	for (struct fop *f = g_fops; f; f = f->next)
		if (f == hint && f->fd == fd && f->kind == FOP_WATCH)
			return f;
	return NULL;
}

static void loop(void)
{
	for (;;) {
		uint64_t now = now_ms();
		int64_t timeout = -1;
		if (g_sock < 0) {
			if (now >= g_next_connect)
				try_connect(now);
			if (g_sock < 0)
				timeout = (int64_t)(g_next_connect - now);
		}
		for (struct exec *e = g_execs; e; e = e->next) {
			int64_t rc = resize_recheck(e, now);
			if (rc >= 0 && (timeout < 0 || rc < timeout))
				timeout = rc;
			if (!e->deadline || e->pid <= 0)
				continue;
			if (now >= e->deadline) {
				exec_kill(e, SIGKILL);
				e->timed_out = 1;
				e->deadline = 0;
			} else if (timeout < 0 || (int64_t)(e->deadline - now) < timeout) {
				timeout = (int64_t)(e->deadline - now);
			}
		}
		if (online()) {
			run_streams();
			int64_t w = run_watches(now);
			if (w >= 0 && (timeout < 0 || w < timeout))
				timeout = w;
			if (!inbound_paused() && g_in_len >= 4)
				process_inbound();
			q_flush();
		}
		if (g_drop) {
			conn_drop();
			continue;
		}
		if (online() && q_bytes < OUT_SOFT && streams_pending())
			timeout = 0;
		if (!g_trimmed) {
			uint64_t due = g_last_busy + 1000;
			if (now >= due && !q_head && g_in_len == 0) {
				trim_memory();
				g_trimmed = 1;
			} else if (now < due && (timeout < 0 || (int64_t)(due - now) < timeout)) {
				timeout = (int64_t)(due - now);
			}
		}

		size_t n = 0;
		int ok = poll_add(&n, g_sigfd, POLLIN, K_SIG, NULL) == 0;
		if (ok && g_sock >= 0) {
			short ev = (short)((inbound_paused() ? 0 : POLLIN) | (q_head ? POLLOUT : 0));
			ok = poll_add(&n, g_sock, ev, K_SOCK, NULL) == 0;
		}
		int pipes_open = !online() || q_bytes < OUT_SOFT;
		for (struct exec *e = g_execs; ok && e; e = e->next) {
			/* Dropped output is always read; FLOW holds only output someone receives. */
			int listen = e->channel == 0 || (pipes_open && !e->out_held);
			if (e->out_fd >= 0 && listen)
				ok = poll_add(&n, e->out_fd, POLLIN, K_OUT, e) == 0;
			if (ok && e->err_fd >= 0 && listen)
				ok = poll_add(&n, e->err_fd, POLLIN, K_ERR, e) == 0;
			if (ok && e->in_fd >= 0 && e->in_len > e->in_off)
				ok = poll_add(&n, e->in_fd, POLLOUT, K_IN, e) == 0;
			if (ok && e->ready_fd >= 0)
				ok = poll_add(&n, e->ready_fd, POLLIN, K_READY, e) == 0;
		}
		for (struct fop *f = g_fops; ok && f; f = f->next) {
			if (f->kind != FOP_WATCH || f->fd < 0)
				continue;
			ok = poll_add(&n, f->fd, POLLIN, K_WATCH, NULL) == 0;
			if (ok)
				g_slot[n - 1].f = f;
		}
		if (!ok && timeout < 0)
			timeout = 10; /* out of memory for the poll set: keep going, retry soon */
		int rc = poll(g_pfd, n, timeout > 60000 ? 60000 : (int)timeout);
		if (rc < 0) {
			if (errno != EINTR)
				logmsg("poll: %s", errstr(errno));
			continue;
		}
		if (rc > 0) {
			g_last_busy = now_ms();
			g_trimmed = 0;
		}
		for (size_t i = 0; i < n; i++) {
			struct pollfd *p = &g_pfd[i];
			struct exec *e = g_slot[i].e;
			if (!p->revents)
				continue;
			switch (g_slot[i].kind) {
			case K_SIG:
				handle_signals();
				break;
			case K_SOCK:
				if (p->fd != g_sock)
					break;
				if (p->revents & (POLLIN | POLLHUP | POLLERR))
					sock_readable();
				if (p->revents & POLLOUT)
					q_flush();
				break;
			case K_OUT:
				if (e->out_fd == p->fd)
					pipe_read(e, 0, PIPE_READ);
				break;
			case K_ERR:
				if (e->err_fd == p->fd)
					pipe_read(e, 1, PIPE_READ);
				break;
			case K_IN:
				if (e->in_fd == p->fd)
					stdin_flush(e);
				break;
			case K_READY:
				if (e->ready_fd == p->fd)
					exec_announce(e); /* EOF: the child exec'd or exited */
				break;
			case K_WATCH: {
				/* A CANCEL handled earlier in this round may have freed it. */
				struct fop *f = fop_by_fd(p->fd, g_slot[i].f);
				if (f)
					watch_readable(f);
				break;
			}
			}
		}
		exec_sweep();
	}
}

int main(int argc, char **argv)
{
	g_self = getpid();
	if ((argc == 3 || argc == 5) && strcmp(argv[1], "--port-fd") == 0) {
		/* microvm: the guest's init hands over the open virtio-serial port */
		char *end;
		long fd = strtol(argv[2], &end, 10);
		if (*end || fd < 3 || fd > 1023 || fcntl((int)fd, F_SETFD, FD_CLOEXEC) != 0 ||
		    fcntl((int)fd, F_SETFL, O_RDWR | O_NONBLOCK) != 0) {
			logmsg("--port-fd: not an open descriptor: %s", argv[2]);
			return 2;
		}
		g_port_fd = (int)fd;
		if (argc == 5) {
			/* ... and its writable layer's upper dir, which no sandbox process may inherit */
			struct stat st;
			long lfd = strcmp(argv[3], "--layer-fd") == 0 ? strtol(argv[4], &end, 10) : -1;
			if (lfd < 3 || *end || lfd > 1023 || lfd == fd || fcntl((int)lfd, F_SETFD, FD_CLOEXEC) != 0 ||
			    fstat((int)lfd, &st) != 0 || !S_ISDIR(st.st_mode)) {
				logmsg("--layer-fd: not an open directory: %s", argv[4]);
				return 2;
			}
			g_layer_fd = (int)lfd;
		}
	} else if (argc != 3 || strcmp(argv[1], "--connect") != 0) {
		logmsg("usage: airlock-agent --connect SOCKET_PATH | --port-fd FD [--layer-fd FD]");
		return 2;
	} else {
		g_sock_path = argv[2];
		if (g_sock_path[0] == 0 || strlen(g_sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
			logmsg("socket path empty or too long");
			return 2;
		}
	}
	take_token();
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* no /proc/1/mem, /proc/1/environ for the sandbox */
	g_is_init = g_self == 1;
	if (!g_is_init) {
		prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* orphans come to us, not to the host's init */
		/* Outside a sandbox (tests), go (and take our processes along) when our parent dies. */
		pid_t parent = getppid();
		prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
		if (getppid() != parent)
			return 0;
	}
	/* Big buffers come from mmap and go back to the kernel when freed: idle RSS stays small. */
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 64 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024);
#endif
	setup_fds();
	setup_signals();
	umask(022);
	if (chdir("/") != 0)
		logmsg("chdir /: %s", errstr(errno));
	g_in = malloc(IN_INITIAL);
	if (!g_in)
		return 2;
	g_in_cap = IN_INITIAL;
	g_down_since = g_next_connect = now_ms();
	loop();
	return 0;
}
