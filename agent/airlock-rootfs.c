/*
 * airlock-rootfs: host-side helper that builds and tears down a sandbox's root filesystem
 * with direct mount(2)/umount2(2) calls, in one short-lived process.
 *
 * Why not mount(8): each mount(8) run costs ~2.5 ms (dynamic loading, libmount parsing
 * /proc/self/mountinfo); a sandbox needs two mounts to start and two to stop, on the cold
 * path that Airlock benchmarks against a raw `runc run`. Node has no mount(2).
 *
 *   airlock-rootfs mount LAYER ROOTFS LOWERS SIZE_MIB INODES UID
 *       tmpfs (size and inode bound = the disk quota) on LAYER, LAYER/upper owned by UID,
 *       LAYER/work, then overlayfs LOWERS (read-only, "top:...:bottom") + LAYER/upper on ROOTFS.
 *   airlock-rootfs umount PATH...
 *       unmounts each PATH that is a mount point (lazily if busy); a PATH that is not
 *       mounted is not an error.
 *
 * Arguments come from the engine, never from a sandbox. Exit status 0 on success, 1 with one
 * line on stderr otherwise; a failed `mount` undoes its own tmpfs.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *what, const char *path) {
    fprintf(stderr, "airlock-rootfs: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *out) {
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || !end || *end || end == s || v > max) return -1;
    *out = v;
    return 0;
}

static int has_option_syntax(const char *p, const char *forbidden) {
    /* overlayfs splits its options on ',' and its layer lists on ':'. */
    return strpbrk(p, forbidden) != NULL;
}

static int do_mount(char **argv) {
    const char *layer = argv[0], *rootfs = argv[1], *lower = argv[2];
    unsigned long size_mib, inodes, uid;
    if (parse_ulong(argv[3], 1UL << 24, &size_mib) || size_mib == 0 ||
        parse_ulong(argv[4], 1UL << 32, &inodes) || inodes == 0 ||
        parse_ulong(argv[5], 4294967294UL, &uid)) {
        fprintf(stderr, "airlock-rootfs: bad numeric argument\n");
        return 1;
    }
    if (has_option_syntax(layer, ",:\\") || has_option_syntax(lower, ",\\") || lower[0] != '/') {
        fprintf(stderr, "airlock-rootfs: paths must not contain , : or \\\n");
        return 1;
    }
    char opts[256];
    snprintf(opts, sizeof opts, "size=%lum,nr_inodes=%lu,mode=0700", size_mib, inodes);
    if (mount("airlock-layer", layer, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0) return fail("mount tmpfs on", layer);

    char upper[PATH_MAX], work[PATH_MAX];
    char ovl[3 * PATH_MAX + 64];
    if (snprintf(upper, sizeof upper, "%s/upper", layer) >= (int)sizeof upper ||
        snprintf(work, sizeof work, "%s/work", layer) >= (int)sizeof work) {
        errno = ENAMETOOLONG;
        goto undo;
    }
    /* The merged root takes the upper dir's owner: root inside the sandbox must own "/". */
    if (mkdir(upper, 0755) != 0 || chown(upper, (uid_t)uid, (gid_t)uid) != 0 || mkdir(work, 0700) != 0) goto undo;
    if (snprintf(ovl, sizeof ovl, "lowerdir=%s,upperdir=%s,workdir=%s,volatile", lower, upper, work) >= (int)sizeof ovl) {
        errno = ENAMETOOLONG;
        goto undo;
    }
    if (mount("airlock-rootfs", rootfs, "overlay", 0, ovl) != 0) goto undo;
    return 0;
undo: {
        int saved = errno;
        umount2(layer, MNT_DETACH);
        errno = saved;
        return fail("prepare layer", layer);
    }
}

static int do_umount(int argc, char **argv) {
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        if (umount2(argv[i], UMOUNT_NOFOLLOW) == 0) continue;
        if (errno == EINVAL || errno == ENOENT) continue; /* not a mount point, or gone */
        if (errno == EBUSY && umount2(argv[i], MNT_DETACH | UMOUNT_NOFOLLOW) == 0) continue;
        rc = fail("umount", argv[i]);
    }
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 8 && strcmp(argv[1], "mount") == 0) return do_mount(argv + 2);
    if (argc >= 3 && strcmp(argv[1], "umount") == 0) return do_umount(argc - 2, argv + 2);
    fprintf(stderr, "usage: airlock-rootfs mount LAYER ROOTFS LOWERS SIZE_MIB INODES UID\n"
                    "       airlock-rootfs umount PATH...\n");
    return 2;
}
