/*
 * jit.c - compiles rendered C kernels with the system compiler and caches them in memory and on
 * disk (the contract is jit.h).
 *
 * Why a compiler and not an interpreter: a fused kernel (kernels/codegen/render_c.c) is a plain
 * loop with baked shapes and strides that `cc -O3 -march=native` vectorizes, which the
 * interpreter's generic strided loops cannot be. Compiling costs tens of milliseconds, so every
 * kernel is compiled once per machine: a .so in the cache directory, named after the kernel and
 * the first half of its key, survives restarts.
 *
 *   jit_get(name, src):  memory table hit           -> fn
 *                        <dir>/<name>-<key16>.so    -> dlopen, check pg_kernel_key -> fn
 *                        otherwise                  -> cc src -> .tmp-<pid>-<n>.so -> rename -> fn
 *
 * Choices, so that they are written down:
 *  - One mutex guards everything and a compile runs under it. That is the simplest way to make
 *    concurrent requests for one kernel compile it once; the cost is that a compile stalls other
 *    threads' lookups, which only happens while new kernels are being built.
 *  - A kernel is never dlclose()d before jit_shutdown(), because a worker may still be running
 *    it. The memory table holds at most JIT_MAX_KERNELS kernels; past that, jit_get still
 *    returns the function, and keeps the handle in an overflow list (dlopen of a file already
 *    loaded returns the same handle, so a repeated miss adds no memory: the extra reference is
 *    dropped at once).
 *  - The key is a 128-bit hash of (source, compiler identity, flags, CPU features). The file name
 *    carries 64 bits of it; the full key is compiled into the .so as `pg_kernel_key` and compared
 *    on load, so a truncated, corrupt or foreign file is unlinked and rebuilt.
 *  - The compiler runs by posix_spawnp with an argument vector (no shell), stdout and stderr to a
 *    file in the cache directory; an error reply quotes its first "error" line with the temporary
 *    file's path replaced by the kernel's name.
 *  - Temporary files are named .tmp-<pid>-*, never <name>-<key16>.so, so a lookup cannot take
 *    one for an entry. A daemon killed mid-compile leaves its .c and .err behind, and its
 *    compiler, which outlives it, still writes the .so that nobody renames: jit_init removes
 *    the temporary files of processes that no longer exist (or that are a day old, for a
 *    directory shared across PID namespaces), so a crash loop cannot fill the disk.
 */
#include "jit.h"

#include "../../server/log.h"
#include "../../server/mem.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define JIT_MAX_KERNELS 4096   /* kernels kept in the memory table */
#define JIT_TABLE_SLOTS 8192   /* its slots: a power of two, at most half full */
#define JIT_MAX_ARGS 32        /* words of the compiler command */
#define JIT_NAME_MAX 64        /* a kernel name (an identifier) */
#define JIT_DIR_MAX 3840     /* the cache directory's path, leaving room for file names */
#define JIT_PATH_MAX 4096

/* The compiler flags, part of every key. -ffp-contract=off: no fused multiply-add, whose single
 * rounding would differ from the interpreter's; no -ffast-math for the same reason.
 * -nostdlib (with -lgcc, added after the source, for any helper routine GCC may call): a kernel
 * is not linked against libc and libm, its few calls into them (memcpy, memset, float64 exp...)
 * bind to the daemon's own libc and libm when it is loaded (dlopen, RTLD_NOW). That leaves out
 * the start-up files and the libraries' link: a cold compile ~15 % shorter (median of 11 on the
 * 2-core VM: 112 against 132 ms for the layer_norm kernel). Kernels include no system header
 * (render_c.c declares the libm functions they call), so an undeclared call is an error. */
static const char *const jit_flags[] = {
    "-O3", "-march=native", "-std=c11", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off",
    "-nostdlib", "-Werror=implicit-function-declaration",
};
#define JIT_NFLAGS (sizeof(jit_flags) / sizeof(jit_flags[0]))

typedef struct {
    char *name;      /* the kernel's name (owned); NULL: an empty slot */
    kir_fn_t fn;     /* its entry point */
    void *dl;        /* its dlopen handle, closed at jit_shutdown */
} jit_entry_t;

static struct {
    pthread_mutex_t lock;
    bool ready;                   /* jit_init ran and jit_shutdown has not */
    bool available;               /* the probe compiled and ran */
    char *argv[JIT_MAX_ARGS + 1]; /* the compiler command, split on spaces (owned) */
    int argc;
    char dir[JIT_DIR_MAX];        /* where .so files live: the cache or a private temp dir */
    bool private_dir;             /* dir is ours alone: removed at shutdown */
    char ident[256];              /* first line of `cc --version` */
    uint64_t cpu_hash;            /* hash of /proc/cpuinfo's flags line */
    jit_entry_t *table;           /* JIT_TABLE_SLOTS slots */
    size_t count;                 /* kernels in table */
    void **overflow;              /* handles of kernels past JIT_MAX_KERNELS (owned) */
    size_t noverflow, overflow_cap;
    uint64_t counter;             /* numbers temporary files */
    jit_stats_t stats;
} jit = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* =============================================================================================
 * Small helpers
 * =========================================================================================== */

static double jit_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* True for a name that can be a C identifier and a file name: [A-Za-z0-9_], 1 to 64 bytes. */
static bool jit_name_ok(const char *name) {
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= JIT_NAME_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                   (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return n > 0;
}

/* Writes n bytes to path (created or truncated). Returns 0 or -1. */
static int jit_write_file(const char *path, const char *a, size_t na, const char *b, size_t nb) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = (fwrite(a, 1, na, f) == na && fwrite(b, 1, nb, f) == nb) ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/* Creates dir and its missing parents (like mkdir -p). Returns 0 or -1. */
static int jit_mkdirs(const char *dir) {
    char p[JIT_PATH_MAX];
    if (snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p))
        return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/*
 * Runs argv (searched in PATH) with stdin from /dev/null and stdout and stderr to out_path.
 * Returns the exit status (0: success), or -1 when it could not run or was killed.
 */
static int jit_spawn(char *const *argv, const char *out_path) {
    posix_spawn_file_actions_t fa;
    int rc = -1, st = 0;
    pid_t pid;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return -1;
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, 1, 2) != 0)
        goto out_destroy;
    if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0)
        goto out_destroy;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            goto out_destroy;
    rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
out_destroy:
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

/* Reads the first line of path that contains `want` (any line when want is NULL) into buf,
 * without the newline. Returns true when one was found. */
static bool jit_first_line(const char *path, const char *want, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    bool found = false;
    if (!f)
        return false;
    char line[1024];
    while (!found && fgets(line, sizeof(line), f)) {
        if (want && !strstr(line, want))
            continue;
        size_t n = strcspn(line, "\n");
        if (n >= cap)
            n = cap - 1; /* a longer line is cut: the prefix still identifies it */
        memcpy(buf, line, n);
        buf[n] = '\0';
        found = true;
    }
    fclose(f);
    return found;
}

/* =============================================================================================
 * The memory table (callers hold jit.lock)
 * =========================================================================================== */

static jit_entry_t *jit_slot(const char *name) {
    size_t mask = JIT_TABLE_SLOTS - 1;
    size_t i = (size_t)kir_hash(KIR_HASH_INIT, name, strlen(name)) & mask;
    while (jit.table[i].name && strcmp(jit.table[i].name, name) != 0)
        i = (i + 1) & mask;
    return &jit.table[i];
}

/* Remembers a loaded kernel; takes ownership of the handle dl. */
static void jit_remember(const char *name, kir_fn_t fn, void *dl) {
    if (jit.count < JIT_MAX_KERNELS) {
        jit_entry_t *e = jit_slot(name);
        e->name = pg_strdup(name);
        if (e->name) {
            e->fn = fn;
            e->dl = dl;
            jit.count++;
            return;
        }
    }
    for (size_t k = 0; k < jit.noverflow; k++)
        if (jit.overflow[k] == dl) {
            dlclose(dl); /* an extra reference to a library that stays loaded */
            return;
        }
    if (jit.noverflow == jit.overflow_cap) {
        size_t cap = jit.overflow_cap ? 2 * jit.overflow_cap : 64;
        void **p = pg_realloc_array(jit.overflow, cap, sizeof(*p));
        if (!p)
            return; /* keep it loaded forever rather than close a kernel the caller will run */
        jit.overflow = p;
        jit.overflow_cap = cap;
    }
    jit.overflow[jit.noverflow++] = dl;
}

/* =============================================================================================
 * The disk cache and the compiler (callers hold jit.lock)
 * =========================================================================================== */

/* Writes the 32-hex-digit key of src into key (33 bytes). */
static void jit_key(const char *src, char *key) {
    uint64_t h[2] = {KIR_HASH_INIT, KIR_HASH_INIT ^ 0x9e3779b97f4a7c15ull};
    for (int k = 0; k < 2; k++) {
        h[k] = kir_hash(h[k], src, strlen(src) + 1);
        h[k] = kir_hash(h[k], jit.ident, strlen(jit.ident) + 1);
        for (size_t f = 0; f < JIT_NFLAGS; f++)
            h[k] = kir_hash(h[k], jit_flags[f], strlen(jit_flags[f]) + 1);
        h[k] = kir_hash(h[k], &jit.cpu_hash, sizeof(jit.cpu_hash));
    }
    snprintf(key, 33, "%016" PRIx64 "%016" PRIx64, h[0], h[1]);
}

/* True when the file at path is a whole 64-bit ELF object: every segment and the section table
 * lie inside the file. dlopen maps segments straight from the file, so a truncated file (a
 * daemon killed mid-write by another process, a full disk) would otherwise load and then fault
 * with SIGBUS on the first touch of a missing page. */
static bool jit_elf_complete(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = false;
    struct stat st;
    Elf64_Ehdr eh;
    if (fstat(fd, &st) != 0 || pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_phentsize != sizeof(Elf64_Phdr))
        goto out;
    uint64_t size = (uint64_t)st.st_size;
    if (eh.e_phoff > size || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > size - eh.e_phoff ||
        eh.e_shoff > size || (uint64_t)eh.e_shnum * eh.e_shentsize > size - eh.e_shoff)
        goto out;
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * sizeof(ph))) !=
            (ssize_t)sizeof(ph))
            goto out;
        if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset)
            goto out;
    }
    ok = true;
out:
    close(fd);
    return ok;
}

/* dlopens path and checks its key. Returns the handle and sets *fn, or NULL (closing what it
 * opened) when the file is missing, truncated, unloadable, foreign or lacks the function. */
static void *jit_load(const char *path, const char *name, const char *key, kir_fn_t *fn) {
    if (!jit_elf_complete(path))
        return NULL;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return NULL;
    const char *k = dlsym(dl, "pg_kernel_key");
    void *f = dlsym(dl, name);
    if (!k || !f || strcmp(k, key) != 0) {
        dlclose(dl);
        return NULL;
    }
    /* POSIX allows converting dlsym's void * to a function pointer; C11 does not say so. */
    memcpy(fn, &f, sizeof(*fn));
    return dl;
}

/* Compiles src (with its key appended) into final_path. Returns 0, or -1 with err filled. */
static int jit_compile(const char *name, const char *src, const char *key, const char *final_path,
                       proto_err_t *err) {
    char cpath[JIT_PATH_MAX], opath[JIT_PATH_MAX], epath[JIT_PATH_MAX], tail[128];
    uint64_t n = jit.counter++;
    int rc = -1;
    snprintf(cpath, sizeof(cpath), "%s/.tmp-%d-%" PRIu64 ".c", jit.dir, (int)getpid(), n);
    snprintf(opath, sizeof(opath), "%s/.tmp-%d-%" PRIu64 ".so", jit.dir, (int)getpid(), n);
    snprintf(epath, sizeof(epath), "%s/.tmp-%d-%" PRIu64 ".err", jit.dir, (int)getpid(), n);
    snprintf(tail, sizeof(tail), "\nconst char pg_kernel_key[] = \"%s\";\n", key);
    double t0 = jit_now();
    if (jit_write_file(cpath, src, strlen(src), tail, strlen(tail)) != 0) {
        proto_fail(err, PG_EINTERNAL, "kernel %s: cannot write its source to the cache", name);
        goto out_unlink;
    }
    char *argv[JIT_MAX_ARGS + JIT_NFLAGS + 8];
    int argc = 0;
    for (int k = 0; k < jit.argc; k++)
        argv[argc++] = jit.argv[k];
    for (size_t f = 0; f < JIT_NFLAGS; f++)
        argv[argc++] = (char *)jit_flags[f];
    argv[argc++] = "-o";
    argv[argc++] = opath;
    argv[argc++] = cpath;
    argv[argc++] = "-lgcc";
    argv[argc] = NULL;
    int st = jit_spawn(argv, epath);
    jit.stats.compile_seconds += jit_now() - t0;
    if (st != 0) {
        char line[512] = "", *msg = line;
        if (jit_first_line(epath, "error", line, sizeof(line)) ||
            jit_first_line(epath, NULL, line, sizeof(line))) {
            char *c = strstr(line, ".c:"); /* drop the temporary file's path */
            if (c)
                msg = c + 3;
        } else {
            snprintf(line, sizeof(line), "the compiler could not be run");
        }
        proto_fail(err, PG_EINTERNAL, "kernel %s failed to compile: %s", name, msg);
        goto out_unlink;
    }
    if (rename(opath, final_path) != 0) {
        proto_fail(err, PG_EINTERNAL, "kernel %s: cannot move it into the cache", name);
        goto out_unlink;
    }
    jit.stats.compiled++;
    rc = 0;
out_unlink:
    unlink(opath); /* gone already after a successful rename */
    unlink(cpath);
    unlink(epath);
    return rc;
}

/* =============================================================================================
 * The API
 * =========================================================================================== */

kir_fn_t jit_get(const char *name, const char *src, proto_err_t *err) {
    kir_fn_t fn = NULL;
    pthread_mutex_lock(&jit.lock);
    if (!jit.ready || !jit.available || !jit.table) {
        proto_fail(err, PG_EINTERNAL, "kernel compiler not available");
        goto out_unlock;
    }
    if (!jit_name_ok(name)) {
        proto_fail(err, PG_EINTERNAL, "invalid kernel name");
        goto out_unlock;
    }
    jit_entry_t *e = jit_slot(name);
    if (e->name) {
        jit.stats.memory_hits++;
        fn = e->fn;
        goto out_unlock;
    }
    char key[33], path[JIT_PATH_MAX];
    jit_key(src, key);
    snprintf(path, sizeof(path), "%s/%s-%.16s.so", jit.dir, name, key);
    void *dl = jit_load(path, name, key, &fn);
    if (dl) {
        jit.stats.disk_hits++;
    } else {
        unlink(path); /* missing, truncated, corrupt or foreign: rebuild it */
        if (jit_compile(name, src, key, path, err) != 0)
            goto out_unlock;
        dl = jit_load(path, name, key, &fn);
        if (!dl) {
            proto_fail(err, PG_EINTERNAL, "kernel %s compiled but cannot be loaded", name);
            goto out_unlock;
        }
    }
    jit_remember(name, fn, dl);
out_unlock:
    pthread_mutex_unlock(&jit.lock);
    return fn;
}

/* Reads the compiler's identity and the CPU's feature flags, which every key includes. */
static void jit_identify(void) {
    char path[JIT_PATH_MAX], *argv[JIT_MAX_ARGS + 2];
    int argc = 0;
    for (int k = 0; k < jit.argc; k++)
        argv[argc++] = jit.argv[k];
    argv[argc++] = "--version";
    argv[argc] = NULL;
    snprintf(path, sizeof(path), "%s/.tmp-%d-version", jit.dir, (int)getpid());
    jit.ident[0] = '\0';
    if (jit_spawn(argv, path) == 0)
        jit_first_line(path, NULL, jit.ident, sizeof(jit.ident));
    unlink(path);
    char flags[8192] = "";
    if (!jit_first_line("/proc/cpuinfo", "flags", flags, sizeof(flags)))
        jit_first_line("/proc/cpuinfo", "Features", flags, sizeof(flags)); /* arm64 */
    jit.cpu_hash = kir_hash(KIR_HASH_INIT, flags, strlen(flags));
}

/* Chooses the directory .so files go to: the cache directory when it can be created and
 * written, else a private temporary one. Returns 0 or -1. */
static int jit_choose_dir(const char *cache_dir) {
    if (cache_dir && jit_mkdirs(cache_dir) == 0 && access(cache_dir, W_OK | X_OK) == 0 &&
        snprintf(jit.dir, sizeof(jit.dir), "%s", cache_dir) < (int)sizeof(jit.dir))
        return 0;
    if (cache_dir)
        log_warn("kernel cache directory %s is unusable (%s); compiling into a temporary one",
                 cache_dir, strerror(errno));
    const char *tmp = getenv("TMPDIR");
    snprintf(jit.dir, sizeof(jit.dir), "%s/picogradd-jit-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(jit.dir)) {
        snprintf(jit.dir, sizeof(jit.dir), "/tmp/picogradd-jit-XXXXXX");
        if (!mkdtemp(jit.dir))
            return -1;
    }
    jit.private_dir = true;
    return 0;
}

/* Seconds after which another process's temporary file is stale even when its pid is in use:
 * no compile takes a day, and a pid seen from another PID namespace may belong to anyone. */
#define JIT_STALE_TMP_SECONDS (24 * 3600)

/* True when a temporary file of process pid, last modified at mtime, can go: its process is
 * gone (kill(pid, 0) answers ESRCH; EPERM means it exists under another user), or the file is
 * JIT_STALE_TMP_SECONDS old. Our own files are never stale. */
static bool jit_tmp_stale(long pid, time_t mtime) {
    if (pid == (long)getpid())
        return false;
    if (pid <= 0 || pid > INT32_MAX || (kill((pid_t)pid, 0) != 0 && errno == ESRCH))
        return true;
    return time(NULL) - mtime > JIT_STALE_TMP_SECONDS;
}

/* Removes the temporary files (.tmp-<pid>-*) that daemons killed mid-compile left in jit.dir. A
 * file that vanishes meanwhile (another daemon cleaning up too) is not an error. */
static void jit_remove_stale_tmp(void) {
    DIR *d = opendir(jit.dir);
    if (!d)
        return;
    struct dirent *ent;
    char p[JIT_PATH_MAX + 256];
    unsigned removed = 0;
    while ((ent = readdir(d)) != NULL) {
        if (strncmp(ent->d_name, ".tmp-", 5) != 0)
            continue;
        char *end;
        errno = 0;
        long pid = strtol(ent->d_name + 5, &end, 10);
        if (errno != 0 || end == ent->d_name + 5 || *end != '-')
            continue; /* not a name this file's code writes: leave it */
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", jit.dir, ent->d_name);
        if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode) || !jit_tmp_stale(pid, st.st_mtime))
            continue;
        if (unlink(p) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        log_info("kernel cache %s: removed %u temporary file(s) left by stopped daemons", jit.dir,
                 removed);
}

/* Builds and runs a one-element fill kernel. Returns 0 when the result is right. */
static int jit_probe(proto_err_t *err) {
    kir_kernel_t *k = pg_malloc(sizeof(*k));
    char name[32];
    int rc = -1;
    if (!k)
        return proto_fail(err, PG_EINTERNAL, "out of memory");
    memset(k, 0, sizeof(*k));
    k->rank = 1;
    k->shape[0] = 1;
    k->nvals = 1;
    k->vals[0] = (kir_val_t){.kind = KIR_CONST, .dtype = PG_FLOAT32, .a = -1, .b = -1, .c = -1,
                             .value = 42.0};
    k->reduce = PRIM_COUNT;
    k->out_dtype = PG_FLOAT32;
    char *src = kir_render_c(k, name, sizeof(name));
    if (!src) {
        proto_fail(err, PG_EINTERNAL, "out of memory");
        goto out_free_kernel;
    }
    pthread_mutex_lock(&jit.lock);
    jit.available = true; /* jit_get refuses nothing for the probe itself */
    pthread_mutex_unlock(&jit.lock);
    kir_fn_t fn = jit_get(name, src, err);
    if (fn) {
        float out = 0;
        void *bufs[1] = {&out};
        fn(bufs, 0, 1);
        if (out == 42.0f)
            rc = 0;
        else
            proto_fail(err, PG_EINTERNAL, "the probe kernel computed a wrong result");
    }
    pg_free(src);
out_free_kernel:
    pg_free(k);
    return rc;
}

int jit_init(const char *cc, const char *cache_dir) {
    proto_err_t err = {0};
    jit_shutdown();
    pthread_mutex_lock(&jit.lock);
    memset(&jit.stats, 0, sizeof(jit.stats));
    char *words = pg_strdup(cc ? cc : "cc");
    if (!words)
        goto out_fail_locked;
    for (char *save = NULL, *w = strtok_r(words, " \t", &save); w && jit.argc < JIT_MAX_ARGS;
         w = strtok_r(NULL, " \t", &save)) {
        jit.argv[jit.argc] = pg_strdup(w);
        if (!jit.argv[jit.argc])
            break;
        jit.argc++;
    }
    pg_free(words);
    jit.table = pg_calloc_array(JIT_TABLE_SLOTS, sizeof(jit_entry_t));
    if (jit.argc == 0 || !jit.table || jit_choose_dir(cache_dir) != 0)
        goto out_fail_locked;
    if (!jit.private_dir)
        jit_remove_stale_tmp();
    jit_identify();
    jit.ready = true;
    pthread_mutex_unlock(&jit.lock);
    if (jit_probe(&err) != 0) {
        log_warn("kernel compiler unusable, using the interpreter: %s", err.message);
        pthread_mutex_lock(&jit.lock);
        jit.available = false;
        pthread_mutex_unlock(&jit.lock);
        return -1;
    }
    return 0;
out_fail_locked:
    pthread_mutex_unlock(&jit.lock);
    log_warn("kernel compiler unusable, using the interpreter: cannot set up the JIT");
    return -1;
}

bool jit_available(void) {
    pthread_mutex_lock(&jit.lock);
    bool ok = jit.available;
    pthread_mutex_unlock(&jit.lock);
    return ok;
}

/* Removes the private directory and everything in it (only files this process wrote). */
static void jit_remove_private_dir(void) {
    DIR *d = opendir(jit.dir);
    if (d) {
        struct dirent *ent;
        char p[JIT_PATH_MAX + 256];
        while ((ent = readdir(d)) != NULL) {
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof(p), "%s/%s", jit.dir, ent->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(jit.dir);
}

void jit_shutdown(void) {
    pthread_mutex_lock(&jit.lock);
    if (jit.table) {
        for (size_t i = 0; i < JIT_TABLE_SLOTS; i++) {
            if (!jit.table[i].name)
                continue;
            dlclose(jit.table[i].dl);
            pg_free(jit.table[i].name);
        }
        pg_free(jit.table);
        jit.table = NULL;
    }
    for (size_t k = 0; k < jit.noverflow; k++)
        dlclose(jit.overflow[k]);
    pg_free(jit.overflow);
    jit.overflow = NULL;
    jit.noverflow = jit.overflow_cap = jit.count = 0;
    for (int k = 0; k < jit.argc; k++)
        pg_free(jit.argv[k]);
    jit.argc = 0;
    if (jit.private_dir)
        jit_remove_private_dir();
    jit.private_dir = false;
    jit.ready = jit.available = false;
    pthread_mutex_unlock(&jit.lock);
}

jit_stats_t jit_stats(void) {
    pthread_mutex_lock(&jit.lock);
    jit_stats_t s = jit.stats;
    pthread_mutex_unlock(&jit.lock);
    return s;
}
