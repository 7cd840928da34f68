"""A Flower deployment on loopback for tests and benchmarks: a SuperLink and one SuperNode per fedlink
node as processes (insecure mode: loopback only, never with real data), each SuperNode pointed at the
node's ``node.toml`` through ``--node-config``. ``flwr`` finds the SuperLink through ``FLWR_HOME``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .servers import free_port


@dataclass
class FlowerDeployment:
    """SuperLink + SuperNodes under ``root``, the nodes configured by ``configs``; their logs are
    ``root/<name>.log``, the nodes' ledgers and registers under ``root/state`` (``FEDLINK_STATE``) and
    their data and PKI in ``workdir``."""

    root: Path
    workdir: Path
    nodes: list[str]
    #: The folder holding ``nodes/<name>/node.toml`` (the tests' copies switch test mode on).
    configs: Path = field(default_factory=lambda: Path(__file__).resolve().parents[1] / "examples" / "federation")
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "flwr"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        from fedlink.flower import FLOWER_ENV

        binaries = str(Path(sys.executable).parent)
        path = f"{binaries}:{os.environ.get('PATH', '')}"
        return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.home), "PATH": path}

    def _spawn(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> None:
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(extra or {})}, cwd=self.root
            )
        self.processes.append(process)

    def start(self, timeout_s: float = 120.0) -> FlowerDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{self.superlink}"\ninsecure = true\n'
        )
        binaries = Path(sys.executable).parent
        self._spawn(
            "superlink",
            [str(binaries / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(self.port)],
        )  # fmt: skip
        for name in self.nodes:
            node_toml = self.configs / "nodes" / name / "node.toml"
            self._spawn(
                name,
                [str(binaries / "flower-supernode"), "--insecure", "--superlink", self.superlink,
                 "--port", str(free_port()), "--node-config", f"fedlink-node='{node_toml}'"],
                {"FEDLINK_WORKDIR": str(self.workdir), "FEDLINK_STATE": str(self.state)},
            )  # fmt: skip
        try:
            self._wait_online(binaries / "flwr", time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_online(self, flwr: Path, deadline: float) -> None:
        """Ready when the SuperLink lists every SuperNode online."""
        while True:
            listed = subprocess.run(
                [str(flwr), "supernode", "list", "--format", "json"], capture_output=True, text=True,
                env=self.env, timeout=60,
            )  # fmt: skip
            if listed.returncode == 0 and listed.stdout.count('"online"') >= len(self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNodes did not come online: {listed.stdout} {listed.stderr}")
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a Flower process exited; see its log in {self.root}")
            time.sleep(1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def __enter__(self) -> FlowerDeployment:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
