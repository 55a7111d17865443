/*
 * log.h - leveled logging to stderr: "picogradd[pid]: level: message".
 *
 * Logging goes to stderr only, one line per call, so that systemd's journal and the test
 * harness (which reads the "listening on" lines) both see whole lines.
 */
#ifndef PG_LOG_H
#define PG_LOG_H

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level_t;

/* Sets the least severe level that is printed. */
void log_set_level(log_level_t level);
/* Parses "error", "warn", "info" or "debug"; returns the level or -1. */
int log_parse_level(const char *s);
/* True when messages of this level are printed (to skip building expensive ones). */
int log_enabled(log_level_t level);
/* Prints one line at the given level. */
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) (log_enabled(LOG_DEBUG) ? log_msg(LOG_DEBUG, __VA_ARGS__) : (void)0)

#endif /* PG_LOG_H */
