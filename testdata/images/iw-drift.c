/*
 * iw-drift: runs a program the way exec-drift attacks do, for imagewarden's
 * tests (agent/tests/exec_drift.rs). Built statically into the test images
 * by agent/tests/support/containerd.rs.
 *
 *   iw-drift memfd SRC ARGV0 [ARGS...]
 *       copies SRC into a memfd ("iw-drift") and execveat()s it (AT_EMPTY_PATH)
 *   iw-drift unlinked SRC COPY ARGV0 [ARGS...]
 *       copies SRC to COPY, opens it, unlinks COPY, execveat()s the fd
 *
 * Exit status 127 and a message on stderr when a step fails; on success the
 * process becomes ARGV0 of SRC (busybox: the applet named ARGV0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

static int copy(const char *src, int out) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        char *p = buf;
        while (n > 0) {
            ssize_t w = write(out, p, (size_t)n);
            if (w < 0) { close(in); return -1; }
            p += w;
            n -= w;
        }
    }
    close(in);
    return n < 0 ? -1 : 0;
}

static int fail(const char *what) {
    fprintf(stderr, "iw-drift: %s: %s\n", what, strerror(errno));
    return 127;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "memfd") == 0) {
        int fd = (int)syscall(SYS_memfd_create, "iw-drift", 0);
        if (fd < 0) return fail("memfd_create");
        if (copy(argv[2], fd) < 0) return fail("copy into the memfd");
        syscall(SYS_execveat, fd, "", &argv[3], environ, AT_EMPTY_PATH);
        return fail("execveat(memfd)");
    }
    if (argc >= 5 && strcmp(argv[1], "unlinked") == 0) {
        int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
        if (out < 0) return fail("create the copy");
        if (copy(argv[2], out) < 0) return fail("copy");
        close(out);
        int fd = open(argv[3], O_RDONLY | O_CLOEXEC);
        if (fd < 0) return fail("open the copy");
        if (unlink(argv[3]) < 0) return fail("unlink the copy");
        syscall(SYS_execveat, fd, "", &argv[4], environ, AT_EMPTY_PATH);
        return fail("execveat(unlinked)");
    }
    fprintf(stderr, "usage: iw-drift memfd SRC ARGV0 [ARGS...] | unlinked SRC COPY ARGV0 [ARGS...]\n");
    return 2;
}
