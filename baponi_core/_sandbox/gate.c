/*
 * The gate bwrap is started through when the sandbox has cgroups: started by the server
 * as `gate FD BWRAP ARGS...`, it waits until the server has moved it into the sandbox's
 * cgroups and says so (one byte on descriptor FD), then executes bwrap in its place.
 * bwrap makes the sandbox's cgroup namespace as it starts, from the cgroups it is in:
 * rooted there, the sandbox's /proc/self/cgroup reads "/" and names nothing of the host.
 *
 * If the descriptor ends without the byte (the server failed, or went away), bwrap is
 * never started.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    char *end;
    errno = 0;
    long fd = strtol(argv[1], &end, 10);
    if (errno || *end || end == argv[1] || fd < 0 || fd > 1 << 20)
        return 2;
    char byte;
    ssize_t n;
    do
        n = read((int)fd, &byte, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        return 3;
    close((int)fd);
    execv(argv[2], argv + 2);
    return 127;
}
