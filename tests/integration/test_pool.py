"""The PET worker pool's processes end with the process that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A node-like process: it starts the pool (two jobs), says which workers it has, then waits to be killed.
_NODE = """
import multiprocessing, os, sys, time
from fedlink.pets import pool
if __name__ == "__main__":
    pool.spread(os.getpid, [(), ()])
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_pool_workers_end_when_their_node_is_killed_outright(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(_NODE)
    env = {**os.environ, "FEDLINK_HE_WORKERS": "2"}
    node = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert node.stdout is not None
        workers = [int(p) for p in node.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
        node.send_signal(signal.SIGKILL)  # no atexit hook runs
        node.wait(30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "pool workers outlived the node that started them"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(30)
