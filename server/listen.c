/*
 * listen.c - the daemon's listening sockets: unix:///path and tcp://host:port, opened from
 * --listen or inherited through socket activation (LISTEN_FDS).
 *
 * A Unix socket path can be left behind by a daemon that died without cleaning up. Binding over
 * it needs the file removed first, but removing a socket that another daemon is still serving
 * would silently steal its clients. So an existing path is probed with connect(): refused means
 * stale (removed and replaced), accepted means live (this daemon refuses to start).
 *
 * Permissions. A Unix socket is created owner-only and then given --socket-mode (0600 by
 * default) before listen(). The order makes it race-free: bind() runs under umask 0177, so the
 * new file is never more open than 0600, and until listen() no client can connect to it at all
 * (connect() is refused), so a wider mode such as 0660 only takes effect once it is set.
 *
 * Authentication. A TCP listener of a daemon with --token-file marks its connections as needing
 * the token (conn.c); without a token file main.c refuses TCP unless --insecure is given, and
 * listen_inherit refuses inherited TCP sockets on the same terms.
 */
#include "daemon.h"
#include "log.h"
#include "mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void on_listener_closed(uv_handle_t *h) { pg_free(h); /* h is the listener's first member */ }

static void on_connection(uv_stream_t *server, int status) {
    listener_t *l = (listener_t *)server;
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    if (l->d->stopping)
        return;
    conn_accept(l);
}

/* Returns 0 when path is free to bind (absent, or a stale socket now removed), else -errno. */
static int unix_path_claim(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        log_error("%s exists and is not a socket; refusing to replace it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    if (live) {
        log_error("%s is in use: another daemon is listening on it", path);
        return -EADDRINUSE;
    }
    log_info("replacing stale socket %s", path);
    return unlink(path) == 0 ? 0 : -errno;
}

static int listen_unix(daemon_t *d, listener_t *l) {
    int rc = unix_path_claim(l->url.path);
    if (rc)
        return rc;
    if ((rc = uv_pipe_init(d->loop, &l->h.pipe, 0)) < 0)
        return rc;
    l->inited = true;
    /* Created owner-only (the umask applies to bind()'s file), widened or narrowed to
     * --socket-mode before listen(): see the top of the file. umask is process-wide, but at this
     * point of the start no other thread creates files. */
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&l->h.pipe, l->url.path);
    umask(old);
    if (rc == 0 && chmod(l->url.path, (mode_t)d->cfg.socket_mode) != 0) {
        rc = -errno;
        log_error("cannot set mode %04o on %s: %s", (unsigned)d->cfg.socket_mode, l->url.path,
                  strerror(errno));
    }
    return rc;
}

static int listen_tcp(daemon_t *d, listener_t *l) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)l->url.port);
    int gai = getaddrinfo(l->url.host, port, &hints, &ai);
    if (gai != 0) {
        log_error("cannot resolve %s: %s", l->url.host, gai_strerror(gai));
        return UV_EINVAL;
    }
    int rc = uv_tcp_init(d->loop, &l->h.tcp);
    if (rc == 0) {
        l->inited = true;
        rc = uv_tcp_bind(&l->h.tcp, ai->ai_addr, 0);
    }
    freeaddrinfo(ai);
    return rc;
}

/* Rewrites a TCP listener's port 0 with the port the system chose. */
static void tcp_real_port(listener_t *l) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        l->url.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
        l->url.port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Starts listening on l's open handle, logs it and adds it to d. Returns 0, or a negative libuv
 * error with l closed (freed in its close callback, or now when its handle was never inited). */
static int listen_start(daemon_t *d, listener_t *l, const char *what) {
    int rc = d->nlisteners < LIM_MAX_LISTENERS ? 0 : UV_EMFILE;
    if (rc == 0)
        rc = uv_listen(&l->h.stream, 511, on_connection);
    if (rc < 0) {
        if (rc == UV_EMFILE)
            log_error("cannot listen on %s: at most %d listeners", what, LIM_MAX_LISTENERS);
        else
            log_error("cannot listen on %s: %s", what, uv_strerror(rc));
        if (l->inited)
            uv_close((uv_handle_t *)&l->h, on_listener_closed);
        else
            pg_free(l);
        return rc;
    }
    l->needs_token = !l->is_unix && d->token.set;
    const char *note = l->inherited ? " (socket activation)" : "";
    if (l->is_unix) {
        log_info("listening on unix://%s%s", l->url.path, note);
    } else {
        if (!l->inherited)
            tcp_real_port(l);
        bool v6 = strchr(l->url.host, ':') != NULL;
        log_info("listening on tcp://%s%s%s:%u%s%s", v6 ? "[" : "", l->url.host, v6 ? "]" : "",
                 (unsigned)l->url.port, note,
                 l->needs_token ? " (token required)" : "");
        if (!l->needs_token)
            log_warn("tcp://%s%s%s:%u needs no token (--insecure): anyone who can reach it can "
                     "use this daemon",
                     v6 ? "[" : "", l->url.host, v6 ? "]" : "", (unsigned)l->url.port);
    }
    d->listeners[d->nlisteners++] = l;
    return 0;
}

bool listen_is_tcp_url(const char *url) { return strncmp(url, "tcp://", 6) == 0; }

int listen_open(daemon_t *d, const char *url) {
    proto_err_t err;
    listener_t *l = pg_malloc(sizeof(*l));
    if (!l)
        return UV_ENOMEM;
    memset(l, 0, sizeof(*l));
    l->d = d;
    if (proto_parse_url(url, &l->url, &err) != 0) {
        log_error("--listen %s: %s", url, err.message);
        pg_free(l);
        return UV_EINVAL;
    }
    l->is_unix = l->url.kind == PROTO_URL_UNIX;
    int rc = l->is_unix ? listen_unix(d, l) : listen_tcp(d, l);
    if (rc < 0) {
        log_error("cannot listen on %s: %s", url, uv_strerror(rc));
        if (l->inited)
            uv_close((uv_handle_t *)&l->h, on_listener_closed);
        else
            pg_free(l);
        return rc;
    }
    return listen_start(d, l, url);
}

/* =============================================================================================
 * Socket activation
 * =========================================================================================== */

#define LISTEN_FDS_START 3 /* sd_listen_fds(3): the first passed fd */

/* Reads LISTEN_PID and LISTEN_FDS and unsets them with LISTEN_FDNAMES. Returns the number of fds
 * passed to this process (0 when none, or when they were meant for another process). */
static int inherited_count(void) {
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    int n = 0;
    if (pid_s && fds_s) {
        char *end;
        errno = 0;
        unsigned long long pid = strtoull(pid_s, &end, 10);
        bool pid_ok = !errno && end != pid_s && *end == '\0' && pid == (unsigned long long)getpid();
        errno = 0;
        long v = strtol(fds_s, &end, 10);
        if (pid_ok && !errno && end != fds_s && *end == '\0' && v > 0)
            n = v > LIM_MAX_LISTENERS ? LIM_MAX_LISTENERS + 1 : (int)v;
        else if (!pid_ok)
            log_debug("LISTEN_FDS is for process %s, not this one: ignored", pid_s);
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return n;
}

/* Wraps inherited fd into a new listener. Returns 0 or a negative libuv error, logged. */
static int inherit_fd(daemon_t *d, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int type = 0;
    socklen_t tlen = sizeof(type);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM ||
        (ss.ss_family != AF_UNIX && ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
        log_error("socket activation: fd %d is not a Unix or TCP stream socket", fd);
        return UV_EINVAL;
    }
    /* The launcher cannot know that this daemon runs a C compiler: keep the fd from it. */
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0)
        fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    listener_t *l = pg_malloc(sizeof(*l));
    if (!l)
        return UV_ENOMEM;
    memset(l, 0, sizeof(*l));
    l->d = d;
    l->inherited = true;
    l->is_unix = ss.ss_family == AF_UNIX;
    char what[32];
    snprintf(what, sizeof(what), "inherited fd %d", fd);
    int rc;
    if (l->is_unix) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        size_t plen = len > offsetof(struct sockaddr_un, sun_path)
                          ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        l->url.kind = PROTO_URL_UNIX;
        if (plen == 0 || sun->sun_path[0] == '\0') /* unnamed or abstract: log a placeholder */
            snprintf(l->url.path, sizeof(l->url.path), "@fd%d", fd);
        else
            snprintf(l->url.path, sizeof(l->url.path), "%.*s", (int)strnlen(sun->sun_path, plen),
                     sun->sun_path);
        if ((rc = uv_pipe_init(d->loop, &l->h.pipe, 0)) == 0) {
            l->inited = true;
            rc = uv_pipe_open(&l->h.pipe, fd);
        }
    } else {
        if (!d->token.set && !d->cfg.insecure) {
            log_error("socket activation: fd %d is a TCP socket; TCP listeners need --token-file "
                      "FILE (clients send the token in hello) or --insecure",
                      fd);
            pg_free(l);
            return UV_EINVAL;
        }
        l->url.kind = PROTO_URL_TCP;
        const void *addr = ss.ss_family == AF_INET
                               ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                               : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (!inet_ntop(ss.ss_family, addr, l->url.host, sizeof(l->url.host)))
            snprintf(l->url.host, sizeof(l->url.host), "?");
        l->url.port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                    : ((struct sockaddr_in6 *)&ss)->sin6_port);
        if ((rc = uv_tcp_init(d->loop, &l->h.tcp)) == 0) {
            l->inited = true;
            rc = uv_tcp_open(&l->h.tcp, fd);
        }
    }
    if (rc < 0) {
        log_error("socket activation: cannot use fd %d: %s", fd, uv_strerror(rc));
        if (l->inited)
            uv_close((uv_handle_t *)&l->h, on_listener_closed);
        else
            pg_free(l);
        return rc;
    }
    return listen_start(d, l, what);
}

int listen_inherit(daemon_t *d) {
    int n = inherited_count();
    if (n > LIM_MAX_LISTENERS) {
        log_error("socket activation: LISTEN_FDS is over %d", LIM_MAX_LISTENERS);
        return UV_EINVAL;
    }
    for (int i = 0; i < n; i++) {
        int rc = inherit_fd(d, LISTEN_FDS_START + i);
        if (rc < 0)
            return rc;
    }
    return n;
}

void listen_close_all(daemon_t *d) {
    for (int i = 0; i < d->nlisteners; i++) {
        listener_t *l = d->listeners[i];
        /* An inherited socket's file belongs to its launcher (systemd removes it). */
        if (l->is_unix && !l->inherited && unlink(l->url.path) != 0 && errno != ENOENT)
            log_warn("cannot remove %s: %s", l->url.path, strerror(errno));
        uv_close((uv_handle_t *)&l->h, on_listener_closed);
    }
    d->nlisteners = 0;
}
