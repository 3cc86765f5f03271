/*
 * airlock-netsock: sets socket options Node cannot on the egress proxy's listening socket, which
 * the engine passes as an inherited descriptor. The options live on the shared socket, so they
 * stick after we exit.
 *
 *   airlock-netsock transparent FD [--congestion NAME[,NAME...]]
 *
 * IP_TRANSPARENT: TPROXY only hands connections to transparent sockets.
 * --congestion: the first of the named TCP congestion controls the kernel accepts (printed on
 * stdout). Connections accepted from the listener inherit it, so it governs the sandbox-facing
 * leg of every proxied connection. That leg never leaves the machine: a pacing algorithm such as
 * BBR, a good host default for the internet side, only costs a timer per burst there (about two
 * thirds of the relay's CPU on a download here). None accepted is a warning, not a failure.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define CA_NAME_MAX 16 /* the kernel's TCP_CA_NAME_MAX, not in the user headers */

static int usage(void) {
    fprintf(stderr, "usage: airlock-netsock transparent FD [--congestion NAME[,NAME...]]\n");
    return 2;
}

/* Tries each comma-separated name in turn; 0 when one was set. */
static int set_congestion(int fd, const char *list) {
    char names[256];
    if (strlen(list) >= sizeof names) {
        fprintf(stderr, "airlock-netsock: congestion list too long\n");
        return -1;
    }
    strcpy(names, list);
    for (char *save = NULL, *name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        if (*name == '\0' || strlen(name) >= CA_NAME_MAX) continue;
        if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, (socklen_t)strlen(name)) == 0) {
            printf("%s\n", name);
            return 0;
        }
        fprintf(stderr, "airlock-netsock: TCP_CONGESTION %s: %s\n", name, strerror(errno));
    }
    return -1;
}

int main(int argc, char **argv) {
    if ((argc != 3 && argc != 5) || strcmp(argv[1], "transparent") != 0) return usage();
    if (argc == 5 && strcmp(argv[3], "--congestion") != 0) return usage();
    char *end = NULL;
    long fd = strtol(argv[2], &end, 10);
    if (*argv[2] == '\0' || *end != '\0' || fd < 3 || fd > 65535) {
        fprintf(stderr, "airlock-netsock: bad descriptor %s\n", argv[2]);
        return 2;
    }
    struct stat st;
    if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "airlock-netsock: descriptor %ld is not a socket\n", fd);
        return 1;
    }
    int on = 1;
    if (setsockopt((int)fd, SOL_IP, IP_TRANSPARENT, &on, sizeof on) != 0) {
        fprintf(stderr, "airlock-netsock: IP_TRANSPARENT: %s\n", strerror(errno));
        return 1;
    }
    if (argc == 5 && set_congestion((int)fd, argv[4]) != 0)
        fprintf(stderr, "airlock-netsock: warning: none of the congestion controls %s is available; the host default stays\n", argv[4]);
    return 0;
}
