/*
 * listen.c - the daemon's listening sockets: unix:///path and tcp://host:port.
 *
 * A Unix socket path can be left behind by a daemon that died without cleaning up. Binding over
 * it needs the file removed first, but removing a socket that another daemon is still serving
 * would silently steal its clients. So an existing path is probed with connect(): refused means
 * stale (removed and replaced), accepted means live (this daemon refuses to start).
 */
#include "daemon.h"
#include "log.h"
#include "mem.h"

#include <errno.h>
#include <netdb.h>
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
    /* Owner-only until hardening adds --socket-mode: the umask applies to bind()'s file. */
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&l->h.pipe, l->url.path);
    umask(old);
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
    if (rc == 0)
        rc = uv_listen(&l->h.stream, 511, on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s: %s", url, uv_strerror(rc));
        if (l->inited)
            uv_close((uv_handle_t *)&l->h, on_listener_closed);
        else
            pg_free(l);
        return rc;
    }
    if (l->is_unix) {
        log_info("listening on unix://%s", l->url.path);
    } else {
        tcp_real_port(l);
        bool v6 = strchr(l->url.host, ':') != NULL;
        log_info("listening on tcp://%s%s%s:%u", v6 ? "[" : "", l->url.host, v6 ? "]" : "",
                 (unsigned)l->url.port);
    }
    d->listeners[d->nlisteners++] = l;
    return 0;
}

void listen_close_all(daemon_t *d) {
    for (int i = 0; i < d->nlisteners; i++) {
        listener_t *l = d->listeners[i];
        if (l->is_unix && unlink(l->url.path) != 0 && errno != ENOENT)
            log_warn("cannot remove %s: %s", l->url.path, strerror(errno));
        uv_close((uv_handle_t *)&l->h, on_listener_closed);
    }
    d->nlisteners = 0;
}
