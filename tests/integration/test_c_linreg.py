"""The C client's training example (clients/c/examples/linreg.c) against a real daemon.

The example fits a linear regression with one `run` per step, each with `grad` nodes and `assign`
nodes. `grad` comes with the autodiff work (PROTOCOL.md, `grad`): on a daemon that does not serve
it (neither hello's `ops` nor `node_ops` name it, and a probe with `explain` says unknown_op) the
test skips with a message, and runs as soon as the daemon has it. The example binary sits beside
the daemon binary (build/bin, or build-asan/bin when PICOGRAD_DAEMON points there).
"""

import subprocess

import pytest

from conftest import DAEMON_BIN
from helpers import wait_stats
from picograd.client import Connection, PicogradError

EXAMPLE = DAEMON_BIN.parent / "pg_example_linreg"


def serves_grad(conn):
    info = conn.server_info
    if "grad" in info.get("ops", []) or "grad" in info.get("node_ops", []):
        return True
    try:
        conn.call("explain", nodes=[{"op": "const", "value": 1.0},
                                    {"op": "grad", "in": [0, 0]}],
                  outputs=[{"node": 1, "keep": False}])
    except PicogradError as exc:
        return exc.code != "unknown_op"
    return True


def test_linreg_example(daemon):
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} is not built")
    with Connection(daemon.unix_url) as c:
        if not serves_grad(c):
            pytest.skip("this daemon does not serve the `grad` node yet (autodiff): the linreg "
                        "example needs it")
        before = c.stats()
    p = subprocess.run([str(EXAMPLE), daemon.unix_url, "300"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"linreg exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    assert "fitted" in p.stdout, p.stdout
    with Connection(daemon.unix_url) as c:
        # The example's session is closed, so its tensors are freed (asynchronously).
        after = wait_stats(c, tensors=before["tensors"])
    assert after["tensors"] == before["tensors"]
    # 300 steps of one graph: planned once, the rest plan-cache hits.
    assert after["plans"]["hits"] - before["plans"]["hits"] >= 299
