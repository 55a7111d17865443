/*
 * task.h - a tiny test harness in the manner of libuv's test/task.h.
 *
 * Each test is a function listed once in the file's TEST_LIST; the runner executes every test in
 * its own child process with a timeout, so a crash or a hang fails that test alone, and prints
 * one line per test. Assertions print both sides of a failed comparison.
 *
 *   TEST_IMPL(frame_roundtrip) { ASSERT_EQ(1 + 1, 2); return 0; }
 *   #define TEST_LIST(X) X(frame_roundtrip)
 *   TEST_MAIN(TEST_LIST)
 */
#ifndef PG_TASK_H
#define PG_TASK_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TEST_IMPL(name) static int test_##name(void)

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define ASSERT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    a_, b_);                                                                       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (strcmp(a_, b_) != 0) {                                                                 \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a,  \
                    #b, a_, b_);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    const char *name;
    int (*fn)(void);
} task_entry_t;

#define TASK_ENTRY(name) {#name, test_##name},

/* Runs every test (or the one named in argv[1]) in a child with a 30 s alarm. */
static inline int task_run_all(const task_entry_t *tests, int n, int argc, char **argv) {
    int failed = 0, ran = 0;
    for (int i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        ran++;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(30);
            _exit(tests[i].fn() == 0 ? 0 : 1);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok)
            failed++;
        printf("%s %d - %s%s\n", ok ? "ok" : "not ok", i + 1, tests[i].name,
               WIFSIGNALED(st) ? (WTERMSIG(st) == SIGALRM ? " (timeout)" : " (signal)") : "");
    }
    printf("# %d/%d passed\n", ran - failed, ran);
    return failed || ran == 0 ? 1 : 0;
}

#define TEST_MAIN(LIST)                                                                            \
    int main(int argc, char **argv) {                                                              \
        static const task_entry_t tests[] = {LIST(TASK_ENTRY)};                                    \
        return task_run_all(tests, (int)(sizeof(tests) / sizeof(tests[0])), argc, argv);           \
    }

#endif /* PG_TASK_H */
