#!/usr/bin/python3
"""Transfer benchmark: picogradd put+get and ping against a raw framed echo on the same socket.

What it does, in one run:

1. Starts ``build/bin/picogradd`` listening on a Unix socket in a temporary folder and on
   ``tcp://127.0.0.1:0``, and two ``build/bin/pg_raw_echo`` servers (tests/bench/raw_echo.c), one
   per socket type. Every server's stderr goes to a log file in that folder; the real URLs are read
   from its ``listening on <url>`` lines.
2. For each socket type and each size (1 to 512 MiB of float32 random data), times rounds of
   ``h = c.put(arr); out = c.get(h)`` through the Python client, interleaved with rounds of the raw
   baseline: one frame of the same size sent to raw_echo with ``sendmsg([hdr, memoryview(arr)])``
   and its echo received with ``recv_into`` into a fresh buffer from ``np.empty``, as the picograd
   client receives a large reply (``--raw-buffer bytearray`` uses a fresh ``bytearray`` instead;
   see "Choice of receive buffer" below). Both move ``2 * size`` bytes per round over the same
   kind of socket, so the ratio picograd/raw is the share of the raw stream throughput that
   picograd keeps. The median of the rounds is reported.
3. Times ``c.ping()`` against a raw ping-pong of a 16-byte frame, and reports median and p99.

It prints a markdown table (and writes it to ``--out FILE``) preceded by a line describing the
machine. Run it from anywhere:

    /usr/bin/python3 tests/bench/transfer.py            # full run, under a minute on a 2-core VM
    /usr/bin/python3 tests/bench/transfer.py --quick    # 1 to 64 MiB, fewer rounds: a smoke run

The machine this runs on is usually small and shared, so only medians and ratios of rounds that
were interleaved in time are worth quoting; absolute numbers move from run to run. ``--pin split``
puts this script on one CPU and the servers on the others, which makes ping ratios reproducible
(unpinned, the scheduler may wake one server next to the client and the other across CPUs).

Choice of receive buffer: ``bytearray(n)`` zero-fills its memory, and above 4 MiB numpy asks the
kernel for transparent huge pages (``madvise``) where a bytearray gets 4 KiB pages. On a VM a fresh
64 MiB bytearray costs several times a fresh np.empty of the same size, so a bytearray baseline is
beaten by picograd at large sizes for reasons that have nothing to do with the socket.
"""

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))

MiB = 1 << 20

# Sizes in MiB, and how many timed rounds each gets (per side, after one warm-up round): small
# sizes are cheap and noisy so they get more rounds, the largest ones take about a second a round.
FULL_SIZES = [(1, 40), (4, 25), (16, 12), (64, 8), (256, 6), (512, 5)]
QUICK_SIZES = [(1, 10), (4, 6), (16, 4), (64, 3)]
FULL_PING = (300, 2000)  # (warm-up iterations, timed iterations)
QUICK_PING = (100, 500)
PING_BODY = 16  # bytes in the raw ping-pong frame body
PING_BLOCK = 100  # ping iterations per side before switching sides


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------


class Server:
    """A child process whose stderr goes to a log file; stopped with SIGTERM in stop()."""

    def __init__(self, name, argv, logdir, cpus=None):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(logdir, name + ".log")
        self.log = open(self.log_path, "wb")
        # Pinning in the child before exec covers every thread the server starts later.
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, preexec_fn=pin)

    def wait_urls(self, count, timeout=15.0):
        """Returns the first `count` URLs the server printed as ``listening on <url>``."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "r", errors="replace") as f:
                urls = re.findall(r"listening on (\S+)", f.read())
            if len(urls) >= count:
                return urls[:count]
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %d before listening; log %s:\n%s"
                                   % (self.name, self.proc.returncode, self.log_path,
                                      self.tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("%s printed %d of %d 'listening on' lines in %.0f s; log:\n%s"
                                   % (self.name, len(urls), count, timeout, self.tail()))
            time.sleep(0.02)

    def tail(self, n=20):
        with open(self.log_path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self, timeout=10.0):
        """Sends SIGTERM and waits; returns the exit status (killed if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def find_url(urls, scheme):
    for u in urls:
        if u.startswith(scheme + "://"):
            return u
    raise RuntimeError("no %s:// url among %r" % (scheme, urls))


# ------------------------------------------------------------------------------------------------
# Raw framed client (the baseline)
# ------------------------------------------------------------------------------------------------


def raw_connect(url):
    """Opens a blocking stream socket to a unix:// or tcp:// URL (TCP_NODELAY on TCP)."""
    if url.startswith("unix://"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(url[len("unix://"):])
        return s
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        s = socket.create_connection((host.strip("[]"), int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    raise ValueError("unsupported url " + url)


def sendmsg_all(sock, bufs):
    """Sends every buffer in `bufs` with sendmsg, continuing after partial sends (no copies)."""
    views = [memoryview(b).cast("B") for b in bufs]
    while views:
        n = sock.sendmsg(views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def recv_exact_into(sock, view):
    """Fills the writable memoryview `view` from the socket."""
    got = 0
    total = len(view)
    while got < total:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("raw_echo closed the connection")
        got += n


def alloc_bytearray(n):
    """A fresh bytearray (zero-filled by Python before the recv; 4 KiB pages)."""
    return bytearray(n)


def alloc_empty(n):
    """The default: a fresh uninitialised buffer, as picograd's client allocates large replies."""
    return np.empty(n, dtype=np.uint8)


RAW_BUFFERS = {"bytearray": alloc_bytearray, "empty": alloc_empty}


def raw_frame_roundtrip(sock, body, alloc=alloc_empty):
    """Sends `body` as one frame and returns the echo in a fresh buffer from alloc(n)."""
    sendmsg_all(sock, [struct.pack(">I", body.nbytes), body])
    hdr = bytearray(4)
    recv_exact_into(sock, memoryview(hdr))
    (n,) = struct.unpack(">I", hdr)
    out = alloc(n)
    recv_exact_into(sock, memoryview(out))
    return out


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs)


def p99(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def bench_transfer(conn, raw, data, size_bytes, rounds, alloc=alloc_empty):
    """Interleaves `rounds` picograd put+get rounds with raw echo rounds of the same size.

    Returns a dict of per-round seconds lists: ``pg`` (put+get), ``put``, ``get``, ``raw``.
    The first round of each side is a warm-up and is checked for correct contents, untimed.
    """
    arr = data[: size_bytes // 4]
    res = {"pg": [], "put": [], "get": [], "raw": []}

    # Warm-up, with a correctness check outside the timed region.
    h = conn.put(arr)
    out = conn.get(h)
    conn.free(h)
    if out.dtype != np.float32 or out.shape != arr.shape or not np.array_equal(out, arr):
        raise RuntimeError("picograd get returned different data for %d bytes" % size_bytes)
    del out
    echo = raw_frame_roundtrip(raw, memoryview(arr), alloc)
    if len(echo) != size_bytes or not np.array_equal(np.frombuffer(echo, np.uint8),
                                                     arr.view(np.uint8)):
        raise RuntimeError("raw_echo returned different data for %d bytes" % size_bytes)
    del echo

    for i in range(rounds):
        # Alternate which side goes first so slow drift of a shared machine hits both alike.
        for side in (("pg", "raw") if i % 2 == 0 else ("raw", "pg")):
            if side == "pg":
                t0 = time.perf_counter()
                h = conn.put(arr)
                t1 = time.perf_counter()
                out = conn.get(h)
                t2 = time.perf_counter()
                conn.free(h)
                if out.shape != arr.shape:  # cheap; the warm-up compared the contents
                    raise RuntimeError("picograd get returned shape %r" % (out.shape,))
                del out
                res["pg"].append(t2 - t0)
                res["put"].append(t1 - t0)
                res["get"].append(t2 - t1)
            else:
                t0 = time.perf_counter()
                echo = raw_frame_roundtrip(raw, memoryview(arr), alloc)
                np.frombuffer(echo, dtype=np.float32)  # what a client hands back
                t1 = time.perf_counter()
                del echo
                res["raw"].append(t1 - t0)
    return res


def bench_ping(conn, raw, warmup, iters):
    """Interleaves blocks of c.ping() with blocks of raw 16-byte ping-pongs; seconds per call.

    The raw side receives into a bytearray: for 16 bytes it is cheaper to make than an np.empty.
    """
    body = np.zeros(PING_BODY, dtype=np.uint8)
    for _ in range(warmup):
        conn.ping()
        raw_frame_roundtrip(raw, body, alloc_bytearray)
    pg, rw = [], []
    clock = time.perf_counter
    done = 0
    while done < iters:
        n = min(PING_BLOCK, iters - done)
        for _ in range(n):
            t0 = clock()
            conn.ping()
            pg.append(clock() - t0)
        for _ in range(n):
            t0 = clock()
            raw_frame_roundtrip(raw, body, alloc_bytearray)
            rw.append(clock() - t0)
        done += n
    return pg, rw


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def machine_line():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return ("Machine: %s, %d cores (%d usable), %s %s, Python %s, numpy %s"
            % (model, cores, usable, platform.system(), platform.release(),
               platform.python_version(), np.__version__))


def fmt_size(n):
    return "%d MiB" % (n // MiB) if n >= MiB else "%d B" % n


def gbps(size_bytes, seconds):
    return 2 * size_bytes / seconds / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1-64 MiB, fewer rounds")
    ap.add_argument("--daemon", default=os.path.join(REPO, "build", "bin", "picogradd"),
                    help="picogradd binary (default build/bin/picogradd)")
    ap.add_argument("--raw-echo", default=os.path.join(REPO, "build", "bin", "pg_raw_echo"),
                    help="raw echo binary (default build/bin/pg_raw_echo)")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra argument for picogradd (repeatable), "
                         "e.g. --daemon-arg=--max-memory=4G")
    ap.add_argument("--socket", choices=["unix", "tcp", "both"], default="both")
    ap.add_argument("--sizes", help="comma-separated MiB sizes, overriding the default list")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--raw-buffer", choices=sorted(RAW_BUFFERS), default="empty",
                    help="receive buffer of the raw client: np.empty (default, as picograd's "
                         "client does) or a fresh bytearray (zero-filled, no huge pages)")
    ap.add_argument("--pin", choices=["none", "split", "same"], default="none",
                    help="CPU placement: none (scheduler decides, default), split (this script "
                         "on the first usable CPU, the servers on the others) or same (all on "
                         "the first usable CPU)")
    args = ap.parse_args()

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        rounds_for = dict(FULL_SIZES)
        sizes = [(int(s), rounds_for.get(int(s), 3)) for s in args.sizes.split(",")]
    warmup, iters = QUICK_PING if args.quick else FULL_PING
    kinds = ["unix", "tcp"] if args.socket == "both" else [args.socket]

    for path in (args.daemon, args.raw_echo):
        if not os.access(path, os.X_OK):
            sys.exit("transfer.py: %s is not an executable; build the project first" % path)

    import picograd  # after sys.path is set, and only once the binaries exist

    machine = machine_line()  # before pinning narrows this process's usable CPUs

    # Placement matters on small machines: where the scheduler puts a server thread relative to
    # the client decides whether a round trip costs a same-CPU switch or a cross-CPU wake-up.
    usable = sorted(os.sched_getaffinity(0))
    server_cpus = None
    if args.pin != "none":
        if args.pin == "split" and len(usable) < 2:
            sys.exit("transfer.py: --pin split needs at least 2 usable CPUs")
        os.sched_setaffinity(0, {usable[0]})
        server_cpus = set(usable[1:]) if args.pin == "split" else {usable[0]}
    placement = ("client CPU %d, servers CPU %s" % (usable[0], ",".join(map(str, sorted(
        server_cpus)))) if server_cpus else "not pinned")
    alloc = RAW_BUFFERS[args.raw_buffer]

    tmp = tempfile.mkdtemp(prefix="pg-bench-")
    servers = []
    rows = []  # (socket, test, size, picograd, raw, ratio)
    splits = []  # (socket, size, put GB/s, get GB/s) for the notes
    errors = []
    try:
        # --insecure: the raw TCP requests of this benchmark send no token (loopback only).
        daemon = Server("picogradd", [args.daemon, "--listen", "unix://%s/pg.sock" % tmp,
                                      "--listen", "tcp://127.0.0.1:0", "--insecure"]
                        + args.daemon_arg, tmp, server_cpus)
        servers.append(daemon)
        raw_u = Server("raw_echo_unix", [args.raw_echo, "--listen", "unix://%s/raw.sock" % tmp],
                       tmp, server_cpus)
        servers.append(raw_u)
        raw_t = Server("raw_echo_tcp", [args.raw_echo, "--listen", "tcp://127.0.0.1:0"], tmp,
                       server_cpus)
        servers.append(raw_t)
        pg_urls = daemon.wait_urls(2)
        urls = {
            "unix": (find_url(pg_urls, "unix"), raw_u.wait_urls(1)[0]),
            "tcp": (find_url(pg_urls, "tcp"), raw_t.wait_urls(1)[0]),
        }

        print(machine)
        print("Placement: %s; raw receive buffer: %s" % (placement, args.raw_buffer))
        print("Sizes: %s; rounds per size: %s; ping: %d iterations after %d warm-up"
              % (", ".join(fmt_size(s * MiB) for s, _ in sizes),
                 ", ".join(str(r) for _, r in sizes), iters, warmup))
        sys.stdout.flush()

        t_gen = time.perf_counter()
        rng = np.random.default_rng(12345)
        data = rng.standard_normal(max(s for s, _ in sizes) * MiB // 4, dtype=np.float32)
        print("Generated %s of float32 random data in %.1f s"
              % (fmt_size(data.nbytes), time.perf_counter() - t_gen))

        t_start = time.perf_counter()
        for kind in kinds:
            pg_url, raw_url = urls[kind]
            conn = picograd.connect(pg_url)
            raw = raw_connect(raw_url)
            try:
                pg_ping, raw_ping = bench_ping(conn, raw, warmup, iters)
                pm, rm = median(pg_ping) * 1e6, median(raw_ping) * 1e6
                pp, rp = p99(pg_ping) * 1e6, p99(raw_ping) * 1e6
                rows.append((kind, "ping median", "-", "%.1f µs" % pm, "%.1f µs" % rm,
                             "%.2f" % (pm / rm)))
                rows.append((kind, "ping p99", "-", "%.1f µs" % pp, "%.1f µs" % rp,
                             "%.2f" % (pp / rp)))
                print("  %s ping: picograd %.1f µs, raw %.1f µs" % (kind, pm, rm))
                sys.stdout.flush()

                for size_mib, rounds in sizes:
                    size = size_mib * MiB
                    try:
                        r = bench_transfer(conn, raw, data, size, rounds, alloc)
                    except Exception as e:  # report the failure in the table, keep going
                        msg = "%s: %s" % (type(e).__name__, e)
                        errors.append("%s %s: %s" % (kind, fmt_size(size), msg))
                        rows.append((kind, "put+get", fmt_size(size), "error", "-", "-"))
                        print("  %s %s: %s" % (kind, fmt_size(size), msg))
                        # A failed request may leave the connection unusable; start fresh ones.
                        conn.close()
                        raw.close()
                        conn = picograd.connect(pg_url)
                        raw = raw_connect(raw_url)
                        continue
                    pg_bw = gbps(size, median(r["pg"]))
                    raw_bw = gbps(size, median(r["raw"]))
                    rows.append((kind, "put+get", fmt_size(size), "%.2f GB/s" % pg_bw,
                                 "%.2f GB/s" % raw_bw, "%.2f" % (pg_bw / raw_bw)))
                    # put and get each move `size` bytes one way (plus a tiny reply).
                    splits.append((kind, fmt_size(size), size / median(r["put"]) / 1e9,
                                   size / median(r["get"]) / 1e9, pg_bw, raw_bw))
                    print("  %s %s: picograd %.2f GB/s, raw %.2f GB/s"
                          % (kind, fmt_size(size), pg_bw, raw_bw))
                    sys.stdout.flush()
            finally:
                conn.close()
                raw.close()
        elapsed = time.perf_counter() - t_start
    finally:
        statuses = {s.name: s.stop() for s in servers}
        for s in servers:
            if statuses[s.name] not in (0, None):
                errors.append("%s exited with status %s; log tail:\n%s"
                              % (s.name, statuses[s.name], s.tail()))
        if not errors:
            shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        machine,
        "Placement: %s; raw receive buffer: %s" % (placement, args.raw_buffer),
        "",
        "| socket | test | size | picograd | raw | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| %s |" % " | ".join(r) for r in rows]
    lines += [
        "",
        "Throughput counts bytes up + bytes down (2 × size per round), GB = 10^9 bytes, median of "
        "interleaved rounds; ratio = picograd / raw (throughput: higher is better, target ≥ 0.70 "
        "on unix; ping: lower is better, target ≤ 2.0).",
        "",
        "Split of the picograd round (GB/s, median; put and get are one-way):",
        "",
        "| socket | size | put | get | put+get (2-way) | raw echo (2-way) |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| %s | %s | %.2f | %.2f | %.2f | %.2f |" % s for s in splits]
    lines += ["", "Measured in %.0f s." % elapsed]
    table = "\n".join(lines) + "\n"

    print()
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    if errors:
        print("\nErrors (logs kept in %s):" % tmp, file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
