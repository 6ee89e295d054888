/*
 * The sandbox's init: pid 1 of every sandbox, started by bwrap once the sandbox is set
 * up, before any request exists. It starts the processes the server asks for, each with
 * the stdin, stdout and stderr the server passes, and reports their ends. It runs no code
 * of its own choosing; when the server goes away it exits, and the kernel ends every
 * process of the sandbox with it.
 *
 * Before anything else it lowers its own resource limits to those given on its command
 * line, for good: every process of the sandbox inherits them.
 *
 * Given the path of the egress proxy's unix socket (a sandbox whose network policy lets
 * it out), it forks the forwarder first: a process that listens on the sandbox's own
 * loopback, 127.0.0.1:3128, and relays each connection to that socket, one child per
 * connection. It decides nothing: the proxy, outside, judges every connection. Sandboxed
 * code may kill it, or talk to the socket itself, and gains nothing by either.
 *
 * It talks to the server over one SOCK_SEQPACKET socket (its only descriptor besides
 * 0-2), one message per datagram, native byte order (both ends run on the same host):
 *
 *   server -> agent
 *     SPAWN   u32 type=1, u32 id, u32 argc, u32 envc, u32 flags, u32 zero,
 *             u64 cpu_seconds (0: none), then cwd, argv[argc], env[envc] as
 *             NUL-terminated strings,
 *             with exactly three descriptors (stdin, stdout, stderr) as SCM_RIGHTS
 *     SIGNAL  u32 type=2, u32 id, u32 signal, u32 group (1: the process's group)
 *             flags: LAST (1), the sandbox ends with this process: once it has
 *             been reported, the agent exits, and the kernel ends what is left
 *   agent -> server: u32 type, u32 id, i32 value, u32 zero
 *     READY   type=1, id=0, value=PROTOCOL        once, at start
 *     STARTED type=2, value=pid (in the sandbox)  the program was executed
 *     FAILED  type=3, value=errno                 fork, chdir or exec failed
 *     EXITED  type=4, value=wait status           the process ended
 *
 * Only the server holds the other end, so what arrives is trusted; it is still checked,
 * and anything malformed ends the sandbox (exit 2) rather than being guessed at. As pid 1
 * the agent ignores every signal sent from inside the sandbox (it installs no handler),
 * and it is not dumpable, so sandboxed code can neither kill it nor read its memory or
 * descriptors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTOCOL 1
#define CONTROL 3
#define MAX_MESSAGE (256 * 1024)
#define MAX_STRINGS 8192
#define MAX_PROCESSES 65536
#define PROXY_PORT 3128
#define RELAY_CHUNK 65536

enum { SPAWN = 1, SIGNAL = 2 };
enum { LAST = 1 };
enum { READY = 1, STARTED = 2, FAILED = 3, EXITED = 4 };

struct spawn {
    uint32_t type, id, argc, envc, flags, zero;
    uint64_t cpu_seconds;
};
struct signal_request {
    uint32_t type, id, signal, group;
};
struct event {
    uint32_t type, id;
    int32_t value;
    uint32_t zero;
};
struct process {
    uint32_t id, flags;
    pid_t pid;
};

static char message[MAX_MESSAGE + 1];
static char *args[MAX_STRINGS + 1], *envs[MAX_STRINGS + 1];
static struct process processes[MAX_PROCESSES];
static size_t running;

static void fail(void) { _exit(2); }

static void report(uint32_t type, uint32_t id, int32_t value) {
    struct event e = {type, id, value, 0};
    while (send(CONTROL, &e, sizeof e, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            _exit(0); /* the server is gone: end the sandbox */
    }
}

static struct process *find(uint32_t id) {
    for (size_t i = 0; i < running; i++)
        if (processes[i].id == id)
            return &processes[i];
    return NULL;
}

/* Point each of ``into[0..count)`` at the next NUL-terminated string from ``*at``. */
static int split(char **at, char *end, char **into, uint32_t count) {
    for (uint32_t i = 0; i < count; i++) {
        char *nul = memchr(*at, '\0', (size_t)(end - *at));
        if (nul == NULL)
            return -1;
        into[i] = *at;
        *at = nul + 1;
    }
    into[count] = NULL;
    return 0;
}

static void child(int fds[3], char *cwd, char **argv, char **env, uint64_t cpu, int err) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0)
            goto out;
    if (chdir(cwd) < 0)
        goto out;
    struct rlimit limit;
    if (cpu > 0 && getrlimit(RLIMIT_CPU, &limit) == 0) {
        if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < cpu)
            cpu = limit.rlim_max; /* only ever lowered */
        limit.rlim_cur = limit.rlim_max = cpu;
        if (setrlimit(RLIMIT_CPU, &limit) < 0)
            goto out;
    }
    environ = env;
    execvp(argv[0], argv);
out:;
    int e = errno;
    while (write(err, &e, sizeof e) < 0 && errno == EINTR) {
    }
    _exit(127);
}

static void spawn(ssize_t size, int fds[3]) {
    struct spawn head;
    if ((size_t)size < sizeof head)
        fail();
    memcpy(&head, message, sizeof head);
    if (head.argc < 1 || head.argc > MAX_STRINGS || head.envc > MAX_STRINGS ||
        (head.flags & ~LAST) != 0 || head.zero != 0)
        fail();
    if (head.id == 0 || find(head.id) != NULL || running == MAX_PROCESSES)
        fail();
    char *at = message + sizeof head, *end = message + size, *cwd[2];
    if (split(&at, end, cwd, 1) < 0 || split(&at, end, args, head.argc) < 0 ||
        split(&at, end, envs, head.envc) < 0 || at != end)
        fail();

    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        report(FAILED, head.id, errno);
        return;
    }
    pid_t pid = fork();
    if (pid == 0)
        child(fds, cwd[0], args, envs, head.cpu_seconds, pipefd[1]);
    int e = errno;
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        report(FAILED, head.id, e);
        return;
    }
    ssize_t got;
    do
        got = read(pipefd[0], &e, sizeof e);
    while (got < 0 && errno == EINTR);
    close(pipefd[0]);
    if (got == sizeof e) { /* it never ran: its exit is reaped, not reported */
        report(FAILED, head.id, e);
        return;
    }
    processes[running++] = (struct process){head.id, head.flags, pid};
    report(STARTED, head.id, pid);
}

static void signal_process(ssize_t size) {
    struct signal_request request;
    if ((size_t)size != sizeof request)
        fail();
    memcpy(&request, message, sizeof request);
    if (request.signal == 0 || request.signal >= 65)
        fail();
    struct process *p = find(request.id);
    if (p != NULL) /* one that has ended already is no error */
        kill(request.group ? -p->pid : p->pid, (int)request.signal);
}

static void receive(void) {
    char control[CMSG_SPACE(3 * sizeof(int))];
    struct iovec io = {message, MAX_MESSAGE};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof control};
    ssize_t size = recvmsg(CONTROL, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (size < 0) {
        if (errno == EINTR || errno == EAGAIN)
            return;
        _exit(0);
    }
    if (size == 0)
        _exit(0); /* the server closed its end: the sandbox is over */
    if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        fail();
    int fds[3], count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            fail();
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (count + n > 3)
            fail();
        memcpy(fds + count, CMSG_DATA(c), n * sizeof(int));
        count += (int)n;
    }
    uint32_t type;
    if ((size_t)size < sizeof type)
        fail();
    memcpy(&type, message, sizeof type);
    if (type == SPAWN && count == 3) {
        spawn(size, fds);
        for (int i = 0; i < 3; i++)
            close(fds[i]);
    } else if (type == SIGNAL && count == 0) {
        signal_process(size);
    } else {
        fail();
    }
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < running; i++) {
            if (processes[i].pid == pid) {
                report(EXITED, processes[i].id, status);
                if (processes[i].flags & LAST)
                    _exit(0);
                processes[i] = processes[--running];
                break;
            }
        }
    }
}

/* Copy what ``from`` has to ``to``: 1 when some was, 0 at its end, -1 on an error. */
static int pump(int from, int to) {
    static char buffer[RELAY_CHUNK];
    ssize_t got = read(from, buffer, sizeof buffer);
    if (got < 0)
        return errno == EINTR ? 1 : -1;
    if (got == 0)
        return 0;
    for (ssize_t done = 0; done < got;) {
        ssize_t put = write(to, buffer + done, (size_t)(got - done));
        if (put < 0 && errno != EINTR)
            return -1;
        if (put > 0)
            done += put;
    }
    return 1;
}

/* Both ways until both have ended, each end passed on as a half-close. */
static void relay(int client, int proxy) {
    int ends[2] = {client, proxy};
    struct pollfd watch[2] = {{client, POLLIN, 0}, {proxy, POLLIN, 0}};
    int open = 2;
    while (open > 0) {
        if (poll(watch, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        for (int i = 0; i < 2; i++) {
            if (watch[i].fd < 0 || watch[i].revents == 0)
                continue;
            int moved = pump(ends[i], ends[1 - i]);
            if (moved < 0)
                return;
            if (moved == 0) {
                shutdown(ends[1 - i], SHUT_WR);
                watch[i].fd = -1;
                open--;
            }
        }
    }
}

static void forward_one(int client, const char *path) {
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    strncpy(to.sun_path, path, sizeof to.sun_path - 1);
    int proxy = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (proxy >= 0 && connect(proxy, (struct sockaddr *)&to, sizeof to) == 0)
        relay(client, proxy);
    _exit(0);
}

/* The forwarder: never returns. Its children are reaped by the kernel (SIGCHLD ignored). */
static void forward(const char *path) {
    signal(SIGCHLD, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int yes = 1;
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(PROXY_PORT),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) < 0 ||
        bind(listener, (struct sockaddr *)&at, sizeof at) < 0 || listen(listener, 128) < 0)
        _exit(2);
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0)
            continue; /* EINTR, or out of descriptors for now */
        pid_t pid = fork();
        if (pid == 0) {
            close(listener);
            forward_one(client, path);
        }
        close(client); /* refused when no process could be made for it */
    }
}

/* Lower a limit for good (soft and hard): every process started later inherits it. */
static int limit(int resource, const char *text) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0' || end == text)
        return -1;
    struct rlimit both = {(rlim_t)value, (rlim_t)value};
    return value == 0 && resource == RLIMIT_DATA ? 0 : setrlimit(resource, &both);
}

/* init CONTROL-FD CORE FSIZE NOFILE DATA [EGRESS-SOCKET]
 * (DATA 0: none, the cgroup bounds memory) */
int main(int argc, char **argv) {
    if ((argc != 6 && argc != 7) || limit(RLIMIT_CORE, argv[2]) < 0 || limit(RLIMIT_FSIZE, argv[3]) < 0 ||
        limit(RLIMIT_NOFILE, argv[4]) < 0 || limit(RLIMIT_DATA, argv[5]) < 0)
        return 2;
    int control = atoi(argv[1]);
    if (control != CONTROL && (dup2(control, CONTROL) < 0 || close(control) < 0))
        return 2;
    if (syscall(SYS_close_range, CONTROL + 1, ~0U, 0) < 0)
        for (int fd = CONTROL + 1; fd < 65536; fd++)
            close(fd);
    if (fcntl(CONTROL, F_SETFD, FD_CLOEXEC) < 0 || prctl(PR_SET_DUMPABLE, 0) < 0 ||
        chdir("/") < 0)
        return 2;
    if (argc == 7) {
        if (strlen(argv[6]) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return 2;
        pid_t forwarder = fork();
        if (forwarder < 0)
            return 2;
        if (forwarder == 0) {
            close(CONTROL);
            forward(argv[6]);
        }
    }
    sigset_t children;
    sigemptyset(&children);
    sigaddset(&children, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &children, NULL) < 0)
        return 2;
    int ended = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
    if (ended < 0)
        return 2;
    report(READY, 0, PROTOCOL);
    struct pollfd watch[2] = {{CONTROL, POLLIN, 0}, {ended, POLLIN, 0}};
    for (;;) {
        if (poll(watch, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 2;
        }
        if (watch[1].revents) {
            struct signalfd_siginfo info;
            while (read(ended, &info, sizeof info) > 0) {
            }
            reap();
        }
        if (watch[0].revents)
            receive();
    }
}
