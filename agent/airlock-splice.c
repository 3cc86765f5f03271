/*
 * airlock-splice: relays the egress proxy's TCP connections in the kernel with splice(2), so
 * relayed bytes never cross into Node (Node copying them reached ~0.3x of a direct veth path).
 *
 *   airlock-splice PID
 *
 * PID is the engine's Node process. Node cannot pass descriptors to a child after spawning it,
 * so we take them: pidfd_open(PID) once, then pidfd_getfd(2) for every connection (root).
 *
 * stdin, one command a line:   ADD <id> <fdA> <fdB> [<inoA> <inoB>]
 *                                                     relay Node's connected sockets fdA, fdB; with
 *                                                     their inode numbers (/proc/self/fd/N ->
 *                                                     socket:[ino]) only if they are still those
 *                              ADD1 <id> <fdA> <fdB> [<inoA> <inoB>]
 *                                                     one way only, A -> B: Node keeps its own
 *                                                     descriptors and the other direction (it reads
 *                                                     B and writes A itself, e.g. to check requests)
 *                              ADDN <id> <fdA> <fdB> <inoA> <inoB> <count>
 *                                                     one way, A -> B, exactly count bytes (say, an
 *                                                     HTTP body of known length), then the sockets
 *                                                     are Node's alone again: nothing past the count
 *                                                     is read, and nothing is shut down
 *                              CUT <id>               end that connection now, with a reset
 * stdout, one event a line:    READY                  once, at start: pidfd_getfd works
 *                              OK <id>                we hold our own duplicates (ADD: Node may close its)
 *                              ERR <id> <message>     a command failed (id "-" if it had none)
 *                              DONE <id> <aToB> <bToA> end|reset|limit|eof
 *                                                     the connection (ADD1: its one direction) is over;
 *                                                     bytes delivered; "reset": it broke or was cut,
 *                                                     and the sockets reset when their last copy closes;
 *                                                     ADDN: "limit" (count reached) or "eof" (A ended
 *                                                     first; the EOF is left for Node to read)
 * When stdin closes, every connection still relayed is reset and reported DONE, and we exit 0.
 *
 * Relay: edge-triggered epoll, one pipe per direction, socket -> pipe -> socket. A direction
 * whose pipe holds bytes its destination cannot take waits for EPOLLOUT there and stops
 * listening to its source (each arriving packet would wake us for nothing), so a slow reader
 * holds back its writer in the kernel (TCP window), and memory stays bounded per connection
 * whatever the byte count. EOF on one side is passed on as shutdown(SHUT_WR) once the pipe is
 * drained (half-close); the connection is DONE when both directions are shut, or at once (both
 * reset, so each peer learns the stream broke) on any error or reset.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

#define MAX_CONNS 65536
/* Two sockets and four pipe ends per connection, plus our own few. */
#define FDS_NEEDED (MAX_CONNS * 6 + 64)
#define PIPE_BYTES (1 << 20)
#define HASH_BUCKETS (1 << 17)
#define MAX_LINE 128
#define MAX_EVENTS 256
/* splice rounds one direction may run before others get a turn (it is re-queued, not dropped). */
#define PUMP_ROUNDS 16
/* Receive buffers (SO_RCVBUFFORCE; the kernel doubles the value). Autotuning grows a socket's
 * buffer only as fast as it is read, and a buffer that runs nearly full makes TCP hold its ACKs
 * (the window no longer advances) until the next read. A sender with a small congestion window
 * then stalls between our reads: BBR on a round trip of microseconds (a local server, the same
 * data centre) ran at well under half the direct speed. So a relayed socket whose measured round
 * trip is short gets a big fixed buffer, and every arriving segment is acknowledged at once.
 * Longer paths keep autotuning, which suits them (a fixed buffer would cap their window). At
 * most BIG_SOCKETS hold one at a time, which bounds what stalled connections can pin: 64 x 8 MiB.
 * (Shrinking the buffer of a direction that blocks was tried: the drops and window collapses
 * cost more than they saved.) AIRLOCK_SPLICE_SHORT_RTT_US overrides the threshold (tests). */
#define BIG_RCVBUF (4 << 20)
#define SHORT_RTT_US 2000
#define BIG_SOCKETS 64

/* How a connection ended: both ways over (end); an error or CUT (reset); ADDN only: the count
 * was relayed (limit), or the source ended first (eof; not passed on: the socket is Node's again). */
enum end_kind { END_NORMAL, END_RESET, END_LIMIT, END_EOF };
static const char *const END_WORDS[] = { "end", "reset", "limit", "eof" };

struct dir {
    int pipe_r, pipe_w;
    size_t cap;      /* the pipe's size */
    size_t queued;   /* bytes in the pipe, read from the source, not yet written on */
    uint64_t bytes;  /* bytes written to the destination socket */
    bool eof;        /* the source reached EOF */
    bool shut;       /* EOF passed on: shutdown(destination, SHUT_WR) */
    bool ready;      /* queued for a pump */
    bool blocked;    /* bytes queued, the destination full: waits for EPOLLOUT, not for input */
};

struct conn {
    uint64_t id;
    int fd[2];
    uint32_t events[2]; /* what fd[s] is registered for */
    struct dir dir[2]; /* dir[0]: fd[0] -> fd[1]; dir[1]: fd[1] -> fd[0] */
    bool big[2];       /* fd[s] holds one of the BIG_SOCKETS big receive buffers */
    bool oneway;       /* ADD1: only dir[0]; dir[1] is Node's, and counts as shut from the start */
    uint64_t limit;    /* ADDN: dir[0] moves exactly this many bytes, then the sockets are Node's again (0: no limit) */
    bool dead;
    bool in_ready;
    struct conn *hash_next;
    struct conn *ready_next;
    struct conn *dead_next;
};

static int pidfd = -1;
static int epfd = -1;
static unsigned nconns;
static struct conn *buckets[HASH_BUCKETS];
static struct conn *ready_head;
static struct conn *dead_head;
static bool stdout_broken;
static unsigned big_sockets; /* sockets holding a big receive buffer now */

/* Events are short lines to a pipe Node always drains; blocking writes keep them whole. */
static void emit(const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || stdout_broken) return;
    if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { stdout_broken = true; return; } /* Node is gone; stdin EOF follows */
        off += (int)w;
    }
}

static void emit_err(const char *id, const char *what, int err) {
    if (err) emit("ERR %s %s: %s", id, what, strerror(err));
    else emit("ERR %s %s", id, what);
}

static struct conn **bucket_of(uint64_t id) { return &buckets[id & (HASH_BUCKETS - 1)]; }

static struct conn *lookup(uint64_t id) {
    for (struct conn *c = *bucket_of(id); c; c = c->hash_next)
        if (c->id == id) return c;
    return NULL;
}

static void unhash(struct conn *c) {
    for (struct conn **p = bucket_of(c->id); *p; p = &(*p)->hash_next)
        if (*p == c) { *p = c->hash_next; return; }
}

static void mark_ready(struct conn *c, int d) {
    c->dir[d].ready = true;
    if (!c->in_ready) {
        c->in_ready = true;
        c->ready_next = ready_head;
        ready_head = c;
    }
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void reset_on_close(int fd) {
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* Ends a connection and reports it. The struct lives on until no pending event or ready-list
 * entry can point at it (see the main loop). */
static void finish(struct conn *c, enum end_kind how) {
    if (c->dead) return;
    c->dead = true;
    for (int s = 0; s < 2; s++) {
        if (c->big[s]) { c->big[s] = false; big_sockets--; }
        /* Deregister explicitly: Node may still hold a copy of the socket, and epoll forgets a
         * registration only when the last copy closes. */
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd[s], NULL);
        if (how == END_RESET) reset_on_close(c->fd[s]);
        close_fd(&c->fd[s]);
        close_fd(&c->dir[s].pipe_r);
        close_fd(&c->dir[s].pipe_w);
    }
    unhash(c);
    nconns--;
    emit("DONE %llu %llu %llu %s", (unsigned long long)c->id, (unsigned long long)c->dir[0].bytes,
         (unsigned long long)c->dir[1].bytes, END_WORDS[how]);
    if (!c->in_ready) {
        c->dead_next = dead_head;
        dead_head = c;
    }
}

/* Moves what direction d can move now. Returns -errno on a connection error, 1 when it stopped
 * with work left (its turn ran out), PUMP_LIMIT / PUMP_EOF when an ADDN connection is over,
 * else 0: it waits for an epoll edge on one of its sockets. */
#define PUMP_LIMIT 2
#define PUMP_EOF 3
static int pump(struct conn *c, int d) {
    struct dir *p = &c->dir[d];
    int src = c->fd[d], dst = c->fd[!d];
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        bool progress = false;
        /* ADDN: never read past the count; what follows it is Node's to parse. */
        size_t room = p->cap - p->queued;
        if (c->limit && c->limit - (p->bytes + p->queued) < room) room = (size_t)(c->limit - (p->bytes + p->queued));
        if (!p->eof && room > 0) {
            ssize_t n = splice(src, NULL, p->pipe_w, NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) { p->queued += (size_t)n; progress = true; }
            else if (n == 0) { p->eof = true; progress = true; }
            else if (errno == EINTR) progress = true;
            /* EAGAIN: the socket is empty (an edge comes with new data) or the pipe is out of
             * slots, which only happens with bytes queued: writing them on makes room. */
            else if (errno != EAGAIN) return -errno;
        }
        if (p->queued > 0) {
            ssize_t n = splice(p->pipe_r, NULL, dst, NULL, p->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) { p->queued -= (size_t)n; p->bytes += (uint64_t)n; progress = true; }
            else if (n < 0 && errno == EINTR) progress = true;
            /* EAGAIN: the destination is full; EPOLLOUT on it brings us back. */
            else if (n < 0 && errno != EAGAIN) return -errno;
        }
        if (c->limit && p->bytes == c->limit) return PUMP_LIMIT;
        if (!progress) {
            p->blocked = p->queued > 0; /* then the write, tried last, met EAGAIN */
            if (c->limit && p->eof && p->queued == 0) return PUMP_EOF;
            if (p->eof && p->queued == 0 && !p->shut) {
                if (shutdown(dst, SHUT_WR) != 0 && errno != ENOTCONN) return -errno;
                p->shut = true;
            }
            return 0;
        }
    }
    return 1;
}

static unsigned short_rtt_us = SHORT_RTT_US;

/* Gives the connection's short-round-trip sockets big receive buffers while the budget lasts
 * (see BIG_RCVBUF). Best effort: a socket not given one keeps autotuning. */
static void size_buffers(struct conn *c) {
    for (int s = 0; s < (c->oneway ? 1 : 2) && big_sockets < BIG_SOCKETS; s++) {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (getsockopt(c->fd[s], IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || ti.tcpi_rtt == 0 || ti.tcpi_rtt >= short_rtt_us)
            continue;
        int v = BIG_RCVBUF;
        if (setsockopt(c->fd[s], SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) == 0) {
            c->big[s] = true;
            big_sockets++;
        }
    }
}

/* Registers fd[s] for what its directions now wait on: input to read (EOF included), or room
 * to write queued bytes. Errors and hang-ups are reported whatever the mask. */
static int update_interest(struct conn *c, int s) {
    const struct dir *in = &c->dir[s], *out = &c->dir[!s];
    uint32_t want = EPOLLET;
    if (!in->eof && !in->blocked) want |= EPOLLIN;
    if (out->blocked) want |= EPOLLOUT;
    if (want == c->events[s]) return 0;
    struct epoll_event ev = { .events = want, .data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)s };
    /* MOD polls the socket again: readiness that came meanwhile is reported, not lost. */
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd[s], &ev) != 0) return -errno;
    c->events[s] = want;
    return 0;
}

static int socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

/* Why an ADD failed: what went wrong, and the errno behind it (0: none worth printing). */
struct failure {
    const char *what;
    int err;
};

static int fail(struct failure *f, const char *what, int err) {
    f->what = what;
    f->err = err;
    return -1;
}

/* Takes Node's descriptor: our own non-blocking duplicate of a connected TCP socket, or -1.
 * ino (0: unchecked) guards against a descriptor number that Node closed and reused meanwhile:
 * we would relay an unrelated connection. */
static int take_socket(int node_fd, uint64_t ino, struct failure *f) {
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, node_fd, 0);
    if (fd < 0) return fail(f, "pidfd_getfd", errno);
    int proto = 0, type = 0, flags;
    struct stat st;
    socklen_t proto_len = sizeof proto, type_len = sizeof type;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &proto_len) != 0 || proto != IPPROTO_TCP
        || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM)
        fail(f, "not a TCP socket", 0);
    else if (ino != 0 && (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != ino))
        fail(f, "not the socket named", 0);
    else if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) != 0)
        fail(f, "not connected", errno);
    else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        fail(f, "O_NONBLOCK", errno);
    else
        return fd;
    close(fd);
    return -1;
}

static int make_pipe(struct dir *p, struct failure *f) {
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return fail(f, "pipe2", errno);
    p->pipe_r = fds[0];
    p->pipe_w = fds[1];
    fcntl(p->pipe_w, F_SETPIPE_SZ, PIPE_BYTES); /* a bigger pipe means fewer wakeups; optional */
    int size = fcntl(p->pipe_w, F_GETPIPE_SZ);
    if (size <= 0) return fail(f, "F_GETPIPE_SZ", errno);
    p->cap = (size_t)size;
    return 0;
}

static void add_conn(const char *idtext, uint64_t id, const int node_fd[2], const uint64_t ino[2], bool oneway, uint64_t limit) {
    if (lookup(id)) { emit_err(idtext, "duplicate id", 0); return; }
    if (nconns >= MAX_CONNS) { emit_err(idtext, "too many connections", 0); return; }
    if (node_fd[0] == node_fd[1]) { emit_err(idtext, "the same descriptor twice", 0); return; }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) { emit_err(idtext, "out of memory", 0); return; }
    c->id = id;
    c->oneway = oneway || limit > 0;
    c->limit = limit;
    c->fd[0] = c->fd[1] = -1;
    for (int d = 0; d < 2; d++) c->dir[d].pipe_r = c->dir[d].pipe_w = -1;
    struct failure f = { NULL, 0 };
    bool ok = (c->fd[0] = take_socket(node_fd[0], ino[0], &f)) >= 0 && (c->fd[1] = take_socket(node_fd[1], ino[1], &f)) >= 0;
    struct stat sa, sb;
    if (ok && (fstat(c->fd[0], &sa) != 0 || fstat(c->fd[1], &sb) != 0 || sa.st_ino == sb.st_ino)) {
        fail(&f, "the same socket twice", 0);
        ok = false;
    }
    ok = ok && make_pipe(&c->dir[0], &f) == 0 && (c->oneway || make_pipe(&c->dir[1], &f) == 0);
    /* One way: B -> A is Node's. Never read B here, and never shut A's write side. */
    if (c->oneway) c->dir[1].eof = c->dir[1].shut = true;
    for (int s = 0; s < 2 && ok; s++) {
        struct epoll_event ev = {
            .events = EPOLLET, /* the first pumps (below) say what to wait for */
            .data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)s,
        };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd[s], &ev) != 0) {
            fail(&f, "epoll_ctl", errno);
            ok = false;
        }
        c->events[s] = ev.events;
    }
    if (!ok) {
        for (int s = 0; s < 2; s++) {
            if (c->fd[s] >= 0) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd[s], NULL);
            close_fd(&c->fd[s]);
            close_fd(&c->dir[s].pipe_r);
            close_fd(&c->dir[s].pipe_w);
        }
        free(c); /* deregistered above, so no event can name it */
        emit_err(idtext, f.what, f.err);
        return;
    }
    struct conn **b = bucket_of(id);
    c->hash_next = *b;
    *b = c;
    nconns++;
    /* Not for a counted loan: the socket goes back to Node, and a buffer locked for it would
     * outlive the budget (BIG_SOCKETS) that bounds what stalled connections can pin. */
    if (!c->limit) size_buffers(c);
    emit("OK %s", idtext);
    /* Data may be waiting already; pump without waiting for the first edge. */
    mark_ready(c, 0);
    if (!c->oneway) mark_ready(c, 1);
}

/* Strict unsigned decimal: 1..digits characters, no sign, no leading zero, at most max. */
static bool parse_uint(const char *s, uint64_t max, uint64_t *out) {
    size_t len = strlen(s);
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0')) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t digit = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - digit) / 10) return false;
        v = v * 10 + digit;
    }
    if (v > max) return false;
    *out = v;
    return true;
}

static void command(char *line) {
    char *tok[7];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(line, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (n == 7) { n++; break; }
        tok[n++] = t;
    }
    uint64_t id, fd[2], ino[2] = { 0, 0 };
    bool has_id = n >= 2 && parse_uint(tok[1], UINT64_MAX, &id);
    const char *idtext = has_id ? tok[1] : "-";
    bool add = n > 0 && strcmp(tok[0], "ADD") == 0, add1 = n > 0 && strcmp(tok[0], "ADD1") == 0;
    bool addn = n == 7 && strcmp(tok[0], "ADDN") == 0;
    uint64_t limit = 0;
    if (addn && has_id && !parse_uint(tok[6], UINT64_MAX, &limit)) limit = 0;
    if (addn && has_id && limit == 0) {
        emit_err(idtext, "bad count", 0);
        return;
    }
    if ((((n == 4 || n == 6) && (add || add1)) || addn) && has_id) {
        if (!parse_uint(tok[2], INT_MAX, &fd[0]) || !parse_uint(tok[3], INT_MAX, &fd[1])) {
            emit_err(idtext, "bad descriptor", 0);
            return;
        }
        if (n >= 6 && (!parse_uint(tok[4], UINT64_MAX, &ino[0]) || !parse_uint(tok[5], UINT64_MAX, &ino[1])
                       || ino[0] == 0 || ino[1] == 0)) {
            emit_err(idtext, "bad inode", 0);
            return;
        }
        add_conn(idtext, id, (const int[2]){ (int)fd[0], (int)fd[1] }, ino, add1, limit);
    } else if (n == 2 && has_id && strcmp(tok[0], "CUT") == 0) {
        struct conn *c = lookup(id);
        if (!c) emit_err(idtext, "unknown id", 0);
        else finish(c, END_RESET);
    } else {
        emit_err(idtext, "bad command", 0);
    }
}

static bool printable(const char *s) {
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e) return false;
    return true;
}

/* Reads what stdin has, runs its complete lines. Returns false at EOF. */
static bool read_commands(void) {
    static char buf[4096];
    static size_t len;
    static bool discarding; /* inside an over-long line, dropped up to its newline */
    ssize_t n;
    do n = read(STDIN_FILENO, buf + len, sizeof buf - len);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN) return true;
    if (n <= 0) return false;
    len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n') continue;
        buf[i] = '\0';
        char *line = buf + start;
        size_t line_len = i - start;
        start = i + 1;
        if (discarding) { discarding = false; continue; }
        if (line_len > 0 && line[line_len - 1] == '\r') line[--line_len] = '\0';
        if (line_len > MAX_LINE) emit_err("-", "line too long", 0);
        else if (memchr(line, '\0', line_len) || !printable(line)) emit_err("-", "bad command", 0);
        else command(line);
    }
    memmove(buf, buf + start, len - start);
    len -= start;
    if (len > MAX_LINE) { /* no newline within any sane line length: drop the rest of it */
        if (!discarding) emit_err("-", "line too long", 0);
        discarding = true;
        len = 0;
    }
    return true;
}

static void free_dead(void) {
    while (dead_head) {
        struct conn *c = dead_head;
        dead_head = c->dead_next;
        free(c);
    }
}

/* Runs every queued direction once; one whose turn ran out goes back on the queue. */
static void run_ready(void) {
    struct conn *list = ready_head;
    ready_head = NULL;
    while (list) {
        struct conn *c = list;
        list = c->ready_next;
        c->in_ready = false;
        if (c->dead) { free(c); continue; } /* finished while queued: only the queue knew it */
        for (int d = 0; d < 2 && !c->dead; d++) {
            if (!c->dir[d].ready) continue;
            c->dir[d].ready = false;
            int r = pump(c, d);
            if (r < 0) finish(c, END_RESET);
            else if (r == PUMP_LIMIT) finish(c, END_LIMIT);
            else if (r == PUMP_EOF) finish(c, END_EOF);
            else if (r > 0) mark_ready(c, d);
        }
        if (c->dead) continue;
        if (c->dir[0].shut && c->dir[1].shut) { finish(c, END_NORMAL); continue; }
        if (update_interest(c, 0) < 0 || update_interest(c, 1) < 0) finish(c, END_RESET);
    }
}

static void shutdown_all(void) {
    for (size_t b = 0; b < HASH_BUCKETS; b++)
        while (buckets[b]) finish(buckets[b], END_RESET);
}

/* A failed pidfd_getfd at start (no permission, no kernel support) beats failing every ADD. */
static int probe_getfd(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (!dir) return errno;
    int err = ENOENT;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        uint64_t fd;
        if (!parse_uint(e->d_name, INT_MAX, &fd)) continue;
        int dup = (int)syscall(SYS_pidfd_getfd, pidfd, (int)fd, 0);
        if (dup >= 0) { close(dup); err = 0; break; }
        err = errno;
        if (err != EBADF) break; /* EBADF: closed meanwhile, try another */
    }
    closedir(dir);
    return err;
}

static void raise_fd_limit(void) {
    struct rlimit want = { .rlim_cur = FDS_NEEDED, .rlim_max = FDS_NEEDED }, have;
    if (getrlimit(RLIMIT_NOFILE, &have) != 0 || have.rlim_cur >= FDS_NEEDED) return;
    if (have.rlim_max > FDS_NEEDED) want.rlim_max = have.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) != 0) { /* no CAP_SYS_RESOURCE: what the hard limit allows */
        have.rlim_cur = have.rlim_max;
        setrlimit(RLIMIT_NOFILE, &have);
    }
}

int main(int argc, char **argv) {
    uint64_t pid;
    if (argc != 2 || !parse_uint(argv[1], INT_MAX, &pid) || pid == 0) {
        fprintf(stderr, "usage: airlock-splice PID\n");
        return 2;
    }
    const char *rtt_env = getenv("AIRLOCK_SPLICE_SHORT_RTT_US");
    uint64_t rtt_us;
    if (rtt_env && parse_uint(rtt_env, UINT32_MAX, &rtt_us)) short_rtt_us = (unsigned)rtt_us;
    signal(SIGPIPE, SIG_IGN); /* a write to a closed socket or to a gone Node is an error, not death */
    int flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK)) fcntl(STDOUT_FILENO, F_SETFL, flags & ~O_NONBLOCK);
    raise_fd_limit();
    pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pidfd < 0) {
        fprintf(stderr, "airlock-splice: pidfd_open %llu: %s\n", (unsigned long long)pid, strerror(errno));
        return 1;
    }
    int err = probe_getfd((pid_t)pid);
    if (err != 0) {
        fprintf(stderr, "airlock-splice: pidfd_getfd on %llu: %s\n", (unsigned long long)pid, strerror(err));
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        fprintf(stderr, "airlock-splice: epoll_create1: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event in = { .events = EPOLLIN, .data.u64 = 0 };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &in) != 0) {
        fprintf(stderr, "airlock-splice: epoll stdin: %s\n", strerror(errno));
        return 1;
    }
    emit("READY");
    bool running = true;
    while (running) {
        struct epoll_event evs[MAX_EVENTS];
        int n = epoll_wait(epfd, evs, MAX_EVENTS, ready_head ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "airlock-splice: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n && running; i++) {
            uint64_t data = evs[i].data.u64;
            uint32_t ev = evs[i].events;
            if (data == 0) {
                running = read_commands();
                continue;
            }
            struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)1);
            int side = (int)(data & 1);
            if (c->dead) continue;
            if ((ev & EPOLLERR) && socket_error(c->fd[side]) != 0) { finish(c, END_RESET); continue; }
            if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) mark_ready(c, side);
            if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) mark_ready(c, !side);
        }
        run_ready();
        free_dead(); /* after the batch: no event still in hand can name these */
    }
    shutdown_all();
    run_ready(); /* frees connections that were queued when they were finished */
    free_dead();
    return running ? 1 : 0;
}
