/*
 * raw_echo.c - the raw socket baseline that tests/bench/transfer.py measures picogradd against.
 *
 * It speaks only picograd's framing (a 4-byte big-endian length, then that many bytes) and nothing
 * else: for every frame it reads the whole body into a buffer allocated for that frame, then sends
 * back a frame of the same length holding the same bytes. There is no msgpack, no event loop and no
 * tensor bookkeeping, just blocking sockets and one thread per connection, so a put+get pair on
 * picogradd (size bytes up, size bytes down) can be compared with an echo of the same size on the
 * same kind of socket, and a tiny echo is the floor for a ping round trip.
 *
 *     raw_echo --listen unix:///tmp/raw.sock
 *     raw_echo --listen tcp://127.0.0.1:0 [--max-frame BYTES]
 *
 * Once bound it prints "listening on <url>" to stderr (with the real port when port 0 was asked
 * for), which is the line the benchmark waits for. SIGINT or SIGTERM removes the Unix socket file
 * and exits with status 0. Only libc and pthreads are used, so it builds anywhere the daemon does.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* The same default as picogradd's --max-frame: a length prefix above this closes the connection. */
#define RAW_DEFAULT_MAX_FRAME (1024u * 1024u * 1024u)

/* ------------------------------------------------------------------------------------------------
 * Listening socket
 * ---------------------------------------------------------------------------------------------- */

/* Set by the SIGINT/SIGTERM handler; the accept loop checks it after accept() fails with EINTR. */
static volatile sig_atomic_t raw_stop;

/* The Unix socket path to unlink on exit, or "" for TCP. Written once before any thread starts. */
static char raw_unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static void raw_on_signal(int sig) {
    (void)sig;
    raw_stop = 1;
}

/*
 * Binds and listens on a unix:///abs/path or tcp://HOST:PORT url. On success returns the listening
 * socket and writes the url actually bound (real port for tcp://...:0) into `bound`; returns -1
 * after printing why on failure. The caller owns the returned descriptor.
 */
static int raw_listen(const char *url, char *bound, size_t bound_len, bool *is_tcp) {
    int fd = -1;

    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (path[0] != '/' || strlen(path) >= sizeof(sa.sun_path)) {
            fprintf(stderr, "raw_echo: unix url needs an absolute path under %zu bytes: %s\n",
                    sizeof(sa.sun_path), url);
            return -1;
        }
        memcpy(sa.sun_path, path, strlen(path) + 1);

        /* A stale socket file from a killed run would make bind() fail; remove only sockets. */
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(path);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            goto err_report;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            goto err_close_fd;
        if (listen(fd, 64) != 0)
            goto err_unlink;
        memcpy(raw_unix_path, path, strlen(path) + 1);
        snprintf(bound, bound_len, "unix://%s", path);
        *is_tcp = false;
        return fd;

    err_unlink:
        unlink(path);
        goto err_close_fd;
    }

    if (strncmp(url, "tcp://", 6) == 0) {
        /* Split HOST:PORT at the last colon; "[v6]" brackets are stripped for getaddrinfo. */
        char host[256];
        const char *hp = url + 6;
        const char *colon = strrchr(hp, ':');
        if (colon == NULL || colon == hp || (size_t)(colon - hp) >= sizeof(host)) {
            fprintf(stderr, "raw_echo: tcp url must be tcp://HOST:PORT: %s\n", url);
            return -1;
        }
        memcpy(host, hp, (size_t)(colon - hp));
        host[colon - hp] = '\0';
        char *h = host;
        if (h[0] == '[' && h[strlen(h) - 1] == ']') {
            h[strlen(h) - 1] = '\0';
            h++;
        }

        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        int rc = getaddrinfo(h, colon + 1, &hints, &ai);
        if (rc != 0) {
            fprintf(stderr, "raw_echo: cannot resolve %s: %s\n", url, gai_strerror(rc));
            return -1;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            freeaddrinfo(ai);
            goto err_report;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            freeaddrinfo(ai);
            goto err_close_fd;
        }
        freeaddrinfo(ai);

        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char addr[INET6_ADDRSTRLEN];
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
            goto err_close_fd;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
            snprintf(bound, bound_len, "tcp://[%s]:%u", addr, (unsigned)ntohs(s6->sin6_port));
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
            snprintf(bound, bound_len, "tcp://%s:%u", addr, (unsigned)ntohs(s4->sin_port));
        }
        *is_tcp = true;
        return fd;
    }

    fprintf(stderr, "raw_echo: url must start with unix:// or tcp://: %s\n", url);
    return -1;

err_close_fd:
    close(fd);
err_report:
    fprintf(stderr, "raw_echo: cannot listen on %s: %s\n", url, strerror(errno));
    return -1;
}

/* ------------------------------------------------------------------------------------------------
 * Connections: one blocking thread each
 * ---------------------------------------------------------------------------------------------- */

struct raw_conn {
    int fd;             /* the accepted socket; closed by the connection thread */
    uint32_t max_frame; /* length prefixes above this close the connection */
};

/* Reads exactly `len` bytes. Returns 0, or -1 on EOF or error (the caller just closes). */
static int raw_read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Sends the 4-byte header and the body with one sendmsg() per attempt (header and body leave in the
 * same segment when they fit), continuing after partial writes. Returns 0, or -1 on error.
 */
static int raw_send_frame(int fd, const unsigned char hdr[4], const void *body, size_t len) {
    struct iovec iov[2] = {{.iov_base = (void *)hdr, .iov_len = 4},
                           {.iov_base = (void *)body, .iov_len = len}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    while (msg.msg_iovlen > 0) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        /* Skip the iovecs (and part of one) that went out. */
        size_t left = (size_t)n;
        while (msg.msg_iovlen > 0 && left >= msg.msg_iov[0].iov_len) {
            left -= msg.msg_iov[0].iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen > 0) {
            msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + left;
            msg.msg_iov[0].iov_len -= left;
        }
    }
    return 0;
}

/* Connection thread: echoes frames until EOF, an error or a bad length. Takes ownership of arg. */
static void *raw_conn_main(void *arg) {
    struct raw_conn *c = arg;
    unsigned char hdr[4];
    /* One buffer, grown to the largest frame and reused: the baseline is the socket's own speed,
     * with no allocation and no page faults on warm rounds, i.e. the ceiling. */
    void *body = NULL;
    size_t cap = 0;

    while (raw_read_full(c->fd, hdr, sizeof(hdr)) == 0) {
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 |
                       (uint32_t)hdr[3];
        if (len == 0 || len > c->max_frame)
            break;
        if (len > cap) {
            void *grown = realloc(body, len);
            if (grown == NULL)
                break;
            body = grown;
            cap = len;
        }
        int rc = raw_read_full(c->fd, body, len);
        if (rc == 0)
            rc = raw_send_frame(c->fd, hdr, body, len);
        if (rc != 0)
            break;
    }
    free(body);
    close(c->fd);
    free(c);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------------------------------- */

static void raw_usage(void) {
    fprintf(stderr, "usage: raw_echo --listen unix:///path.sock|tcp://HOST:PORT "
                    "[--max-frame BYTES]\n");
}

int main(int argc, char **argv) {
    const char *url = NULL;
    uint32_t max_frame = RAW_DEFAULT_MAX_FRAME;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            url = argv[++i];
        } else if (strcmp(argv[i], "--max-frame") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || v == 0 || v > UINT32_MAX) {
                fprintf(stderr, "raw_echo: --max-frame must be 1..%u\n", UINT32_MAX);
                return 2;
            }
            max_frame = (uint32_t)v;
        } else {
            raw_usage();
            return 2;
        }
    }
    if (url == NULL) {
        raw_usage();
        return 2;
    }

    /* No SA_RESTART, so a signal interrupts accept() and the loop below can clean up. */
    struct sigaction sa = {.sa_handler = raw_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char bound[512];
    bool is_tcp = false;
    int lfd = raw_listen(url, bound, sizeof(bound), &is_tcp);
    if (lfd < 0)
        return 1;
    fprintf(stderr, "listening on %s\n", bound);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);

    while (!raw_stop) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            fprintf(stderr, "raw_echo: accept: %s\n", strerror(errno));
            break;
        }
        if (is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        struct raw_conn *c = malloc(sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->max_frame = max_frame;
        /* Connection threads inherit a mask without SIGINT/SIGTERM, so the signal always lands
         * on this thread and interrupts accept(). */
        sigset_t block, old;
        sigemptyset(&block);
        sigaddset(&block, SIGINT);
        sigaddset(&block, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &block, &old);
        pthread_t tid;
        int rc = pthread_create(&tid, &attr, raw_conn_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            close(fd);
            free(c);
        }
    }

    pthread_attr_destroy(&attr);
    close(lfd);
    if (raw_unix_path[0] != '\0')
        unlink(raw_unix_path);
    return 0;
}
