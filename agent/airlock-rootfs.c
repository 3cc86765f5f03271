/*
 * airlock-rootfs: host-side helper that builds and tears down a sandbox's root filesystem and
 * attaches volumes, with direct system calls, in one short-lived process.
 *
 * Why not mount(8)/losetup(8): each run of those costs ~2.5 ms (dynamic loading, libmount
 * parsing /proc/self/mountinfo); a sandbox needs a loop device and two mounts to start and as
 * many to stop, on the cold path that Airlock benchmarks against a raw `runc run`.
 *
 * The writable layer is a file system of its own: a sparse image file holding an ext4 file
 * system of exactly the disk quota, on a loop device. Its size is the quota (ENOSPC past it),
 * its inode count is fixed at format time (inode exhaustion is bounded), and its pages are
 * disk blocks, not memory (the loop device does direct I/O, so nothing is cached twice).
 *
 *   airlock-rootfs mount LAYER ROOTFS LOWERS BLANK IMAGE UID
 *       makes IMAGE, a sparse file of BLANK's size, attaches it to a free loop device
 *       (auto-clear: the device is released when its file system is unmounted), writes the
 *       formatted empty file system BLANK to the device (only its data extents), mounts it on
 *       LAYER, makes LAYER/upper (owned by UID) and LAYER/work, then overlayfs LOWERS
 *       (read-only, "top:...:bottom") + LAYER/upper on ROOTFS.
 *   airlock-rootfs attach IMAGE MOUNTPOINT
 *       mounts a volume's (journaled ext4) image on MOUNTPOINT through a loop device.
 *   airlock-rootfs umount PATH... [--drop PATH...]
 *       unmounts each PATH that is a mount point (lazily if busy); a PATH that is not mounted is
 *       not an error. A PATH after --drop is a file system whose contents are being thrown away:
 *       when it holds much unwritten data it is shut down first, so unmounting writes little.
 *
 * Arguments come from the engine, never from a sandbox. Exit status 0 on success, 1 with one
 * line on stderr otherwise; a failed `mount` or `attach` undoes what it did.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define EXT4_MAGIC 0xEF53
/* FS_IOC_SHUTDOWN / EXT4_IOC_SHUTDOWN and "do not even flush the log". */
#define FS_SHUTDOWN _IOR('X', 125, uint32_t)
#define FS_SHUTDOWN_NOLOGFLUSH 0x2
#define LOOP_BLOCK_SIZE 4096
#define COPY_CHUNK (1 << 20)

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

/* Writes [from, to) of `in` to the same offsets of `out`; holes inside the range are written as zeros. */
static int copy_range(int in, int out, void *buf, off_t from, off_t to) {
    for (off_t at = from; at < to;) {
        size_t want = (size_t)(to - at) < COPY_CHUNK ? (size_t)(to - at) : COPY_CHUNK;
        memset(buf, 0, want);
        if (pread(in, buf, want, at) < 0) return -1;
        ssize_t put = pwrite(out, buf, want, at);
        if (put != (ssize_t)want) {
            if (put >= 0) errno = EIO;
            return -1;
        }
        at += (off_t)want;
    }
    return 0;
}

/*
 * Copies the data extents of `in` (a sparse image) to `out` (a block device of its size) at the
 * same offsets; holes are skipped (the device reads them as zeros), except short gaps between
 * extents, written as zeros so a fresh file system (a few KiB of metadata scattered over its
 * first blocks) costs two writes, not six. Extents of a 4 KiB-block file system are whole
 * 4 KiB pages of the device: no read-modify-write.
 */
#define MERGE_GAP (64 * 1024)
static int copy_sparse(int in, int out) {
    struct stat st;
    if (fstat(in, &st) != 0) return -1;
    void *buf = NULL;
    if (posix_memalign(&buf, LOOP_BLOCK_SIZE, COPY_CHUNK) != 0) {
        errno = ENOMEM;
        return -1;
    }
    off_t pos = 0, run_from = -1, run_to = -1;
    int rc = -1;
    while (pos < st.st_size) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break; /* only a hole is left */
            goto out;
        }
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0) goto out;
        if (data % LOOP_BLOCK_SIZE) { errno = EINVAL; goto out; }
        /* The last extent may end mid-block; round up (the image's size is set below). */
        off_t end = (hole + LOOP_BLOCK_SIZE - 1) / LOOP_BLOCK_SIZE * LOOP_BLOCK_SIZE;
        if (run_from >= 0 && data - run_to <= MERGE_GAP) {
            run_to = end;
        } else {
            if (run_from >= 0 && copy_range(in, out, buf, run_from, run_to) != 0) goto out;
            run_from = data;
            run_to = end;
        }
        pos = hole;
    }
    if (run_from >= 0 && copy_range(in, out, buf, run_from, run_to) != 0) goto out;
    rc = 0;
out:
    free(buf);
    return rc;
}

/*
 * Binds `backing` to a free loop device; returns an open fd on the device and writes its path to
 * `dev`. Auto-clear: the kernel releases the device when the last user (the mount) goes away,
 * so no device outlives its file system. Direct I/O: the image's pages are not cached a second
 * time (they would be charged to the sandbox's memory cgroup).
 */
static int loop_attach(int backing, const char *name, char *dev, size_t devlen) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return -1;
    int direct = 1;
    for (int attempt = 0; attempt < 100; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) break;
        snprintf(dev, devlen, "/dev/loop%d", n);
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) continue; /* the node is still being created */
            break;
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (uint32_t)backing;
        cfg.block_size = LOOP_BLOCK_SIZE;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (direct ? LO_FLAGS_DIRECT_IO : 0);
        snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", name);
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
            close(ctl);
            return fd;
        }
        int saved = errno;
        close(fd);
        if (saved == EBUSY) continue; /* another process took this device first */
        if (saved == EINVAL && direct) { direct = 0; continue; } /* backing file system without O_DIRECT */
        errno = saved;
        break;
    }
    int saved = errno;
    close(ctl);
    errno = saved;
    return -1;
}

/*
 * Attaches `image` and mounts its ext4 on `target`; the loop fd is closed again (the mount holds
 * the device). With `blank_fd` >= 0 the image is empty and the file system is written first,
 * through the device: see do_mount.
 */
static int mount_image(int image_fd, const char *image, const char *target, const char *options, int blank_fd) {
    char dev[64];
    int loop = loop_attach(image_fd, image, dev, sizeof dev);
    if (loop < 0) return fail("attach a loop device to", image);
    if (blank_fd >= 0 && copy_sparse(blank_fd, loop) != 0) {
        int saved = errno;
        close(loop);
        errno = saved;
        return fail("write the empty file system to", dev);
    }
    int rc = mount(dev, target, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME, options);
    int saved = errno;
    close(loop); /* without a mount, this last close releases the device (auto-clear) */
    errno = saved;
    return rc == 0 ? 0 : fail("mount ext4 on", target);
}

static int do_mount(char **argv) {
    const char *layer = argv[0], *rootfs = argv[1], *lower = argv[2], *blank = argv[3], *image = argv[4];
    unsigned long uid;
    if (parse_ulong(argv[5], 4294967294UL, &uid)) {
        fprintf(stderr, "airlock-rootfs: bad numeric argument\n");
        return 1;
    }
    if (has_option_syntax(layer, ",:\\") || has_option_syntax(lower, ",\\") || lower[0] != '/') {
        fprintf(stderr, "airlock-rootfs: paths must not contain , : or \\\n");
        return 1;
    }
    char upper[PATH_MAX], work[PATH_MAX];
    char ovl[3 * PATH_MAX + 64];
    if (snprintf(upper, sizeof upper, "%s/upper", layer) >= (int)sizeof upper ||
        snprintf(work, sizeof work, "%s/work", layer) >= (int)sizeof work ||
        snprintf(ovl, sizeof ovl, "lowerdir=%s,upperdir=%s,workdir=%s,volatile", lower, upper, work) >= (int)sizeof ovl) {
        errno = ENAMETOOLONG;
        return fail("prepare layer", layer);
    }

    int in = open(blank, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fail("open", blank);
    struct stat bst;
    /* O_EXCL: never write through a file (or link) that is already there. */
    int out = open(image, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0) {
        close(in);
        return fail("create", image);
    }
    if (fstat(in, &bst) != 0 || ftruncate(out, bst.st_size) != 0) {
        int saved = errno;
        close(in);
        close(out);
        unlink(image);
        errno = saved;
        return fail("size", image);
    }
    /*
     * The blank's few metadata blocks go through the loop device, into its page cache: the
     * mount and the sandbox's first file operations then read them from memory. Written to the
     * image file instead, each would be a synchronous disk read (the device does direct I/O).
     * The kernel writes them back to the image in the background.
     * No journal, no background inode table zeroing (the image's holes read as zeros), no
     * cache flushes (nobarrier: each would be an fsync of the image on the host, and the
     * layer does not outlive a crash anyway).
     */
    int mounted = mount_image(out, image, layer, "noinit_itable,nobarrier", in);
    close(in);
    close(out);
    if (mounted != 0) {
        unlink(image);
        return 1;
    }
    /* The merged root takes the upper dir's owner: root inside the sandbox must own "/". */
    if (chmod(layer, 0700) != 0 || mkdir(upper, 0755) != 0 || chown(upper, (uid_t)uid, (gid_t)uid) != 0 ||
        mkdir(work, 0700) != 0) goto undo;
    if (mount("airlock-rootfs", rootfs, "overlay", 0, ovl) != 0) goto undo;
    return 0;
undo: {
        int e = errno;
        umount2(layer, MNT_DETACH);
        unlink(image);
        errno = e;
        return fail("prepare layer", layer);
    }
}

static int do_attach(char **argv) {
    const char *image = argv[0], *target = argv[1];
    int fd = open(image, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return fail("open", image);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return fail("attach (not a regular file)", image);
    }
    int rc = mount_image(fd, image, target, "noinit_itable", -1);
    close(fd);
    return rc;
}

/* Blocks of new data an ext4 holds in memory, not yet written (delayed allocation); 0 if unknown. */
static unsigned long pending_blocks(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0 || major(st.st_dev) != 7) return 0; /* only loop devices are ours */
    char path[96], text[32];
    snprintf(path, sizeof path, "/sys/fs/ext4/loop%u/delayed_allocation_blocks", minor(st.st_dev));
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return 0;
    ssize_t n = read(f, text, sizeof text - 1);
    close(f);
    if (n <= 0) return 0;
    text[n] = 0;
    return strtoul(text, NULL, 10);
}

/*
 * Unmounting writes back what the file system holds in memory, useless for contents being
 * thrown away. Past DROP_SHUTDOWN_BLOCKS of it, the file system is shut down first so that
 * nothing is written. Not always: the kernel logs every shutdown at KERN_ALERT, to the console.
 */
#define DROP_SHUTDOWN_BLOCKS (64UL * 1024 * 1024 / 4096)
static void drop_contents(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    struct statfs sf;
    if (fstatfs(fd, &sf) == 0 && sf.f_type == EXT4_MAGIC && pending_blocks(fd) > DROP_SHUTDOWN_BLOCKS) {
        uint32_t how = FS_SHUTDOWN_NOLOGFLUSH;
        (void)ioctl(fd, FS_SHUTDOWN, &how);
    }
    close(fd);
}

static int is_mount_point(const char *path) {
    struct stat self, parent;
    char up[PATH_MAX];
    if (snprintf(up, sizeof up, "%s/..", path) >= (int)sizeof up) return 0;
    if (lstat(path, &self) != 0 || !S_ISDIR(self.st_mode) || stat(up, &parent) != 0) return 0;
    return self.st_dev != parent.st_dev;
}

static int do_umount(int argc, char **argv) {
    int rc = 0, drop = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--drop") == 0) { drop = 1; continue; }
        if (drop && is_mount_point(argv[i])) drop_contents(argv[i]);
        if (umount2(argv[i], UMOUNT_NOFOLLOW) == 0) continue;
        if (errno == EINVAL || errno == ENOENT) continue; /* not a mount point, or gone */
        if (errno == EBUSY && umount2(argv[i], MNT_DETACH | UMOUNT_NOFOLLOW) == 0) continue;
        rc = fail("umount", argv[i]);
    }
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 8 && strcmp(argv[1], "mount") == 0) return do_mount(argv + 2);
    if (argc == 4 && strcmp(argv[1], "attach") == 0) return do_attach(argv + 2);
    if (argc >= 3 && strcmp(argv[1], "umount") == 0) return do_umount(argc - 2, argv + 2);
    fprintf(stderr, "usage: airlock-rootfs mount LAYER ROOTFS LOWERS BLANK IMAGE UID\n"
                    "       airlock-rootfs attach IMAGE MOUNTPOINT\n"
                    "       airlock-rootfs umount PATH... [--drop PATH...]\n");
    return 2;
}
