"""Fixtures for the integration tests: real picogradd processes, started and checked per test.

The daemon binary is build/bin/picogradd under the repository root, or $PICOGRAD_DAEMON. Each
daemon runs in its own temporary directory with a Unix listener and a TCP listener on port 0 (with
--insecure, so tests reach it over TCP without a token, unless given a ``token``); its
stdout and stderr go to a log file, which is how the fixture learns the real TCP port (the daemon
logs "listening on <url>" per listener) and how teardown spots sanitizer reports. Teardown sends
SIGTERM and requires exit status 0: a daemon that crashes or leaks into ASan output fails the test
that ran it, not some later one.

Run: PYTHONPATH=clients/python python3 -m pytest tests/integration
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The tests import the client from the source tree when it is not installed, so a plain
# `pytest tests/integration` works without PYTHONPATH=clients/python.
if importlib.util.find_spec("picograd") is None:
    sys.path.insert(0, str(REPO_ROOT / "clients" / "python"))

DAEMON_BIN = Path(os.environ.get("PICOGRAD_DAEMON", REPO_ROOT / "build" / "bin" / "picogradd"))
# Extra arguments for every daemon the tests start, ahead of the test's own (which win where they
# repeat a flag): deploy/test.sh runs the conformance suites again with "--jit-min-work 0", so
# that every loop of them runs as a compiled kernel instead of the interpreter.
DAEMON_ARGS = os.environ.get("PICOGRAD_TEST_DAEMON_ARGS", "").split()

# PICOGRAD_TEST_DEVICE=cuda:0 runs the suites with every tensor made on that device
# (pg.set_default_device): tests/bench/gpu.sh on a GPU machine, and deploy/test.sh on the
# stand-in driver (with PICOGRAD_CUDA_HOST_KERNELS=1, see server/cudarun.h).
TEST_DEVICE = os.environ.get("PICOGRAD_TEST_DEVICE") or None

READY_TIMEOUT = 10.0  # seconds for a daemon to log all of its "listening on" lines
EXIT_TIMEOUT = 15.0   # seconds for a daemon to exit after SIGTERM (covers --shutdown-timeout)

# Text that only appears in a log when a sanitizer or the C runtime found a bug.
SANITIZER_MARKERS = ("ASan", "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "ThreadSanitizer", "runtime error:")

_LISTENING = re.compile(r"listening on ((?:unix|tcp)://\S+)")


def pytest_configure(config):
    # Also registered in pytest.ini; repeated here so a run from another rootdir knows the marker.
    config.addinivalue_line("markers", "large_memory: needs about 2 GiB of RAM (still run by "
                                       "default; deselect with -m 'not large_memory')")


class Daemon:
    """One picogradd process (restartable) in directory ``tmpdir``.

    ``unix_url`` and ``tcp_url`` are the URLs of the running process (``tcp_url`` is None when it
    has no TCP listener); ``proc`` is its Popen; ``log_path`` holds its stdout and stderr.
    ``token`` (a str) starts it with ``--token-file`` holding it (``token_path``), so its TCP
    listener requires the token; without one it gets ``--insecure`` unless ``insecure`` is False.
    """

    def __init__(self, tmpdir, name="pg", listen=None, extra_args=(), token=None, insecure=True):
        self.tmpdir = Path(tmpdir)
        self.name = name
        self.socket_path = self.tmpdir / f"{name}.sock"
        self.listen = list(listen) if listen is not None else [
            f"unix://{self.socket_path}", "tcp://127.0.0.1:0"]
        self.extra_args = list(extra_args)
        self.token = token
        self.insecure = insecure
        self.token_path = None
        if token is not None:
            self.token_path = self.tmpdir / f"{name}.token"
            self.token_path.write_text(token)
            self.token_path.chmod(0o600)
        self.proc = None
        self.log_path = None
        self.unix_url = None
        self.tcp_url = None
        self._runs = 0
        self._log_file = None
        self.expect_clean_exit = True  # cleared by kill(): a SIGKILLed daemon cannot exit 0

    # -- process control ---------------------------------------------------------------------

    def start(self, extra_args=None, listen=None, wait=True):
        """(Re)starts the daemon, optionally with new ``extra_args``/``listen``; returns self.

        A running process is stopped first and checked like at teardown. With ``wait`` False it
        returns as soon as the process is spawned (for daemons expected to fail).
        """
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        if listen is not None:
            self.listen = list(listen)
        self._runs += 1
        self.log_path = self.tmpdir / f"{self.name}.{self._runs}.log"
        args = [str(DAEMON_BIN)]
        for url in self.listen:
            args += ["--listen", url]
        if self.token_path is not None:
            args += ["--token-file", str(self.token_path)]
        elif self.insecure:
            args += ["--insecure"]
        args += ["--log-level", "info"] + DAEMON_ARGS + self.extra_args
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.expect_clean_exit = True
        self.unix_url = self.tcp_url = None
        if wait:
            self._wait_ready()
        return self

    def _wait_ready(self):
        want = len(self.listen)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            urls = _LISTENING.findall(self.log())
            if len(urls) >= want:
                break
            if self.proc.poll() is not None:
                pytest.fail(f"picogradd exited with {self.proc.returncode} before listening:\n"
                            f"{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"picogradd did not log {want} 'listening on' lines within "
                            f"{READY_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.01)
        for url in urls:
            if url.startswith("unix://") and self.unix_url is None:
                self.unix_url = url
            elif url.startswith("tcp://") and self.tcp_url is None:
                self.tcp_url = url

    def url(self, transport):
        """The URL of listener ``transport`` ("unix" or "tcp")."""
        return self.unix_url if transport == "unix" else self.tcp_url

    def log(self):
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=EXIT_TIMEOUT):
        """Signals the daemon, waits for it, and returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"picogradd did not exit within {timeout} s of signal {sig}:\n{self.log()}")
        self._log_file.close()
        return rc

    def kill(self):
        """SIGKILLs the daemon (a crash, as far as clients can tell) and reaps it."""
        self.expect_clean_exit = False
        self.proc.kill()
        self.proc.wait()
        self._log_file.close()

    def check_log(self):
        text = self.log()
        found = [m for m in SANITIZER_MARKERS if m in text]
        assert not found, f"picogradd log mentions {found}:\n{text}"

    def teardown(self):
        if self.proc is None:
            return
        was_running = self.proc.poll() is None
        rc = self.stop()
        self.check_log()
        if self.expect_clean_exit and was_running:
            assert rc == 0, f"picogradd exited with {rc} after SIGTERM:\n{self.log()}"


@pytest.fixture(autouse=True)
def _test_device():
    """Every test's creation functions make tensors on PICOGRAD_TEST_DEVICE when it is set."""
    if TEST_DEVICE is None:
        yield
        return
    import picograd as pg
    pg.set_default_device(TEST_DEVICE)
    try:
        yield
    finally:
        pg.set_default_device(None)


@pytest.fixture
def daemon_factory(tmp_path):
    """Returns ``make(extra_args=(), listen=None, name=None, wait=True, token=None,
    insecure=True) -> Daemon``.

    Every daemon made is stopped and checked (exit 0 after SIGTERM, no sanitizer output) at
    teardown.
    """
    made = []

    def make(extra_args=(), listen=None, name=None, wait=True, token=None, insecure=True):
        d = Daemon(tmp_path, name=name or f"pg{len(made)}", listen=listen, extra_args=extra_args,
                   token=token, insecure=insecure)
        made.append(d)
        return d.start(wait=wait)

    yield make
    errors = []
    for d in made:
        try:
            d.teardown()
        except BaseException as exc:  # tear all of them down, then report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def daemon(daemon_factory):
    """A running daemon with default limits, listening on a Unix socket and TCP 127.0.0.1."""
    return daemon_factory()


@pytest.fixture(params=["unix", "tcp"])
def transport(request):
    return request.param


@pytest.fixture
def url(daemon, transport):
    """The daemon fixture's URL for the parametrized transport."""
    return daemon.url(transport)


@pytest.fixture
def conn(daemon):
    """A picograd connection to the daemon fixture, made the default one for the test (pg.tensor
    and friends use it). Suites that talk raw requests define their own `conn`, which wins."""
    import picograd as pg
    c = pg.connect(daemon.unix_url, timeout=120)
    yield c
    c.close()
