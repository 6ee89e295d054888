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
 * it out), it is also the forwarder: it listens on the sandbox's own loopback,
 * 127.0.0.1:3128, and relays each connection to that socket, both ways, in its own loop,
 * without ever blocking on one (no process of its own: the sandbox sees none more). It
 * decides nothing: the proxy, outside, judges every connection, and what the relayed
 * bytes say is none of the init's business. Code that talks to the socket itself
 * gains nothing.
 *
 * Asked to (LISTEN), it also listens on one more port of 127.0.0.1, where it accepts each
 * connection and closes it at once, never reading a byte: what a readiness probe needs
 * to find (something accepts there), at no process's cost. It accepts a bounded number
 * per turn of its loop, so connections cannot keep it from the server's messages.
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
 *     LISTEN  u32 type=3, u32 port (1-65535), u32 zero, u32 zero; at most once. No
 *             report: a port it cannot listen on (taken) is left closed
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
#define MAX_RELAYS 64
#define RELAY_BUFFER (256 * 1024) /* each way of a relay holds at most this */
#define BACKLOG 128
#define ACCEPTS_PER_TURN 64 /* of the LISTEN port, before the loop goes on */

enum { SPAWN = 1, SIGNAL = 2, LISTEN = 3 };
enum { LAST = 1 };
enum { READY = 1, STARTED = 2, FAILED = 3, EXITED = 4 };

struct spawn {
    uint32_t type, id, argc, envc, flags, zero;
    uint64_t cpu_seconds;
};
struct signal_request {
    uint32_t type, id, signal, group;
};
struct listen_request {
    uint32_t type, port, zero[2];
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

/* A non-blocking listener on 127.0.0.1:port; -1 if it cannot be made. */
static int loopback_listener(uint16_t port) {
    int yes = 1;
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) < 0 ||
        bind(fd, (struct sockaddr *)&at, sizeof at) < 0 || listen(fd, BACKLOG) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int ready_port = -1; /* the LISTEN port's listener; -1: none */
static int ready_asked;

static void listen_port(ssize_t size) {
    struct listen_request request;
    if ((size_t)size != sizeof request)
        fail();
    memcpy(&request, message, sizeof request);
    if (request.port == 0 || request.port > 65535 || request.zero[0] != 0 ||
        request.zero[1] != 0 || ready_asked)
        fail();
    ready_asked = 1;
    ready_port = loopback_listener((uint16_t)request.port);
}

/* Accept what waits on the LISTEN port and close it unread, a bounded number at a time. */
static void ready_accept(void) {
    for (int i = 0; i < ACCEPTS_PER_TURN; i++) {
        int client = accept4(ready_port, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (client < 0)
            return; /* none waiting (or out of descriptors for now) */
        close(client);
    }
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
    } else if (type == LISTEN && count == 0) {
        listen_port(size);
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

/* The egress forwarder, part of the init's own loop: connections accepted on 127.0.0.1:3128
 * are relayed to the proxy's unix socket, both ways, without blocking. Each way is spliced
 * through a pipe of its own (socket to pipe to socket: the bytes are never copied into the
 * init). A relay that cannot be made (no slot, no socket or pipe, the proxy's backlog
 * full) closes the client. */
struct relay {
    int fd[2];      /* 0: the client, 1: the proxy; -1: free */
    int pipe[2][2]; /* pipe[i]: from fd[i] to fd[1 - i]; [0] its read end, [1] its write end */
    size_t held[2], room[2]; /* bytes in pipe[i]; what it may hold */
    int full[2];  /* pipe[i] took no more: its slots, not only its bytes, can run out first */
    int ended[2]; /* fd[i] said end of file (what came before may still be in pipe[i]) */
};

static struct relay relays[MAX_RELAYS];
static int listener = -1;
static struct sockaddr_un proxy;

static void relay_close(struct relay *r) {
    for (int i = 0; i < 2; i++) {
        if (r->fd[i] >= 0)
            close(r->fd[i]);
        r->fd[i] = -1;
        for (int end = 0; end < 2; end++) {
            if (r->pipe[i][end] >= 0)
                close(r->pipe[i][end]);
            r->pipe[i][end] = -1;
        }
    }
}

/* Its two pipes, as big as RELAY_BUFFER where the user's pipe allowance lets them be
 * (else as the kernel makes them: slower, as correct). */
static int relay_pipes(struct relay *r) {
    for (int i = 0; i < 2; i++) {
        if (pipe2(r->pipe[i], O_NONBLOCK | O_CLOEXEC) < 0)
            return -1;
        fcntl(r->pipe[i][1], F_SETPIPE_SZ, RELAY_BUFFER);
        int size = fcntl(r->pipe[i][1], F_GETPIPE_SZ);
        if (size <= 0)
            return -1;
        r->room[i] = (size_t)size < RELAY_BUFFER ? (size_t)size : RELAY_BUFFER;
    }
    return 0;
}

static int forward_start(const char *path) {
    for (int i = 0; i < MAX_RELAYS; i++)
        relays[i] = (struct relay){.fd = {-1, -1}, .pipe = {{-1, -1}, {-1, -1}}};
    proxy.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof proxy.sun_path)
        return -1;
    strcpy(proxy.sun_path, path);
    listener = loopback_listener(PROXY_PORT);
    return listener < 0 ? -1 : 0;
}

static void forward_accept(void) {
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (client < 0)
            return; /* none waiting (or out of descriptors for now) */
        struct relay *r = NULL;
        for (int i = 0; i < MAX_RELAYS && r == NULL; i++)
            if (relays[i].fd[0] < 0)
                r = &relays[i];
        int to = r == NULL ? -1 : socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (to < 0 || connect(to, (struct sockaddr *)&proxy, sizeof proxy) < 0) {
            if (to >= 0)
                close(to);
            close(client);
            continue;
        }
        *r = (struct relay){.fd = {client, to}, .pipe = {{-1, -1}, {-1, -1}}};
        if (relay_pipes(r) < 0)
            relay_close(r);
    }
}

/* Move what can be moved without blocking; whether the relay goes on. */
static int relay_step(struct relay *r, const short revents[2]) {
    for (int i = 0; i < 2; i++)
        if ((revents[i] & (POLLHUP | POLLERR)) && r->ended[i] == 2)
            return 0; /* gone both ways, and all it sent passed on: nothing more to do */
    for (int i = 0; i < 2; i++) {
        int out = r->fd[1 - i];
        if (!r->ended[i] && !r->full[i] && r->held[i] < r->room[i] &&
            (revents[i] & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = splice(r->fd[i], NULL, r->pipe[i][1], NULL, r->room[i] - r->held[i],
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (got > 0)
                r->held[i] += (size_t)got;
            else if (got == 0)
                r->ended[i] = 1;
            else if (errno == EAGAIN)
                r->full[i] = r->held[i] > 0; /* no room in the pipe, rather than no bytes */
            else if (errno != EINTR)
                return 0;
        }
        while (r->held[i] > 0) {
            ssize_t put = splice(r->pipe[i][0], NULL, out, NULL, r->held[i],
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (put < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                return 0; /* the other end is gone (as pid 1, its SIGPIPE is ignored) */
            }
            r->held[i] -= (size_t)put;
            r->full[i] = 0;
        }
        if (r->held[i] == 0 && r->ended[i] == 1) { /* all of it passed on: the end too */
            shutdown(out, SHUT_WR);
            r->ended[i] = 2;
        }
    }
    return !(r->ended[0] == 2 && r->ended[1] == 2);
}

/* What each relay waits for: read while its pipe has room, write while the other way's
 * pipe holds bytes. */
static short relay_events(const struct relay *r, int i) {
    short events = 0;
    if (!r->ended[i] && !r->full[i] && r->held[i] < r->room[i])
        events |= POLLIN;
    if (r->held[1 - i] > 0)
        events |= POLLOUT;
    return events;
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
    if (argc == 7 && forward_start(argv[6]) < 0)
        return 2;
    sigset_t children;
    sigemptyset(&children);
    sigaddset(&children, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &children, NULL) < 0)
        return 2;
    int ended = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
    if (ended < 0)
        return 2;
    report(READY, 0, PROTOCOL);
    enum { FIXED = 4 }; /* control, ended, the forwarder's listener, the LISTEN port's */
    struct pollfd watch[FIXED + 2 * MAX_RELAYS];
    int relayed[2 * MAX_RELAYS]; /* which relay each watched descriptor after FIXED is */
    for (;;) {
        watch[0] = (struct pollfd){CONTROL, POLLIN, 0};
        watch[1] = (struct pollfd){ended, POLLIN, 0};
        watch[2] = (struct pollfd){listener, POLLIN, 0}; /* -1 without egress: not watched */
        watch[3] = (struct pollfd){ready_port, POLLIN, 0}; /* -1 until LISTEN: likewise */
        nfds_t count = FIXED;
        for (int i = 0; listener >= 0 && i < MAX_RELAYS; i++) {
            if (relays[i].fd[0] < 0)
                continue;
            for (int end = 0; end < 2; end++) {
                relayed[count - FIXED] = i;
                watch[count++] = (struct pollfd){relays[i].fd[end], relay_events(&relays[i], end), 0};
            }
        }
        if (poll(watch, count, -1) < 0) {
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
        for (nfds_t at = FIXED; at < count; at += 2) {
            struct relay *r = &relays[relayed[at - FIXED]];
            short revents[2] = {watch[at].revents, watch[at + 1].revents};
            if ((revents[0] | revents[1]) && !relay_step(r, revents))
                relay_close(r);
        }
        if (watch[2].revents)
            forward_accept();
        if (watch[3].revents)
            ready_accept();
    }
}
