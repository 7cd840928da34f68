"""Long-running parties as the CLI starts them: a coordinator or a node, until SIGTERM or Ctrl-C.

A ``ready_file`` is written (atomically) once the party can serve, so that scripts and tests wait on
readiness instead of sleeping: for the coordinator it holds the bound address, for a node its name.
It exists exactly while the party serves (a node removes it while it has lost the coordinator, and
every party removes a stale one at start and its own at exit), so a container health check can be
``test -f`` on it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from fedlink.coordinator.config import load_coordinator_config
from fedlink.coordinator.server import Coordinator
from fedlink.node.agent import NodeAgent
from fedlink.node.config import load_node_config

log = logging.getLogger("fedlink")


def _write_ready(path: Path | None, payload: dict[str, object]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def _clear_ready(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _on_termination(stop: Callable[[], None]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_coordinator(config_path: Path, ready_file: Path | None = None) -> None:
    """Run a coordinator from its config file until terminated."""
    _clear_ready(ready_file)
    config = load_coordinator_config(config_path)
    coordinator = Coordinator(config)
    port = coordinator.start()
    host = config.listen.rsplit(":", 1)[0]
    _on_termination(lambda: coordinator.stop(grace=0.5))
    _write_ready(ready_file, {"address": f"{host}:{port}", "pid": os.getpid()})
    try:
        coordinator.wait()
    finally:
        _clear_ready(ready_file)


def serve_node(config_path: Path, ready_file: Path | None = None) -> None:
    """Run a node from its config file (loading and checking its data first) until terminated."""
    _clear_ready(ready_file)
    config = load_node_config(config_path)
    agent = NodeAgent(config)
    _on_termination(agent.stop)
    try:
        agent.serve(
            on_connected=lambda: _write_ready(ready_file, {"node": config.name, "pid": os.getpid()}),
            on_disconnected=lambda: _clear_ready(ready_file),
        )
    finally:
        _clear_ready(ready_file)
