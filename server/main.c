/*
 * main.c - picogradd's command line and life cycle.
 *
 * Start: parse flags, read the token file, set the memory budget, start the compute workers, open
 * every listener, inherited ones (socket activation) first (any failure stops the start with exit
 * status 1), then run the libuv loop. A TCP listener needs --token-file or --insecure.
 * Stop (SIGINT or SIGTERM): close the listeners and remove their socket files, stop reading,
 * drop half-received frames, answer what was fully received, and exit 0 once every connection is
 * closed, or once --shutdown-timeout has passed, cancelling what still runs. A second signal
 * skips the wait.
 */
#include "../kernels/cpu/jit.h"
#include "../kernels/ref/ref.h"
#include "daemon.h"
#include "cudarun.h"
#include "device.h"
#include "passes/fuse.h"
#include "log.h"
#include "mem.h"
#include "plan.h"
#include "prepcache.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

daemon_t *g_daemon;

static void usage(FILE *f) {
    fprintf(f,
            "usage: picogradd [options]\n"
            "\n"
            "Serves picograd tensors and graphs to clients over Unix and TCP sockets.\n"
            "\n"
            "  --listen URL            unix:///abs/path.sock or tcp://HOST:PORT (repeatable;\n"
            "                          default unix://$XDG_RUNTIME_DIR/picogradd.sock, else\n"
            "                          unix:///tmp/picogradd-$UID.sock; none when sockets are\n"
            "                          passed by socket activation, LISTEN_FDS). TCP binds only\n"
            "                          where told, and needs --token-file or --insecure.\n"
            "  --token-file FILE       TCP clients must send this token (the file's content\n"
            "                          without surrounding white space) in hello; Unix socket\n"
            "                          clients need none (the socket's mode protects them)\n"
            "  --insecure              allow TCP listeners without --token-file: anyone who\n"
            "                          can reach the port can use the daemon\n"
            "  --socket-mode OCTAL     mode of the Unix socket files created (default 0600;\n"
            "                          0660 lets the socket's group connect)\n"
            "  --threads N             compute worker threads (default: online CPUs)\n"
            "  --max-frame BYTES       largest request frame (default 1G; at most 4G-1)\n"
            "  --max-memory BYTES      budget for tensors and frames (default: 3/4 of RAM)\n"
            "  --max-inflight N        queued requests per connection before it is not read\n"
            "                          (default %d)\n"
            "  --max-unsent BYTES      unsent reply bytes per connection before it is not read\n"
            "                          (default 256M)\n"
            "  --max-sessions N        open connections at once (default %d)\n"
            "  --max-session-memory BYTES\n"
            "                          tensor bytes one session may hold by handle (puts, kept\n"
            "                          outputs, assigns; default: the --max-memory budget)\n"
            "  --max-nodes N           nodes in one run or explain graph (default and most %d)\n"
            "  --idle-timeout SEC      close a connection with nothing queued or running that\n"
            "                          sent or took no byte for SEC seconds (default 0: never)\n"
            "  --request-timeout SEC   cancel a run, explain or sleep that ran SEC seconds on a\n"
            "                          worker, replying timeout (default 0: no limit; a request\n"
            "                          may ask for less with its 'timeout' field)\n"
            "  --shutdown-timeout SEC  time given to received requests at SIGTERM (default 10)\n"
            "  --log-level LEVEL       error, warn, info or debug (default info; debug also\n"
            "                          prints the plan of every graph compiled)\n"
            "  --jit on|off            fuse elementwise ops into compiled C kernels (default on;\n"
            "                          off, or no working compiler: interpret every op)\n"
            "  --jit-min-work N        compile only loops of at least N elements; smaller ones\n"
            "                          are interpreted, where a compile would cost more than\n"
            "                          it saves (default 4096; 0 compiles everything)\n"
            "  --cc PATH               C compiler for kernels (default cc)\n"
            "  --cache-dir DIR         compiled kernels kept between runs (default\n"
            "                          $XDG_CACHE_HOME/picogradd, else $HOME/.cache/picogradd,\n"
            "                          else /tmp/picogradd-cache-$UID)\n"
            "  --dump-cuda DIR         also render every kernel the planner builds for CUDA and\n"
            "                          write it to DIR/<name>.cu (for the NVRTC compile test)\n"
            "  --prepared-cache N      run requests kept lowered and planned for their next run\n"
            "                          with new handles (default %d; 0 turns the cache off)\n"
            "  --help, --version\n"
            "\n"
            "BYTES accept a K, M or G suffix (powers of 1024).\n",
            LIM_MAX_INFLIGHT_DEFAULT, LIM_MAX_SESSIONS_DEFAULT, LIM_MAX_NODES_DEFAULT,
            LIM_PREPARED_CACHE_DEFAULT);
}

/* Parses "123", "64K", "512M", "1G" (powers of 1024). Returns false on junk or overflow. */
static bool parse_bytes(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || s[0] == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: return false;
    }
    if (*end == 'i' && end[1] == 'B')
        end += 2;
    else if (*end == 'B')
        end++;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

/* Parses seconds (a decimal number) in [0, hi] for flag; prints why and returns false if not. */
static bool parse_seconds(const char *flag, const char *s, double hi, double *out) {
    char *end;
    double t = strtod(s, &end);
    if (end == s || *end || !(t >= 0 && t <= hi)) {
        fprintf(stderr, "picogradd: %s must be 0 to %g seconds, got '%s'\n", flag, hi, s);
        return false;
    }
    *out = t;
    return true;
}

static bool parse_range(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    if (!parse_bytes(s, out) || *out < lo || *out > hi) {
        fprintf(stderr, "picogradd: %s must be %llu to %llu, got '%s'\n", flag,
                (unsigned long long)lo, (unsigned long long)hi, s);
        return false;
    }
    return true;
}

enum {
    OPT_LISTEN = 256, OPT_THREADS, OPT_MAX_FRAME, OPT_MAX_MEMORY, OPT_MAX_INFLIGHT,
    OPT_MAX_UNSENT, OPT_MAX_SESSIONS, OPT_SHUTDOWN_TIMEOUT, OPT_LOG_LEVEL, OPT_HELP, OPT_VERSION,
    OPT_JIT, OPT_CC, OPT_CACHE_DIR, OPT_JIT_MIN_WORK, OPT_PREPARED_CACHE, OPT_DUMP_CUDA,
    OPT_MAX_SESSION_MEMORY, OPT_MAX_NODES, OPT_IDLE_TIMEOUT, OPT_REQUEST_TIMEOUT,
    OPT_TOKEN_FILE, OPT_INSECURE, OPT_SOCKET_MODE,
};

/* Fills cfg from argv. Returns 0 to run, 1 for a usage error, 2 after --help or --version. */
static int parse_args(int argc, char **argv, cfg_t *cfg) {
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"max-frame", required_argument, NULL, OPT_MAX_FRAME},
        {"max-memory", required_argument, NULL, OPT_MAX_MEMORY},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"max-unsent", required_argument, NULL, OPT_MAX_UNSENT},
        {"max-sessions", required_argument, NULL, OPT_MAX_SESSIONS},
        {"max-session-memory", required_argument, NULL, OPT_MAX_SESSION_MEMORY},
        {"max-nodes", required_argument, NULL, OPT_MAX_NODES},
        {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
        {"request-timeout", required_argument, NULL, OPT_REQUEST_TIMEOUT},
        {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"jit", required_argument, NULL, OPT_JIT},
        {"cc", required_argument, NULL, OPT_CC},
        {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
        {"jit-min-work", required_argument, NULL, OPT_JIT_MIN_WORK},
        {"prepared-cache", required_argument, NULL, OPT_PREPARED_CACHE},
        {"dump-cuda", required_argument, NULL, OPT_DUMP_CUDA},
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"socket-mode", required_argument, NULL, OPT_SOCKET_MODE},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES), pagesize = sysconf(_SC_PAGESIZE);
    uint64_t v;
    cfg->threads = ncpu > 0 ? (int)ncpu : 1;
    cfg->phys_memory = pages > 0 && pagesize > 0 ? (uint64_t)pages * (uint64_t)pagesize : 0;
    cfg->max_frame = LIM_MAX_FRAME_DEFAULT;
    cfg->max_memory = cfg->phys_memory ? cfg->phys_memory / 4 * 3 : (4ull << 30);
    cfg->max_inflight = LIM_MAX_INFLIGHT_DEFAULT;
    cfg->max_unsent = LIM_MAX_UNSENT_DEFAULT;
    cfg->max_sessions = LIM_MAX_SESSIONS_DEFAULT;
    cfg->max_session_memory = 0; /* after parsing: the --max-memory budget */
    cfg->max_nodes = LIM_MAX_NODES_DEFAULT;
    cfg->idle_timeout = LIM_IDLE_TIMEOUT_DEFAULT;
    cfg->request_timeout = LIM_REQUEST_TIMEOUT_DEFAULT;
    cfg->shutdown_timeout = LIM_SHUTDOWN_TIMEOUT_DEFAULT;
    cfg->jit = true;
    cfg->cc = "cc";
    cfg->cache_dir = NULL; /* main picks the default */
    cfg->prepared_cache = LIM_PREPARED_CACHE_DEFAULT;
    cfg->socket_mode = 0600;

    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_LISTEN:
            if (cfg->nlisten == LIM_MAX_LISTENERS) {
                fprintf(stderr, "picogradd: at most %d --listen\n", LIM_MAX_LISTENERS);
                return 1;
            }
            cfg->listen[cfg->nlisten++] = optarg;
            break;
        case OPT_THREADS:
            if (!parse_range("--threads", optarg, 1, LIM_THREADS_CEILING, &v))
                return 1;
            cfg->threads = (int)v;
            break;
        case OPT_MAX_FRAME:
            if (!parse_range("--max-frame", optarg, 16, LIM_MAX_FRAME_CEILING, &cfg->max_frame))
                return 1;
            break;
        case OPT_MAX_MEMORY:
            if (!parse_range("--max-memory", optarg, LIM_MAX_MEMORY_FLOOR, UINT64_MAX,
                             &cfg->max_memory))
                return 1;
            break;
        case OPT_MAX_INFLIGHT:
            if (!parse_range("--max-inflight", optarg, 1, LIM_MAX_INFLIGHT_CEILING,
                             &cfg->max_inflight))
                return 1;
            break;
        case OPT_MAX_UNSENT:
            if (!parse_range("--max-unsent", optarg, 1, UINT64_MAX, &cfg->max_unsent))
                return 1;
            break;
        case OPT_MAX_SESSIONS:
            if (!parse_range("--max-sessions", optarg, 1, LIM_MAX_SESSIONS_CEILING,
                             &cfg->max_sessions))
                return 1;
            break;
        case OPT_MAX_SESSION_MEMORY:
            if (!parse_range("--max-session-memory", optarg, LIM_MAX_SESSION_MEMORY_FLOOR,
                             UINT64_MAX, &cfg->max_session_memory))
                return 1;
            break;
        case OPT_MAX_NODES:
            if (!parse_range("--max-nodes", optarg, 1, LIM_MAX_NODES_CEILING, &v))
                return 1;
            cfg->max_nodes = (uint32_t)v;
            break;
        case OPT_IDLE_TIMEOUT:
            if (!parse_seconds("--idle-timeout", optarg, LIM_IDLE_TIMEOUT_CEILING,
                               &cfg->idle_timeout))
                return 1;
            break;
        case OPT_REQUEST_TIMEOUT:
            if (!parse_seconds("--request-timeout", optarg, LIM_REQUEST_TIMEOUT_CEILING,
                               &cfg->request_timeout))
                return 1;
            break;
        case OPT_SHUTDOWN_TIMEOUT: {
            char *end;
            double t = strtod(optarg, &end);
            if (end == optarg || *end || !(t >= 0 && t <= 86400)) {
                fprintf(stderr, "picogradd: --shutdown-timeout must be 0 to 86400 seconds\n");
                return 1;
            }
            cfg->shutdown_timeout = t;
            break;
        }
        case OPT_LOG_LEVEL: {
            int lvl = log_parse_level(optarg);
            if (lvl < 0) {
                fprintf(stderr, "picogradd: --log-level must be error, warn, info or debug\n");
                return 1;
            }
            log_set_level((log_level_t)lvl);
            break;
        }
        case OPT_JIT_MIN_WORK:
            if (!parse_range("--jit-min-work", optarg, 0, UINT64_MAX, &v))
                return 1;
            fuse_set_min_work(v);
            break;
        case OPT_PREPARED_CACHE:
            if (!parse_range("--prepared-cache", optarg, 0, LIM_PREPARED_CACHE_CEILING, &v))
                return 1;
            cfg->prepared_cache = (uint32_t)v;
            break;
        case OPT_JIT:
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
                fprintf(stderr, "picogradd: --jit must be on or off\n");
                return 1;
            }
            cfg->jit = strcmp(optarg, "on") == 0;
            break;
        case OPT_CC:
            if (!optarg[0]) {
                fprintf(stderr, "picogradd: --cc must name a compiler\n");
                return 1;
            }
            cfg->cc = optarg;
            break;
        case OPT_CACHE_DIR:
            if (!optarg[0]) {
                fprintf(stderr, "picogradd: --cache-dir must name a directory\n");
                return 1;
            }
            cfg->cache_dir = optarg;
            break;
        case OPT_DUMP_CUDA:
            if (!optarg[0] || plan_set_dump_cuda(optarg) != 0) {
                if (!optarg[0])
                    fprintf(stderr, "picogradd: --dump-cuda must name a directory\n");
                return 1;
            }
            break;
        case OPT_TOKEN_FILE:
            if (!optarg[0]) {
                fprintf(stderr, "picogradd: --token-file must name a file\n");
                return 1;
            }
            cfg->token_file = optarg;
            break;
        case OPT_INSECURE:
            cfg->insecure = true;
            break;
        case OPT_SOCKET_MODE: {
            char *end;
            errno = 0;
            unsigned long m = strtoul(optarg, &end, 8);
            if (!optarg[0] || *end || errno || optarg[0] == '-' || m > 0777) {
                fprintf(stderr, "picogradd: --socket-mode must be an octal mode 0 to 0777, "
                                "e.g. 0660, got '%s'\n",
                        optarg);
                return 1;
            }
            cfg->socket_mode = (uint32_t)m;
            break;
        }
        case OPT_HELP:
            usage(stdout);
            return 2;
        case OPT_VERSION:
            printf("picogradd %s (protocol %d)\n", PG_SERVER_VERSION, PROTO_VERSION);
            return 2;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "picogradd: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    /* No quota of its own: a session may use the whole budget. */
    if (cfg->max_session_memory == 0 || cfg->max_session_memory > cfg->max_memory)
        cfg->max_session_memory = cfg->max_memory;
    /* The token crosses TCP in clear, but without one anyone who reaches the port owns the
     * daemon: an operator has to choose one of the two explicitly. */
    for (int i = 0; i < cfg->nlisten && !cfg->token_file && !cfg->insecure; i++)
        if (listen_is_tcp_url(cfg->listen[i])) {
            fprintf(stderr,
                    "picogradd: --listen %s: a TCP listener needs --token-file FILE (clients "
                    "then send the token in hello), or --insecure to let anyone who can reach "
                    "the port use the daemon\n",
                    cfg->listen[i]);
            return 1;
        }
    return 0;
}

/* =============================================================================================
 * Shutdown
 * =========================================================================================== */

static void on_handle_closed(uv_handle_t *h) { (void)h; }

void daemon_check_done(daemon_t *d) {
    if (!d->stopping || d->nconns > 0 || d->done)
        return;
    d->done = true;
    uv_close((uv_handle_t *)&d->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&d->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&d->shutdown_timer, on_handle_closed);
    pool_stop(&d->pool); /* no job can be pending: every connection is gone */
}

static void on_shutdown_timeout(uv_timer_t *t) {
    daemon_t *d = t->data;
    log_warn("shutdown timeout: closing %llu connection(s) with requests still running",
             (unsigned long long)d->nconns);
    d->force = true;
    conn_close_all(d);
}

static void on_signal(uv_signal_t *s, int signum) {
    daemon_t *d = s->data;
    if (d->stopping) {
        if (!d->force)
            on_shutdown_timeout(&d->shutdown_timer);
        return;
    }
    log_info("%s: stopping (waiting up to %gs for %llu connection(s))",
             signum == SIGINT ? "SIGINT" : "SIGTERM", d->cfg.shutdown_timeout,
             (unsigned long long)d->nconns);
    d->stopping = true;
    listen_close_all(d);
    conn_stop_all(d);
    uv_timer_start(&d->shutdown_timer, on_shutdown_timeout,
                   (uint64_t)(d->cfg.shutdown_timeout * 1000), 0);
    daemon_check_done(d);
}

/* Writes the default kernel cache directory: $XDG_CACHE_HOME/picogradd, else
 * $HOME/.cache/picogradd, else /tmp/picogradd-cache-$UID. */
static void default_cache_dir(char *buf, size_t cap) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0] == '/')
        snprintf(buf, cap, "%s/picogradd", xdg);
    else if (home && home[0] == '/')
        snprintf(buf, cap, "%s/.cache/picogradd", home);
    else
        snprintf(buf, cap, "/tmp/picogradd-cache-%u", (unsigned)getuid());
}

int main(int argc, char **argv) {
    static daemon_t daemon;
    char cache_dir[4096];
    daemon_t *d = &daemon;
    uv_loop_t loop;
    char default_url[160];
    int status = 1;

    signal(SIGPIPE, SIG_IGN); /* a peer that vanishes mid-reply is an error code, not a death */
    int prc = parse_args(argc, argv, &d->cfg);
    if (prc)
        return prc == 2 ? 0 : 1;
    if (d->cfg.token_file && auth_token_load(d->cfg.token_file, &d->token) != 0)
        return 1;
    g_daemon = d;
    mem_init(d->cfg.max_memory);
    if (uv_loop_init(&loop) != 0) {
        log_error("cannot create the event loop");
        return 1;
    }
    d->loop = &loop;
    d->start_ns = uv_hrtime();

    ref_set_threads(d->cfg.threads);
    if (!d->cfg.cache_dir) {
        default_cache_dir(cache_dir, sizeof(cache_dir));
        d->cfg.cache_dir = cache_dir;
    }
    /* The CUDA backend, when built: a machine without a GPU serves the CPU only. */
    dev_init(d->cfg.cache_dir);
    crun_init(); /* GPU runs: plans carry CUDA source when a GPU is there */
    prepcache_init(d->cfg.prepared_cache);
    if (d->cfg.jit) {
        /* A compiler that does not work is logged and leaves the interpreter in charge. */
        jit_init(d->cfg.cc, d->cfg.cache_dir);
    }
    int rc = pool_start(&d->pool, d->loop, d->cfg.threads, conn_job_done);
    if (rc) {
        log_error("cannot start %d worker threads: %s", d->cfg.threads, strerror(-rc));
        goto out_loop;
    }
    uv_signal_init(d->loop, &d->sigint);
    uv_signal_init(d->loop, &d->sigterm);
    uv_timer_init(d->loop, &d->shutdown_timer);
    d->sigint.data = d->sigterm.data = d->shutdown_timer.data = d;
    /* Sockets passed by systemd replace the default listener; --listen adds to them. */
    int inherited = listen_inherit(d);
    if (inherited < 0)
        goto out_stop;
    if (d->cfg.nlisten == 0 && inherited == 0) {
        proto_default_url(default_url, sizeof(default_url), false);
        d->cfg.listen[d->cfg.nlisten++] = default_url;
    }
    for (int i = 0; i < d->cfg.nlisten; i++)
        if (listen_open(d, d->cfg.listen[i]) != 0)
            goto out_stop;
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    log_info("picogradd %s ready: %d threads, max frame %llu bytes, max memory %llu bytes, "
             "jit %s",
             PG_SERVER_VERSION, d->cfg.threads, (unsigned long long)d->cfg.max_frame,
             (unsigned long long)d->cfg.max_memory,
             !d->cfg.jit ? "off" : jit_available() ? "on" : "unavailable (interpreting)");
    status = 0;

out_stop:
    if (status != 0) {
        d->stopping = true;
        listen_close_all(d);
        daemon_check_done(d);
    }
    uv_run(d->loop, UV_RUN_DEFAULT);
    if (status == 0)
        log_info("stopped");
out_loop:
    prepcache_shutdown(); /* its entries hold plans */
    plan_cache_shutdown();
    if (d->cfg.jit)
        jit_shutdown();
    dev_shutdown();
    auth_token_wipe(&d->token);
    if (uv_loop_close(&loop) != 0)
        log_warn("event loop closed with live handles");
    mem_data_trim();
    if (status == 0 && (mem_in_use() != 0 || pg_malloc_live() != 0))
        log_warn("leak at exit: %llu budget bytes, %llu internal bytes still allocated",
                 (unsigned long long)mem_in_use(), (unsigned long long)pg_malloc_live());
    return status;
}
