/*
 * fuzz_request.c - libFuzzer harness for the request path: frames from a byte stream, the
 * msgpack checks, decoding, and every op that runs on the loop thread (hello ping put get free
 * stats) with its reply packed; sleep with its fields checked. See conn_driver.h.
 */
#define FZ_EXEC_GRAPHS 0
#include "conn_driver.h"
