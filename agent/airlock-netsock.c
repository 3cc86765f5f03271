/*
 * airlock-netsock: sets IP_TRANSPARENT on a listening socket the engine passes as an inherited
 * descriptor. Node cannot call setsockopt(2), and TPROXY only hands connections to transparent
 * sockets; the option lives on the shared socket, so setting it here sticks after we exit.
 *
 *   airlock-netsock transparent FD
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc != 3 || strcmp(argv[1], "transparent") != 0) {
        fprintf(stderr, "usage: airlock-netsock transparent FD\n");
        return 2;
    }
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
    return 0;
}
