/*
 * url.c - the two kinds of address picograd speaks: unix:///abs/path and tcp://host:port.
 *
 * The daemon and the C client parse addresses with the same code so that a URL that one accepts
 * the other accepts too; the default address is computed here for the same reason (the daemon's
 * listener, and the client's search for a running daemon).
 */
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int proto_parse_url(const char *url, proto_url_t *out, proto_err_t *err) {
    memset(out, 0, sizeof(*out));
    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7;
        if (path[0] != '/')
            return proto_fail(err, PG_EBAD_REQUEST, "unix URL needs an absolute path: unix:///x");
        if (strlen(path) >= sizeof(out->path))
            return proto_fail(err, PG_EBAD_REQUEST, "unix socket path is longer than %zu bytes",
                              sizeof(out->path) - 1);
        out->kind = PROTO_URL_UNIX;
        strcpy(out->path, path);
        return 0;
    }
    if (strncmp(url, "tcp://", 6) == 0) {
        const char *h = url + 6, *colon;
        size_t hlen;
        if (h[0] == '[') {
            const char *end = strchr(h, ']');
            if (!end || end[1] != ':')
                return proto_fail(err, PG_EBAD_REQUEST, "tcp URL: expected [v6-address]:port");
            h++;
            hlen = (size_t)(end - h);
            colon = end + 1;
        } else {
            colon = strrchr(h, ':');
            if (!colon)
                return proto_fail(err, PG_EBAD_REQUEST, "tcp URL needs a port: tcp://HOST:PORT");
            hlen = (size_t)(colon - h);
        }
        if (hlen == 0 || hlen >= sizeof(out->host))
            return proto_fail(err, PG_EBAD_REQUEST, "tcp URL: bad host length %zu", hlen);
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
            return proto_fail(err, PG_EBAD_REQUEST, "tcp URL: port must be 0 to 65535");
        out->kind = PROTO_URL_TCP;
        memcpy(out->host, h, hlen);
        out->host[hlen] = '\0';
        out->port = (uint16_t)port;
        return 0;
    }
    return proto_fail(err, PG_EBAD_REQUEST, "URL must start with unix:// or tcp://");
}

void proto_default_url(char *buf, size_t cap, bool use_env) {
    const char *env = use_env ? getenv("PICOGRAD_URL") : NULL;
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (env && *env)
        snprintf(buf, cap, "%s", env);
    else if (xdg && xdg[0] == '/')
        snprintf(buf, cap, "unix://%s/picogradd.sock", xdg);
    else
        snprintf(buf, cap, "unix:///tmp/picogradd-%u.sock", (unsigned)getuid());
}

/* Whether path names a socket (an existing daemon's, or a stale one: connecting will tell). */
static bool is_socket(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

void proto_client_url(char *buf, size_t cap) {
    const char *env = getenv("PICOGRAD_URL");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return;
    }
    char cand[3][192];
    int n = 0;
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && xdg[0] == '/')
        snprintf(cand[n++], sizeof(cand[0]), "unix://%.150s/picogradd.sock", xdg);
    snprintf(cand[n++], sizeof(cand[0]), "unix://%s", PROTO_SYSTEM_SOCKET);
    snprintf(cand[n++], sizeof(cand[0]), "unix:///tmp/picogradd-%u.sock", (unsigned)getuid());
    int pick = 0;
    for (int i = 0; i < n; i++)
        if (is_socket(cand[i] + 7)) { /* past "unix://" */
            pick = i;
            break;
        }
    snprintf(buf, cap, "%s", cand[pick]);
}
