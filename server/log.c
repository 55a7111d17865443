/*
 * log.c - leveled logging to stderr.
 *
 * A whole line is formatted first and written with one write(2), so lines from worker threads
 * never interleave mid-line.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static log_level_t log_level = LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(log_level_t level) { log_level = level; }

int log_parse_level(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int log_enabled(log_level_t level) { return level <= log_level; }

void log_msg(log_level_t level, const char *fmt, ...) {
    if (level > log_level)
        return;
    char line[1024];
    int n = snprintf(line, sizeof(line), "picogradd[%d]: %s: ", (int)getpid(), level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nowhere left to report a failing stderr */
}
